"""Small tabular outputs (loss curves, collapse curves) as CSV, written atomically with pandas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.common import atomic


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic.atomic_path(path) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False, float_format="%.6g")


def read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path) if Path(path).is_file() and Path(path).stat().st_size else pd.DataFrame()


def replica_rows(rows: list[dict[str, Any]], replica: int) -> list[dict[str, Any]]:
    """One replica's rows of a long-format table, without the `replica` column (one line per column in a plot)."""
    return [{k: v for k, v in row.items() if k != "replica"} for row in rows if row["replica"] == replica]


def write_long_and_replica0(path: Path, replica0_path: Path, rows: list[dict[str, Any]]) -> None:
    """A long-format table (a `replica` column) and, for plots, replica 0's rows alone beside it."""
    write_csv(path, rows)
    write_csv(replica0_path, replica_rows(rows, 0))

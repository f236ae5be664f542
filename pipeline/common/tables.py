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

"""The grid's points: DVC's `-S` syntax and cartesian product, the grid id, and each point's name.

The -S values are parsed by DVC's own code (`dvc exp run --queue -S model=a,b -S seed=0,1` expands them
with Hydra's basic sweeper), so a grid means here exactly what it means to `dvc exp run --queue`.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.common.errors import GanpipeError

PARAMS_FILE = "params.yaml"


@dataclass(frozen=True)
class Point:
    name: str  # the DVC experiment name: the grid id plus the point's params
    overrides: tuple[str, ...]  # what `dvc exp run -S` gets, one per key, e.g. ("model=wgan", "seed=1")

    @property
    def label(self) -> str:
        return " ".join(f"-S {o}" for o in self.overrides)


def expand(sets: list[str]) -> list[dict[str, list[str]]]:
    """The cartesian product of the -S options, as DVC makes it: one {params file: [key=value, ...]} per point."""
    from dvc.exceptions import DvcException
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import get_hydra_sweeps

    if not sets:
        raise GanpipeError(
            "ganpipe grid needs at least one -S option naming the grid's axes, e.g. "
            "`ganpipe grid -S model=vanilla,wgan,cgan -S seed=0,1,2` (DVC's `dvc exp run --queue -S` syntax)."
        )
    try:
        return get_hydra_sweeps(to_path_overrides(sets))
    except (DvcException, Exception) as exc:  # Hydra's parser raises its own exception types
        raise GanpipeError(
            f"the -S options {' '.join(sets)!r} are not DVC's -S syntax ({exc}). Write each axis as "
            "-S key=value1,value2 (a dotted key for a nested param, e.g. -S train.lr=1e-4,2e-4)."
        ) from None


def _slug(text: str) -> str:
    # git ref names (DVC experiment names are refs) refuse spaces, ':', '~', '^', '?', '*', '[', '\\', '..'
    return re.sub(r"-{2,}", "-", re.sub(r"[^A-Za-z0-9._-]+", "-", text)).replace("..", ".").strip("-.")


def grid_id(commit: str, sets: list[str], prefix: str | None) -> str:
    """`--name` when given, else a digest of the commit and the -S options: the same grid gets the same id,
    so its points get the same names and a re-run finds the ones already done."""
    if prefix:
        slug = _slug(prefix)
        if not slug:
            raise GanpipeError(f"--name {prefix!r} has no letters or digits; use e.g. --name study1.")
        return slug
    digest = hashlib.sha1("\n".join([commit, *sorted(sets)]).encode()).hexdigest()[:7]
    return f"grid-{digest}"


def points(sets: list[str], grid: str) -> list[Point]:
    out = []
    for sweep in expand(sets):
        overrides: list[str] = []
        parts: list[str] = []
        for path, items in sweep.items():
            for item in items:
                overrides.append(item if path == PARAMS_FILE else f"{path}:{item}")
                key, _, value = item.partition("=")
                parts.append(_slug(f"{key}-{value}"))
        out.append(Point(f"{grid}-{'-'.join(parts)}", tuple(overrides)))
    return out


def check_params(root: Path, point: Point) -> None:
    """The point's params.yaml (the committed one with its -S applied by DVC's own code) passes the
    params check every stage runs, so a bad value is refused here, before any node starts on it."""
    from dvc.exceptions import DvcException
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import apply_overrides

    from pipeline.common.params import parse_params

    by_file = to_path_overrides(list(point.overrides))
    other = sorted(set(by_file) - {PARAMS_FILE})
    if other:
        raise GanpipeError(
            f"grid point {point.label} sets params in {', '.join(other)}, but ganpipe reads its params only from "
            f"{PARAMS_FILE}; drop the file prefix (e.g. -S model=wgan)."
        )
    with tempfile.TemporaryDirectory(prefix="ganpipe-grid-") as tmp:
        copy = Path(tmp) / PARAMS_FILE
        copy.write_bytes((root / PARAMS_FILE).read_bytes())
        try:
            apply_overrides(copy, by_file[PARAMS_FILE])
        except DvcException:
            keys = ", ".join(o.partition("=")[0] for o in by_file[PARAMS_FILE])
            raise GanpipeError(
                f"grid point {point.label}: DVC cannot apply these -S values to {PARAMS_FILE} (one of the keys "
                f"{keys} is not in the file, or a value is not in DVC's syntax). Nothing was submitted. Check the "
                f"key names against {PARAMS_FILE} (nested keys are dotted, e.g. train.lr) and run again."
            ) from None
        raw = yaml.safe_load(copy.read_text(encoding="utf-8"))
    source = f"{PARAMS_FILE} with the grid point's {point.label}"
    try:
        parse_params(raw, source=source)
    except GanpipeError as exc:
        message = str(exc).replace("Nothing was run.", "Nothing was submitted.")
        stage_fix = f"Fix {source} (or the `-S key=value` you passed to `dvc exp run`)"
        raise GanpipeError(message.replace(stage_fix, f"Fix that -S value of `ganpipe grid` (or {PARAMS_FILE})")) from None

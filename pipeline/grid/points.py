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
from pipeline.common.params import Params

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


# A key or value that reads back unchanged from `key-value` joined by '-': letters, digits and '_', with
# single dots between them. Names made only of such parts are unique: no part holds a '-', so the
# tokens alternate key, value in the axes' fixed order.
_PLAIN = re.compile(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*")


def _plain(text: str) -> bool:
    return bool(_PLAIN.fullmatch(text)) and not text.endswith(".lock")  # git refuses a ref ending in .lock


def point_name(grid: str, items: list[str]) -> str:
    """The experiment name of the point with these `key=value` items: readable when every key and value
    is plain (`grid-1a2b3c4-model-wgan-seed-1`); otherwise the readable slug plus `--` and a digest of
    the items (`-S x=-1,1` gives `g-x-1--5d41a7` and `g-x-1`). Plain names never hold `--` (the slug
    collapses it), so a digested name cannot equal a plain one, and two digested names differ by digest."""
    pairs = [item.partition("=")[::2] for item in items]
    readable = "-".join(filter(None, (_slug(f"{key}-{value}") for key, value in pairs)))
    if all(_plain(key) and _plain(value) for key, value in pairs):
        return f"{grid}-{readable}"
    digest = hashlib.sha1("\n".join(items).encode()).hexdigest()[:6]
    return f"{grid}-{readable}--{digest}" if readable else f"{grid}--{digest}"


def grid_id(commit: str, sets: list[str], prefix: str | None) -> str:
    """`--name` when given, else a digest of the commit and the -S options: the same grid gets the same id,
    so its points get the same names and a re-run finds the ones already done (at the same commit only:
    a point counts as done when its experiment's baseline is this commit, so a reused --name after a
    code change runs every point again)."""
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
        overrides = [item if path == PARAMS_FILE else f"{path}:{item}" for path, items in sweep.items() for item in items]
        out.append(Point(point_name(grid, overrides), tuple(overrides)))
    names = [p.name for p in out]
    if len(set(names)) != len(names):  # only a digest collision could do it; refuse rather than lose a point
        twice = sorted({n for n in names if names.count(n) > 1})
        raise GanpipeError(
            f"two grid points would share the experiment name {twice[0]}, so one would overwrite the other. "
            "Repeat a value only once in each -S option. Nothing was submitted."
        )
    return out


def check_params(root: Path, point: Point) -> Params:
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
    with tempfile.TemporaryDirectory(prefix="ganpipe-params-") as tmp:
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
        return parse_params(raw, source=source)
    except GanpipeError as exc:
        message = str(exc).replace("Nothing was run.", "Nothing was submitted.")
        stage_fix = f"Fix {source} (or the `-S key=value` you passed to `dvc exp run`)"
        raise GanpipeError(message.replace(stage_fix, f"Fix that -S value of `ganpipe grid` (or {PARAMS_FILE})")) from None


def cpus_needed(params: Params, at_least: float) -> float:
    """The CPUs a point's task asks Ray for: its thread counts are params (they change results, so they
    are never taken from what Ray grants), and a task granted fewer CPUs than it runs threads would share
    cores with the next task (issue 30: an evaluator on 2 threads in a 1-CPU task took four times as long).
    `train.threads: auto` follows the load on the node when training starts, so it asks for --cpus-per-point."""
    train = params.train.threads if isinstance(params.train.threads, int) else 0
    return float(max(at_least, train, params.evaluator.threads))


def committed_params(root: Path) -> Params:
    """The repository's params.yaml, as the shared stages run with it."""
    from pipeline.common.params import parse_params

    return parse_params(yaml.safe_load((root / PARAMS_FILE).read_text(encoding="utf-8")), source=PARAMS_FILE)

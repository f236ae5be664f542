"""Short forms of a result for the views users read: DVC's metrics table and one terminal line.

DVC metrics files hold numbers and strings, but `dvc metrics diff` and sorting work on numbers only,
so the verdict kind is written both ways: the kind as text and a numeric code whose mapping is below
(and in the README).
"""

from __future__ import annotations

import re
from typing import Any

from pipeline.common import layout

# Ordered by how much is wrong: 0 none, 1 intra-class, 2 inter-class, 3 both.
KIND_CODES = {"none": 0, "intra-class": 1, "inter-class": 2, "both": 3}


def verdict_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """`collapse_kind` ("none" | "inter-class" | "intra-class" | "both") and `collapse_code` (KIND_CODES)."""
    kind = result["collapse"]["kind"]
    return {"collapse_kind": kind, "collapse_code": KIND_CODES[kind]}


def verdict_line(result: dict[str, Any]) -> str:
    """One line for stderr after `ganpipe evaluate`: the verdict, then the numbers that decide it."""
    kind = result["collapse"]["kind"]
    head = f"verdict: mode collapse ({kind})" if result["collapse"]["detected"] else "verdict: no mode collapse"
    judged = result.get("verdict_samples")
    if judged is not None and judged < result["n_samples"]:
        head += f" (judged on a random {judged} of {result['n_samples']})"
    parts = [f"FLD {result['fld']:.1f}", f"{result['class_coverage']}/10 digits"]
    if result.get("mean_confidence") is not None:
        parts.append(f"mean confidence {result['mean_confidence']:.2f}")
    if result.get("label_accuracy") is not None:
        parts.append(f"label accuracy {result['label_accuracy']:.2f}")
    evidence = result["collapse"]["evidence"]
    more = f"; {evidence[0]}" + (f" (+{len(evidence) - 1} more in the JSON)" if len(evidence) > 1 else "") if evidence else ""
    return f"{head}: {', '.join(parts)}{more}"


# `ganpipe exp-show`: the columns of `dvc exp show` that say what each experiment was and how often it
# collapsed, and nothing else (the full table has every preset's settings, several hundred columns). DVC
# qualifies a name with its file only where two files share it: `replicas` is in params.yaml and in both
# metrics files, `iterations` in the resolved preset and metrics/train.json. The interval is two scalars
# because DVC leaves list values out of the table.
EXP_SHOW_COLUMNS = (
    "Experiment", "model", "dataset", "seed", f"{layout.PARAMS_FILE}:replicas", f"{layout.RESOLVED_VARIANT}:iterations",
    "collapse_rate", "collapse_rate_ci_lo", "collapse_rate_ci_hi", "fld",
)


def exp_show_command(extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """`dvc exp show` keeping only EXP_SHOW_COLUMNS; `extra` are further `dvc exp show` options (--csv, -A, ...)."""
    keep = "^(" + "|".join(re.escape(c) for c in EXP_SHOW_COLUMNS) + ")$"
    return ["dvc", "exp", "show", "--drop", ".*", "--keep", keep, *extra]

"""From one evaluation per replica to what the evaluate stage writes: metrics/evaluate.json (medians,
IQRs, the collapse rate and its interval), the rows of outputs/evaluate/replicas.csv, and the
{"summary", "replicas"} document of outputs/evaluate/evaluation.json.

A replica is either evaluated (its full `evaluate_images` result) or diverged (its reason): diverged
replicas are counted apart and never as collapsed or clean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.instrument.evaluation import SCALARS
from pipeline.instrument.rates import Rate, median_iqr, rate_of

# The metrics a reader compares first; each gets an IQR beside its median.
HEADLINE = (
    "fld", "kid", "class_coverage", "class_kl", "precision", "recall", "coverage", "duplicate_rate",
    "intra_class_diversity", "label_accuracy",
)


@dataclass
class ReplicaOutcome:
    index: int
    seed: int  # the replica's training seed
    sample_seed: int | None  # the seed its evaluation samples were drawn with (None when diverged)
    result: dict[str, Any] | None  # evaluate_images' result plus first_collapse_iteration; None when diverged
    diverged: str | None = None

    @property
    def status(self) -> str:
        return "diverged" if self.result is None else "evaluated"

    @property
    def collapsed(self) -> bool | None:
        return None if self.result is None else bool(self.result["collapse"]["detected"])


def rate(outcomes: list[ReplicaOutcome]) -> Rate:
    return rate_of(o.collapsed for o in outcomes)


def dvc_metrics(outcomes: list[ReplicaOutcome]) -> dict[str, Any]:
    """metrics/evaluate.json: every scalar as the median over evaluated replicas (so `dvc exp show`
    keeps its columns), `<metric>_iqr` for the headline metrics, the rate and its 95% Wilson interval (as a
    pair, and as collapse_rate_ci_lo/_hi for `dvc exp show`)."""
    evaluated = [o.result for o in outcomes if o.result is not None]
    r = rate(outcomes)
    out: dict[str, Any] = {}
    for key in SCALARS:
        median, iqr = median_iqr([e.get(key) for e in evaluated])
        if median is None:
            continue  # e.g. label_accuracy of an unconditional model
        out[key] = int(median) if key == "n_samples" else round(median, 6)
        if key in HEADLINE:
            out[f"{key}_iqr"] = round(iqr, 6)
    out["replicas"] = len(outcomes)
    out["evaluated"] = r.evaluated
    out["diverged"] = r.diverged
    out["collapsed"] = r.collapsed
    out["collapse_rate"] = None if r.value is None else round(r.value, 6)
    out["collapse_rate_ci"] = None if r.interval is None else [round(v, 6) for v in r.interval]
    # The same bounds as scalars: `dvc exp show` leaves list values out of its table.
    lo, hi = out["collapse_rate_ci"] or (None, None)
    out["collapse_rate_ci_lo"], out["collapse_rate_ci_hi"] = lo, hi
    return out


def replica_rows(outcomes: list[ReplicaOutcome]) -> list[dict[str, Any]]:
    """One row per replica for replicas.csv; a diverged replica's metric cells are empty."""
    rows = []
    for o in outcomes:
        e = o.result or {}
        row: dict[str, Any] = {
            "replica": o.index,
            "seed": o.seed,
            "status": o.status,
            "collapse": e["collapse"]["kind"] if e else "diverged",
            "collapsed": "" if o.collapsed is None else int(o.collapsed),
        }
        row.update({k: ("" if e.get(k) is None else round(float(e[k]), 6)) for k in SCALARS})
        first = e.get("first_collapse_iteration")
        row["first_collapse_iteration"] = "" if first is None else first
        rows.append(row)
    return rows


def evaluation_document(outcomes: list[ReplicaOutcome]) -> dict[str, Any]:
    """outputs/evaluate/evaluation.json: the summary and every replica's full result."""
    replicas = []
    for o in outcomes:
        entry = {"index": o.index, "seed": o.seed, "sample_seed": o.sample_seed, "status": o.status,
                 "diverged": o.diverged}
        replicas.append({**entry, **(o.result or {})})
    return {"summary": dvc_metrics(outcomes), "replicas": replicas}


def outcomes_from_document(document: dict[str, Any]) -> list[ReplicaOutcome]:
    """The inverse of `evaluation_document`, for the report stage."""
    keys = ("index", "seed", "sample_seed", "status", "diverged")
    return [
        ReplicaOutcome(
            index=e["index"], seed=e["seed"], sample_seed=e.get("sample_seed"),
            result=None if e["status"] == "diverged" else {k: v for k, v in e.items() if k not in keys},
            diverged=e.get("diverged"),
        )
        for e in document["replicas"]
    ]

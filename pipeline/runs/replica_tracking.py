"""The evaluation half of MLflow tracking for replicas: each replica's child run gets its eval/… metrics,
verdict tag and description, evaluation and grid; the parent run gets the collapse rate, its interval and
the medians (eval/…) and a description summing up the replicas' verdicts.

Child runs are written through MlflowClient, which never changes a run's status, so a diverged replica's
child stays FAILED. When the store no longer holds a run (a new mlflow.db, or a generator restored from
DVC's cache), the parent is restarted by `run_lifecycle.reopen_run` and missing children are created
under it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.common import mlflow_store, run_description, run_identity, run_lifecycle, run_logging
from pipeline.instrument.evaluation import metrics_for_dvc
from pipeline.instrument.replica_summary import ReplicaOutcome


def parent_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The parent's numbers, grouped under eval/: the rate (eval/collapse_rate), its interval
    (eval/collapse_rate_ci_lo, eval/collapse_rate_ci_hi) and every median/IQR as eval/<key>."""
    out: dict[str, float] = {}
    for key, value in summary.items():
        if value is None or isinstance(value, str):
            continue  # collapse_kind is text: the parent carries it as its `collapse` tag
        if key == "collapse_rate_ci":
            lo, hi = value
            out[run_logging.metric_name(run_logging.EVAL, "collapse_rate_ci_lo")] = lo
            out[run_logging.metric_name(run_logging.EVAL, "collapse_rate_ci_hi")] = hi
        else:
            out[run_logging.metric_name(run_logging.EVAL, key)] = value
    return out


def child_metrics(result: dict[str, Any]) -> dict[str, float]:
    """One replica's numbers as its child run logs them: eval/<key>."""
    return {run_logging.metric_name(run_logging.EVAL, k): float(v) for k, v in metrics_for_dvc(result).items()}


def describe_replicas(summary: dict[str, Any], outcomes: list[ReplicaOutcome], exp_name: str = "") -> str:
    """The parent run's description (markdown): the collapse rate, then one line per replica."""
    n, k = summary["evaluated"], summary["collapsed"]
    if not n:
        head = "**No replica evaluated** (every replica diverged)"
    elif k:
        head = f"**Mode collapse in {k} of {n} replicas**"
    else:
        head = f"**No mode collapse detected in {n} replicas**"
    lines = [head]
    if summary.get("collapse_rate") is not None and summary.get("collapse_rate_ci"):
        lo, hi = summary["collapse_rate_ci"]
        lines += ["", f"collapse rate {summary['collapse_rate']:.2f} (95% Wilson interval {lo:.2f} to {hi:.2f})"]
    lines += [""]
    for o in outcomes:
        if o.result is None:
            lines.append(f"- replica {o.index}: diverged")
        else:
            r = o.result
            lines.append(f"- replica {o.index}: {r['collapse']['kind']} · FLD {r['fld']:.1f} · "
                         f"{r['class_coverage']:g} of 10 digits covered")
    if exp_name and exp_name != "workspace":
        lines += ["", f"DVC experiment `{exp_name}`: `dvc exp apply {exp_name}` restores its workspace."]
    return "\n".join(lines)


def _child_run(client, parent_id: str, experiment_id: str, known: list[str], o: ReplicaOutcome,
               parent_name: str, tags: dict[str, str]) -> tuple[str, bool]:
    """The child run of replica o (its id, and whether it had to be created)."""
    import mlflow

    if o.index < len(known):
        try:
            mlflow_store.retry_locked(lambda: client.get_run(known[o.index]))
            return known[o.index], False
        except mlflow.exceptions.MlflowException:
            pass
    child_tags = {**tags, "mlflow.parentRunId": parent_id, "replica": str(o.index), "replica_seed": str(o.seed)}
    run = mlflow_store.retry_locked(
        lambda: client.create_run(experiment_id, run_name=f"{parent_name}-r{o.index}", tags=child_tags)
    )
    return run.info.run_id, True


def log_evaluation(root: Path, run_info: dict[str, Any], model: str, seed: int, outcomes: list[ReplicaOutcome],
                   grids: dict[int, np.ndarray], document: dict[str, Any],
                   calibration: dict[str, Any] | None = None) -> str:
    """Log every replica's evaluation to its child run and the summary to the parent; return the parent id."""
    import mlflow

    known = list(run_info.get("replica_run_ids", []))
    with run_lifecycle.reopen_run(root, run_info["run_id"], model, seed) as parent:
        # Only now: reopen_run points MLflow at the repo's store. A client made earlier would talk to
        # MLflow's default store in the working directory, a fresh one in a queued experiment's copy.
        client = mlflow.MlflowClient()
        parent_id = parent.info.run_id
        parent_run = client.get_run(parent_id)
        tags = {k: v for k, v in parent_run.data.tags.items() if not k.startswith("mlflow.")}
        name = parent_run.info.run_name or f"{model}-s{seed}"
        for o in outcomes:
            child_id, created = _child_run(client, parent_id, parent_run.info.experiment_id, known, o, name, tags)
            if o.result is None:
                mlflow_store.retry_locked(lambda: client.set_tag(child_id, "collapse", "diverged"))
            else:
                from mlflow.entities import Metric, RunTag

                now = mlflow.utils.time.get_current_time_millis()
                metrics = [Metric(k, v, now, 0) for k, v in child_metrics(o.result).items()]
                described = run_description.verdict_tags(o.result, model, seed, calibration or {})
                run_tags = [RunTag("collapse", o.result["collapse"]["kind"]),
                            *(RunTag(k, v) for k, v in described.items())]
                mlflow_store.retry_locked(lambda: client.log_batch(child_id, metrics=metrics, tags=run_tags))
                mlflow_store.retry_locked(lambda: client.log_dict(child_id, o.result, "evaluation/evaluation.json"))
                mlflow_store.retry_locked(
                    lambda: client.log_image(child_id, grids[o.index], "evaluation/sample_grid.png")
                )
            if created:
                client.set_terminated(child_id, "FAILED" if o.result is None else "FINISHED")
        summary = document["summary"]
        mlflow.log_metrics(parent_metrics(summary))
        rate = f"{summary['collapsed']}/{summary['evaluated']}" if summary["evaluated"] else "none evaluated"
        # Not the `collapse` tag: that holds one replica's verdict kind (and an old single run's).
        exp_name = run_identity.identity_tags(model, seed)["dvc_exp_name"]
        mlflow.set_tags({"collapse_rate": rate,
                         run_description.DESCRIPTION_TAG: describe_replicas(summary, outcomes, exp_name)})
        mlflow.log_dict(document, "evaluation/evaluation.json")
    return parent_id

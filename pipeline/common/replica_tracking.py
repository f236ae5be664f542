"""The evaluation half of MLflow tracking for replicas: each replica's child run gets its eval_* metrics,
verdict tag, evaluation and grid; the parent run gets the collapse rate, its interval and the medians.

Child runs are written through MlflowClient, which never changes a run's status, so a diverged replica's
child stays FAILED. When the store no longer holds a run (a new mlflow.db, or a generator restored from
DVC's cache), the parent is restarted by `tracking.reopen_run` and missing children are created under it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.common import tracking
from pipeline.instrument.evaluation import metrics_for_dvc
from pipeline.instrument.replica_summary import ReplicaOutcome


def parent_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The parent's numbers: the rate and its interval unprefixed, every median/IQR as eval_<key>."""
    out: dict[str, float] = {}
    for key, value in summary.items():
        if key == "collapse_rate_ci":
            if value is not None:
                out["collapse_rate_ci_lo"], out["collapse_rate_ci_hi"] = value
        elif key == "collapse_rate":
            if value is not None:
                out["collapse_rate"] = value
        elif value is not None:
            out[f"eval_{key}"] = value
    return out


def _child_run(client, parent_id: str, experiment_id: str, known: list[str], o: ReplicaOutcome,
               parent_name: str, tags: dict[str, str]) -> tuple[str, bool]:
    """The child run of replica o (its id, and whether it had to be created)."""
    import mlflow

    if o.index < len(known):
        try:
            tracking.retry_locked(lambda: client.get_run(known[o.index]))
            return known[o.index], False
        except mlflow.exceptions.MlflowException:
            pass
    child_tags = {**tags, "mlflow.parentRunId": parent_id, "replica": str(o.index), "replica_seed": str(o.seed)}
    run = tracking.retry_locked(
        lambda: client.create_run(experiment_id, run_name=f"{parent_name}-r{o.index}", tags=child_tags)
    )
    return run.info.run_id, True


def log_evaluation(root: Path, run_info: dict[str, Any], model: str, seed: int, outcomes: list[ReplicaOutcome],
                   grids: dict[int, np.ndarray], document: dict[str, Any]) -> str:
    """Log every replica's evaluation to its child run and the summary to the parent; return the parent id."""
    import mlflow

    known = list(run_info.get("replica_run_ids", []))
    with tracking.reopen_run(root, run_info["run_id"], model, seed) as parent:
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
                tracking.retry_locked(lambda: client.set_tag(child_id, "collapse", "diverged"))
            else:
                from mlflow.entities import Metric, RunTag

                now = mlflow.utils.time.get_current_time_millis()
                metrics = [Metric(f"eval_{k}", float(v), now, 0) for k, v in metrics_for_dvc(o.result).items()]
                run_tags = [RunTag("collapse", o.result["collapse"]["kind"])]
                tracking.retry_locked(lambda: client.log_batch(child_id, metrics=metrics, tags=run_tags))
                tracking.retry_locked(lambda: client.log_dict(child_id, o.result, "evaluation/evaluation.json"))
                tracking.retry_locked(
                    lambda: client.log_image(child_id, grids[o.index], "evaluation/sample_grid.png")
                )
            if created:
                client.set_terminated(child_id, "FAILED" if o.result is None else "FINISHED")
        summary = document["summary"]
        mlflow.log_metrics(parent_metrics(summary))
        rate = f"{summary['collapsed']}/{summary['evaluated']}" if summary["evaluated"] else "none evaluated"
        # Not the `collapse` tag: that holds one replica's verdict kind (and an old single run's).
        mlflow.set_tags({"collapse_rate": rate})
        mlflow.log_dict(document, "evaluation/evaluation.json")
    return parent_id

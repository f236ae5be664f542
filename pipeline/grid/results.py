"""A grid's runs in the MLflow store, for `ganpipe compare --grid ID`."""

from __future__ import annotations

from pathlib import Path

from pipeline.common.errors import GanpipeError
from pipeline.common.run_identity import GRID_TAG


def grid_runs(root: Path, experiment: str, grid: str) -> list[str]:
    """The finished training (parent) runs tagged with the grid id: one per point, the latest if a point
    was somehow logged twice (a retried attempt that finished training before its node was lost)."""
    import mlflow

    from pipeline.common.mlflow_store import open_store

    uri = open_store(root)
    found = mlflow.search_runs(
        experiment_names=[experiment], filter_string=f"tags.{GRID_TAG} = '{grid}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], output_format="list",
    )
    latest: dict[str, str] = {}
    for run in found:
        if "mlflow.parentRunId" not in run.data.tags:
            latest.setdefault(run.data.tags.get("dvc_exp_name", run.info.run_id), run.info.run_id)
    if not latest:
        raise GanpipeError(
            f'the MLflow store {uri} holds no finished run of grid {grid} in experiment "{experiment}". The grid id is '
            "the prefix of its experiments' names (`dvc exp ls`) and is printed by `ganpipe grid`; run the grid first, "
            "or check MLFLOW_TRACKING_URI points at the server the grid logged to."
        )
    return list(latest.values())

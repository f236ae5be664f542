"""Reading finished pipeline runs back from the MLflow store, for `ganpipe compare`.

Every training the pipeline logs is a parent run carrying the tags `model` and `seed`, the final `eval/*`
metrics, the `collapse` tag, and the artifacts evaluation/evaluation.json and evaluation/sample_grid.png; its
replica child runs carry the step metrics of training (train/d_loss, train/g_loss, train/w_estimate for WGAN;
train/fld etc. from the in-training check). The comparison shows parents, with replica 0's curves.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd

from pipeline.common import tracking
from pipeline.common.errors import GanpipeError

# MLflow metric name -> the history column the comparison reads (the in-training checks keep a train_ prefix
# there, apart from the final evaluation's metrics of the same name).
HISTORY_KEYS = {
    tracking.metric_name(tracking.TRAIN, key): column
    for key, column in [("d_loss", "d_loss"), ("g_loss", "g_loss"), ("w_estimate", "w_estimate"),
                        ("fld", "train_fld"), ("class_coverage", "train_class_coverage"),
                        ("class_kl", "train_class_kl")]
}
EVAL_PREFIX = "metrics." + tracking.metric_name(tracking.EVAL, "")
_FIX = (
    "Run the pipeline first (`dvc repro`, then e.g. `dvc exp run -S model=wgan` for another variant) from the "
    "repository root, or point MLFLOW_TRACKING_URI at the store that holds your runs."
)


@dataclass
class RunData:
    run_id: str
    model: str
    seed: str
    name: str
    metrics: dict[str, float]  # the final evaluation, without the eval/ prefix
    collapse: str  # the verdict kind, or "not evaluated"
    evidence: list[str] = field(default_factory=list)
    grid_png: bytes | None = None
    history: pd.DataFrame = field(default_factory=pd.DataFrame)  # step, then one column per HISTORY_KEYS logged
    dvc_exp: str = ""  # the DVC experiment that trained it ("workspace" for a plain `dvc repro`)
    url: str = ""  # the run's page in the MLflow UI

    @property
    def label(self) -> str:
        return f"{self.model} s{self.seed}"


def open_store(root: Path) -> str:
    """Point MLflow at the pipeline's store (same rules as training) without creating one; return its URI."""
    import mlflow

    uri = tracking.tracking_uri(root)
    parsed = urlparse(uri)
    scheme = parsed.scheme.split("+")[0]
    if scheme == "sqlite":
        db = Path(parsed.path)
        if not db.is_file() or db.stat().st_size == 0:
            raise GanpipeError(
                f"there is no MLflow store at {db} (tracking URI {uri}): no run has been logged there. {_FIX}"
            )
    elif scheme in ("file", ""):
        folder = Path(parsed.path if scheme == "file" else uri)
        if not folder.is_dir():
            raise GanpipeError(f"there is no MLflow store at {folder} (tracking URI {uri}). {_FIX}")
    else:
        tracking.check_store(uri)  # a server: fail fast when it is unreachable
    mlflow.set_tracking_uri(uri)
    return uri


def _search(experiment_ids: list[str]) -> pd.DataFrame:
    import mlflow

    frame = mlflow.search_runs(experiment_ids=experiment_ids, order_by=["attributes.start_time DESC"])
    # An experiment without runs comes back as a frame without columns; give it the ones used below.
    for column in ("run_id", "status", "tags.model", "tags.seed", "tags.collapse", "tags.mlflow.runName",
                   "tags.dvc_exp_name", "experiment_id", "tags.mlflow.parentRunId"):
        if column not in frame:
            frame[column] = None
    return frame


def select_runs(uri: str, experiment: str, run_ids: list[str], models: list[str]) -> pd.DataFrame:
    """The search_runs frame of the runs to compare: the given run ids, or else the latest FINISHED run
    of each (model, seed) in the experiment; either way only runs of the given models, if any."""
    import mlflow

    client = mlflow.MlflowClient()
    if run_ids:
        frame = _search([e.experiment_id for e in client.search_experiments()])
        missing = [r for r in run_ids if r not in set(frame["run_id"])]
        if missing:
            raise GanpipeError(
                f"the MLflow store {uri} holds no run with id {', '.join(missing)}. Copy run ids from "
                "`mlflow ui` (or outputs/train/mlflow_run.json), or drop --runs to compare the latest run of "
                "every model and seed."
            )
        frame = frame[frame["run_id"].isin(run_ids)]
    else:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = sorted(e.name for e in client.search_experiments())
            have = f"it holds only {', '.join(names)}" if names else "it holds no experiments"
            raise GanpipeError(
                f'the MLflow store {uri} has no experiment named "{experiment}" ({have}). {_FIX} '
                "Or pass --experiment with one of the names it holds."
            )
        frame = _search([exp.experiment_id])
        # A training's parent run holds its evaluation; its per-replica child runs are not compared.
        trainings = frame["tags.mlflow.parentRunId"].isna()
        frame = frame[(frame["status"] == "FINISHED") & frame["tags.model"].notna() & trainings]
    available = sorted(frame["tags.model"].dropna().unique())
    if models:
        frame = frame[frame["tags.model"].isin(models)]
    if frame.empty:
        wanted = f" of model {', '.join(models)}" if models else ""
        known = f" It has finished runs of: {', '.join(available)}." if available else ""
        raise GanpipeError(
            f'the experiment "{experiment}" in the MLflow store {uri} has no finished pipeline run{wanted}.{known} '
            f"{_FIX}" + (" Or choose other --models." if models else "")
        )
    if not run_ids:
        # search_runs sorted newest first, so "first" is the latest run of each (model, seed).
        frame = frame.drop_duplicates(["tags.model", "tags.seed"], keep="first")
    order = pd.to_numeric(frame["tags.seed"], errors="coerce")
    return frame.assign(_seed=order).sort_values(["tags.model", "_seed"]).drop(columns="_seed")


def _curves_run(client, row: pd.Series) -> str:
    """The run holding the training curves: a training's replica-0 child run (the replica evaluated),
    else the run itself (a child given with --runs, or a run from before replicas)."""
    children = client.search_runs(
        [str(row["experiment_id"])],
        filter_string=f"tags.`mlflow.parentRunId` = '{row['run_id']}' and tags.replica = '0'",
    )
    return children[0].info.run_id if children else row["run_id"]


def _history(client, run_id: str) -> pd.DataFrame:
    """The step metrics as one frame, outer-joined on step; a re-logged step keeps its last value."""
    series = []
    for key, column in HISTORY_KEYS.items():
        points = client.get_metric_history(run_id, key)
        if points:
            s = pd.DataFrame([(m.step, m.timestamp, m.value) for m in points], columns=["step", "t", column])
            series.append(s.sort_values("t").drop_duplicates("step", keep="last").set_index("step")[column])
    if not series:
        return pd.DataFrame({"step": []})
    return pd.concat(series, axis=1).sort_index().reset_index()


def _artifact(run_id: str, path: str) -> bytes | None:
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp)
            return Path(local).read_bytes()
        except Exception:  # MLflow raises several types for "not there"; a missing artifact is shown as such
            return None


def fetch(row: pd.Series) -> RunData:
    """Everything the comparison shows about one run."""
    import mlflow

    client = mlflow.MlflowClient()
    metrics = {
        col.removeprefix(EVAL_PREFIX): float(v)
        for col, v in row.items()
        if col.startswith(EVAL_PREFIX) and pd.notna(v)
    }
    evaluation = _artifact(row["run_id"], "evaluation/evaluation.json")
    evidence = json.loads(evaluation)["collapse"]["evidence"] if evaluation else []
    return RunData(
        run_id=row["run_id"],
        model=row["tags.model"] if isinstance(row["tags.model"], str) else "unknown",
        seed=str(row["tags.seed"]),
        name=str(row["tags.mlflow.runName"] or ""),
        metrics=metrics,
        collapse=row["tags.collapse"] if isinstance(row["tags.collapse"], str) else "not evaluated",
        evidence=evidence,
        grid_png=_artifact(row["run_id"], "evaluation/sample_grid.png"),
        history=_history(client, _curves_run(client, row)),
        dvc_exp=row["tags.dvc_exp_name"] if isinstance(row["tags.dvc_exp_name"], str) else "",
        url=tracking.run_url(mlflow.get_tracking_uri(), str(row["experiment_id"]), row["run_id"]),
    )


@contextmanager
def no_download_bars():
    """MLflow draws a progress bar per downloaded artifact; two per run would bury the command's output."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    old = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def load_runs(root: Path, experiment: str, run_ids: list[str], models: list[str]) -> tuple[str, list[RunData]]:
    uri = open_store(root)
    frame = select_runs(uri, experiment, run_ids, models)
    with no_download_bars():
        return uri, [fetch(row) for _, row in frame.iterrows()]

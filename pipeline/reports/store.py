"""Reading finished pipeline runs back from the MLflow store, for `ganpipe compare`.

A training is a parent run (tags `model`, `seed`, `replicas`) with one nested child run per replica
(tags `mlflow.parentRunId`, `replica`, `replica_seed`). Each child carries the step metrics of training
(train/d_loss, train/g_loss, train/w_estimate for WGAN; train/fld etc. from the in-training check), its final
`eval/*` metrics, its run description (the verdict), the `collapse` tag (the verdict kind, or "diverged") and the
artifacts evaluation/evaluation.json and evaluation/sample_grid.png. The parent carries the medians and the
collapse rate as `eval/*`. Runs logged before the grouped names (`eval_*`, `train_*`, bare `d_loss`) are read
too. A run logged before replicas existed has no children and carries all of this itself: it is shown as a
training with one replica.

What makes two trainings comparable is read from the parent's params (`dataset`, `replicas`, `eval/n_samples`,
the resolved preset `variant/*`; runs logged with the whole params tree have `evaluate.n_samples` and
`variants.<model>.*` instead): a training is the latest run of its model, seed, dataset, preset settings and
budget, and only trainings of one dataset and budget (a `Budget`) are ranked against each other.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipeline.common import mlflow_store, run_logging
from pipeline.common.mlflow_store import FIX_NO_RUNS, no_download_bars, open_store
from pipeline.common.errors import GanpipeError

# MLflow metric name -> the history column the comparison reads (the in-training checks keep a train_ prefix
# there, apart from the final evaluation's metrics of the same name).
HISTORY_KEYS = {
    run_logging.metric_name(run_logging.TRAIN, key): column
    for key, column in [("d_loss", "d_loss"), ("g_loss", "g_loss"), ("w_estimate", "w_estimate"),
                        ("fld", "train_fld"), ("class_coverage", "train_class_coverage"),
                        ("class_kl", "train_class_kl")]
}
EVAL_PREFIX = "metrics." + run_logging.metric_name(run_logging.EVAL, "")
LEGACY_EVAL_PREFIX = "metrics.eval_"  # runs logged before the grouped names


NOT_RECORDED = "not recorded"  # a run logged before its dataset or budget was recorded as params


@dataclass(frozen=True, order=True)
class Budget:
    """What must match before two trainings' collapse rates and metrics are ranked against each other:
    the data they learnt and what they were given (iterations, replicas, evaluation samples). Each field
    is the logged param's text, or NOT_RECORDED."""

    dataset: str
    iterations: str
    replicas: str
    eval_samples: str

    def describe(self) -> str:
        return (f"{self.dataset}, {self.iterations} iterations, {self.replicas} replicas, "
                f"{self.eval_samples} evaluation samples")


@dataclass
class ReplicaData:
    """One replica of a training: a nested child run, or an old single run standing as its only replica."""

    index: int
    run_id: str
    seed: str  # the replica's own seed
    metrics: dict[str, float]  # its eval/* metrics without the prefix
    collapse: str  # the verdict kind, "diverged", or "not evaluated"
    evidence: list[str] = field(default_factory=list)
    grid_png: bytes | None = None
    history: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def collapsed(self) -> bool | None:
        """True/False for an evaluated replica; None for a diverged or not yet evaluated one."""
        return None if self.collapse in ("diverged", "not evaluated") else self.collapse != "none"


@dataclass
class RunData:
    """One training: a parent run with its replicas, or an old run without children (one replica)."""

    run_id: str
    model: str
    seed: str
    name: str
    metrics: dict[str, float]  # the final evaluation, without the eval/ prefix (a parent's: medians and rate)
    collapse: str  # an old single run's verdict kind, or "not evaluated"; a parent's is per replica
    evidence: list[str] = field(default_factory=list)
    grid_png: bytes | None = None
    history: pd.DataFrame = field(default_factory=pd.DataFrame)  # step, then one column per HISTORY_KEYS logged
    children: list[ReplicaData] = field(default_factory=list)
    dvc_exp: str = ""  # the DVC experiment that trained it ("workspace" for a plain `dvc repro`)
    url: str = ""  # the run's page in the MLflow UI
    budget: Budget = Budget(NOT_RECORDED, NOT_RECORDED, NOT_RECORDED, NOT_RECORDED)
    settings: dict[str, str] = field(default_factory=dict)  # the resolved preset (variant/*) as logged
    conditions: dict[str, str] = field(default_factory=dict)  # kernels, commit, date, wall_time (conditions_of)

    @property
    def conditional(self) -> bool:
        """A conditional model (cgan): its samples are drawn for requested digits."""
        return self.settings.get("conditional", "").lower() == "true"

    @property
    def label(self) -> str:
        return f"{self.model} s{self.seed}"

    @property
    def replicas(self) -> list[ReplicaData]:
        """The nested replica runs; a run logged before replicas existed is its own single replica."""
        if self.children:
            return self.children
        return [ReplicaData(0, self.run_id, self.seed, self.metrics, self.collapse, self.evidence, self.grid_png,
                            self.history)]


def _search(experiment_ids: list[str]) -> pd.DataFrame:
    import mlflow

    frame = mlflow.search_runs(experiment_ids=experiment_ids, order_by=["attributes.start_time DESC"])
    # An experiment without runs comes back as a frame without columns; give it the ones used below.
    for column in ("run_id", "status", "tags.model", "tags.seed", "tags.collapse", "tags.mlflow.runName",
                   "tags.dvc_exp_name", "tags.mlflow.parentRunId", "tags.replica", "tags.replica_seed",
                   "experiment_id"):
        if column not in frame:
            frame[column] = None
    return frame


def preset_settings(row: pd.Series) -> dict[str, str]:
    """The resolved preset a run trained, as logged: `variant/<key>`, or `variants.<model>.<key>` from a run
    that logged the whole params tree."""
    model = row.get("tags.model")
    prefixes = ("params." + run_logging.metric_name(run_logging.VARIANT, ""), f"params.variants.{model}.")
    out = {}
    for col, value in row.items():
        for prefix in prefixes:
            if isinstance(col, str) and col.startswith(prefix) and isinstance(value, str):
                out.setdefault(col.removeprefix(prefix), value)
    return out


def _param(row: pd.Series, *names: str) -> str:
    for name in names:
        value = row.get(name)
        if isinstance(value, str) and value:
            return value
    return NOT_RECORDED


def budget_of(row: pd.Series) -> Budget:
    settings = preset_settings(row)
    return Budget(
        dataset=_param(row, "params.dataset"),
        iterations=settings.get("iterations", NOT_RECORDED),
        replicas=_param(row, "params.replicas", "tags.replicas"),
        eval_samples=_stacked_samples(row, settings) if _param(row, "params.dataset") == "stacked-mnist" else
        _param(row, "params." + run_logging.metric_name(run_logging.EVAL, "n_samples"), "params.evaluate.n_samples"),
    )


def _stacked_samples(row: pd.Series, settings: dict[str, str]) -> str:
    """Stacked MNIST's mode count runs on the preset's protocol count, else stacked_mnist.eval_samples."""
    own = settings.get("stacked_eval_samples")
    if own not in (None, "null", NOT_RECORDED):
        return own
    return _param(row, "params.stacked_mnist/eval_samples", "params.stacked_mnist.eval_samples")


def _identity(row: pd.Series) -> str:
    """Model and seed, plus everything that makes a training a different experiment: its budget and
    preset settings (a later run of the same model on other data or with another lr does not replace it)."""
    settings = json.dumps(preset_settings(row), sort_keys=True)
    return f"{row['tags.model']}|{row['tags.seed']}|{budget_of(row)}|{settings}"


def select_runs(uri: str, experiment: str, run_ids: list[str], models: list[str]) -> pd.DataFrame:
    """The search_runs frame of the runs to compare: the given run ids, or else the latest FINISHED run
    of each model, seed, dataset, budget and preset settings in the experiment; either way only runs of the
    given models, if any."""
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
                f'the MLflow store {uri} has no experiment named "{experiment}" ({have}). {FIX_NO_RUNS} '
                "Or pass --experiment with one of the names it holds."
            )
        frame = _search([exp.experiment_id])
        # Replica runs are shown under their training (the parent), not as trainings of their own.
        frame = frame[(frame["status"] == "FINISHED") & frame["tags.model"].notna() & frame["tags.mlflow.parentRunId"].isna()]
    available = sorted(frame["tags.model"].dropna().unique())
    if models:
        frame = frame[frame["tags.model"].isin(models)]
    if frame.empty:
        wanted = f" of model {', '.join(models)}" if models else ""
        known = f" It has finished runs of: {', '.join(available)}." if available else ""
        raise GanpipeError(
            f'the experiment "{experiment}" in the MLflow store {uri} has no finished pipeline run{wanted}.{known} '
            f"{FIX_NO_RUNS}" + (" Or choose other --models." if models else "")
        )
    if not run_ids:
        # search_runs sorted newest first, so "first" is the latest run of each training identity.
        identity = frame.apply(_identity, axis=1) if len(frame) else pd.Series(dtype=str)
        frame = frame[~identity.duplicated(keep="first")]
    order = pd.to_numeric(frame["tags.seed"], errors="coerce")
    return frame.assign(_seed=order).sort_values(["tags.model", "_seed"]).drop(columns="_seed")


def _history(client, run_id: str) -> pd.DataFrame:
    """The step metrics as one frame, outer-joined on step; a re-logged step keeps its last value."""
    series = []
    for key, column in HISTORY_KEYS.items():
        # A run logged before the grouped names has the column's own name (d_loss, train_fld, ...).
        points = client.get_metric_history(run_id, key) or client.get_metric_history(run_id, column)
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


def _eval_metrics(row: pd.Series) -> dict[str, float]:
    """The run's final metrics without their prefix: eval/<key>, or eval_<key> from a run logged before the
    grouped names (the grouped name wins when a run has both)."""
    legacy = {
        col.removeprefix(LEGACY_EVAL_PREFIX): float(v)
        for col, v in row.items()
        if col.startswith(LEGACY_EVAL_PREFIX) and pd.notna(v)
    }
    grouped = {
        col.removeprefix(EVAL_PREFIX): float(v)
        for col, v in row.items()
        if col.startswith(EVAL_PREFIX) and pd.notna(v)
    }
    return {**legacy, **grouped}


def _evidence(run_id: str) -> list[str]:
    evaluation = _artifact(run_id, "evaluation/evaluation.json")
    if not evaluation:
        return []
    document = json.loads(evaluation)
    return document["collapse"]["evidence"] if "collapse" in document else []


def _children(parent_id: str, experiment_id: str) -> list[ReplicaData]:
    """The parent's nested replica runs, by replica index."""
    import mlflow

    client = mlflow.MlflowClient()
    frame = mlflow.search_runs(experiment_ids=[experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    out = []
    for _, row in frame.iterrows():
        tags = {c.removeprefix("tags."): v for c, v in row.items() if c.startswith("tags.") and isinstance(v, str)}
        collapse = tags.get("collapse") or ("diverged" if row["status"] == "FAILED" else "not evaluated")
        out.append(ReplicaData(
            index=int(tags.get("replica", len(out))),
            run_id=row["run_id"],
            seed=tags.get("replica_seed", ""),
            metrics=_eval_metrics(row),
            collapse=collapse,
            evidence=_evidence(row["run_id"]) if collapse not in ("none", "diverged", "not evaluated") else [],
            grid_png=_artifact(row["run_id"], "evaluation/sample_grid.png"),
            history=_history(client, row["run_id"]),
        ))
    return sorted(out, key=lambda r: r.index)


def fetch(row: pd.Series) -> RunData:
    """Everything the comparison shows about one training: its own run and, if it has them, its replicas."""
    import mlflow

    client = mlflow.MlflowClient()
    children = _children(row["run_id"], row["experiment_id"]) if isinstance(row.get("experiment_id"), str) else []
    single = not children  # an old run: its own evaluation, grid and history are the replica's
    return RunData(
        run_id=row["run_id"],
        model=row["tags.model"] if isinstance(row["tags.model"], str) else "unknown",
        seed=str(row["tags.seed"]),
        name=str(row["tags.mlflow.runName"] or ""),
        metrics=_eval_metrics(row),
        collapse=row["tags.collapse"] if isinstance(row["tags.collapse"], str) else "not evaluated",
        evidence=_evidence(row["run_id"]) if single else [],
        grid_png=_artifact(row["run_id"], "evaluation/sample_grid.png") if single else None,
        history=_history(client, row["run_id"]) if single else pd.DataFrame({"step": []}),
        children=children,
        dvc_exp=row["tags.dvc_exp_name"] if isinstance(row["tags.dvc_exp_name"], str) else "",
        url=mlflow_store.run_url(mlflow.get_tracking_uri(), str(row["experiment_id"]), row["run_id"]),
        budget=budget_of(row),
        settings=preset_settings(row),
        conditions=conditions_of(row),
    )


def conditions_of(row: pd.Series) -> dict[str, str]:
    """What a recorded table names beside a training's figures: kernels, the commit its experiment was
    based on, the day it started and how long it ran."""
    start, end = row.get("start_time"), row.get("end_time")
    out = {"kernels": _param(row, "params.compute/cpu_kernels"),
           "commit": str(row.get("tags.dvc_baseline_rev") or NOT_RECORDED)[:7]}
    if isinstance(start, pd.Timestamp) and not pd.isna(start):
        out["date"] = start.strftime("%Y-%m-%d")
        if isinstance(end, pd.Timestamp) and not pd.isna(end):
            out["wall_time"] = f"{(end - start).total_seconds() / 60:.0f} min"
    return out


def load_runs(root: Path, experiment: str, run_ids: list[str], models: list[str]) -> tuple[str, list[RunData]]:
    uri = open_store(root)
    frame = select_runs(uri, experiment, run_ids, models)
    with no_download_bars():
        return uri, [fetch(row) for _, row in frame.iterrows()]

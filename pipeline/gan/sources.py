"""Where `ganpipe sample` finds a trained generator: a DVC experiment or an MLflow run.

A DVC experiment's generator is read at the experiment's commit through `dvc.api.open` (from DVC's
cache), so the workspace is left as it is: no `dvc exp apply` needed. An MLflow run's generator is the
model the train stage logged (G's network) rebuilt with the variant params the run logged.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from pipeline.common import layout, run_logging
from pipeline.common.errors import GanpipeError
from pipeline.common.params import VariantParams


def from_experiment(root: Path, name: str, replica: int = 0):
    """(generator, variant) of replica `replica` of DVC experiment `name` (or any git revision), read from DVC's cache."""
    import dvc.api
    from dvc.exceptions import DvcException
    from scmrepo.exceptions import SCMError

    from pipeline.gan.generator_file import load_generator

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "generator.pt"
        try:
            with dvc.api.open(str(layout.GENERATOR), repo=str(root), rev=name, mode="rb") as f:
                local.write_bytes(f.read())
        except (DvcException, SCMError, FileNotFoundError) as exc:
            raise GanpipeError(
                f"cannot read the generator of DVC experiment {name!r} ({type(exc).__name__}: {exc}). "
                "List the experiments with `dvc exp ls` (or `dvc exp show`) and pass one of their names; "
                "an experiment whose train stage did not finish has no generator."
            ) from None
        return load_generator(local, replica)


def from_mlflow_run(root: Path, run_id: str, replica: int = 0):
    """(generator, variant) of the MLflow run `run_id`: its logged `generator` model and variant/* params.

    A training's parent run holds no model: its child run of replica `replica` is used instead."""
    import mlflow

    from pipeline.gan.variants import build_generator
    from pipeline.common.mlflow_store import no_download_bars, open_store

    uri = open_store(root)
    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise GanpipeError(
            f"the MLflow store {uri} holds no run {run_id!r}. Copy a run id from `mlflow ui` or "
            "outputs/train/mlflow_run.json, or set MLFLOW_TRACKING_URI to the store that holds it."
        ) from None
    run = _replica_child(run, replica)
    run_id = run.info.run_id
    prefix = run_logging.metric_name(run_logging.VARIANT, "")
    logged = {k.removeprefix(prefix): v for k, v in run.data.params.items() if k.startswith(prefix)}
    try:
        variant = VariantParams.model_validate({k: _param(v) for k, v in logged.items()})
        with no_download_bars():
            net = mlflow.pytorch.load_model(f"runs:/{run_id}/generator", map_location="cpu")
    except Exception as exc:  # a run of another tool, or one whose training never logged the model
        raise GanpipeError(
            f"MLflow run {run_id} has no usable ganpipe generator ({type(exc).__name__}: {str(exc)[:200]}). "
            "Pass the id of a finished training run (one with the `generator` model and variant/* params); "
            "with replicas, that is a replica's child run."
        ) from None
    generator = build_generator(variant)
    generator.net.load_state_dict(net.state_dict())
    return generator.eval(), variant


def _replica_child(run, replica: int):
    """The run itself when it is a replica's (child) run; for a training's parent run, its child `replica`."""
    import mlflow

    if "mlflow.parentRunId" in run.data.tags or "replicas" not in run.data.tags:
        return run
    parent = run.info.run_id
    children = mlflow.MlflowClient().search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent}' and tags.replica = '{replica}'",
    )
    if not children:
        raise GanpipeError(
            f"MLflow run {parent} is a training's parent run with no child run for replica {replica} (it has "
            f"{run.data.tags['replicas']} replicas). Pass --replica between 0 and {int(run.data.tags['replicas']) - 1}, "
            "or the id of a replica's child run."
        )
    return children[0]


def _param(text: str):
    """MLflow keeps params as text; YAML reads them back as the numbers, lists and nulls they were."""
    import yaml

    return yaml.safe_load(text)

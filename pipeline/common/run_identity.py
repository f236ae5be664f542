"""Who a run is: its name and tags (DVC experiment, baseline, git commit, model, seed, replica)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from pipeline.common import cpu_kernels
from pipeline.common.mlflow_store import retry_locked

GRID_ID_ENV, GRID_TAG = "GANPIPE_GRID_ID", "grid_id"  # `ganpipe grid`'s id, from its driver to each run's tags


def _git(args: list[str], cwd: Path) -> str:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def run_identity(model: str, seed: int, cwd: Path | None = None) -> tuple[str, dict[str, str]]:
    """The run's name and tags: DVC experiment, baseline, git commit, model and seed."""
    cwd = cwd or Path.cwd()
    exp_name = os.environ.get("DVC_EXP_NAME", "")
    baseline = os.environ.get("DVC_EXP_BASELINE_REV", "") or _git(["rev-parse", "HEAD"], cwd)
    commit = _git(["rev-parse", "HEAD"], cwd)
    tags = {
        "model": model,
        "seed": str(seed),
        "git_commit": commit,
        "mlflow.source.git.commit": commit,
        "dvc_exp_name": exp_name or "workspace",
        "dvc_baseline_rev": baseline,
        **cpu_kernels.tags(),
    }
    if os.environ.get(GRID_ID_ENV):  # set by `ganpipe grid` for every point it runs (pipeline/grid)
        tags[GRID_TAG] = os.environ[GRID_ID_ENV]
    return f"{exp_name or 'workspace'}-{model}-s{seed}", tags


def identity_tags(model: str, seed: int, replica: int | None = None) -> dict[str, str]:
    """The tags that change when a killed experiment is resumed under a new DVC experiment name.

    A resumed run continues the killed attempt's MLflow runs; setting these again on the parent
    (replica None) and on each child (replica r) keeps the run names `<exp>-<model>` / `<exp>-<model>-r<r>`
    and `dvc_exp_name` equal to what `dvc exp ls` shows for the experiment that finished it."""
    _, tags = run_identity(model, seed)
    name = f"{tags['dvc_exp_name']}-{model}" + ("" if replica is None else f"-r{replica}")
    return {"mlflow.runName": name, "dvc_exp_name": tags["dvc_exp_name"], "dvc_baseline_rev": tags["dvc_baseline_rev"]}


def training_identity(model: str, seed: int, replicas: int, cwd: Path | None = None) -> tuple[str, dict[str, str]]:
    """The parent run's name `<dvc experiment>-<model>` and its tags (run_identity's, plus `replicas`)."""
    _, tags = run_identity(model, seed, cwd)
    return f"{tags['dvc_exp_name']}-{model}", {**tags, "replicas": str(replicas)}


def set_tags_on(run_id: str, tags: dict[str, str]) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    for key, value in tags.items():
        retry_locked(lambda: client.set_tag(run_id, key, value))

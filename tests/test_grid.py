"""`ganpipe grid` on loopback: real git and DVC remotes (a bare repository, a local folder), a real Ray
cluster of two 1-CPU nodes started with `ray start`, the PostgreSQL-backed MLflow server of the team
set-up. The refusals are fast (no Ray, except the GPU one); the cluster tests are slow."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pytest

from tests.conftest import REPO, dvc, dvc_env, git, make_dvc_repo, tiny_params
from tests.test_team_setup import free_port, postgres, team_server  # noqa: F401  (fixtures)

RAY_START_TIMEOUT_S = 90


def grid_params() -> dict:
    params = tiny_params(iterations=40)
    params["replicas"] = 1
    return params


def make_team_repo(tmp_path: Path) -> Path:
    """A ganpipe repository with a bare git remote (origin) and a folder as its default DVC remote, pushed."""
    origin = tmp_path / "origin.git"
    git("init", "-q", "--bare", "-b", "main", str(origin), cwd=tmp_path)
    repo = make_dvc_repo(tmp_path / "repo", grid_params())
    subprocess.run(["dvc", "remote", "add", "-q", "-d", "shared", str(tmp_path / "dvc-remote")], cwd=repo, check=True)
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "shared DVC remote", cwd=repo)
    git("remote", "add", "origin", str(origin), cwd=repo)
    git("push", "-q", "origin", "main", cwd=repo)
    return repo


def ganpipe_grid(repo: Path, *args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**(env or dvc_env(repo)), "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "grid", *args], cwd=repo, env=env, capture_output=True, text=True,
        timeout=timeout,
    )


def snapshot(repo: Path) -> dict:
    """What a refusal must leave as it was: the workspace, its refs, both remotes, the MLflow store."""
    origin = repo.parent / "origin.git"
    remote = repo.parent / "dvc-remote"
    return {
        "status": git("status", "--porcelain", cwd=repo),
        "refs": git("for-each-ref", cwd=repo),
        "origin": git("ls-remote", str(origin), cwd=repo),
        "dvc_remote": sorted(str(p) for p in remote.rglob("*")) if remote.exists() else None,
        "mlflow_db": (repo / "mlflow.db").exists(),
    }


@pytest.fixture
def team_repo(tmp_path) -> Path:
    return make_team_repo(tmp_path)


def refused(repo: Path, *args: str, env: dict | None = None) -> str:
    before = snapshot(repo)
    result = ganpipe_grid(repo, *args, env=env, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "error:" in result.stderr
    assert "Nothing was submitted" in result.stderr
    assert snapshot(repo) == before
    return " ".join(result.stderr.split())


def test_an_unknown_model_is_refused_naming_the_point(team_repo):
    message = refused(team_repo, "-S", "model=vanilla,wgn", "-S", "seed=0,1")
    assert "-S model=wgn -S seed=0" in message and "valid models are" in message and "wgan" in message


def test_a_bad_value_and_an_unknown_key_are_refused(team_repo):
    assert "-S seed=-1" in refused(team_repo, "-S", "seed=0,-1")
    message = refused(team_repo, "-S", "model=wgan", "-S", "train.learning_rate=1e-4")
    assert "train.learning_rate" in message


def test_uncommitted_changes_are_refused(team_repo):
    (team_repo / "notes.txt").write_text("not committed\n")
    message = refused(team_repo, "-S", "model=wgan")
    assert "uncommitted" in message and "notes.txt" in message


def test_an_unpushed_head_is_refused_with_the_push_command(team_repo):
    (team_repo / "notes.txt").write_text("committed, not pushed\n")
    git("add", "notes.txt", cwd=team_repo)
    git("commit", "-qm", "notes", cwd=team_repo)
    assert "`git push origin main`" in refused(team_repo, "-S", "model=wgan")


def test_a_missing_dvc_remote_is_refused(team_repo):
    subprocess.run(["dvc", "remote", "remove", "shared"], cwd=team_repo, check=True, capture_output=True)
    git("commit", "-qam", "no DVC remote", cwd=team_repo)
    git("push", "-q", "origin", "main", cwd=team_repo)
    assert "no default DVC remote" in refused(team_repo, "-S", "model=wgan")


def test_a_cluster_with_a_local_mlflow_store_is_refused(team_repo):
    for uri in (None, f"sqlite:///{team_repo}/mlflow.db"):
        env = dvc_env(team_repo, **({"MLFLOW_TRACKING_URI": uri} if uri else {}))
        message = refused(team_repo, "-S", "model=wgan", "--address", "127.0.0.1:6379", env=env)
        assert "cannot reach" in message and "MLFLOW_TRACKING_URI" in message


def test_an_unreachable_ray_address_fails_fast_naming_it(team_repo):
    address = f"127.0.0.1:{free_port()}"
    env = dvc_env(team_repo, MLFLOW_TRACKING_URI="postgresql://mlflow@127.0.0.1:5432/mlflow")  # not contacted
    start = time.monotonic()
    message = refused(team_repo, "-S", "model=wgan", "--address", address, env=env)
    assert time.monotonic() - start < 30
    assert f"the Ray cluster at {address} is unreachable" in message


def test_a_gpu_asked_of_a_cluster_without_one_is_refused(team_repo, tmp_path):
    env = dvc_env(team_repo, CUDA_VISIBLE_DEVICES="", RAY_AUTH_MODE="disabled")
    message = refused(team_repo, "-S", "model=wgan", "--gpus-per-point", "0.5", env=env)
    assert "--gpus-per-point 0.5" in message and "no node" in message

"""`ganpipe grid` without a cluster: what it refuses before submitting anything (real git and DVC
remotes: a bare repository, a local folder), how it names points, decides that a point is done, and
guards the commands a task runs (real processes). The grid on a real two-node Ray cluster is in
tests/test_grid_cluster.py."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from pipeline.common.errors import GanpipeError
from pipeline.grid import checks, points
from tests.conftest import REPO, git
from tests.grid_support import commit_all, ganpipe_grid, grid_env, make_team_repo
from tests.test_team_setup import free_port

pytestmark = pytest.mark.timeout(300)

UNCONTACTED_MLFLOW = "postgresql://mlflow@127.0.0.1:5432/mlflow"  # well-formed; a refusal comes before any use


def snapshot(repo: Path) -> dict:
    """What a refusal must leave as it was: the workspace, its refs, both remotes, the MLflow store."""
    remote = repo.parent / "dvc-remote"
    return {
        "status": git("status", "--porcelain", cwd=repo),
        "refs": git("for-each-ref", cwd=repo),
        "origin": git("ls-remote", str(repo.parent / "origin.git"), cwd=repo),
        "dvc_remote": sorted(str(p) for p in remote.rglob("*")) if remote.exists() else None,
        "mlflow_db": (repo / "mlflow.db").exists(),
    }


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return make_team_repo(tmp_path_factory.mktemp("template")).parent


@pytest.fixture
def team_repo(template, tmp_path) -> Path:
    """A fresh copy of one repository with its remotes (they are named by relative paths)."""
    shutil.copytree(template, tmp_path / "team", symlinks=True)
    return tmp_path / "team" / "repo"


def refused(repo: Path, *args: str, env: dict | None = None) -> str:
    before = snapshot(repo)
    result = ganpipe_grid(repo, *args, env=env, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "error:" in result.stderr
    assert "Nothing was submitted" in result.stderr
    assert snapshot(repo) == before
    return " ".join(result.stderr.split())


def closed_address() -> str:
    return f"127.0.0.1:{free_port()}"


# --- refusals before anything is submitted -------------------------------------------------------------


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
    commit_all(team_repo, "notes", push=False)
    assert "`git push origin main`" in refused(team_repo, "-S", "model=wgan")


def test_a_head_held_only_by_a_ref_clone_does_not_fetch_is_refused(team_repo):
    """Issue 30, item 7: `git clone` fetches branches and tags; a commit only under refs/pull/* (or
    refs/exps/*) cannot be checked out on a node, so it does not count as pushed. A tag does."""
    (team_repo / "notes.txt").write_text("pushed as a pull request head only\n")
    commit_all(team_repo, "notes", push=False)
    git("push", "-q", "origin", "HEAD:refs/pull/1/head", cwd=team_repo)
    assert "is on no branch or tag of the git remote origin" in refused(team_repo, "-S", "model=wgan")
    git("tag", "v1", cwd=team_repo)
    git("push", "-q", "origin", "v1", cwd=team_repo)
    origin = str(team_repo.parent / "origin.git")
    assert checks.head_pushed(team_repo, "origin", origin) == git("rev-parse", "HEAD", cwd=team_repo).strip()


def test_a_cluster_without_a_dvc_remote_is_refused(team_repo):
    subprocess.run(["dvc", "remote", "remove", "shared"], cwd=team_repo, check=True, capture_output=True)
    commit_all(team_repo, "no DVC remote")
    env = grid_env(team_repo, MLFLOW_TRACKING_URI=UNCONTACTED_MLFLOW)
    assert "no default DVC remote" in refused(team_repo, "-S", "model=wgan", "--address", closed_address(), env=env)


def test_an_unreachable_ray_address_fails_fast_naming_it(team_repo):
    address = closed_address()
    env = grid_env(team_repo, MLFLOW_TRACKING_URI=UNCONTACTED_MLFLOW)
    start = time.monotonic()
    message = refused(team_repo, "-S", "model=wgan", "--address", address, env=env)
    assert time.monotonic() - start < 30
    assert f"the Ray cluster at {address} is unreachable" in message


def test_a_gpu_asked_of_a_machine_without_one_is_refused(team_repo):
    env = grid_env(team_repo, CUDA_VISIBLE_DEVICES="", RAY_AUTH_MODE="disabled")
    message = refused(team_repo, "-S", "model=wgan", "--gpus-per-point", "0.5", env=env)
    assert "--gpus-per-point 0.5" in message and "no node" in message


def test_exchange_points_only_this_machine_reaches_are_refused_when_nodes_are_elsewhere():
    """Issue 30, item 5: with nodes on other machines, a loopback MLflow server and folder remotes would
    leave each node's results on its own disk; on one machine (or a loopback cluster) they are fine."""
    local = ("http://127.0.0.1:5000", "/srv/git/ganpipe.git", "/srv/dvc")
    with pytest.raises(GanpipeError) as refusal:
        checks.refuse_local_exchange(*local, other_hosts=["10.1.2.3"])
    message = str(refusal.value)
    assert "10.1.2.3" in message and "http://127.0.0.1:5000" in message and "MLFLOW_TRACKING_URI" in message
    assert "/srv/git/ganpipe.git" in message and "/srv/dvc" in message and "Nothing was submitted" in message
    checks.refuse_local_exchange(*local, other_hosts=[])  # every node on this machine
    checks.refuse_local_exchange("http://mlflow.lan:5000", "git@host:team/ganpipe.git", "s3://bucket/ganpipe", ["10.1.2.3"])
    with pytest.raises(GanpipeError, match="sqlite"):  # folders mounted everywhere pass; a file store never does
        checks.refuse_local_exchange("sqlite:////srv/mlflow.db", "/srv/git/ganpipe.git", "/srv/dvc", ["10.1.2.3"], shared_folders=True)


# --- names and what counts as done --------------------------------------------------------------------


def test_values_that_slug_alike_get_names_of_their_own():
    """Issue 30, item 3: `-S x=-1,1` and `-S a=[1,2],1-2` once gave two points one name."""
    for sets in (["x=-1,1"], ["a=[1,2],1-2"], ["x=-1,1", "y=a.b,a-b"]):
        names = [p.name for p in points.points(sets, "g")]
        assert len(set(names)) == len(names), names
    assert [p.name for p in points.points(["model=vanilla,wgan", "seed=0"], "g")] == ["g-model-vanilla-seed-0", "g-model-wgan-seed-0"]


def _fake_experiment(repo: Path, name: str, baseline: str, lock: dict) -> str:
    """An experiment commit on `baseline` holding `lock` as its dvc.lock, pushed to origin under DVC's ref."""
    git("checkout", "-q", "-b", "fake", baseline, cwd=repo)
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock))
    commit_all(repo, "a fake experiment", push=False)
    ref = f"refs/exps/{baseline[:2]}/{baseline[2:]}/{name}"
    git("push", "-q", "origin", f"HEAD:{ref}", cwd=repo)
    git("checkout", "-q", "main", cwd=repo)
    git("branch", "-q", "-D", "fake", cwd=repo)
    return ref


def _lock_naming(content: bytes) -> dict:
    md5 = hashlib.md5(content).hexdigest()
    out = {"path": "outputs/train/generator.pt", "hash": "md5", "md5": md5, "size": len(content)}
    return {"schema": "2.0", "stages": {"train": {"cmd": "python -m stages.train", "outs": [out]}}}


def _tried_to_run(result: subprocess.CompletedProcess) -> bool:
    """Past the done-check and on to the (closed) Ray address: the point was not counted as done."""
    return result.returncode == 2 and "is unreachable" in result.stderr


def test_a_point_is_done_only_with_its_data_in_the_dvc_remote(team_repo):
    """Issue 30, item 1: an experiment ref whose outputs never reached the DVC remote (an upload that
    failed after the ref was pushed) is not a finished point; with the outputs there, it is."""
    content = b"a generator that was never uploaded\n"
    head = git("rev-parse", "HEAD", cwd=team_repo).strip()
    _fake_experiment(team_repo, "g-seed-0", head, _lock_naming(content))
    env = grid_env(team_repo, MLFLOW_TRACKING_URI=UNCONTACTED_MLFLOW)
    args = ["--name", "g", "-S", "seed=0", "--address", closed_address()]
    assert _tried_to_run(ganpipe_grid(team_repo, *args, env=env))
    md5 = hashlib.md5(content).hexdigest()
    stored = team_repo.parent / "dvc-remote" / "files" / "md5" / md5[:2] / md5[2:]
    stored.parent.mkdir(parents=True)
    stored.write_bytes(content)
    done = ganpipe_grid(team_repo, *args, env=env)
    assert done.returncode == 0 and "1 already done at this commit" in done.stderr, done.stderr


def test_a_name_reused_after_a_commit_runs_the_point_again(team_repo):
    """Issue 30, item 2: with --name, an experiment of an older commit is not this grid's point."""
    old = git("rev-parse", "HEAD", cwd=team_repo).strip()
    _fake_experiment(team_repo, "g-seed-0", old, {"schema": "2.0", "stages": {}})
    (team_repo / "notes.txt").write_text("a code change\n")
    commit_all(team_repo, "a change after the first grid")
    env = grid_env(team_repo, MLFLOW_TRACKING_URI=UNCONTACTED_MLFLOW)
    assert _tried_to_run(ganpipe_grid(team_repo, "--name", "g", "-S", "seed=0", "--address", closed_address(), env=env))


def test_each_point_asks_ray_for_the_threads_its_params_run():
    """Issue 30, item 11: thread counts are params (they change results); the CPU request follows them."""
    params = points.committed_params(REPO)
    assert points.cpus_needed(params, 1.0) == max(1, params.evaluator.threads, params.train.threads)
    assert points.cpus_needed(params, 8.0) == 8.0

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


# --- a real two-node Ray cluster on loopback ---------------------------------------------------------------


class RayCluster:
    """Nodes started with `ray start --block`, each in its own session so one node can be killed alone."""

    def __init__(self, temp_dir: Path):
        self.temp_dir = temp_dir
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Token auth on, with a token of this cluster's own (Ray 2.60 turns it on by default for a new head).
        self.env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "PYTHONPATH": str(REPO)}
        self.nodes: list[subprocess.Popen] = []

    def start_node(self, *args: str) -> subprocess.Popen:
        log = self.temp_dir / f"node{len(self.nodes)}.log"
        common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats", "--block"]
        node = subprocess.Popen(
            ["ray", "start", *args, *common], env={**os.environ, **self.env}, stdout=open(log, "w"),
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.nodes.append(node)
        deadline = time.monotonic() + RAY_START_TIMEOUT_S
        while "Ray runtime started" not in log.read_text():
            assert node.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        return node

    def start(self) -> None:
        self.start_node("--head", "--port", str(self.port), "--include-dashboard=false", "--temp-dir", str(self.temp_dir))
        self.start_node("--address", self.address)

    def kill(self, node: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(node.pid, sig)
        except ProcessLookupError:
            return

    def stop(self) -> None:
        for node in reversed(self.nodes):
            self.kill(node, signal.SIGTERM)
        for node in reversed(self.nodes):
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill(node)
                node.wait(timeout=30)


@pytest.fixture
def ray_cluster():
    # A short temp dir of its own: Ray's unix sockets live under it, and their paths must stay under 108 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="rg", dir="/tmp"))
    cluster = RayCluster(temp_dir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        subprocess.run(["rm", "-rf", str(temp_dir)], check=False)


def exps_in(origin: Path) -> list[str]:
    return sorted(line.split("/")[-1] for line in git("ls-remote", str(origin), "refs/exps/*", cwd=origin).splitlines())


def exp_metrics(shown, name: str) -> dict | None:
    """The metrics/evaluate.json of experiment `name` anywhere in `dvc exp show --json`'s nesting."""
    if isinstance(shown, dict):
        if shown.get("name") == name and shown.get("data"):
            return shown["data"].get("metrics", {}).get("metrics/evaluate.json", {}).get("data")
        shown = list(shown.values())
    if isinstance(shown, list):
        for item in shown:
            found = exp_metrics(item, name)
            if found:
                return found
    return None


@pytest.mark.slow
def test_a_2x2_grid_runs_on_two_nodes_and_lands_in_the_team_stack(tmp_path, ray_cluster, team_server):
    repo = make_team_repo(tmp_path)
    origin = tmp_path / "origin.git"
    env = dvc_env(repo, MLFLOW_TRACKING_URI=team_server, **ray_cluster.env)
    args = ["-S", "model=vanilla,wgan", "-S", "seed=0,1", "--address", ray_cluster.address, "--name", "g22"]
    result = ganpipe_grid(repo, *args, "--json", str(tmp_path / "grid.json"), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    grid = json.loads((tmp_path / "grid.json").read_text())
    names = sorted(p["name"] for p in grid["points"])
    assert names == ["g22-model-vanilla-seed-0", "g22-model-vanilla-seed-1", "g22-model-wgan-seed-0", "g22-model-wgan-seed-1"]
    assert {p["status"] for p in grid["points"]} == {"done"}
    assert len({p["node"] for p in grid["points"]}) == 2, grid["points"]  # both nodes ran points
    # The shared stages ran once, in the shared task; every point restored them from the DVC remote.
    assert {"download", "prepare", "evaluator", "calibrate"} <= set(grid["shared"]["ran"])
    for point in grid["points"]:
        assert not {"download", "prepare", "evaluator", "calibrate"} & set(point["ran"]), point
        assert "train" in point["ran"]

    # Four experiments in the bare git remote; a fresh clone pulls them and sees their metrics.
    assert exps_in(origin) == names
    fresh = tmp_path / "fresh"
    git("clone", "-q", str(origin), str(fresh), cwd=tmp_path)
    dvc(fresh, "exp", "pull", "origin", *names)
    shown = json.loads(dvc(fresh, "exp", "show", "--json").stdout)
    for name in names:
        metrics = exp_metrics(shown, name)
        assert metrics is not None and 0 <= metrics["collapse_rate"] <= 1, name

    # Four finished training runs on the shared MLflow server, tagged with the grid, the experiment and the commit.
    client = mlflow.MlflowClient(tracking_uri=team_server)
    runs = client.search_runs(
        [client.get_experiment_by_name("ganpipe").experiment_id], "tags.grid_id = 'g22'", max_results=100
    )
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert sorted(r.data.tags["dvc_exp_name"] for r in parents) == names
    assert {r.info.status for r in parents} == {"FINISHED"}
    assert {r.data.tags["git_commit"] for r in parents} == {grid["commit"]}

    # `ganpipe compare --grid` compares exactly the grid's four runs.
    compared = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "compare", "--grid", "g22", "--out-dir", str(tmp_path / "cmp")],
        cwd=repo, env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=600,
    )
    assert compared.returncode == 0, compared.stderr
    report = (tmp_path / "cmp" / "comparison.md").read_text()
    assert all(r.info.run_id[:8] in report for r in parents) and "4 runs" in report

    # The same command again submits nothing: every point is already in the git remote.
    again = ganpipe_grid(repo, *args, "--json", str(tmp_path / "again.json"), env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "4 already in the git remote origin" in again.stderr
    assert {p["status"] for p in json.loads((tmp_path / "again.json").read_text())["points"]} == {"present"}
    assert exps_in(origin) == names


@pytest.mark.slow
def test_a_point_on_a_lost_node_is_rerun_and_lands_once(tmp_path, ray_cluster, team_server):
    repo = make_team_repo(tmp_path)
    env = {**dvc_env(repo, MLFLOW_TRACKING_URI=team_server, **ray_cluster.env), "PYTHONPATH": str(REPO)}
    log = tmp_path / "grid.log"
    driver = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "grid", "-S", "model=vanilla", "-S", "seed=0,1", "--name", "lost",
         "--address", ray_cluster.address, "--json", str(tmp_path / "grid.json")],
        cwd=repo, env=env, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True,
    )
    try:
        deadline = time.monotonic() + 600
        while "0/2 done, 2 running" not in log.read_text():
            assert driver.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(1)
        time.sleep(20)  # both points are past their clone, into `dvc exp run`
        ray_cluster.kill(ray_cluster.nodes[1])  # the worker node, with the point it runs
        out, _ = driver.communicate(timeout=900)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, out + log.read_text()
    grid = json.loads((tmp_path / "grid.json").read_text())
    assert {p["status"] for p in grid["points"]} == {"done"}
    # The survivor (the head) ran both in the end, and the git remote holds exactly one experiment per point.
    assert len({p["node"] for p in grid["points"]}) == 1
    assert exps_in(tmp_path / "origin.git") == ["lost-model-vanilla-seed-0", "lost-model-vanilla-seed-1"]


@pytest.mark.slow
def test_ctrl_c_cancels_the_points_marks_their_runs_killed_and_pushes_nothing(tmp_path, ray_cluster, team_server):
    repo = make_team_repo(tmp_path)
    env = {**dvc_env(repo, MLFLOW_TRACKING_URI=team_server, **ray_cluster.env), "PYTHONPATH": str(REPO)}
    log = tmp_path / "grid.log"
    long_training = "variants.vanilla.iterations=1000000"  # still training when Ctrl-C comes
    driver = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "grid", "-S", "model=vanilla", "-S", "seed=0,1", "-S", long_training,
         "--name", "stop", "--address", ray_cluster.address],
        cwd=repo, env=env, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True,
    )
    client = mlflow.MlflowClient(tracking_uri=team_server)

    def training_runs() -> list:
        experiment = client.get_experiment_by_name("ganpipe")
        if experiment is None:
            return []
        found = client.search_runs([experiment.experiment_id], "tags.grid_id = 'stop'", max_results=100)
        return [r for r in found if "mlflow.parentRunId" not in r.data.tags]

    try:
        deadline = time.monotonic() + 600
        while len([r for r in training_runs() if r.info.status == "RUNNING"]) < 2:
            assert driver.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(2)
        driver.send_signal(signal.SIGINT)
        out, _ = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, out + log.read_text()
    assert "interrupted" in log.read_text() and "Traceback" not in log.read_text()
    assert {r.info.status for r in training_runs()} == {"KILLED"}
    assert exps_in(tmp_path / "origin.git") == []

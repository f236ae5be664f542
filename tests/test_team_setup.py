"""The team setup of the README, on loopback: a shared `mlflow server` on PostgreSQL with
server-proxied artifacts, a shared DVC remote (a local folder standing in for S3) and a shared git
remote; one clone runs and pushes an experiment, another pulls and applies it, both see the run."""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from tests.conftest import dvc, dvc_env, git, new_repo, tiny_params

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin() -> Path | None:
    """The folder of Debian's PostgreSQL server programs (initdb, pg_ctl), or of ones on PATH."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(versions[-1]).parent if versions else None


@pytest.fixture
def postgres():
    """A throw-away PostgreSQL server on a loopback port, started and stopped here; yields its URL."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL's server programs (initdb, pg_ctl) are not installed; `.ci/run` installs "
                    "Debian's postgresql package, or run `apt-get install -y postgresql`")
    # PostgreSQL refuses to run as root; as root, run it as the postgres user Debian's package creates.
    as_user: list[str] = []
    data = Path(tempfile.mkdtemp(prefix="ganpipe-pg-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(data, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()

    def pg(*args: str) -> None:
        subprocess.run([*as_user, *args], check=True, capture_output=True, text=True, timeout=120)

    try:
        pg(str(bin_dir / "initdb"), "-D", str(data / "db"), "-U", "postgres", "-A", "trust", "--no-sync")
        pg(str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-l", str(data / "log"), "-w", "start", "-o",
           f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off")
        pg(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow")
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def team_server(postgres, tmp_path):
    """`mlflow server` on the PostgreSQL store, proxying artifacts into a folder (S3 in real life)."""
    port = free_port()
    log = open(tmp_path / "mlflow-server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", postgres, "--serve-artifacts", "--artifacts-destination", str(tmp_path / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    try:
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=2).read()
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "mlflow-server.log").read_text()
                assert time.time() < deadline, "mlflow server did not start"
                time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        log.close()


def test_two_clones_share_an_experiment_through_dvc_remotes_and_a_postgres_mlflow_server(tmp_path, shared_cache, team_server):
    origin = tmp_path / "origin.git"
    git("init", "-q", "--bare", "-b", "main", str(origin), cwd=tmp_path)
    remote = tmp_path / "dvc-remote"  # stands in for s3://bucket/ganpipe
    params = tiny_params()
    params["seed"] = 13  # trained by no other test, so the shared run cache cannot skip the training
    alice = new_repo(tmp_path / "alice", params, shared_cache)
    subprocess.run(["dvc", "remote", "add", "-d", "shared", str(remote)], cwd=alice, check=True)
    git("add", "-A", cwd=alice)
    git("commit", "-qm", "shared DVC remote", cwd=alice)
    git("remote", "add", "origin", str(origin), cwd=alice)
    git("push", "-q", "origin", "main", cwd=alice)

    env = dvc_env(alice, MLFLOW_TRACKING_URI=team_server)
    dvc(alice, "exp", "run", "-n", "alice-wgan", "-S", "model=wgan", env=env)
    dvc(alice, "exp", "push", "origin", "alice-wgan", env=env)

    bob = tmp_path / "bob"
    git("clone", "-q", str(origin), str(bob), cwd=tmp_path)
    subprocess.run(["dvc", "cache", "dir", "--local", str(tmp_path / "bob-cache")], cwd=bob, check=True)
    bob_env = dvc_env(bob, MLFLOW_TRACKING_URI=team_server)
    dvc(bob, "exp", "pull", "origin", "alice-wgan", env=bob_env)
    dvc(bob, "exp", "apply", "alice-wgan", env=bob_env)

    # Bob has Alice's results, and her outputs came from the shared remote into his own cache.
    for path in ("metrics/evaluate.json", "metrics/train.json", "outputs/train/mlflow_run.json"):
        assert (bob / path).read_text() == (alice / path).read_text(), path
    assert (bob / "outputs/train/generator.pt").read_bytes() == (alice / "outputs/train/generator.pt").read_bytes()
    assert any((tmp_path / "bob-cache").rglob("*")) and "up to date" in dvc(bob, "status", env=bob_env).stdout

    # Both see the run in the shared server, with its artifacts served through it.
    run_id = json.loads((bob / "outputs/train/mlflow_run.json").read_text())["run_id"]
    client = mlflow.MlflowClient(tracking_uri=team_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["model"] == "wgan"
    assert run.data.tags["dvc_exp_name"] == "alice-wgan" and "eval/fld" in run.data.metrics
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied: clients need no bucket access
    assert {"evaluation", "report"} <= {a.path for a in client.list_artifacts(run_id)}
    assert not (alice / "mlflow.db").exists() and not (bob / "mlflow.db").exists()
    compared = subprocess.run(["ganpipe", "compare"], cwd=bob, env=bob_env, capture_output=True, text=True, timeout=300)
    assert compared.returncode == 0, compared.stderr
    assert run_id[:8] in (bob / "reports/comparison.md").read_text()

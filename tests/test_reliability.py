"""Failures that must be loud, early and lossless, provoked for real in temporary DVC repos:
interruption (kill -9) and resume, divergence, determinism, and the MLflow store (bad URI, and a real
`mlflow server` on loopback). Two queued experiments writing to the sqlite store in parallel are part
of tests/test_pipeline_e2e.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import psutil
import pytest
import torch
import yaml

from tests.conftest import dvc, dvc_env, new_repo, runs, tiny_params

pytestmark = pytest.mark.slow  # real DVC + MLflow runs: minutes; `-m 'not slow'` skips them


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_tree(proc: subprocess.Popen) -> None:
    """kill -9 the process and every descendant (DVC runs the stage as a child process), parent first,
    as a power cut would. Children first gave DVC the moment to see its stage die and start rewriting
    .dvc/tmp/rwlock, so the kill could land mid-write and leave DVC's own lock file empty (a DVC
    failure, not ganpipe's: docs/troubleshooting.md says what to do when it happens to a user)."""
    parent = psutil.Process(proc.pid)
    descendants = parent.children(recursive=True)
    for p in [parent, *descendants]:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)
    psutil.wait_procs(descendants, timeout=30)


def stage(repo: Path, name: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"stages.{name}"], cwd=repo, env=dvc_env(repo, **env),
        capture_output=True, text=True, timeout=600,
    )


def generator_state(repo: Path) -> dict[str, torch.Tensor]:
    """Every replica's generator weights, keyed `r<replica>.<tensor name>`."""
    saved = torch.load(repo / "outputs/train/generator.pt", weights_only=True)
    return {f"r{rep['index']}.{k}": v for rep in saved["replicas"] for k, v in rep["state_dict"].items()}


def parent_runs(repo: Path) -> list:
    """One run per training (its replicas are nested child runs)."""
    return [r for r in runs(repo) if "mlflow.parentRunId" not in r.data.tags]


def child_runs(repo: Path, parent) -> list:
    return sorted(
        (r for r in runs(repo) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
        key=lambda r: int(r.data.tags["replica"]),
    )


def test_kill_9_during_training_then_repro_resumes_to_the_uninterrupted_result(tmp_path, shared_cache):
    params = tiny_params()
    params["model"] = "wgan"
    iterations = 600  # 3 checkpoints: a kill after the first leaves two thirds of the training to resume
    params["variants"]["wgan"]["iterations"] = iterations
    params["train"].update(checkpoint_every=200, eval_every=200, sample_every=1000)
    repo = new_repo(tmp_path / "repo", params, shared_cache)
    checkpoints = repo / ".ganpipe" / "checkpoints"

    proc = subprocess.Popen(["dvc", "repro"], cwd=repo, env=dvc_env(repo), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not list(checkpoints.glob("*.pt")):
        assert proc.poll() is None, f"dvc repro ended before a checkpoint was written:\n{proc.stdout.read()}"
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.2)
    kill_tree(proc)
    assert not (repo / "outputs/train/generator.pt").exists()
    saved = torch.load(next(checkpoints.glob("*.pt")), weights_only=False)
    assert 0 < saved["trainer"]["step"] < iterations and saved["trainer"]["step"] % 200 == 0

    resumed = dvc(repo, "repro").stdout
    assert f"resumed from iteration {saved['trainer']['step']}" in resumed
    assert not list(checkpoints.glob("*.pt"))  # finished: nothing left to resume
    after_resume = generator_state(repo)
    train_metrics = json.loads((repo / "metrics/train.json").read_text())
    assert train_metrics["iterations"] == iterations
    (wgan_run,) = [r for r in parent_runs(repo) if r.data.tags["model"] == "wgan"]
    assert wgan_run.info.status == "FINISHED"  # the interrupted run was reopened and finished
    children = child_runs(repo, wgan_run)
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    for child in children:  # each replica's run was reopened too, its history continued
        steps = [m.step for m in mlflow.MlflowClient().get_metric_history(child.info.run_id, "train/d_loss")]
        assert max(steps) == iterations and len(steps) == iterations // 20

    # The same training without interruption gives the same weights, bit for bit: the checkpoint
    # holds the optimiser state and the training RNG, and CPU kernels are deterministic.
    dvc(repo, "repro", "--force", "--single-item", "train")
    uninterrupted = generator_state(repo)
    assert after_resume.keys() == uninterrupted.keys()
    for key in after_resume:
        assert torch.equal(after_resume[key], uninterrupted[key]), key


def test_divergence_stops_training_keeps_the_last_good_checkpoint_and_fails_the_run(tmp_path, shared_cache):
    params = tiny_params()
    params["model"] = "wgan"
    # A critic whose clipping is effectively off, with a huge learning rate: its scores grow until they
    # overflow float32 (here at generator iteration 200), a real divergence.
    params["variants"]["wgan"].update(lr=3e10, clip=1e30, iterations=600)
    # Seed 1: both replicas overflow (at iterations 220 and 260 on CPU). With seed 0 one replica's scores
    # stay just below float32's limit for all 600 iterations, so training rightly goes on with it.
    params["seed"] = 1
    repo = new_repo(tmp_path / "repo", params, shared_cache)
    result = dvc(repo, "repro", check=False)
    assert result.returncode != 0
    err = result.stderr + result.stdout
    assert "Traceback" not in err
    assert "all 2 replicas of model wgan diverged" in err and "lr 30000000000.0" in err and "clip 1e+30" in err
    assert "last good checkpoint" in err
    assert not (repo / "outputs/train/generator.pt").exists()
    (ckpt,) = (repo / ".ganpipe/checkpoints").glob("*.pt")
    state = torch.load(ckpt, weights_only=False)
    diverged_at = int(err.split("the last by generator iteration ")[1].split()[0])
    # Detected within one logging window; the checkpoint is the last one before it, and finite.
    assert diverged_at % 20 == 0 and state["trainer"]["step"] == diverged_at - 20
    for net in ("generator", "critic"):
        assert all(torch.isfinite(t).all() for t in state["trainer"][net]["params"].values())
    (run,) = parent_runs(repo)
    assert run.info.status == "FAILED"
    assert "diverged" in run.data.tags["failure_reason"]
    children = child_runs(repo, run)
    assert len(children) == 2
    for child in children:  # each replica's run says why it failed
        assert child.info.status == "FAILED"
        assert f"replica {child.data.tags['replica']} of model wgan diverged" in child.data.tags["failure_reason"]


def unique_seed(seed: int) -> dict:
    """Tiny params with a seed no other test trains: the shared DVC cache's run cache would otherwise
    restore another test's training, which logs nothing to this repository's MLflow store."""
    params = tiny_params()
    params["seed"] = seed
    return params


def test_same_params_and_seed_give_identical_metrics_files(tmp_path, shared_cache):
    repo = new_repo(tmp_path / "repo", unique_seed(11), shared_cache)
    dvc(repo, "repro")
    first = {name: (repo / "metrics" / name).read_text() for name in ("train.json", "evaluate.json")}
    dvc(repo, "repro", "--force", "--single-item", "train")
    dvc(repo, "repro", "--force", "--single-item", "evaluate")
    second = {name: (repo / "metrics" / name).read_text() for name in ("train.json", "evaluate.json")}
    assert first == second
    assert len(parent_runs(repo)) == 2  # both trainings were real runs, each tracked
    assert len(runs(repo)) == 2 * 3  # each with one child run per replica


@pytest.mark.parametrize(
    "uri, says",
    [
        ("http://127.0.0.1:{port}", "unreachable"),
        ("notascheme://somewhere", "not a tracking URI"),
        ("http://", "no host"),
        ("sqlite:////no/such/folder/mlflow.db", "does not exist"),
        ("file:///tmp/mlruns", "folder store"),
    ],
)
def test_a_bad_tracking_uri_fails_before_training_starts(tmp_path, shared_cache, uri, says):
    repo = new_repo(tmp_path / "repo", tiny_params(), shared_cache)
    dvc(repo, "repro", "calibrate")  # inputs of the train stage, restored from the shared run cache
    start = time.time()
    result = stage(repo, "train", MLFLOW_TRACKING_URI=uri.format(port=free_port()))
    assert result.returncode != 0
    assert says in result.stderr and "MLFLOW_TRACKING_URI" in result.stderr
    assert "Traceback" not in result.stderr
    assert time.time() - start < 60
    assert not (repo / "outputs/train/generator.pt").exists()


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(tmp_path / "art")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            import urllib.request

            urllib.request.urlopen(url + "/health", timeout=2).read()
            break
        except OSError:
            assert proc.poll() is None, "mlflow server exited"
            assert time.time() < deadline, "mlflow server did not start"
            time.sleep(0.5)
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def test_a_run_lands_on_a_real_mlflow_server_over_http(tmp_path, shared_cache, mlflow_server):
    repo = new_repo(tmp_path / "repo", unique_seed(12), shared_cache)
    dvc(repo, "repro", env=dvc_env(repo, MLFLOW_TRACKING_URI=mlflow_server))
    assert not (repo / "mlflow.db").exists()  # nothing went to the local store
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    found = client.search_runs([client.get_experiment_by_name("ganpipe").experiment_id])
    (run,) = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    assert len(found) == 3  # the training's run and one nested run per replica
    assert run.info.status == "FINISHED" and run.data.tags["model"] == "vanilla"
    assert "eval/fld" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"evaluation", "report"} <= artifacts


def _wait_for(condition, what: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"training ended before {what}:\n{proc.communicate()[1]}"
        assert time.time() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.2)


def _training_run(repo: Path, replicas: int):
    """The parent run once every replica's child run has logged its step-0 sample grid (the last thing
    before the first training step)."""
    try:
        found = runs(repo)
    except Exception:  # the store is being created
        return None
    parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    drawn = [r for r in found if "mlflow.parentRunId" in r.data.tags and "mlflow.loggedImages" in r.data.tags]
    return parents[0] if parents and len(drawn) >= replicas else None


def test_interrupted_training_ends_its_run_killed_and_promises_a_resume_only_with_a_checkpoint(tmp_path, shared_cache):
    params = tiny_params(iterations=20000)
    params["train"].update(checkpoint_every=20000, log_every=100, eval_every=20000, sample_every=20000)
    repo = new_repo(tmp_path / "repo", params, shared_cache)
    dvc(repo, "repro", "calibrate")  # the train stage's inputs, from the shared run cache

    # Ctrl-C before the first checkpoint: nothing to resume, and the message says so.
    proc = subprocess.Popen([sys.executable, "-m", "stages.train"], cwd=repo, env=dvc_env(repo),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: _training_run(repo, params["replicas"]) is not None, "the step-0 sample grids", proc)
    time.sleep(1)  # into the training loop (tests/test_replicas.py interrupts the step-0 grid itself)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "interrupted before its first checkpoint" in err and "nothing to resume" in err
    assert {r.info.status for r in runs(repo)} == {"KILLED"}  # the parent and every replica's run

    # SIGTERM (`kill`, `dvc queue kill`) after a checkpoint: KILLED too, and the resume point is named.
    params["train"]["checkpoint_every"] = 100
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    checkpoints = repo / ".ganpipe" / "checkpoints"
    proc = subprocess.Popen([sys.executable, "-m", "stages.train"], cwd=repo, env=dvc_env(repo),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: any(checkpoints.glob("*.pt")), "a checkpoint", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    step = torch.load(next(checkpoints.glob("*.pt")), weights_only=False)["trainer"]["step"]
    assert f"checkpoint at generator iteration {step}" in err and "resume" in err
    assert {r.info.status for r in runs(repo)} == {"KILLED"}  # no run poses as a finished model
    assert not (repo / "outputs/train/generator.pt").exists()

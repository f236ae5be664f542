"""Shared fixtures: real MNIST from the mirror, tiny params, a small trained evaluator, a DVC repo.

Everything is real (MNIST from MNIST_MIRROR or, without it, downloaded once and verified into a cache
outside the repository; a real DVC repository, a real sqlite MLflow store); only the budgets are tiny so
the suite runs on a 2-core CPU in minutes.
"""

from __future__ import annotations

import copy
import functools
import os
import shutil
import subprocess
import time
from pathlib import Path

from pipeline.common import cpu_kernels

REPO = Path(__file__).resolve().parents[1]
# Before numpy and torch load: in-process tests compute with the kernels the repository's params ask for,
# as the stages they stand in for do (pipeline/common/cpu_kernels.py).
cpu_kernels.pin(REPO / "params.yaml")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402


def mirror_path() -> Path:
    """A local folder holding the four verified MNIST files: MNIST_MIRROR's when it names such a folder (CI,
    offline machines), else a per-user cache outside the repository that ganpipe's own verified downloader
    fills once from the public mirrors (a fresh clone on a machine with internet)."""
    return _mnist_folder()


def mnist_cache() -> Path:
    """Where the tests keep MNIST when MNIST_MIRROR names no local copy: GANPIPE_TEST_DATA, else
    $XDG_CACHE_HOME/ganpipe/mnist (~/.cache/ganpipe/mnist)."""
    if os.environ.get("GANPIPE_TEST_DATA"):
        return Path(os.environ["GANPIPE_TEST_DATA"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ganpipe" / "mnist"


def holds_verified_mnist(folder: Path) -> bool:
    from pipeline.data.mnist import FILES, payload_md5

    try:
        return all(payload_md5((folder / name).read_bytes()) == md5 for name, md5 in FILES.items())
    except (OSError, ValueError):
        return False


@functools.cache
def _mnist_folder() -> Path:
    from pipeline.common.errors import GanpipeError
    from pipeline.data.download import download_all, mirrors_from_env

    mirror = os.environ.get("MNIST_MIRROR", "").strip()
    if mirror and ("://" not in mirror or mirror.startswith("file://")):
        local = Path(mirror.removeprefix("file://"))
        if holds_verified_mnist(local):
            return local
    cache = mnist_cache()
    if not holds_verified_mnist(cache):
        try:  # MNIST_MIRROR first (a URL, or a folder that turned out incomplete), then the public mirrors
            download_all(cache, mirrors_from_env(), timeout=30, retries=3, backoff=1.0)
        except GanpipeError as exc:
            pytest.fail(f"the tests need MNIST and could not get it: {exc}", pytrace=False)
    return cache


def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def tiny_params(iterations: int = 60) -> dict:
    """The repo's params.yaml with budgets small enough for a test."""
    p = copy.deepcopy(repo_params())
    p["replicas"] = 2  # enough to exercise the replica axis, small enough to keep the suite fast
    p["evaluator"].update(epochs=1, train_subset=3000, holdout=2000, kmeans_fit_size=2000, ndb_bins=10)
    p["train"].update(log_every=20, checkpoint_every=20, sample_every=40, eval_every=20, eval_samples=300)
    p["evaluate"].update(n_samples=400, kid_subsets=4, kid_subset_size=200, calibration_subsets=3)
    p["stacked_mnist"].update(size=5000, eval_samples=1000)
    for v in p["variants"].values():
        v["iterations"] = iterations
    return p


@pytest.fixture(scope="session", autouse=True)
def no_user_tracking_env():
    """The tests never see the shell's MLflow store or DVC experiment: a test that wants one sets it."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
            mp.delenv(name, raising=False)
        yield


@pytest.fixture(scope="session")
def mnist(tmp_path_factory):
    """The real MNIST dataset, downloaded from the mirror and parsed by ganpipe's own code."""
    from pipeline.data.download import download_all
    from pipeline.data.mnist import MNIST, read_split

    raw = tmp_path_factory.mktemp("raw")
    download_all(raw, [str(mirror_path())], timeout=10, retries=1, backoff=0)
    x_train, y_train = read_split(raw, "train")
    x_test, y_test = read_split(raw, "t10k")
    return MNIST(x_train, y_train, x_test, y_test)


@pytest.fixture(scope="session")
def small_mnist(mnist):
    """A 12k-image training subset (and the full test set): enough for metric tests, fast to embed."""
    from pipeline.data.mnist import MNIST

    idx = np.random.default_rng(0).permutation(len(mnist.x_train))[:12000]
    return MNIST(mnist.x_train[idx], mnist.y_train[idx], mnist.x_test, mnist.y_test)


@pytest.fixture(scope="session")
def instrument(small_mnist):
    """A quickly trained evaluator (about 98% accurate) and its real-data reference on small_mnist, with 2,000
    training images held out from both (the real baseline pool is those plus the 10,000 test images)."""
    from pipeline.instrument import evaluator, reference

    heldout = reference.holdout_mask(len(small_mnist.x_train), 2000, seed=0)
    model = evaluator.train_classifier(
        small_mnist.x_train[~heldout], small_mnist.y_train[~heldout], epochs=2, batch_size=128, lr=1e-3, seed=0
    )
    ref = reference.build(model, small_mnist, heldout=heldout, ndb_bins=20, kmeans_fit_size=4000, seed=0)
    return model, ref


def git(*args: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "t@example.com"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def make_dvc_repo(dest: Path, params: dict) -> Path:
    """A fresh git + DVC repository holding this project's pipeline with the given params."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(REPO / name, dest / name)
    for folder in ("stages", "pipeline"):
        shutil.copytree(REPO / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git("init", "-q", "-b", "main", cwd=dest)
    subprocess.run(["dvc", "init", "-q"], cwd=dest, check=True)
    shutil.copytree(REPO / ".dvc" / "plots", dest / ".dvc" / "plots")  # dvc.yaml's custom plot templates
    git("add", "-A", cwd=dest)
    git("commit", "-qm", "init", cwd=dest)
    return dest


def dvc_env(repo: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME")}
    env["MNIST_MIRROR"] = str(mirror_path())
    return {**env, **extra}


def dvc(repo: Path, *args: str, check: bool = True, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["dvc", *args], cwd=repo, env=env or dvc_env(repo), capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One DVC cache for all test repos: stages with the same code and params (download, prepare,
    evaluator, calibrate) are restored from DVC's run cache instead of recomputed."""
    return tmp_path_factory.mktemp("dvc-cache")


def new_repo(path: Path, params: dict, cache: Path) -> Path:
    repo = make_dvc_repo(path, params)
    subprocess.run(["dvc", "cache", "dir", str(cache)], cwd=repo, check=True, capture_output=True)
    git("commit", "-qam", "shared cache", cwd=repo)
    return repo


def runs(repo: Path):
    """The MLflow runs in a test repo's own sqlite store."""
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{repo}/mlflow.db")
    return mlflow.search_runs(experiment_names=["ganpipe"], output_format="list")


def wait_for_queue(repo: Path, timeout: float = 600) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = dvc(repo, "queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            return status
        time.sleep(3)
    raise AssertionError(f"queue still busy after {timeout}s:\n{status}")

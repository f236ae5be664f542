"""A grid task's working folder on its node: a fresh clone of the grid's commit, the commands run in it
(each under guard.py, with a timeout), and the log of all of them.

The folder is `ganpipe-grid-*` in the node's temporary directory, with an `owner` file naming the Ray
worker process that made it. The task deletes it when it ends; the guard deletes it when the worker
dies under it; and any task sweeps, when it starts, the folders whose worker is gone (the OOM killer
or a lost node can take the guard too).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from pipeline.grid import guard

PREFIX = "ganpipe-grid-"
OWNER = "owner"  # "<pid> <process start time>" of the worker that made the folder
UNOWNED_GRACE_S = 600  # a folder without an owner file younger than this may be being made right now
LOG_TAIL_LINES = 40
STOP_WAIT_S = 60  # after an interrupt: how long a command gets to stop before its guard stops it
RETRY_WAIT_S = 5.0  # first wait before retrying a failed transfer; doubled each time
# Environment variables the driver forwards to every task (through Ray's runtime_env), besides the
# MLflow URI and the grid id it sets itself: the data mirror, and the credentials of the DVC remotes,
# the MLflow server and git that a node without them could not work with. Nothing else of the driver's
# environment leaves its machine; --forward-env adds names.
FORWARDED = (
    "MNIST_MIRROR",
    "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION",
    "AWS_ENDPOINT_URL", "AWS_PROFILE",
    "GOOGLE_APPLICATION_CREDENTIALS", "AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_SAS_TOKEN",
    "GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL",
)
SET_BY_DRIVER = ("MLFLOW_TRACKING_URI", "GANPIPE_GRID_ID")


class InfrastructureError(Exception):
    """A clone, fetch or push failed or hung: another attempt, maybe on another node, may succeed."""


class PointFailed(Exception):
    """The point's own computation failed; it would fail the same way again. The message ends with its log."""


def command_env(base: dict[str, str], cpus: float) -> dict[str, str]:
    """The environment of every command of a task: the worker's, without the driver's DVC_* variables,
    with no way for git or ssh to wait for a password (a task has nobody to type it), no DVC analytics
    call (nodes without internet would wait on it), and thread pools sized to the CPUs Ray granted."""
    env = {k: v for k, v in base.items() if not k.startswith("DVC_")}
    threads = str(max(1, int(cpus)))
    env.update(
        GIT_TERMINAL_PROMPT="0",
        GIT_SSH_COMMAND=f"{base.get('GIT_SSH_COMMAND', 'ssh')} -o BatchMode=yes",
        DVC_NO_ANALYTICS="1",
        OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}",
    )
    return env


def node_cache() -> Path:
    """The DVC cache all points on a node share (on a cluster): the shared outputs come down once per node."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ganpipe" / "dvc-cache"


def _owner_alive(folder: Path) -> bool:
    try:
        pid, started = (folder / OWNER).read_text().split()
    except (OSError, ValueError):
        try:
            return time.time() - folder.stat().st_mtime < UNOWNED_GRACE_S
        except OSError:
            return False
    try:
        return abs(psutil.Process(int(pid)).create_time() - float(started)) < 1e-3
    except (psutil.Error, ValueError):
        return False


def sweep_stale(root: Path | None = None) -> list[str]:
    """Delete this node's grid folders whose worker is gone; returns their names."""
    swept = []
    for folder in Path(root or tempfile.gettempdir()).glob(f"{PREFIX}*"):
        if folder.is_dir() and not _owner_alive(folder):
            shutil.rmtree(folder, ignore_errors=True)
            swept.append(folder.name)
    return swept


def _dvc_config(cache: str, remote: str, url: str) -> str:
    """`.dvc/config.local` of a point's clone: the cache and the exchange point as its default remote
    (DVC's own config format; written directly, which saves a `dvc` start per setting)."""
    return f"[cache]\n    dir = {cache}\n[core]\n    remote = {remote}\n['remote \"{remote}\"']\n    url = {url}\n"


def git_blob(path: Path) -> str:
    """The git object id of a file's bytes (what `git rev-parse COMMIT:path` names)."""
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Workdir:
    """A fresh folder on this node for one task, the clone in it, and the log of every command run there."""

    def __init__(self, job, cpus: float, root: Path | None = None):
        self.job = job
        self.tmp = Path(tempfile.mkdtemp(prefix=PREFIX, dir=root))
        me = psutil.Process()
        (self.tmp / OWNER).write_text(f"{me.pid} {me.create_time()}\n")
        self.repo = self.tmp / "repo"
        self.log: list[str] = []
        self.env = command_env(dict(os.environ), cpus)

    def run(self, *cmd: str, timeout: float | None = None, infra: bool = False, interruptible: bool = True,
            cwd: Path | None = None) -> str:
        """Run a command under guard.py; return its output, or raise with the log's tail: InfrastructureError
        for a transfer step (infra=True), PointFailed for the point's own work. An interrupt (ray.cancel)
        passes SIGINT to an interruptible command and waits for any other (a push) to finish, so a cancelled
        point never leaves half a push behind."""
        self.log.append(f"$ {' '.join(cmd)}")
        guarded = [sys.executable, guard.__file__, str(os.getpid()), str(self.tmp), "--", *cmd]
        proc = subprocess.Popen(
            guarded, cwd=cwd or self.repo, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        late = None
        try:
            out = self._wait(proc, timeout)
        except TimeoutError:
            proc.send_signal(signal.SIGTERM)  # the guard stops the command's whole group
            out, late = proc.communicate()[0], f"ran past its {timeout:.0f} s limit and was stopped"
        except KeyboardInterrupt:
            self.log.extend(self._stop(proc, interruptible).splitlines())
            raise
        self.log.extend(out.splitlines())
        if proc.returncode != 0 or late:
            kind = InfrastructureError if infra else PointFailed
            raise kind(f"`{' '.join(cmd)}` {late or f'exited with status {proc.returncode}'}. Last lines of its log:\n{self.tail()}")
        return out

    def transfer(self, *cmd: str, interruptible: bool = True, cwd: Path | None = None, fresh: Path | None = None) -> str:
        """A transfer step (clone, fetch, push): run with the transfer timeout and retried in place, after a
        growing wait, up to the job's `retries` times; `fresh` is deleted before each attempt."""
        for attempt in range(self.job.retries + 1):
            if fresh is not None:
                shutil.rmtree(fresh, ignore_errors=True)
            try:
                return self.run(*cmd, timeout=self.job.transfer_timeout, infra=True, interruptible=interruptible, cwd=cwd)
            except InfrastructureError:
                if attempt == self.job.retries:
                    raise
                wait = RETRY_WAIT_S * 2**attempt
                self.log.append(f"# failed; retry {attempt + 1} of {self.job.retries} in {wait:.0f} s")
                time.sleep(wait)
        raise AssertionError("unreachable")

    @staticmethod
    def _wait(proc: subprocess.Popen, timeout: float | None) -> str:
        # In short slices: ray.cancel raises KeyboardInterrupt only when Python code runs, not inside one
        # long blocking wait. Retrying communicate() after its timeout loses no output.
        deadline = time.monotonic() + timeout if timeout else None
        while True:
            try:
                return proc.communicate(timeout=1)[0]
            except subprocess.TimeoutExpired:
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError from None

    @staticmethod
    def _stop(proc: subprocess.Popen, interruptible: bool) -> str:
        if interruptible:
            proc.send_signal(signal.SIGINT)  # the guard passes it to the command's group
        try:
            return proc.communicate(timeout=STOP_WAIT_S if interruptible else None)[0]
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            return proc.communicate()[0]

    def clone(self) -> None:
        """The grid's commit, with the exchange point as its default DVC remote and the shared cache."""
        exchange = self.job.exchange
        self.transfer("git", "clone", "-q", "--no-checkout", exchange.git_url, str(self.repo), cwd=self.tmp, fresh=self.repo)
        self.run("git", "checkout", "-q", self.job.commit, infra=True)
        cache = exchange.cache or str(node_cache())
        (self.repo / ".dvc" / "config.local").write_text(_dvc_config(cache, exchange.dvc_name, exchange.dvc_url))

    def tail(self) -> str:
        return "\n".join(self.log[-LOG_TAIL_LINES:])

    def ran_stages(self) -> list[str]:
        return re.findall(r"Running stage '([^']+)'", "\n".join(self.log))

    def forwarded(self) -> list[str]:
        """The forwarded variables this task found (names only: values may be secrets)."""
        return sorted(name for name in (*FORWARDED, *SET_BY_DRIVER) if name in os.environ)

    @staticmethod
    def code_blob() -> str:
        """Which task code ran: the git object id of this package's task.py, shipped with the grid's commit."""
        return git_blob(Path(__file__).with_name("task.py"))

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

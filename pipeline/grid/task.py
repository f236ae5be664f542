"""The Ray tasks. Each runs on whichever node Ray picks, in a fresh clone of the grid's commit in a
temporary folder there (its own DVC cache; the DVC remote is the exchange point), and leaves nothing
behind on the node but what it pushed."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.grid import guard, push_uncached

# download -> prepare -> (stack) -> evaluator -> calibrate: what every point of a grid shares
SHARED_TARGETS = ("stack", "calibrate")
LOG_TAIL_LINES = 40
STOP_WAIT_S = 60


@dataclass(frozen=True)
class Job:
    grid: str
    commit: str
    git_url: str
    dvc_remote: str
    dvc_url: str
    env: dict[str, str] = field(default_factory=dict)  # MLFLOW_TRACKING_URI, GANPIPE_GRID_ID, MNIST_MIRROR


class PointFailed(Exception):
    """A command of the point failed; the message ends with its log's tail."""


def exps_in_remote(git_url: str) -> set[str]:
    """The experiment names in the git remote (`refs/exps/<2>/<38>/<name>`), read without DVC."""
    listing = subprocess.run(["git", "ls-remote", git_url, "refs/exps/*"], capture_output=True, text=True, timeout=120)
    if listing.returncode != 0:
        raise PointFailed(f"could not list the experiments in {git_url}: {listing.stderr.strip()}")
    return {line.split("/")[-1] for line in listing.stdout.splitlines() if line.strip()}


class Workdir:
    """A fresh clone at the grid's commit, and the log of every command run in it."""

    def __init__(self, job: Job):
        self.job = job
        self.tmp = Path(tempfile.mkdtemp(prefix="ganpipe-grid-"))
        self.repo = self.tmp / "repo"
        self.log: list[str] = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_")}
        self.env.update(job.env)
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self.env.get('PATH', '')}"

    def run(self, *cmd: str, cwd: Path | None = None, interruptible: bool = True) -> None:
        """Run a command in its own process group (guard.py); on failure raise PointFailed with the log's tail.
        An interrupt (ray.cancel) stops an interruptible command's group with SIGINT, and waits for any
        other command (a push) to finish, so a cancelled point never leaves half a push behind."""
        self.log.append(f"$ {' '.join(cmd)}")
        guarded = [sys.executable, guard.__file__, str(os.getpid()), "--", *cmd]
        proc = subprocess.Popen(
            guarded, cwd=cwd or self.repo, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True,
        )
        try:
            out = self._wait(proc)
        except KeyboardInterrupt:
            if interruptible:
                os.killpg(proc.pid, signal.SIGINT)
            try:
                out, _ = proc.communicate(timeout=STOP_WAIT_S if interruptible else None)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                out, _ = proc.communicate()
            self.log.extend(out.splitlines())
            raise
        self.log.extend(out.splitlines())
        if proc.returncode != 0:
            raise PointFailed(f"`{' '.join(cmd)}` exited with status {proc.returncode}. Last lines:\n{self.tail()}")

    @staticmethod
    def _wait(proc: subprocess.Popen) -> str:
        # In short slices: ray.cancel raises KeyboardInterrupt only when Python code runs, not inside one
        # long blocking wait. Retrying communicate() after its timeout loses no output.
        while True:
            try:
                return proc.communicate(timeout=1)[0]
            except subprocess.TimeoutExpired:
                continue

    def tail(self) -> str:
        return "\n".join(self.log[-LOG_TAIL_LINES:])

    def clone(self) -> None:
        self.run("git", "clone", "-q", "--no-checkout", self.job.git_url, str(self.repo), cwd=self.tmp)
        self.run("git", "checkout", "-q", self.job.commit)
        if "://" not in self.job.dvc_url:  # a folder: its path as this machine reads it, not relative to .dvc/
            self.run(sys.executable, "-m", "dvc", "remote", "modify", "--local", self.job.dvc_remote, "url", self.job.dvc_url)

    def ran_stages(self) -> list[str]:
        return re.findall(r"Running stage '([^']+)'", "\n".join(self.log))

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _where() -> dict:
    import ray

    gpus = ray.get_gpu_ids()
    return {
        "node": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
        "device": f"cuda:{','.join(map(str, gpus))}" if gpus else "cpu",
    }


def run_shared(job: Job) -> dict:
    """The stages every point shares, computed once (or restored) and pushed with the run cache."""
    start, work = time.monotonic(), Workdir(job)
    try:
        work.clone()
        work.run(sys.executable, "-m", "dvc", "repro", "--pull", *SHARED_TARGETS)
        work.run(sys.executable, "-m", "dvc", "push", "--run-cache", interruptible=False)
        work.run(sys.executable, push_uncached.__file__, interruptible=False)
        return {**_where(), "ran": work.ran_stages(), "wall_s": round(time.monotonic() - start, 1)}
    finally:
        work.close()


def run_point(job: Job, name: str, overrides: list[str]) -> dict:
    """One grid point: `dvc exp run --pull -n NAME -S ...` in a fresh clone, then `dvc exp push --run-cache`.
    A point whose experiment is already in the git remote (an earlier run, or an attempt Ray retried after
    it pushed) is not run again: exactly one experiment per point ends up there."""
    start = time.monotonic()
    if name in exps_in_remote(job.git_url):
        return {**_where(), "name": name, "status": "present", "wall_s": 0.0}
    work = Workdir(job)
    try:
        work.clone()
        sets = [arg for o in overrides for arg in ("-S", o)]
        work.run(sys.executable, "-m", "dvc", "exp", "run", "--pull", "-n", name, *sets)
        metrics = json.loads((work.repo / "metrics" / "evaluate.json").read_text())
        work.run(sys.executable, "-m", "dvc", "exp", "push", "origin", name, "--run-cache", interruptible=False)
        return {
            **_where(), "name": name, "status": "done", "ran": work.ran_stages(),
            "collapse_rate": metrics.get("collapse_rate"), "collapse_rate_ci": metrics.get("collapse_rate_ci"),
            "fld": metrics.get("fld"), "wall_s": round(time.monotonic() - start, 1),
        }
    finally:
        work.close()

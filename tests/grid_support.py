"""What the grid tests share: tiny params, a repository with real git and DVC remotes, running
`ganpipe grid` as a user would, and a real Ray cluster of two 1-CPU nodes on loopback that stops
every process it started (and only those)."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.conftest import REPO, dvc_env, git, make_dvc_repo, tiny_params

RAY_START_TIMEOUT_S = 90


def grid_params() -> dict:
    """The suite's tiny budgets, one replica, and one thread each, so a point fits a 1-CPU Ray node."""
    params = tiny_params(iterations=40)
    params["replicas"] = 1
    params["evaluator"]["threads"] = 1
    params["train"]["threads"] = 1
    return params


def make_team_repo(base: Path, params: dict | None = None) -> Path:
    """A ganpipe repository at base/repo with a bare git remote (origin, base/origin.git) and a folder as its
    default DVC remote (base/dvc-remote), pushed. Both are named by relative paths, so a copy of `base`
    is a repository with remotes of its own."""
    base.mkdir(parents=True, exist_ok=True)
    git("init", "-q", "--bare", "-b", "main", str(base / "origin.git"), cwd=base)
    repo = make_dvc_repo(base / "repo", params or grid_params())
    subprocess.run(["dvc", "remote", "add", "-q", "-d", "shared", "../dvc-remote"], cwd=repo, check=True)
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "shared DVC remote", cwd=repo)
    git("remote", "add", "origin", "../origin.git", cwd=repo)
    git("push", "-q", "origin", "main", cwd=repo)
    return repo


def commit_all(repo: Path, message: str, push: bool = True) -> None:
    git("add", "-A", cwd=repo)
    git("commit", "-qm", message, cwd=repo)
    if push:
        git("push", "-q", "origin", "main", cwd=repo)


def grid_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "grid", *args]


def grid_env(repo: Path, **extra: str) -> dict[str, str]:
    return {**dvc_env(repo), "PYTHONPATH": str(REPO), "COLUMNS": "200", **extra}


def ganpipe_grid(repo: Path, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(grid_command(*args), cwd=repo, env=env or grid_env(repo), capture_output=True, text=True, timeout=timeout)


def exps_in(git_dir: Path) -> list[str]:
    """The experiment names under refs/exps of a repository or bare remote."""
    listing = git("for-each-ref", "--format=%(refname)", "refs/exps/", cwd=git_dir)
    return sorted(line.split("/")[-1] for line in listing.splitlines())


def processes_under(folder: Path) -> list[psutil.Process]:
    """Live processes whose working directory or command line is inside `folder` (a test's own folder)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        try:
            where = " ".join(proc.info["cmdline"] or []) + " " + (proc.info["cwd"] or "")
        except psutil.Error:
            continue
        if str(folder) in where and proc.pid != os.getpid():
            found.append(proc)
    return found


def _python_running(proc: psutil.Process, command: str) -> bool:
    """Whether `proc` is a Python process running `command`. Not the shell DVC may start around a stage:
    where SHELL is unset, DVC runs `/bin/sh -c CMD`, and Debian's dash does not exec the command, so each
    stage shows as two processes with the same command line."""
    try:
        line = proc.cmdline()
    except psutil.Error:
        return False
    return bool(line) and Path(line[0]).name.startswith("python") and command in " ".join(line)


def wait_until(check, what: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        detail = log.read_text()[-3000:] if log and log.exists() else ""
        assert proc is None or proc.poll() is None, f"exited while waiting for {what}:\n{detail}"
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s:\n{detail}"
        time.sleep(1)


class RayCluster:
    """Nodes started with `ray start --block`, each in its own session so one node can be killed alone;
    they share a temporary folder, a DVC node cache and TMPDIR of the test's own, so what a grid leaves
    behind on the nodes can be checked there."""

    def __init__(self, base: Path, ray_dir: Path):
        self.base, self.ray_dir = base, ray_dir
        self.tmp = ray_dir / "t"  # the nodes' TMPDIR: short, as Ray's socket paths under it must stay under 108 bytes
        self.tmp.mkdir(parents=True, exist_ok=True)
        from tests.test_team_setup import free_port

        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Token auth on, with a token of this cluster's own (Ray 2.60 turns it on by default for a new head).
        self.env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        self.node_env = {
            **self.env, "PYTHONPATH": str(REPO), "TMPDIR": str(self.tmp), "XDG_CACHE_HOME": str(base / "xdg"),
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # a test's node stops at once, with nothing to drain
        }
        self.nodes: list[subprocess.Popen] = []

    @property
    def node_cache(self) -> Path:
        """The DVC cache the nodes' points share (pipeline/grid/workdir.node_cache under their XDG_CACHE_HOME)."""
        return Path(self.node_env["XDG_CACHE_HOME"]) / "ganpipe" / "dvc-cache"

    def start_node(self, *args: str) -> subprocess.Popen:
        log = self.base / f"node{len(self.nodes)}.log"
        common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats", "--block"]
        node = subprocess.Popen(
            ["ray", "start", *args, *common], env={**os.environ, **self.node_env}, stdout=open(log, "w"),
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.nodes.append(node)
        wait_until(lambda: "Ray runtime started" in log.read_text(), "Ray node", RAY_START_TIMEOUT_S, node, log)
        return node

    def start(self) -> None:
        self.start_node("--head", "--port", str(self.port), "--include-dashboard=false", "--temp-dir", str(self.ray_dir))
        self.start_node("--address", self.address)

    def worker_node(self) -> subprocess.Popen:
        return self.nodes[-1]

    def restart_worker(self) -> None:
        """After a test killed the worker node's raylet: the rest of that node goes, a new one joins."""
        _killpg(self.worker_node().pid, signal.SIGKILL)
        self.worker_node().wait(timeout=30)
        self.start_node("--address", self.address)

    def runs(self, node: subprocess.Popen, command: str) -> bool:
        """Whether a Python process running `command` is on this node (in its process tree)."""
        try:
            tree = psutil.Process(node.pid).children(recursive=True)
        except psutil.Error:
            return False
        return any(_python_running(proc, command) for proc in tree)

    def raylet(self, node: subprocess.Popen) -> psutil.Process:
        return next(p for p in psutil.Process(node.pid).children(recursive=True) if p.name() == "raylet")

    def ours(self) -> list[psutil.Process]:
        """Every process of this cluster: its nodes' groups, and anything naming its port or folder."""
        mine = []
        for proc in psutil.process_iter(["cmdline"]):
            line = " ".join(proc.info["cmdline"] or [])
            if f"127.0.0.1:{self.port}" in line or str(self.ray_dir) in line:
                mine.append(proc)
        return mine

    def stop(self) -> None:
        for node in reversed(self.nodes):
            _killpg(node.pid, signal.SIGTERM)
        for node in reversed(self.nodes):
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _killpg(node.pid, signal.SIGKILL)
                node.wait(timeout=30)
        for proc in self.ours():  # a worker Ray left behind: ours by its port or folder, never another user's
            try:
                proc.kill()
            except psutil.Error:
                pass


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass

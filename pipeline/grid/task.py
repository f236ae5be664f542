"""The Ray tasks. Each runs on whichever node Ray picks, in a fresh clone of the grid's commit in a
temporary folder there, with the node's DVC cache (this repository's on one machine), and leaves
nothing behind on the node but what it put in that cache and pushed.

Failures come in two kinds, and only one is retried: an InfrastructureError (a clone, fetch or push
that failed or hung: the network, credentials, a full remote) is retried in place `retries` times and
then raised to Ray, which reruns the point elsewhere; a PointFailed (the point's own `dvc exp run`: a
diverging training, a bad value) would fail the same way again, so it is reported, never rerun.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.grid import presence
from pipeline.grid.board import SHARED
from pipeline.grid.exchange import Exchange
from pipeline.grid.workdir import InfrastructureError, Workdir, sweep_stale

# download -> prepare -> (stack) -> evaluator -> calibrate: what every point of a grid shares
SHARED_TARGETS = ("stack", "calibrate")
LOCK = "dvc.lock"
SHARED_DVC = Path(__file__).with_name("shared_dvc.py")  # run as a script in the clone


@dataclass(frozen=True)
class Job:
    grid: str
    commit: str
    exchange: Exchange
    retries: int = 2  # in-place retries of a failed transfer step
    transfer_timeout: float = 1800.0  # seconds; a clone, fetch or push that takes longer is stuck
    run_timeout: float | None = None  # seconds for a point's `dvc exp run` (None: no limit)
    lock: str | None = None  # the shared task's dvc.lock, which every point starts from


def dvc(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "dvc", *args)


def _where() -> dict:
    import ray

    context = ray.get_runtime_context()
    gpus = ray.get_gpu_ids()
    return {
        "node": context.get_node_id(), "host": socket.gethostname(),
        "device": f"cuda:{','.join(map(str, gpus))}" if gpus else "cpu",
        "cpus": context.get_assigned_resources().get("CPU", 0.0),
    }


def _announce(board, name: str) -> dict:
    """Tell the driver's board where this attempt runs, before it starts any work, and wait for the board
    to have it: through the call's future, not ray.get, since a task blocked in ray.get lends its CPUs out
    and Ray would start another point on a node with room for one (and a call nobody waits for was seen
    lost after a node loss). A lost board costs the driver its notes, never the point."""
    where = _where()
    if board is not None:
        try:
            board.started.remote(name, where["node"], where["host"]).future().result(timeout=30)
        except Exception:  # noqa: BLE001 - any failure to take a note leaves the point to run as it would
            pass
    return where


def run_shared(job: Job, board=None) -> dict:
    """The stages every point shares, computed once (or restored) and published: their outputs, their
    run-cache entries only, and the dvc.lock they produced, which every point then starts from."""
    start = time.monotonic()
    swept = sweep_stale()
    where = _announce(board, SHARED)
    work = Workdir(job, where["cpus"])
    try:
        work.clone()
        work.transfer(sys.executable, str(SHARED_DVC), "prune", *SHARED_TARGETS)
        work.run(*dvc("repro", "--pull", *SHARED_TARGETS), timeout=job.run_timeout)
        work.transfer(*dvc("push", "--with-deps", *SHARED_TARGETS))
        work.transfer(sys.executable, str(SHARED_DVC), "publish", *SHARED_TARGETS)
        lock = (work.repo / LOCK).read_text(encoding="utf-8")
        return {**where, "ran": work.ran_stages(), "lock": lock, "swept": swept, "wall_s": round(time.monotonic() - start, 1)}
    finally:
        work.close()


def _complete(work: Workdir, job: Job, name: str) -> bool:
    """The point's experiment is already in the exchange points (pushed by an attempt that Ray reran
    after it had finished, or by an earlier run of the grid), ref and data both."""
    ref = presence.exp_ref(job.commit, name)
    if ref not in presence.remote_exp_refs(job.exchange.git_url, timeout=job.transfer_timeout, env=work.env):
        return False
    work.transfer("git", "fetch", "-q", job.exchange.git_url, f"+{ref}:{ref}")
    try:
        work.run(sys.executable, presence.__file__, ref, job.exchange.dvc_name, timeout=job.transfer_timeout, infra=True)
    except InfrastructureError:  # some output is not in the DVC remote: the point runs again
        return False
    return True


def run_point(job: Job, name: str, overrides: list[str], board=None) -> dict:
    """One grid point in a fresh clone: the shared task's dvc.lock, the shared outputs fetched by that lock
    (from the node's cache when it has them), `dvc exp run -n NAME -S ...`, then its outputs pushed and,
    only once they are all in the DVC remote, its experiment ref."""
    start = time.monotonic()
    swept = sweep_stale()
    where = _announce(board, name)
    work = Workdir(job, where["cpus"])
    try:
        work.clone()
        if _complete(work, job, name):
            return {**where, "name": name, "status": "present", "wall_s": round(time.monotonic() - start, 1)}
        if job.lock is not None:
            (work.repo / LOCK).write_text(job.lock, encoding="utf-8")
        fetched = work.transfer(*dvc("fetch", "--with-deps", *SHARED_TARGETS))
        sets = [arg for o in overrides for arg in ("-S", o)]
        work.run(*dvc("exp", "run", "-n", name, *sets), timeout=job.run_timeout)
        metrics = json.loads((work.repo / "metrics" / "evaluate.json").read_text())
        work.transfer(*dvc("push"), interruptible=False)
        ref = presence.exp_ref(job.commit, name)
        work.transfer("git", "push", "-q", "--force", job.exchange.git_url, f"{ref}:{ref}", interruptible=False)
        return {
            **where, "name": name, "status": "done", "ran": work.ran_stages(), "swept": swept,
            "fetched": _fetched(fetched), "env": work.forwarded(), "code": work.code_blob(),
            "collapse_rate": metrics.get("collapse_rate"), "collapse_rate_ci": metrics.get("collapse_rate_ci"),
            "fld": metrics.get("fld"), "wall_s": round(time.monotonic() - start, 1),
        }
    finally:
        work.close()


def _fetched(output: str) -> int:
    """How many files `dvc fetch` downloaded (0 when the node's cache had them all)."""
    found = re.search(r"(\d+) files? fetched", output)
    return int(found.group(1)) if found else 0

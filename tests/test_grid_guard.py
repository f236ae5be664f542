"""How a grid task runs its commands (pipeline/grid/workdir.py, guard.py), with real processes and no
Ray: nothing waits for a password, a stuck command is stopped at its timeout, a transfer is retried in
place and a failed training is not, and nothing of a task outlives the worker that ran it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pipeline.grid import workdir
from pipeline.grid.exchange import Exchange
from pipeline.grid.task import Job
from pipeline.grid.workdir import InfrastructureError, PointFailed, Workdir
from tests.conftest import REPO

pytestmark = pytest.mark.timeout(120)


def job(retries: int = 0, transfer_timeout: float = 60) -> Job:
    return Job("g", "0" * 40, Exchange("unused", None, "unused", "unused", None), retries=retries, transfer_timeout=transfer_timeout)


def running(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if marker in " ".join(proc.info["cmdline"] or []) and proc.pid != os.getpid():
            found.append(proc)
    return found


def eventually(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


def test_commands_cannot_wait_for_a_password_and_get_the_threads_ray_granted():
    """Issue 30, items 6 and 11: a task has nobody to type a password, so git and ssh must fail at once
    instead of waiting for ever; and thread pools outside torch's own count follow the CPUs Ray granted."""
    base = {"PATH": "/usr/bin", "DVC_ROOT": "/driver/repo", "GIT_SSH_COMMAND": "ssh -i /keys/grid", "HOME": "/root"}
    env = workdir.command_env(base, 2.0)
    assert env["GIT_TERMINAL_PROMPT"] == "0"
    assert env["GIT_SSH_COMMAND"] == "ssh -i /keys/grid -o BatchMode=yes"
    assert workdir.command_env({"PATH": "/usr/bin"}, 1.0)["GIT_SSH_COMMAND"] == "ssh -o BatchMode=yes"
    assert "DVC_ROOT" not in env and env["HOME"] == "/root"
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "2"
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)


def test_a_stuck_transfer_is_stopped_at_its_timeout(tmp_path):
    """Issue 30, item 6: no command of a point runs for ever."""
    work = Workdir(job(transfer_timeout=2), 1, root=tmp_path)
    start = time.monotonic()
    with pytest.raises(InfrastructureError, match="ran past its 2 s limit"):
        work.transfer("sleep", "61.25", cwd=work.tmp)
    assert time.monotonic() - start < 15
    assert eventually(lambda: not running("61.25"), 10)
    work.close()


def test_a_failed_transfer_is_retried_in_place_and_a_failed_training_is_not(tmp_path, monkeypatch):
    """Issue 30, item 8: a push that fails once (the network) is retried where it is, without training
    again; the point's own command failing (a diverging training) raises PointFailed, never retried."""
    monkeypatch.setattr(workdir, "RETRY_WAIT_S", 0.1)
    counter = tmp_path / "attempts"
    fails_once = f"n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}; test $n -ge 1"
    work = Workdir(job(retries=1), 1, root=tmp_path)
    work.transfer("sh", "-c", fails_once, cwd=work.tmp)
    assert counter.read_text().strip() == "2"
    counter.unlink()
    with pytest.raises(InfrastructureError, match="exited with status 1"):
        Workdir(job(retries=0), 1, root=tmp_path).transfer("sh", "-c", fails_once, cwd=tmp_path)
    with pytest.raises(PointFailed, match="exited with status 3") as failed:
        work.run("sh", "-c", "echo the loss became NaN; exit 3", cwd=work.tmp)
    assert "the loss became NaN" in str(failed.value)  # the log's tail comes with the failure
    work.close()


WORKER = """
import sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from pipeline.grid.exchange import Exchange
from pipeline.grid.task import Job
from pipeline.grid.workdir import Workdir
work = Workdir(Job("g", "0" * 40, Exchange("u", None, "d", "n", None)), 1, root=Path(sys.argv[1]))
print(work.tmp, flush=True)
work.run("sh", "-c", "sleep 600.5 & sleep 600.5; wait", cwd=work.tmp)
"""


def test_a_worker_killed_under_a_command_takes_the_command_and_its_folder_along(tmp_path):
    """Issue 30, item 10: the OOM killer or a lost raylet kills the Ray worker, not what it started; the
    command's whole group (here a shell and two sleeps) stops and the task's folder is deleted."""
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER.format(repo=str(REPO)), str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    folder = Path(worker.stdout.readline().strip())
    assert folder.is_dir() and folder.name.startswith(workdir.PREFIX)
    assert eventually(lambda: len(running("sleep 600.5")) >= 2, 20)
    worker.kill()
    worker.wait()
    assert eventually(lambda: not running("600.5") and not folder.exists(), 15), (running("600.5"), folder.exists())


def test_stale_folders_are_swept_and_live_ones_kept(tmp_path):
    """Issue 30, item 10: a folder whose worker died with its guard (the whole node lost) goes at the next
    task's start; a folder of a live worker, or one being made right now, stays."""
    gone = subprocess.Popen(["sleep", "30"])
    started = psutil.Process(gone.pid).create_time()
    gone.kill()
    gone.wait()
    me = psutil.Process()
    owners = {"dead": f"{gone.pid} {started}", "live": f"{me.pid} {me.create_time()}", "new": None, "old": None}
    for name, owner in owners.items():
        folder = tmp_path / f"{workdir.PREFIX}{name}"
        folder.mkdir()
        if owner:
            (folder / workdir.OWNER).write_text(owner)
    an_hour_ago = time.time() - 3600
    os.utime(tmp_path / f"{workdir.PREFIX}old", (an_hour_ago, an_hour_ago))
    assert sorted(workdir.sweep_stale(tmp_path)) == [f"{workdir.PREFIX}dead", f"{workdir.PREFIX}old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{workdir.PREFIX}live", f"{workdir.PREFIX}new"]

"""Run one command of a grid point in a process group of its own, and never let it outlive the Ray
worker that asked for it.

Started by task.py as a script (`python guard.py WORKER_PID FOLDER -- dvc ...`, standard library only).
The command and everything it starts (dvc, the stage processes) form one new session, so one signal
reaches all of them. The guard stays outside that group and ties it to the worker:

- SIGINT from the task (the driver's Ctrl-C or SIGTERM became a ray.cancel) is passed to the group:
  dvc and the stage stop as on a terminal's Ctrl-C, and the train stage ends its MLflow runs KILLED;
- SIGTERM from the task (a command past its timeout) stops the group: SIGINT, then SIGKILL after a grace;
- the worker's death (the OOM killer, a lost raylet, `kill -9`) reaches the guard at once as SIGTERM
  through Linux's parent-death signal (and, where that does not exist, within a second through polling
  its parent id); the guard then stops the group and deletes the point's temporary FOLDER, which the
  worker can no longer delete.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys

GRACE_S = 30  # SIGINT first (MLflow runs end KILLED), SIGKILL after this
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> None:
    """Ask Linux for SIGTERM when the parent goes (prctl PR_SET_PDEATHSIG); elsewhere polling serves."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:  # the whole group has exited already
        pass


def stop_group(child: subprocess.Popen) -> int:
    """SIGINT to the command's group; after the grace, SIGKILL to whatever of the group is left (the stage
    processes of a dvc that exited, or a command that ignored the interrupt)."""
    _signal_group(child.pid, signal.SIGINT)
    try:
        child.wait(timeout=GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(child.pid, signal.SIGKILL)
    return child.wait()


class _Stop(Exception):
    pass


def _raise_stop(*_) -> None:
    raise _Stop()


def main(argv: list[str]) -> int:
    worker, folder, command = int(argv[0]), argv[1], argv[argv.index("--") + 1 :]
    child: subprocess.Popen | None = None
    signal.signal(signal.SIGTERM, _raise_stop)
    # A handler, not SIG_IGN: an ignored SIGINT would be inherited by the command and kept ignored.
    signal.signal(signal.SIGINT, lambda *_: child and _signal_group(child.pid, signal.SIGINT))
    try:
        _die_with_parent()
        # Ray's worker threads block SIGINT and SIGTERM, and a blocked mask survives fork and exec: without
        # this, neither the guard nor the command would ever see them. Unblocked once the handlers are set.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        if os.getppid() != worker:  # the worker died before the parent-death signal was set
            raise _Stop()
        child = subprocess.Popen(command, start_new_session=True)
        while True:
            try:
                return child.wait(timeout=1)
            except subprocess.TimeoutExpired:
                if os.getppid() != worker:
                    raise _Stop() from None
    except _Stop:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        status = stop_group(child) if child else 1
        if os.getppid() != worker:  # orphaned: nobody else will delete the point's folder
            shutil.rmtree(folder, ignore_errors=True)
        return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

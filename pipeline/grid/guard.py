"""Run one command in its own process group and stop the whole group when the Ray worker that
started it goes away (a node lost, a worker killed), so no training carries on orphaned.

Started by task.py as a script (`python guard.py PARENT_PID -- dvc ...`, standard library only) with
its own session, so the group is the guard, dvc, and the stage processes dvc starts. Ctrl-C on the
driver reaches the group as SIGINT (task.py sends it): dvc and the stage stop as they do on a terminal's
Ctrl-C, and the train stage ends its MLflow runs KILLED.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

GRACE_S = 30  # SIGINT first (MLflow runs end KILLED), SIGKILL after this


def stop_group(child: subprocess.Popen) -> int:
    os.killpg(0, signal.SIGINT)
    try:
        return child.wait(timeout=GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(0, signal.SIGKILL)  # the guard included
        return -signal.SIGKILL


def main(argv: list[str]) -> int:
    parent, command = int(argv[0]), argv[argv.index("--") + 1 :]
    # Ray's worker threads block SIGINT and SIGTERM, and a blocked mask survives fork and exec: without
    # this, dvc and the stage would never see the interrupt (the train stage would train on, its MLflow
    # run left RUNNING). Unblocked here, before the command starts, so its whole tree gets them again.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    # A handler, not SIG_IGN: the child must not inherit an ignored SIGINT (Python would keep ignoring it).
    signal.signal(signal.SIGINT, lambda *_: None)
    child = subprocess.Popen(command)
    while True:
        try:
            return child.wait(timeout=1)
        except subprocess.TimeoutExpired:
            if os.getppid() != parent:  # reparented: the Ray worker is gone (and with it our stderr's reader)
                return stop_group(child)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

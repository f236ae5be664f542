"""How many CPU threads a training uses (`train.threads`).

These networks are small: at batch 64 a replica's matmuls are short, and threads that must share
cores with other processes wait on each other at every kernel. Measured on this 2-core machine under
load (benchmarks/train_speed.py --threads 1,2, load average ~14): 2 threads trained wgan 14x slower
than 1 thread for one replica and 8x slower for 8 replicas; the issue saw 10-20x with 4 competing
processes. `auto` therefore gives a training the cores nobody else is using, and its share of them:

    threads = max(1, min(cores // queue_workers, cores - load))

where `queue_workers` is the number of DVC queue workers when the training runs under one (`dvc queue
start -j N` starts N workers, each running one experiment at a time, so N trainings share the cores)
and `load` is the 1-minute load average when training starts (work already running). On an idle
machine outside a queue that is every core. `auto` is an opt-in for speed, not the default: the thread
count changes results (pipeline/common/cpu_threads.py). Stacked MLP replicas (2 or more) gave
bit-identical weights with 1 and 2 threads, but a single replica and every DCGAN preset did not, so
under `auto` their models can depend on the load when training started.
"""

from __future__ import annotations

import math
import os

import psutil


def _cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _is_queue_worker(cmdline: list[str]) -> bool:
    # A DVC queue worker is `dvc exp queue-worker dvc-exp-<repo hash>-<n>@localhost` (dvc/repo/
    # experiments/queue/celery.py); `dvc queue start -j N` starts N of them.
    return "queue-worker" in cmdline and "exp" in cmdline


def queue_workers() -> int:
    """The number of DVC queue workers on this machine if this process runs under one; else 0."""
    try:
        if not any(_is_queue_worker(p.cmdline()) for p in psutil.Process().parents()):
            return 0
        return sum(_is_queue_worker(proc.info["cmdline"] or []) for proc in psutil.process_iter(["cmdline"]))
    except (psutil.Error, OSError):
        return 0


def policy(cores: int, workers: int, load: float) -> int:
    """Threads for one training: its share of the cores under a queue, and no more than are idle."""
    share = cores // max(1, workers)
    idle = math.floor(cores - load + 0.5)
    return max(1, min(share, idle))


def resolve(setting: int | str, device_type: str) -> int:
    """The thread count for `train.threads` (an int, or "auto") on this machine, now."""
    if isinstance(setting, int):
        return setting
    if device_type != "cpu":
        return 1  # the accelerator does the work; the host thread only launches kernels
    return policy(_cpu_cores(), queue_workers(), os.getloadavg()[0])

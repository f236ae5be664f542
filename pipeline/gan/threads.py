"""How many CPU threads a training uses (`train.threads`).

These networks are small: at batch 64 a single replica's matmuls are too short to share between cores,
and a training that takes every core while others run oversubscribes the CPU (the issue measured
2-thread training 10-20x slower than 1-thread under 4 competing processes). `auto` therefore gives
a training its share of the cores: all of them when it runs alone, the cores divided by the number of
DVC queue workers when it runs in `dvc queue start -j N` (each worker runs one experiment at a time,
so N trainings share the machine). A lone replica gets one thread (measured: no faster with more);
R batched replicas have R times the work per kernel and use the share.
"""

from __future__ import annotations

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
    """The number of DVC queue workers running on this machine if this process runs under one; else 0."""
    try:
        if not any(_is_queue_worker(p.cmdline()) for p in psutil.Process().parents()):
            return 0
        count = 0
        for proc in psutil.process_iter(["cmdline"]):
            if _is_queue_worker(proc.info["cmdline"] or []):
                count += 1
        return count
    except (psutil.Error, OSError):
        return 0


def resolve(setting: int | str, device_type: str, replicas: int) -> int:
    """The thread count for `train.threads` (an int, or "auto") on this machine, now."""
    if isinstance(setting, int):
        return setting
    if device_type != "cpu":
        return 1  # the accelerator does the work; the host thread only launches kernels
    share = max(1, _cpu_cores() // max(1, queue_workers()))
    return 1 if replicas == 1 else share

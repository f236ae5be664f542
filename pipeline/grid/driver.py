"""`ganpipe grid`'s driver: check everything, submit one Ray task per point, follow them with one
progress line, then bring the experiments back (`dvc exp pull`) and print one row per point."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.common.console import stderr
from pipeline.common.errors import GanpipeError, Interrupted
from pipeline.grid import checks, cluster, points
from pipeline.grid.task import Job, exps_in_remote

CANCEL_WAIT_S = 120  # after Ctrl-C: how long the driver waits for the running points to stop cleanly


@dataclass(frozen=True)
class Options:
    sets: list[str]
    address: str | None = None
    cpus_per_point: float = 1.0
    gpus_per_point: float = 0.0
    name: str | None = None
    retries: int = 1
    git_remote: str | None = None
    json_out: Path | None = None  # also write the grid's results here (scripts, the benchmark, the tests)


@dataclass
class Plan:
    grid: str
    points: list[points.Point]
    present: set[str]
    job: Job
    git_remote: str


def prepare(root: Path, opts: Options) -> Plan:
    """Every refusal, in order of cost; nothing is changed anywhere until all of them have passed."""
    unnamed = points.points(opts.sets, "grid")
    for point in unnamed:
        points.check_params(root, point)
    checks.clean_workspace(root)
    git_name, git_url = checks.git_remote(root, opts.git_remote)
    commit = checks.head_pushed(root, git_name, git_url)
    dvc_name, dvc_url = checks.dvc_remote(root)
    uri = checks.tracking_for(root, cluster=opts.address is not None)
    grid = points.grid_id(commit, opts.sets, opts.name)
    env = {"MLFLOW_TRACKING_URI": uri, "GANPIPE_GRID_ID": grid}
    if os.environ.get("MNIST_MIRROR"):  # where the data comes from is no param; nodes without internet need it
        env["MNIST_MIRROR"] = os.environ["MNIST_MIRROR"]
    job = Job(grid, commit, git_url, dvc_name, dvc_url, env)
    return Plan(grid, points.points(opts.sets, grid), exps_in_remote(git_url), job, git_name)


def _line(grid: str, total: int, done: int, running: int, failed: int, eta: float | None) -> str:
    eta_text = f", ETA {int(eta // 60)} min {int(eta % 60):02d} s" if eta is not None else ""
    return f"grid {grid}: {done}/{total} done, {running} running, {failed} failed{eta_text}"


def follow(plan: Plan, refs: dict, slots: int) -> tuple[dict[str, dict], dict[str, str]]:
    """Wait for the points, showing one progress line (redrawn on a terminal, printed on change without)."""
    import ray

    results: dict[str, dict] = {}
    failures: dict[str, str] = {}
    pending = dict(refs)
    start, total, last = time.monotonic(), len(refs), ""
    status = stderr.status("") if stderr.is_terminal else None
    if status:
        status.start()
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                name = pending.pop(ref)
                try:
                    results[name] = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    failures[name] = str(getattr(exc, "cause", None) or exc)
                    stderr.print(f"point {name} failed:\n{failures[name]}", highlight=False, markup=False)
            finished = len(results) + len(failures)
            running = min(len(pending), slots)
            per_wave = (time.monotonic() - start) / max(finished, 1) * slots if finished else None
            eta = per_wave * len(pending) / slots if per_wave else None
            line = _line(plan.grid, total, len(results), running, len(failures), eta)
            if status:
                status.update(line)
            elif line.split(", ETA")[0] != last.split(", ETA")[0]:
                print(line, file=sys.stderr, flush=True)
            last = line
    except KeyboardInterrupt:
        cancel(pending)
        raise Interrupted(
            f"grid {plan.grid} interrupted: the {len(pending)} unfinished point(s) were cancelled (their MLflow runs "
            f"end KILLED, nothing of theirs was pushed); the {len(results)} finished point(s) are in the git remote. "
            "Run the same command again to run only the missing points."
        ) from None
    finally:
        if status:
            status.stop()
    return results, failures


def cancel(pending: dict) -> None:
    """Ctrl-C: ask every unfinished point to stop (a KeyboardInterrupt in the task, which passes SIGINT to
    its dvc process group) and wait for them, so their MLflow runs are marked KILLED before we exit."""
    import ray

    message = f"Ctrl-C: cancelling {len(pending)} point(s) and waiting up to {CANCEL_WAIT_S} s for them to stop"
    stderr.print(message, soft_wrap=True, highlight=False)
    for ref in pending:
        ray.cancel(ref, force=False, recursive=True)
    ray.wait(list(pending), num_returns=len(pending), timeout=CANCEL_WAIT_S)


def run_shared(plan: Plan, opts: Options) -> dict:
    import ray

    from pipeline.grid import task

    stderr.print(f"grid {plan.grid}: the shared stages (download -> calibrate), once, pushed with the run cache", soft_wrap=True)
    remote = ray.remote(task.run_shared).options(
        num_cpus=opts.cpus_per_point, num_gpus=opts.gpus_per_point, max_retries=opts.retries, retry_exceptions=True
    )
    ref = remote.remote(plan.job)
    try:
        return ray.get(ref)
    except KeyboardInterrupt:
        cancel({ref: "shared stages"})
        raise Interrupted(f"grid {plan.grid} interrupted while computing the shared stages; no point was submitted.") from None
    except ray.exceptions.RayError as exc:
        raise GanpipeError(
            f"grid {plan.grid}: the shared stages failed, so no point was submitted:\n{getattr(exc, 'cause', None) or exc}"
        ) from None


def submit(plan: Plan, opts: Options, todo: list[points.Point]) -> dict:
    import ray

    from pipeline.grid import task

    remote = ray.remote(task.run_point).options(
        num_cpus=opts.cpus_per_point, num_gpus=opts.gpus_per_point, max_retries=opts.retries, retry_exceptions=True
    )
    return {remote.remote(plan.job, p.name, list(p.overrides)): p.name for p in todo}


def pull(root: Path, plan: Plan, names: list[str]) -> None:
    if not names:
        return
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "pull", plan.git_remote, *names], cwd=root, capture_output=True, text=True
    )
    if done.returncode != 0:
        stderr.print(f"warning: `dvc exp pull {plan.git_remote} ...` failed: {done.stderr.strip()}", markup=False)


def run_grid(root: Path, opts: Options) -> int:
    """The whole command; returns the exit status (1 when a point failed after its retries)."""
    from pipeline.grid import summary

    plan = prepare(root, opts)
    todo = [p for p in plan.points if p.name not in plan.present]
    skipped = len(plan.points) - len(todo)
    stderr.print(
        f"grid {plan.grid}: {len(plan.points)} point(s) at commit {plan.job.commit[:7]}"
        + (f", {skipped} already in the git remote {plan.git_remote} (not run again)" if skipped else ""),
        highlight=False, soft_wrap=True,
    )
    shared, results, failures = execute(root, plan, opts, todo) if todo else (None, {}, {})
    names = [p.name for p in plan.points if p.name in plan.present or p.name in results]
    pull(root, plan, names)
    summary.show(plan, results, failures)
    if opts.json_out:
        summary.write_json(opts.json_out, plan, shared, results, failures)
    return 1 if failures else 0


def execute(root: Path, plan: Plan, opts: Options, todo: list[points.Point]) -> tuple[dict, dict[str, dict], dict[str, str]]:
    """On Ray: the shared stages once, then the points, followed until the last one ends."""
    import ray

    from pipeline.common import mlflow_store

    cluster.connect(opts.address)
    try:
        cluster.check_resources(opts.cpus_per_point, opts.gpus_per_point)
        if not mlflow_store.user_tracking_uri():
            mlflow_store.connect(root)  # the repository's store gets the experiment (and artifact folder) first
        shared = run_shared(plan, opts)
        computed = ", ".join(shared["ran"]) or "none, all restored"
        stderr.print(f"shared stages ready in {shared['wall_s']:.0f} s (computed: {computed})", soft_wrap=True)
        slots = cluster.slots(opts.cpus_per_point, opts.gpus_per_point)
        return (shared, *follow(plan, submit(plan, opts, todo), slots))
    finally:
        ray.shutdown()

"""`ganpipe grid`'s driver: check everything, submit one Ray task per point, follow them with one
progress line (and one line per lost node and per rerun point), then bring the experiments back and
print one row per point.

SIGTERM (`timeout`, a scheduler, `kill`) stops the grid as Ctrl-C does: the running points are
cancelled and waited for, so no command of theirs and no temporary folder outlives the driver.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from pipeline.common.console import stderr
from pipeline.common.errors import GanpipeError, Interrupted
from pipeline.grid import board, checks, cluster, exchange, points, presence
from pipeline.grid.task import Job
from pipeline.grid.workdir import FORWARDED, InfrastructureError, PointFailed

CANCEL_WAIT_S = 120  # after Ctrl-C or SIGTERM: how long the driver waits for the running points to stop cleanly
WATCH_EVERY_S = 2.0  # how often the driver reads the board and the cluster's nodes


@dataclass(frozen=True)
class Options:
    sets: list[str]
    address: str | None = None
    cpus_per_point: float = 1.0
    gpus_per_point: float = 0.0
    name: str | None = None
    retries: int = 2  # in-place retries of a failed transfer step (clone, fetch, push)
    reruns: int = 3  # Ray's reruns of a point after a lost node or a transfer that kept failing
    git_remote: str | None = None
    json_out: Path | None = None  # also write the grid's results here (scripts, the benchmark, the tests)
    transfer_timeout: float = 1800.0
    run_timeout: float | None = None
    forward_env: tuple[str, ...] = ()
    shared_folders: bool = False  # folder remotes are mounted at the same path on every node


@dataclass
class Plan:
    grid: str
    points: list[points.Point]
    present: set[str]
    job: Job
    cpus: dict[str, float]  # per point: what its task asks Ray for
    shared_cpus: float
    tracking_uri: str
    env: dict[str, str]
    watch: board.Watch = field(default_factory=board.Watch)
    starts: dict = field(default_factory=dict)  # the board's last reading: task name -> [(node, host), ...]
    ray_address: str | None = None  # the Ray cluster the grid ran on (its GCS address)


_SIGTERM = {"received": False}  # Ray re-raises an interrupt in its own waits as a plain KeyboardInterrupt


def _on_sigterm(signum, frame) -> None:
    """SIGTERM, handled as Ctrl-C is: a KeyboardInterrupt where the driver is, remembered as SIGTERM."""
    _SIGTERM["received"] = True
    raise KeyboardInterrupt()


def _interrupted(message: str) -> Interrupted:
    if not _SIGTERM["received"]:
        return Interrupted(message)
    exc = Interrupted(message.replace("interrupted", "stopped by SIGTERM"))
    exc.exit_code = 128 + signal.SIGTERM
    return exc


def forwarded_env(uri: str, grid: str, extra: tuple[str, ...]) -> dict[str, str]:
    """The driver's variables every task gets (workdir.FORWARDED and --forward-env), the MLflow URI and the grid id."""
    env = {name: os.environ[name] for name in (*FORWARDED, *extra) if name in os.environ}
    return {**env, "MLFLOW_TRACKING_URI": uri, "GANPIPE_GRID_ID": grid}


def done_points(root: Path, exch: exchange.Exchange, commit: str, names: list[str]) -> set[str]:
    """The points whose experiment is in the exchange points under this commit, ref and outputs both."""
    try:
        refs = presence.remote_exp_refs(exch.git_url)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        raise GanpipeError(f"{exc}. Check the git remote's URL and your access, and run again. Nothing was submitted.") from None
    wanted = {presence.exp_ref(commit, n): n for n in names if presence.exp_ref(commit, n) in refs}
    if wanted and not exch.this_repository:
        checks.git(root, "fetch", "-q", exch.git_url, *(f"+{ref}:{ref}" for ref in wanted))
    url = exch.dvc_url if exch.this_repository else None
    return {name for ref, name in wanted.items() if not presence.missing_outputs(str(root), ref, exch.dvc_name, url)}


def prepare(root: Path, opts: Options) -> Plan:
    """Every refusal that needs no cluster, in order of cost; nothing is changed anywhere until all have passed."""
    unnamed = points.points(opts.sets, "grid")
    needs = [points.cpus_needed(points.check_params(root, p), opts.cpus_per_point) for p in unnamed]
    shared_cpus = float(points.committed_params(root).evaluator.threads)
    checks.clean_workspace(root)
    exch, commit = exchange.decide(root, opts.address, opts.git_remote)
    uri = checks.tracking_uri(root)
    grid = points.grid_id(commit, opts.sets, opts.name)
    named = points.points(opts.sets, grid)
    job = Job(grid, commit, exch, opts.retries, opts.transfer_timeout, opts.run_timeout)
    present = done_points(root, exch, commit, [p.name for p in named])
    cpus = {p.name: need for p, need in zip(named, needs)}
    return Plan(grid, named, present, job, cpus, shared_cpus, uri, forwarded_env(uri, grid, opts.forward_env))


@contextmanager
def shipped_code(root: Path, commit: str):
    """The grid's commit's `pipeline` package in a temporary folder, for Ray's runtime_env (py_modules):
    every task runs the task code of this commit, whatever ganpipe each node has installed."""
    archive = subprocess.run(["git", "archive", "--format=tar", commit, "pipeline"], cwd=root, capture_output=True, check=True)
    with tempfile.TemporaryDirectory(prefix="ganpipe-ship-") as folder:
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(folder, filter="data")
        yield str(Path(folder) / "pipeline")


def watch_cluster(plan: Plan, notes, unfinished: set[str]) -> None:
    """Print one line per newly lost node and per new rerun (read from the board actor `notes`)."""
    import ray

    try:
        starts = ray.get(notes.read.remote(), timeout=10)
    except ray.exceptions.RayError:  # the board is gone with its node: the note loses its details, not the grid
        starts = plan.starts
    alive = cluster.alive_nodes()
    for line in (*board.lost_nodes(plan.watch, alive, starts, unfinished), *board.reruns(plan.watch, starts)):
        stderr.print(line, highlight=False, soft_wrap=True, markup=False)
    plan.starts = starts


def _failure(exc: Exception) -> str:
    import ray

    cause = getattr(exc, "cause", None)
    if isinstance(cause, PointFailed):
        return f"{cause}\n(not rerun: the point's own command failed, and would fail the same way again)"
    if isinstance(cause, InfrastructureError):
        return f"{cause}\n(a transfer step kept failing after its retries and reruns)"
    if isinstance(exc, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError)):
        return f"its worker or node was lost on every attempt ({type(exc).__name__}); raise --reruns or check the nodes"
    return str(cause or exc)


def _line(grid: str, total: int, done: int, running: int, failed: int, eta: float | None) -> str:
    eta_text = f", ETA {int(eta // 60)} min {int(eta % 60):02d} s" if eta is not None else ""
    return f"grid {grid}: {done}/{total} done, {running} running, {failed} failed{eta_text}"


def follow(plan: Plan, refs: dict, slots: int, notes) -> tuple[dict[str, dict], dict[str, str]]:
    """Wait for the points, showing one progress line (redrawn on a terminal, printed on change without)."""
    import ray

    results: dict[str, dict] = {}
    failures: dict[str, str] = {}
    pending = dict(refs)
    start, total, last, watched = time.monotonic(), len(refs), "", 0.0
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
                    correction = board.finished_where_lost(plan.watch, name, results[name].get("node"))
                    if correction:
                        stderr.print(correction, highlight=False, soft_wrap=True, markup=False)
                except ray.exceptions.RayError as exc:
                    failures[name] = _failure(exc)
                    stderr.print(f"point {name} failed:\n{failures[name]}", highlight=False, markup=False)
            if time.monotonic() - watched > WATCH_EVERY_S or not pending:
                watch_cluster(plan, notes, set(pending.values()))
                watched = time.monotonic()
            finished = len(results) + len(failures)
            eta = (time.monotonic() - start) / finished * len(pending) if finished and pending else None
            line = _line(plan.grid, total, len(results), min(len(pending), slots), len(failures), eta)
            if status:
                status.update(line)
            elif line.split(", ETA")[0] != last.split(", ETA")[0]:
                print(line, file=sys.stderr, flush=True)
            last = line
    except KeyboardInterrupt:
        cancel(pending)
        raise _interrupted((
            f"grid {plan.grid} interrupted: the {len(pending)} unfinished point(s) were cancelled (their MLflow runs "
            f"end KILLED, nothing of theirs was pushed); the {len(results)} finished point(s) are kept. "
            "Run the same command again to run only the missing points."
        )) from None
    finally:
        if status:
            status.stop()
    return results, failures


def cancel(pending: dict) -> None:
    """Ctrl-C or SIGTERM: ask every unfinished task to stop (a KeyboardInterrupt in the task, which passes
    SIGINT to its command's process group) and wait for them, so their MLflow runs are marked KILLED and
    their folders deleted before we exit. Another interrupt while waiting stops them at once."""
    import ray

    message = f"stopping: cancelling {len(pending)} point(s) and waiting up to {CANCEL_WAIT_S} s for them to stop"
    stderr.print(message, soft_wrap=True, highlight=False)
    for ref in pending:
        ray.cancel(ref, force=False, recursive=True)
    try:
        ray.wait(list(pending), num_returns=len(pending), timeout=CANCEL_WAIT_S)
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True, recursive=True)


def _remote(fn, cpus: float, gpus: float, reruns: int):
    """A task that Ray reruns after a lost node (max_retries) or an InfrastructureError, and never after
    any other exception: a point whose training failed would fail the same way again."""
    import ray

    return ray.remote(fn).options(
        num_cpus=cpus, num_gpus=gpus, max_retries=reruns, retry_exceptions=[InfrastructureError]
    )


def run_shared(plan: Plan, opts: Options, notes) -> dict:
    import ray

    from pipeline.grid import task

    stderr.print(f"grid {plan.grid}: the shared stages (download -> calibrate) once, on {plan.shared_cpus:g} CPU(s)", soft_wrap=True)
    ref = _remote(task.run_shared, plan.shared_cpus, 0, opts.reruns).remote(plan.job, notes)
    try:
        while not ray.wait([ref], timeout=WATCH_EVERY_S)[0]:
            watch_cluster(plan, notes, {board.SHARED})
        return ray.get(ref)
    except KeyboardInterrupt:
        cancel({ref: board.SHARED})
        raise _interrupted(f"grid {plan.grid} interrupted while computing the shared stages; no point was submitted.") from None
    except ray.exceptions.RayError as exc:
        raise GanpipeError(f"grid {plan.grid}: the shared stages failed, so no point was submitted:\n{_failure(exc)}") from None


def submit(plan: Plan, opts: Options, job: Job, todo: list[points.Point], notes) -> dict:
    from pipeline.grid import task

    return {
        _remote(task.run_point, plan.cpus[p.name], opts.gpus_per_point, opts.reruns).remote(job, p.name, list(p.overrides), notes): p.name
        for p in todo
    }


def pull(root: Path, plan: Plan, names: list[str]) -> None:
    """Bring the experiments from the git and DVC remotes into this repository (on one machine without
    remotes they were pushed straight into it). By full ref: a name alone may match older experiments."""
    exch = plan.job.exchange
    if not names or exch.this_repository:
        return
    refs = [presence.exp_ref(plan.job.commit, name) for name in names]
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "pull", exch.git_name, *refs], cwd=root, capture_output=True, text=True
    )
    if done.returncode != 0:
        stderr.print(f"warning: `dvc exp pull {exch.git_name} ...` failed: {done.stderr.strip()}", markup=False)


def _where(plan: Plan) -> str:
    exch = plan.job.exchange
    if exch.this_repository:
        return "through this repository and its DVC cache (no remote needed)"
    return f"through the git remote {exch.git_name} and the DVC remote {exch.dvc_name}"


def run_grid(root: Path, opts: Options) -> int:
    """The whole command; returns the exit status (1 when a point failed)."""
    from pipeline.grid import summary

    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        plan = prepare(root, opts)
        todo = [p for p in plan.points if p.name not in plan.present]
        skipped = len(plan.points) - len(todo)
        stderr.print(
            f"grid {plan.grid}: {len(plan.points)} point(s) at commit {plan.job.commit[:7]}, {_where(plan)}"
            + (f"; {skipped} already done at this commit (not run again)" if skipped else ""),
            highlight=False, soft_wrap=True,
        )
        shared, results, failures = execute(root, plan, opts, todo) if todo else (None, {}, {})
    except KeyboardInterrupt:
        raise _interrupted("ganpipe grid interrupted before any point was submitted; nothing was changed.") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    pull(root, plan, [p.name for p in plan.points if p.name in plan.present or p.name in results])
    summary.show(plan, results, failures, board.closing_note(plan.watch, plan.starts))
    if opts.json_out:
        summary.write_json(opts.json_out, plan, shared, results, failures)
    return 1 if failures else 0


def _board(plan: Plan):
    """The board actor, on the head node (a lost worker node must not take it along; without the head
    there is no cluster left to follow). Hard affinity: Ray's docs say a soft one moves only off a missing
    or infeasible node, yet on Ray 2.60 it put a 0-CPU board on the worker node of a two-node loopback
    cluster in 3 of 8 tries, and that board died with the node (the grid then lost its rerun lines)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    head = NodeAffinitySchedulingStrategy(cluster.head_node() or ray.get_runtime_context().get_node_id(), soft=False)
    plan.watch.nodes.update(cluster.alive_nodes())
    return ray.remote(num_cpus=0)(board.Board).options(scheduling_strategy=head).remote()


def execute(root: Path, plan: Plan, opts: Options, todo: list[points.Point]) -> tuple[dict, dict[str, dict], dict[str, str]]:
    """On Ray: the checks that need the cluster, the shared stages once, then the points until the last one ends."""
    import ray

    from pipeline.common import mlflow_store

    exch = plan.job.exchange
    with shipped_code(root, plan.job.commit) as code:
        cluster.connect(opts.address, {"py_modules": [code], "env_vars": plan.env})
        try:
            plan.ray_address = ray.get_runtime_context().gcs_address
            signal.signal(signal.SIGTERM, _on_sigterm)  # ray.init set its own, which exits at once, leaving the points
            checks.refuse_local_exchange(plan.tracking_uri, exch.git_url, exch.dvc_url, cluster.other_hosts(), opts.shared_folders)
            cluster.check_resources(plan.shared_cpus, {p.name: plan.cpus[p.name] for p in todo}, opts.gpus_per_point)
            if not mlflow_store.user_tracking_uri():
                mlflow_store.connect(root)  # the repository's store gets the experiment (and artifact folder) first
            notes = _board(plan)
            shared = run_shared(plan, opts, notes)
            computed = ", ".join(shared["ran"]) or "none, all restored"
            stderr.print(f"shared stages ready in {shared['wall_s']:.0f} s (computed: {computed})", soft_wrap=True)
            job = replace(plan.job, lock=shared.pop("lock"))
            slots = cluster.slots(max(plan.cpus[p.name] for p in todo), opts.gpus_per_point)
            return (shared, *follow(plan, submit(plan, opts, job, todo, notes), slots, notes))
        finally:
            ray.shutdown()

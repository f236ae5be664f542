"""How runs start, resume and end: one parent run per training, one nested child run per replica, and the
status (FINISHED, FAILED, KILLED) each ends with."""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from pipeline.common.errors import Interrupted
from pipeline.common.mlflow_store import connect, retry_locked
from pipeline.common.run_identity import run_identity
from pipeline.common.run_logging import log_params_to


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (`dvc queue kill`, a job scheduler, `kill`) raises KeyboardInterrupt, like Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def end_run(run_id: str, status: str, reason: str | None = None) -> None:
    """Mark an MLflow run terminated with `status`, unless it already is; never raises (it runs while
    another error is on its way out, which must not be replaced by a store error)."""
    import mlflow

    try:
        client = mlflow.MlflowClient()
        if client.get_run(run_id).info.status != "RUNNING":
            return
        if reason:
            retry_locked(lambda: client.set_tag(run_id, "failure_reason", reason[:5000]))
        active = mlflow.active_run()
        if active is not None and active.info.run_id == run_id:
            retry_locked(lambda: mlflow.end_run(status=status))  # also pops it, so exit cannot mark it FINISHED
        else:
            retry_locked(lambda: client.set_terminated(run_id, status=status))
    except Exception as exc:  # noqa: BLE001 - best effort, see above
        print(f"warning: could not mark MLflow run {run_id} {status}: {exc}", file=sys.stderr)


def end_children(parent_id: str, status: str, reason: str | None = None) -> None:
    """End every child run of `parent_id` that is still RUNNING with `status` (one that already ended,
    such as a diverged replica's FAILED run, keeps its own); never raises, as `end_run`."""
    import mlflow

    try:
        client = mlflow.MlflowClient()
        experiment_id = client.get_run(parent_id).info.experiment_id
        running = retry_locked(lambda: client.search_runs(
            [experiment_id], f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'RUNNING'"
        ))
    except Exception as exc:  # noqa: BLE001 - best effort, see end_run
        print(f"warning: could not find the child runs of MLflow run {parent_id}: {exc}", file=sys.stderr)
        return
    for child in running:
        end_run(child.info.run_id, status, reason)


@contextmanager
def run_outcome(run_id: str) -> Iterator[None]:
    """Around the work of an open MLflow run: if the block is interrupted (Ctrl-C, SIGTERM, or
    `Interrupted`), end the run KILLED; if it raises anything else, end it FAILED with the error as its
    `failure_reason` tag. Its child runs that are still RUNNING end with it, with the same status. Either
    way the exception goes on. Without this, MLflow's exit handler ends the active run FINISHED, and a
    half-trained model would pose as a finished one.

    A block that completes leaves the run open: the caller ends it when all its logging is done.
    """
    try:
        with _sigterm_as_interrupt():
            yield
    except (KeyboardInterrupt, Interrupted):
        _end_with_children(run_id, "KILLED")
        raise
    except Exception as exc:
        _end_with_children(run_id, "FAILED", f"{type(exc).__name__}: {exc}")
        raise
    except SystemExit as exc:
        if exc.code not in (0, None):
            _end_with_children(run_id, "FAILED", f"exited with status {exc.code}")
        raise


def _end_with_children(run_id: str, status: str, reason: str | None = None) -> None:
    end_run(run_id, status, reason)
    end_children(run_id, status, reason and f"its parent run ended {status}: {reason}")


def reopen_run(root: Path, run_id: str, model: str, seed: int):
    """Re-enter the training run so evaluation and reporting add to it (one run per trained model).

    If the store no longer holds it (a new mlflow.db, or a generator restored from DVC's cache that
    was trained against another store), a fresh run with the same identity is started instead.
    """
    import mlflow

    experiment_id = connect(root)
    client = mlflow.MlflowClient()
    try:
        client.get_run(run_id)
        return retry_locked(lambda: mlflow.start_run(run_id=run_id))
    except mlflow.exceptions.MlflowException:
        name, tags = run_identity(model, seed)
        tags["ganpipe.training_run_missing"] = run_id
        return retry_locked(lambda: mlflow.start_run(experiment_id=experiment_id, run_name=name, tags=tags))


def start_replica_runs(
    experiment_id: str,
    parent_id: str,
    parent_name: str,
    parent_tags: dict[str, str],
    seeds: list[int],
    flat_params: dict[str, Any],
) -> list[str]:
    """One child run per replica under the parent: name `<parent>-r<r>`, tags replica and replica_seed."""
    import mlflow

    client = mlflow.MlflowClient()
    ids = []
    for r, seed in enumerate(seeds):
        tags = {**parent_tags, "mlflow.parentRunId": parent_id, "replica": str(r), "replica_seed": str(seed)}
        run = retry_locked(lambda: client.create_run(experiment_id, run_name=f"{parent_name}-r{r}", tags=tags))
        log_params_to(run.info.run_id, {**flat_params, "replica": r, "replica_seed": seed})
        ids.append(run.info.run_id)
    return ids


def reopen_runs(run_ids: list[str]) -> None:
    """Mark runs of an interrupted training RUNNING again when training resumes into them."""
    import mlflow

    client = mlflow.MlflowClient()
    for run_id in run_ids:
        retry_locked(lambda: client.update_run(run_id, status="RUNNING"))


def end_run_failed(run_id: str, reason: str) -> None:
    """A run that did not produce a result: status FAILED and a `failure_reason` tag saying why."""
    import mlflow

    client = mlflow.MlflowClient()
    retry_locked(lambda: client.set_tag(run_id, "failure_reason", reason))
    retry_locked(lambda: client.set_terminated(run_id, status="FAILED"))

"""MLflow tracking: where the store is, one run per trained model, and what goes into it.

The store is `MLFLOW_TRACKING_URI` when set, else `sqlite:///<repo root>/mlflow.db` with artifacts in
`<repo root>/mlartifacts`. The repo root is `$DVC_ROOT` inside a DVC stage, which points at the real
repository even for queued and `--temp` experiments (their working copy is deleted afterwards).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar
from urllib.parse import unquote, urlparse

from pipeline.common.errors import GanpipeError, Interrupted

EXPERIMENT = "ganpipe"
GRID_ID_ENV, GRID_TAG = "GANPIPE_GRID_ID", "grid_id"  # `ganpipe grid`'s id, from its driver to each run's tags
# MLflow 3 opens an experiment in its GenAI view (traces, latency) unless told otherwise. Releases before
# the UI's GenAI / Model training switch read this tag ("custom model development": runs table, charts,
# compare page); 3.17 follows the switch instead, see UI_VIEW below.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
DESCRIPTION_TAG = "mlflow.note.content"  # the run page's Description box (markdown)
# Metric and param name groups: MLflow's UI draws one collapsible chart section per prefix before "/".
TRAIN, EVAL, VARIANT = "train", "eval", "variant"
PARAM_SECTIONS = {"train": TRAIN, "evaluate": EVAL, "evaluator": "evaluator"}  # params.yaml section -> prefix
T = TypeVar("T")


_SET_HERE: set[str] = set()  # URIs ganpipe gave mlflow.set_tracking_uri, which copies them into the environment


def user_tracking_uri() -> str | None:
    """MLFLOW_TRACKING_URI as the user set it. mlflow.set_tracking_uri writes the variable too (for
    subprocesses), so a value ganpipe set itself is not the user's choice: a second repository opened
    in the same process must get its own store."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return None if not uri or uri in _SET_HERE else uri


def use(uri: str) -> None:
    import mlflow

    if os.environ.get("MLFLOW_TRACKING_URI") != uri:
        _SET_HERE.add(uri)
    mlflow.set_tracking_uri(uri)


def tracking_uri(root: Path) -> str:
    return user_tracking_uri() or f"sqlite:///{Path(root).resolve()}/mlflow.db"


def artifact_root(root: Path) -> str:
    return (Path(root).resolve() / "mlartifacts").as_uri()


def _fix_hint() -> str:
    return (
        "Unset MLFLOW_TRACKING_URI to use the repository's sqlite store (mlflow.db at the repo root), or "
        "set it to a reachable server, e.g. http://127.0.0.1:5000 after `mlflow server --port 5000`."
    )


def check_store(uri: str, timeout: float = 5.0) -> None:
    """Fail early, before training, when the tracking store is malformed or unreachable."""
    parsed = urlparse(uri)
    scheme = parsed.scheme.split("+")[0]
    if scheme in ("http", "https"):
        if not parsed.hostname:
            raise GanpipeError(f"MLFLOW_TRACKING_URI={uri!r} has no host name. {_fix_hint()}")
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
                resp.read()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise GanpipeError(f"the MLflow server at {uri} is unreachable ({reason}). {_fix_hint()}") from None
    elif scheme == "sqlite":
        db = parsed.path if parsed.netloc == "" else None
        if not db or db == "/":
            raise GanpipeError(f"MLFLOW_TRACKING_URI={uri!r} names no database file. {_fix_hint()}")
        folder = Path(db).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise GanpipeError(f"the MLflow database folder {folder} does not exist or is not writable. {_fix_hint()}")
        kind = sqlite_kind(Path(db))
        if kind.startswith("not sqlite"):
            raise GanpipeError(f"{db} (from the tracking URI {uri}) is not an SQLite database ({kind[11:]}). {_fix_hint()}")
        if kind.startswith("other"):
            raise GanpipeError(
                f"{db} (from the tracking URI {uri}) is an SQLite database of something else ({kind[6:]}); "
                f"ganpipe does not add MLflow's tables to it. {_fix_hint()}"
            )
    elif scheme in ("file", "") and uri:
        folder = Path(unquote(parsed.path) if scheme == "file" else uri)
        if folder.is_file():
            db = "sqlite:///" + str(folder.resolve()).lstrip("/")
            raise GanpipeError(
                f"MLFLOW_TRACKING_URI={uri!r} names a file, but without a scheme MLflow reads it as a folder "
                f"store. For an SQLite database write MLFLOW_TRACKING_URI={db}. {_fix_hint()}"
            )
        # MLflow 3 refuses its folder ("file") store unless MLFLOW_ALLOW_FILE_STORE=true; refusing here
        # beats MLflow's traceback after the data has been loaded.
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("true", "1"):
            raise GanpipeError(
                f"MLFLOW_TRACKING_URI={uri!r} names a folder store, which MLflow 3 no longer accepts by default. "
                f"{_fix_hint()} An existing folder store moves to a database with `mlflow migrate-filestore`, "
                "or set MLFLOW_ALLOW_FILE_STORE=true to keep using it."
            )
        if not folder.parent.is_dir():
            raise GanpipeError(f"the MLflow store folder {folder.parent} does not exist. {_fix_hint()}")
    elif scheme not in ("postgresql", "mysql", "mssql", "databricks"):
        raise GanpipeError(f"MLFLOW_TRACKING_URI={uri!r} is not a tracking URI MLflow understands. {_fix_hint()}")


MLFLOW_TABLES = {"experiments", "runs", "alembic_version"}


def sqlite_kind(db: Path) -> str:
    """What a would-be MLflow database file is, read without creating or changing anything:
    "missing", "empty" (no tables yet: MLflow may create its own), "mlflow", "other: <tables>" or
    "not sqlite: <reason>"."""
    if not db.exists():
        return "missing"
    if db.is_dir():
        return "not sqlite: it is a directory"
    try:
        with open(db, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        return f"not sqlite: {exc.strerror}"
    if not head:
        return "empty"
    if head != b"SQLite format 3\x00":
        return "not sqlite: it does not start with SQLite's header"
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            con.close()
    except sqlite3.Error as exc:
        return f"not sqlite: {exc}"
    if not tables:
        return "empty"
    if MLFLOW_TABLES <= tables:
        return "mlflow"
    return "other: tables " + ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")


def retry_locked(fn: Callable[[], T], attempts: int = 8, first_wait: float = 0.25) -> T:
    """Retry an MLflow call that hit sqlite's "database is locked" (parallel queued experiments)."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:  # MLflow wraps the sqlite error in its own exception types
            if "locked" not in str(exc).lower() or attempt == attempts - 1:
                raise
            wait = first_wait * 2**attempt
            print(f"MLflow store busy (sqlite database is locked); retrying in {wait:.2f} s", file=sys.stderr)
            time.sleep(wait)
    raise AssertionError("unreachable")


def connect(root: Path) -> str:
    """Point MLflow at the store and make sure the ganpipe experiment exists; return its id."""
    import mlflow

    uri = tracking_uri(root)
    check_store(uri)
    if user_tracking_uri() is None:
        retry_locked(lambda: follow_repository(Path(root).resolve() / "mlflow.db", artifact_root(root)))
    use(uri)
    client = mlflow.MlflowClient()

    def get_or_create() -> str:
        exp = client.get_experiment_by_name(EXPERIMENT)
        if exp is not None:
            return exp.experiment_id
        location = None if uri.startswith(("http://", "https://")) else artifact_root(root)
        try:
            return client.create_experiment(EXPERIMENT, artifact_location=location)
        except Exception:  # another process created it in between
            exp = client.get_experiment_by_name(EXPERIMENT)
            if exp is None:
                raise
            return exp.experiment_id

    experiment_id = retry_locked(get_or_create)
    retry_locked(lambda: client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND))
    return experiment_id


def follow_repository(db: Path, artifacts: str) -> None:
    """Make the repository's own store write artifacts under this root after the repository moved or
    was copied.

    MLflow fixes an experiment's artifact location (an absolute URI) when the experiment is created,
    and each run's when the run is created, and offers no call to change either; so a moved or copied
    repository would keep writing into the original's mlartifacts/. The store and mlartifacts/ travel
    together (both sit at the repository root), so the experiment is pointed at this root's
    mlartifacts/, and each earlier run or logged model whose artifacts are found under this root too.
    Only the pipeline's own default store is touched, never a store named by MLFLOW_TRACKING_URI.
    """
    if sqlite_kind(db) != "mlflow":
        return
    con = sqlite3.connect(db, timeout=30)
    try:
        with con:  # one transaction
            row = con.execute("SELECT experiment_id, artifact_location FROM experiments WHERE name = ?", (EXPERIMENT,)).fetchone()
            if row is None or row[1] == artifacts or not str(row[1]).rstrip("/").endswith("/mlartifacts"):
                return
            experiment_id, old = row[0], row[1].rstrip("/")
            con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?", (artifacts, experiment_id))
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            for table, key, column in (("runs", "run_uuid", "artifact_uri"), ("logged_models", "model_id", "artifact_location")):
                if table not in tables:
                    continue
                rows = con.execute(f"SELECT {key}, {column} FROM {table} WHERE experiment_id = ?", (experiment_id,))
                for ident, location in rows.fetchall():
                    if not location or not location.startswith(old + "/"):
                        continue
                    moved = artifacts + location[len(old):]
                    if Path(unquote(urlparse(moved).path)).exists():
                        con.execute(f"UPDATE {table} SET {column} = ? WHERE {key} = ?", (moved, ident))
    finally:
        con.close()


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


@contextmanager
def run_outcome(run_id: str) -> Iterator[None]:
    """Around the work of an open MLflow run: if the block is interrupted (Ctrl-C, SIGTERM, or
    `Interrupted`), end the run KILLED; if it raises anything else, end it FAILED with the error as its
    `failure_reason` tag. Either way the exception goes on. Without this, MLflow's exit handler ends
    the active run FINISHED, and a half-trained model would pose as a finished one.

    A block that completes leaves the run open: the caller ends it when all its logging is done. Nest
    one per run (a parent and each replica's child run) so each ends with its own status.
    """
    try:
        with _sigterm_as_interrupt():
            yield
    except (KeyboardInterrupt, Interrupted):
        end_run(run_id, "KILLED")
        raise
    except Exception as exc:
        end_run(run_id, "FAILED", f"{type(exc).__name__}: {exc}")
        raise
    except SystemExit as exc:
        if exc.code not in (0, None):
            end_run(run_id, "FAILED", f"exited with status {exc.code}")
        raise


def _git(args: list[str], cwd: Path) -> str:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def run_identity(model: str, seed: int, cwd: Path | None = None) -> tuple[str, dict[str, str]]:
    """The run's name and tags: DVC experiment, baseline, git commit, model and seed."""
    cwd = cwd or Path.cwd()
    exp_name = os.environ.get("DVC_EXP_NAME", "")
    baseline = os.environ.get("DVC_EXP_BASELINE_REV", "") or _git(["rev-parse", "HEAD"], cwd)
    commit = _git(["rev-parse", "HEAD"], cwd)
    tags = {
        "model": model,
        "seed": str(seed),
        "git_commit": commit,
        "mlflow.source.git.commit": commit,
        "dvc_exp_name": exp_name or "workspace",
        "dvc_baseline_rev": baseline,
    }
    if os.environ.get(GRID_ID_ENV):  # set by `ganpipe grid` for every point it runs (pipeline/grid)
        tags[GRID_TAG] = os.environ[GRID_ID_ENV]
    return f"{exp_name or 'workspace'}-{model}-s{seed}", tags


def identity_tags(model: str, seed: int, replica: int | None = None) -> dict[str, str]:
    """The tags that change when a killed experiment is resumed under a new DVC experiment name.

    A resumed run continues the killed attempt's MLflow runs; setting these again on the parent
    (replica None) and on each child (replica r) keeps the run names `<exp>-<model>` / `<exp>-<model>-r<r>`
    and `dvc_exp_name` equal to what `dvc exp ls` shows for the experiment that finished it."""
    _, tags = run_identity(model, seed)
    name = f"{tags['dvc_exp_name']}-{model}" + ("" if replica is None else f"-r{replica}")
    return {"mlflow.runName": name, "dvc_exp_name": tags["dvc_exp_name"], "dvc_baseline_rev": tags["dvc_baseline_rev"]}


def set_tags_on(run_id: str, tags: dict[str, str]) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    for key, value in tags.items():
        retry_locked(lambda: client.set_tag(run_id, key, value))


def metric_name(section: str, key: str) -> str:
    """A grouped MLflow metric name, e.g. metric_name(TRAIN, "d_loss") == "train/d_loss"."""
    return f"{section}/{key}"


def metric_names(section: str, values: dict[str, Any]) -> dict[str, Any]:
    return {metric_name(section, k): v for k, v in values.items()}


def run_params(params: Any) -> dict[str, Any]:
    """What one run logs as MLflow params: the resolved variant under `variant/`, the shared sections
    (`train/`, `eval/`, `evaluator/`) and the top-level scalars (model, seed, replicas, ...).

    Other presets are left out, so the compare page's "show diff only" shows what differs between the
    runs, not 50 settings of variants they did not train; download settings change no result."""
    data = params.model_dump(mode="json")
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key == "variants":
            out.update(_flat(data["variants"][data["model"]], f"{VARIANT}/"))
        elif key in PARAM_SECTIONS:
            out.update(_flat(value, f"{PARAM_SECTIONS[key]}/"))
        elif not isinstance(value, dict):
            out[key] = value
    return {k: ("null" if v is None else v) for k, v in out.items()}


def _flat(value: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        return {prefix.rstrip("/"): value}
    out: dict[str, Any] = {}
    for k, v in value.items():
        out.update(_flat(v, f"{prefix}{k}/"))
    return out


def log_params_flat(flat: dict[str, Any]) -> None:
    import mlflow

    mlflow.log_params({k: ("null" if v is None else v) for k, v in flat.items()})


LOW_CONFIDENCE = 0.5  # mean top-class probability below this: the evaluator cannot tell most samples' digit


def quality_note(result: dict[str, Any], real_confidence: float | None = None) -> str | None:
    """A plain sentence when most samples are not recognisable digits, so a diversity verdict is not
    read as a statement about digits. `real_confidence`: the same on real subsets (calibration)."""
    confidence = result.get("mean_confidence")
    if confidence is None or confidence >= LOW_CONFIDENCE:
        return None
    real = f"real MNIST: {real_confidence:.2f}" if real_confidence is not None else "real MNIST: about 0.99"
    return (
        f"Most samples are not recognisable digits: the evaluator's mean confidence is {confidence:.2f} "
        f"({real}), so coverage and diversity describe blobs, not digits."
    )


def describe_verdict(result: dict[str, Any], exp_name: str = "", real_confidence: float | None = None) -> str:
    """The run's description (markdown): the verdict, its evidence, and the headline numbers beside it."""
    verdict = result["collapse"]
    head = f"**Mode collapse: {verdict['kind']}**" if verdict["detected"] else "**No mode collapse detected**"
    numbers = [
        f"FLD {result['fld']:.1f}",
        f"{result['class_coverage']} of 10 digits covered",
        f"mean confidence {result['mean_confidence']:.2f}" if result.get("mean_confidence") is not None else "",
        f"label accuracy {result['label_accuracy']:.2f}" if result.get("label_accuracy") is not None else "",
        f"collapse rate {result['collapse_rate']:.2f}" if result.get("collapse_rate") is not None else "",
    ]
    lines = [head, "", " · ".join(n for n in numbers if n)]
    note = quality_note(result, real_confidence)
    if note:
        lines += ["", note]
    if verdict["evidence"]:
        lines += ["", "Evidence:", *[f"- {e}" for e in verdict["evidence"]]]
    if exp_name and exp_name != "workspace":
        lines += ["", f"DVC experiment `{exp_name}`: `dvc exp apply {exp_name}` restores its workspace."]
    return "\n".join(lines)


def verdict_tags(result: dict[str, Any], model: str, seed: int, calibration: dict[str, Any]) -> dict[str, str]:
    """The run's Description (describe_verdict), naming the DVC experiment the run belongs to now."""
    exp_name = identity_tags(model, seed)["dvc_exp_name"]
    real_confidence = calibration.get("real", {}).get("mean_confidence", {}).get("mean")
    return {DESCRIPTION_TAG: describe_verdict(result, exp_name, real_confidence)}


# MLflow 3.17's UI picks its GenAI or model-training view from a switch the browser remembers (default
# GenAI), not from the experiment tag; this query parameter opens the model-training view.
UI_VIEW = "workflowType=machine_learning"


def run_url(uri: str, experiment_id: str, run_id: str, ui: str = "http://127.0.0.1:5000") -> str:
    """The run's page in the MLflow UI: on the tracking server itself, else on a local `mlflow ui`."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else ui
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{UI_VIEW}"


class MetricBuffer:
    """Collect step metrics and write them in batches: one store transaction per flush, not per value."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self._pending: list = []

    def add(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), now, step) for k, v in values.items()]

    def flush(self) -> None:
        import mlflow

        client = mlflow.MlflowClient()
        while self._pending:
            chunk, self._pending = self._pending[:1000], self._pending[1000:]
            retry_locked(lambda: client.log_batch(self.run_id, metrics=chunk))


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


# --- replicas: one parent run per training, one nested child run per replica -----------------------


def training_identity(model: str, seed: int, replicas: int, cwd: Path | None = None) -> tuple[str, dict[str, str]]:
    """The parent run's name `<dvc experiment>-<model>` and its tags (run_identity's, plus `replicas`)."""
    _, tags = run_identity(model, seed, cwd)
    return f"{tags['dvc_exp_name']}-{model}", {**tags, "replicas": str(replicas)}


def _param_batches(flat: dict[str, Any]):
    from mlflow.entities import Param

    params = [Param(k, "null" if v is None else str(v)) for k, v in flat.items()]
    for start in range(0, len(params), 100):  # MLflow accepts at most 100 params per batch
        yield params[start : start + 100]


def log_params_to(run_id: str, flat: dict[str, Any]) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    for chunk in _param_batches(flat):
        retry_locked(lambda: client.log_batch(run_id, params=chunk))


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

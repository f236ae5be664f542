"""The MLflow store: where it is, whether it is usable, and connecting to it (the ganpipe experiment).

The store is `MLFLOW_TRACKING_URI` when set, else `sqlite:///<repo root>/mlflow.db` with artifacts in
`<repo root>/mlartifacts`. The repo root is `$DVC_ROOT` inside a DVC stage, which points at the real
repository even for queued and `--temp` experiments (their working copy is deleted afterwards).
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, TypeVar
from urllib.parse import unquote, urlparse

from pipeline.common.errors import GanpipeError


EXPERIMENT = "ganpipe"
# MLflow 3 opens an experiment in its GenAI view (traces, latency) unless told otherwise. Releases before
# the UI's GenAI / Model training switch read this tag ("custom model development": runs table, charts,
# compare page); 3.17 follows the switch instead, see UI_VIEW below.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
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


# MLflow 3.17's UI picks its GenAI or model-training view from a switch the browser remembers (default
# GenAI), not from the experiment tag; this query parameter opens the model-training view.
UI_VIEW = "workflowType=machine_learning"


def run_url(uri: str, experiment_id: str, run_id: str, ui: str = "http://127.0.0.1:5000") -> str:
    """The run's page in the MLflow UI: on the tracking server itself, else on a local `mlflow ui`."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else ui
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{UI_VIEW}"


# Reading runs back (ganpipe compare, sample --run-id, grid results): open an existing store, never create one.
FIX_NO_RUNS = (
    "Run the pipeline first (`dvc repro`, then e.g. `dvc exp run -S model=wgan` for another variant) from the "
    "repository root, or point MLFLOW_TRACKING_URI at the store that holds your runs."
)


def open_store(root: Path) -> str:
    """Point MLflow at the pipeline's store (same rules as training) without creating one; return its URI."""
    import mlflow

    uri = tracking_uri(root)
    parsed = urlparse(uri)
    scheme = parsed.scheme.split("+")[0]
    if scheme == "sqlite":
        db = Path(parsed.path)
        # Read-only: opening a database through MLflow would create MLflow's tables in it, so anything
        # but an existing MLflow database is refused before MLflow sees it.
        kind = sqlite_kind(db)
        if kind in ("missing", "empty"):
            raise GanpipeError(
                f"there is no MLflow store at {db} (tracking URI {uri}): no run has been logged there. {FIX_NO_RUNS}"
            )
        if kind != "mlflow":
            what = "an SQLite database" if kind.startswith("not sqlite") else "an MLflow store"
            raise GanpipeError(
                f"{db} (tracking URI {uri}) is not {what} ({kind.split(': ', 1)[1]}); ganpipe only "
                f"reads a store, so it leaves the file as it is. {FIX_NO_RUNS}"
            )
    elif scheme in ("file", ""):
        folder = Path(parsed.path if scheme == "file" else uri)
        if not folder.is_dir():
            raise GanpipeError(f"there is no MLflow store at {folder} (tracking URI {uri}). {FIX_NO_RUNS}")
    else:
        check_store(uri)  # a server: fail fast when it is unreachable
    use(uri)
    return uri


@contextmanager
def no_download_bars():
    """MLflow draws a progress bar per downloaded artifact; two per run would bury the command's output."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    old = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old

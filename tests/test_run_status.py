"""MLflow runs end with the status of what happened, the repository's store follows the repository, and
read-only commands leave stores they did not create alone. Real sqlite MLflow stores, no mocks."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3

import mlflow
import pytest

from pipeline.common import mlflow_store, run_lifecycle
from pipeline.common.errors import GanpipeError, Interrupted
from pipeline.reports import store


@pytest.fixture
def repo_root(tmp_path, monkeypatch):
    root = tmp_path / "repo"
    root.mkdir()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return root


def start(root, name: str, model: str = "vanilla", seed: str = "0") -> str:
    experiment_id = mlflow_store.connect(root)
    run = mlflow.start_run(experiment_id=experiment_id, run_name=name, tags={"model": model, "seed": seed})
    return run.info.run_id


def status(run_id: str) -> str:
    return mlflow.MlflowClient().get_run(run_id).info.status


def test_ctrl_c_sigterm_and_errors_end_the_run_killed_or_failed_and_compare_skips_them(repo_root):
    finished = start(repo_root, "complete")
    mlflow.end_run()
    outcomes = {}
    for name, fault in {
        "ctrl-c": lambda: (_ for _ in ()).throw(KeyboardInterrupt()),
        "sigterm": lambda: os.kill(os.getpid(), signal.SIGTERM),
        "interrupted": lambda: (_ for _ in ()).throw(Interrupted("stopped")),
        "error": lambda: 1 / 0,
    }.items():
        run_id = start(repo_root, name)
        with pytest.raises((KeyboardInterrupt, GanpipeError, ZeroDivisionError)):
            with run_lifecycle.run_outcome(run_id):
                fault()
        assert mlflow.active_run() is None  # popped: MLflow's exit handler cannot mark it FINISHED
        outcomes[name] = status(run_id)
    assert outcomes == {"ctrl-c": "KILLED", "sigterm": "KILLED", "interrupted": "KILLED", "error": "FAILED"}
    failed = mlflow.search_runs(filter_string="attributes.status = 'FAILED'", output_format="list",
                                experiment_names=[mlflow_store.EXPERIMENT])
    assert failed[0].data.tags["failure_reason"] == "ZeroDivisionError: division by zero"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone after the block

    run_id = start(repo_root, "completes")
    with run_lifecycle.run_outcome(run_id):
        pass
    assert status(run_id) == "RUNNING"  # the caller ends it after its last logging
    mlflow.end_run(status="KILLED")

    # `ganpipe compare` takes the latest FINISHED run of each model and seed: the complete one, not
    # the later interrupted or failed ones.
    uri = mlflow_store.open_store(repo_root)
    frame = store.select_runs(uri, mlflow_store.EXPERIMENT, [], [])
    assert list(frame["run_id"]) == [finished]


def test_a_copied_then_moved_repository_writes_artifacts_under_its_own_root(tmp_path, repo_root):
    old_run = start(repo_root, "in the original")
    mlflow.log_text("hello", "note.txt")
    mlflow.end_run()
    copy = tmp_path / "copy"
    shutil.copytree(repo_root, copy)
    run_id = start(copy, "in the copy")
    mlflow.log_text("x", "note.txt")
    mlflow.end_run()
    assert mlflow.MlflowClient().get_run(run_id).info.artifact_uri.startswith((copy / "mlartifacts").as_uri())
    assert len(list((repo_root / "mlartifacts").rglob("note.txt"))) == 1  # only the original's own run
    con = sqlite3.connect(repo_root / "mlflow.db")
    (location,) = con.execute("SELECT artifact_location FROM experiments WHERE name = 'ganpipe'").fetchone()
    con.close()
    assert location == (repo_root / "mlartifacts").as_uri()  # the original's store is untouched

    moved = tmp_path / "moved"
    shutil.move(copy, moved)
    new_run = start(moved, "after the move")
    mlflow.log_text("again", "note.txt")
    mlflow.end_run()
    assert not copy.exists()  # the old root was not recreated
    client = mlflow.MlflowClient()
    for run in (old_run, run_id, new_run):
        uri = client.get_run(run).info.artifact_uri
        assert uri.startswith((moved / "mlartifacts").as_uri()), uri
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="note.txt", dst_path=str(tmp_path / "dl"))
    assert open(local).read() == "x"


def tables(db) -> set[str]:
    con = sqlite3.connect(db)
    try:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        con.close()


def test_compare_on_an_unrelated_sqlite_file_refuses_and_adds_no_tables(tmp_path, monkeypatch):
    db = tmp_path / "inventory.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE parts (id INTEGER, name TEXT)")
    con.commit()
    con.close()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    with pytest.raises(GanpipeError, match="not an MLflow store.*parts"):
        mlflow_store.open_store(tmp_path)
    assert tables(db) == {"parts"}


@pytest.mark.parametrize(
    "make, uri, says",
    [
        (lambda p: p.write_text("not a database\n"), "sqlite:///{p}", "is not an SQLite database"),
        (lambda p: p.write_text("not a database\n"), "{p}", "names a file"),
        (lambda p: p.mkdir(), "file://{p}", "folder store"),
        (lambda p: None, "{p}", "folder store"),
    ],
)
def test_a_tracking_uri_naming_a_text_file_or_a_folder_store_is_refused(tmp_path, monkeypatch, make, uri, says):
    target = tmp_path / "x.db"
    make(target)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(GanpipeError, match=says) as info:
        mlflow_store.check_store(uri.format(p=target))
    assert "MLFLOW_TRACKING_URI" in str(info.value)


def test_a_dcgan_generator_logs_to_mlflow_without_warnings_and_loads_back_exact(repo_root):
    """The DCGAN nets keep conv weights channels_last for speed; logged as they are, MLflow's pt2 archive
    warned "No complete tensor found in the group" once per replica. The logged model is G's network on z
    and must give the same images when loaded back without ganpipe."""
    import warnings

    import torch

    from pipeline.gan.networks import dcgan
    from pipeline.runs.training_run import _log_generator_model

    torch.manual_seed(0)
    generator = dcgan.Generator(z_dim=100, width=8)
    assert generator.net[4].weight.is_contiguous(memory_format=torch.channels_last)  # what training uses
    run_id = start(repo_root, "dcgan-log")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _log_generator_model(generator)
    mlflow.end_run()
    assert not [w for w in caught if "complete tensor" in str(w.message)]
    loaded = mlflow.pytorch.load_model(f"runs:/{run_id}/generator")
    z = torch.randn(4, 100)
    with torch.no_grad():
        assert torch.equal(loaded(z), generator.eval().net(z))

"""dvc.yaml keeps the conventions that make DVC's run cache and `dvc checkout` work (no DVC run needed)."""

from __future__ import annotations

import yaml

from tests.conftest import REPO, make_dvc_repo, repo_params


def stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def test_every_output_but_metrics_is_cached_so_every_stage_is_run_cached():
    # DVC skips its run cache for a stage with any `cache: false` output that is not a metric or plot,
    # and `dvc checkout` cannot bring such a file back.
    for name, stage in stages().items():
        for out in stage.get("outs", []):
            if isinstance(out, dict):
                (path, options), = out.items()
                assert (options or {}).get("cache", True), f"stage {name}: {path} has cache: false"
        assert not any(isinstance(o, dict) and (list(o.values())[0] or {}).get("persist") for o in stage.get("outs", []))


def test_every_stage_waits_for_the_params_check():
    for name, stage in stages().items():
        if name != "check_params":
            assert "outputs/params_check.txt" in stage["deps"], name
    check = stages()["check_params"]
    assert check["params"] == [{"params.yaml": None}] and check["outs"] == ["outputs/params_check.txt"]


def test_equal_content_saved_twice_gives_equal_bytes(tmp_path):
    """DVC hashes bytes: a stage that recomputes the same result must write the same file, or every
    stage downstream misses DVC's run cache. (torch.save given a path names the archive's inner folder
    after the temporary file's random name.)"""
    import hashlib

    import numpy as np
    import torch

    from pipeline.common import atomic

    def digest(path):
        return hashlib.md5(path.read_bytes()).hexdigest()

    state = {"weight": torch.arange(6.0).reshape(2, 3)}
    atomic.save_torch(tmp_path / "a.pt", state)
    atomic.save_torch(tmp_path / "b" / "a.pt", state)
    assert digest(tmp_path / "a.pt") == digest(tmp_path / "b" / "a.pt")
    assert torch.equal(torch.load(tmp_path / "a.pt", weights_only=True)["weight"], state["weight"])
    atomic.save_npz(tmp_path / "x.npz", images=np.ones((2, 28, 28), np.uint8))
    atomic.save_npz(tmp_path / "b" / "x.npz", images=np.ones((2, 28, 28), np.uint8))
    assert digest(tmp_path / "x.npz") == digest(tmp_path / "b" / "x.npz")


def test_every_code_dependency_exists():
    """A moved or renamed module must be renamed in dvc.yaml too: DVC refuses a stage with a missing dep."""
    for name, stage in stages().items():
        for dep in stage["deps"]:
            if dep.startswith(("pipeline/", "stages/")):
                assert (REPO / dep).exists(), f"stage {name}: {dep} does not exist"


def test_after_python_ran_every_stages_code_is_as_the_committed_lock_names_it(tmp_path):
    """`dvc status` must not call any stage changed for its code. Python writes
    __pycache__/ into every package it imports (the tests, each stage), so a folder dependency such as
    pipeline/instrument/metrics hashes the same only because .dvcignore leaves those out; without that,
    the first `dvc repro` after `make test` would retrain the evaluator and everything after it. A
    failure naming a module means dvc.lock was not refreshed after that module changed."""
    import json
    import shutil
    import subprocess

    # the code, dvc.yaml, .dvcignore and dvc.lock, without this checkout's bytecode or outputs
    clone = make_dvc_repo(tmp_path / "clone", repo_params())
    shutil.copy(REPO / "dvc.lock", clone / "dvc.lock")
    for package in [*clone.glob("pipeline/**/__init__.py"), *clone.glob("stages/__init__.py")]:
        (package.parent / "__pycache__").mkdir(exist_ok=True)
        (package.parent / "__pycache__" / "module.cpython-311.pyc").write_bytes(b"bytecode")
    status = subprocess.run(["dvc", "status", "--json"], cwd=clone, check=True, capture_output=True, text=True)
    changed_code = [
        f"{stage}: {path} {how}"
        for stage, entries in json.loads(status.stdout).items()
        for entry in entries if isinstance(entry, dict)
        for path, how in entry.get("changed deps", {}).items()
        if path.startswith(("pipeline/", "stages/"))
    ]
    assert changed_code == [], "dvc.lock does not match the committed code: " + "; ".join(changed_code)

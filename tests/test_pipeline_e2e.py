"""End to end, on the real stack: a temporary git + DVC repository running this pipeline with tiny
budgets on real MNIST, with the MLflow runs checked in the repository's own sqlite store."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.instrument.rates import wilson_interval

from tests.conftest import dvc, dvc_env, git, new_repo, runs, tiny_params, wait_for_queue

pytestmark = pytest.mark.slow  # real DVC + MLflow runs: minutes; `-m 'not slow'` skips them

REQUIRED_KEYS = {
    "n_samples", "fld", "kid", "class_coverage", "class_kl", "mnist_score", "precision", "recall", "density",
    "coverage", "ndb", "ndb_js", "duplicate_rate", "intra_class_diversity", "label_accuracy", "collapse",
}




def test_repro_experiments_and_queue_land_in_the_repos_mlflow(tmp_path, shared_cache):
    repo = new_repo(tmp_path / "repo", tiny_params(), shared_cache)

    first = dvc(repo, "repro").stdout
    for stage in ("download", "prepare", "evaluator", "calibrate", "train", "evaluate", "report"):
        assert f"Running stage '{stage}'" in first or f"Stage '{stage}' is cached" in first
    for out in ("data/prepared/mnist.npz", "outputs/train/generator.pt", "metrics/evaluate.json", "reports/report.html"):
        assert (repo / out).is_file(), out
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "baseline results", cwd=repo)

    again = dvc(repo, "repro").stdout
    assert "Running stage" not in again and "up to date" in again

    dvc(repo, "exp", "run", "-S", "model=wgan")
    dvc(repo, "exp", "run", "-S", "model=cgan", "-S", "replicas=3")  # the replica axis from the command line
    shown = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    experiments = [e for rev in shown for e in (rev.get("experiments") or [])]
    models = set()
    for exp in experiments:
        data = exp["revs"][0]["data"]
        models.add(data["params"]["params.yaml"]["data"]["model"])
        assert "fld" in data["metrics"]["metrics/evaluate.json"]["data"]
    assert {"wgan", "cgan"} <= models

    all_runs = runs(repo)
    by_model = {r.data.tags["model"]: r for r in all_runs if "mlflow.parentRunId" not in r.data.tags}
    children = {
        name: sorted((c for c in all_runs if c.data.tags.get("mlflow.parentRunId") == run.info.run_id),
                     key=lambda c: int(c.data.tags["replica"]))
        for name, run in by_model.items()
    }
    assert set(by_model) == {"vanilla", "wgan", "cgan"}
    for name, run in by_model.items():
        assert run.info.status == "FINISHED"
        replicas = 3 if name == "cgan" else 2
        assert run.data.tags["seed"] == "0" and run.data.tags["git_commit"] and run.data.tags["replicas"] == str(replicas)
        assert "eval/fld" in run.data.metrics and "eval/collapse_rate" in run.data.metrics
        assert run.data.tags["mlflow.note.content"].startswith("**")  # the description sums up the verdicts
        assert run.data.params["model"] == name
        # only the trained variant's settings, grouped: no other preset is logged
        assert not any(k.startswith("variants") for k in run.data.params), sorted(run.data.params)
        assert {"variant/objective", "variant/lr", "train/log_every", "eval/n_samples"} <= set(run.data.params)
        artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
        assert {"evaluation", "report"} <= artifacts, artifacts
        assert [c.data.tags["replica"] for c in children[name]] == [str(r) for r in range(replicas)]
        for child in children[name]:  # each replica: its grouped params, losses and sample grids (step 0 first)
            assert child.info.status == "FINISHED" and "train/d_loss" in child.data.metrics
            assert "eval/fld" in child.data.metrics and "mlflow.note.content" in child.data.tags
            assert child.data.params["model"] == name and child.data.params["replica_seed"] == child.data.tags["replica_seed"]
            assert {"variant/objective", "train/log_every", "eval/n_samples"} <= set(child.data.params)
            assert "images" in {a.path for a in mlflow.MlflowClient().list_artifacts(child.info.run_id)}
    assert by_model["wgan"].data.params["variant/n_critic"] == "5"
    wgan_child = children["wgan"][0]
    assert wgan_child.data.params["variant/n_critic"] == "5"
    assert "train/w_estimate" in wgan_child.data.metrics
    history = mlflow.MlflowClient().get_metric_history(wgan_child.info.run_id, "train/d_loss")
    assert len(history) == 60 // 20  # losses every log_every steps, never per step
    assert by_model["wgan"].data.tags["dvc_exp_name"] != "workspace"
    assert by_model["wgan"].info.run_name == f"{by_model['wgan'].data.tags['dvc_exp_name']}-wgan"
    logged_models = mlflow.search_logged_models(experiment_ids=[by_model["cgan"].info.experiment_id], output_format="list")
    for child in children["cgan"]:  # one generator model per replica
        assert any(m.source_run_id == child.info.run_id and m.name == "generator" for m in logged_models)

    # The cgan experiment (in the workspace now): a collapse rate over its three replicas with its Wilson
    # interval, medians, one CSV row per replica, and the MLflow parent/children holding the same numbers.
    metrics = json.loads((repo / "metrics/evaluate.json").read_text())
    k, n = metrics["collapsed"], metrics["evaluated"]
    assert metrics["replicas"] == 3 and n + metrics["diverged"] == 3
    assert metrics["collapse_rate"] == pytest.approx(k / n)
    assert metrics["collapse_rate_ci"] == pytest.approx(wilson_interval(k, n), abs=1e-6)
    assert metrics["fld"] > 0 and metrics["fld_iqr"] >= 0 and metrics["n_samples"] == 400
    table = pd.read_csv(repo / "outputs/evaluate/replicas.csv")
    assert table["replica"].tolist() == [0, 1, 2] and table["seed"].nunique() == 3
    assert table["fld"].median() == pytest.approx(metrics["fld"], rel=1e-4)
    for child, row in zip(children["cgan"], table.itertuples()):
        child = mlflow.get_run(child.info.run_id)  # re-read: evaluation added to it after training
        assert child.data.tags["collapse"] == row.collapse
        assert child.data.metrics["eval/fld"] == pytest.approx(row.fld, rel=1e-4)
    cgan_parent = mlflow.get_run(by_model["cgan"].info.run_id).data
    assert cgan_parent.metrics["eval/collapse_rate"] == pytest.approx(metrics["collapse_rate"])
    assert cgan_parent.metrics["eval/collapse_rate_ci_hi"] == pytest.approx(metrics["collapse_rate_ci"][1])

    # DVC's own views.
    assert "fld" in dvc(repo, "metrics", "show").stdout
    diff = dvc(repo, "params", "diff", "HEAD").stdout  # the workspace holds the cgan experiment
    assert "model" in diff and "vanilla" in diff and "cgan" in diff
    assert "outputs/train/variant.yaml" in diff and "conditional" in diff  # the resolved preset, not just its name
    kinds = {e["revs"][0]["data"]["metrics"]["metrics/evaluate.json"]["data"]["collapse_kind"] for e in experiments}
    assert kinds <= {"none", "inter-class", "intra-class", "both"}
    dvc(repo, "plots", "show", "-o", str(tmp_path / "plots"))
    html = (tmp_path / "plots" / "index.html").read_text()
    assert "replica_2.png" in html and "Losses" in html and "FLD per replica" in html
    # Every declared plot renders for every experiment: DVC's JSON parses, each vega spec holds data of
    # all three revisions (the W-estimate only of the WGAN one, Stacked MNIST's modes of none), titles carry
    # no quote characters.
    names = [e["name"] for e in experiments]
    shown = json.loads(dvc(repo, "plots", "diff", "HEAD", *names, "--json").stdout)
    specs = {title: item["content"] for title, items in shown["data"].items() for item in items if item["type"] == "vega"}
    # 12 declared plots; on MNIST, Stacked MNIST's mode histogram has a header and no rows and its modes curve no
    # column, so DVC draws neither for these revisions.
    assert len([t for t in specs if "Stacked MNIST" not in t]) == 10, sorted(specs)
    for title, spec in specs.items():
        assert "'" not in json.dumps(spec["title"]), title
        if "Stacked MNIST" in title:
            continue
        revs = {row["rev"] for row in spec["data"]["values"]}
        assert len(revs) == (1 if "W-estimate" in title else 3), (title, revs)
    # DVC reports a missing column as an error: only the WGAN plot (no w_estimate outside WGAN runs) and the
    # Stacked MNIST plots (no modes_captured on MNIST) may have one.
    errors = {e["name"] for e in shown.get("errors", [])}
    assert all("W-estimate" in name or "Stacked MNIST" in name for name in errors), errors

    # `ganpipe compare` reads the trainings back: the cgan row is one training of three replicas.
    compared = subprocess.run(["ganpipe", "compare", "--out-dir", str(tmp_path / "comparison")], cwd=repo,
                              env=dvc_env(repo), capture_output=True, text=True)
    assert compared.returncode == 0, compared.stderr
    lo, hi = metrics["collapse_rate_ci"]
    assert f"cgan {k}/{n} [{lo:.2f}, {hi:.2f}]" in (tmp_path / "comparison" / "comparison.md").read_text()

    # The instrument on the pipeline's own samples (a CGAN: samples carry requested labels).
    out = subprocess.run(
        ["ganpipe", "evaluate", "--samples", "outputs/evaluate/samples.npz"],
        cwd=repo, env=dvc_env(repo), capture_output=True, text=True, check=True,
    )
    result = json.loads(out.stdout)
    assert REQUIRED_KEYS <= set(result) and result["label_accuracy"] is not None
    assert {"detected", "kind", "evidence", "severity", "borderline", "imbalance", "checks"} <= set(result["collapse"])
    subprocess.run(
        ["ganpipe", "sample", "--digit", "7", "--n", "20", "--out", "sevens.png"],
        cwd=repo, env=dvc_env(repo), check=True, capture_output=True,
    )
    assert (repo / "sevens.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len([line for line in out.stderr.splitlines() if line.startswith("verdict: ")]) == 1  # beside the JSON
    # The same generator three ways: the workspace (the cgan experiment), its DVC experiment, its MLflow run.
    cgan_exp = next(e["name"] for e in experiments if e["revs"][0]["data"]["params"]["params.yaml"]["data"]["model"] == "cgan")
    drawn = {}
    for how, extra in {"workspace": [], "exp": ["--exp", cgan_exp], "run": ["--run-id", by_model["cgan"].info.run_id]}.items():
        subprocess.run(["ganpipe", "sample", "--n", "20", "--out", f"{how}.npz", *extra],
                       cwd=repo, env=dvc_env(repo), check=True, capture_output=True)
        with np.load(repo / f"{how}.npz") as f:
            drawn[how] = f["images"]
    assert np.array_equal(drawn["workspace"], drawn["exp"]) and np.array_equal(drawn["workspace"], drawn["run"])
    # Replica 1: from the experiment's generator file and from its own child run (a parent id gives replica 0).
    for how, extra in {"exp r1": ["--exp", cgan_exp, "--replica", "1"],
                       "run r1": ["--run-id", children["cgan"][1].info.run_id]}.items():
        subprocess.run(["ganpipe", "sample", "--n", "20", "--out", f"{how}.npz", *extra],
                       cwd=repo, env=dvc_env(repo), check=True, capture_output=True)
        with np.load(repo / f"{how}.npz") as f:
            drawn[how] = f["images"]
    assert np.array_equal(drawn["exp r1"], drawn["run r1"]) and not np.array_equal(drawn["exp r1"], drawn["exp"])

    # Queued experiments run in temporary copies; their runs and artifacts must land in this repo.
    # Two at once (-j 2): both write to the same sqlite store concurrently.
    dvc(repo, "exp", "run", "--queue", "-S", "model=vanilla,wgan", "-S", "seed=1")
    dvc(repo, "queue", "start", "-j", "2")
    status = wait_for_queue(repo)
    assert "Failed" not in status, status
    seed1 = [r for r in runs(repo) if r.data.tags["seed"] == "1" and "mlflow.parentRunId" not in r.data.tags]
    assert sorted(r.data.tags["model"] for r in seed1) == ["vanilla", "wgan"]
    for run in seed1:
        assert run.info.status == "FINISHED"
        local = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="evaluation/evaluation.json"))
        assert json.loads(local.read_text())["summary"]["n_samples"] == 400  # the median over replicas
        assert str(repo / "mlartifacts") in run.info.artifact_uri.replace("file://", "")


OUTPUTS = (
    "outputs/params_check.txt", "data/prepared/mnist.npz", "outputs/evaluator/classifier.pt",
    "outputs/calibration/calibration.json", "outputs/train/generator.pt", "outputs/train/losses.csv",
    "outputs/train/collapse_curve.csv", "outputs/train/mlflow_run.json", "outputs/evaluate/evaluation.json",
    "outputs/evaluate/sample_grid.png", "metrics/train.json", "metrics/evaluate.json", "reports/report.html",
)


def test_run_cache_reuses_stages_restores_trained_params_and_a_refused_param_deletes_nothing(tmp_path, shared_cache):
    params = tiny_params()
    params["seed"] = 21  # seeds 21 and 22 are trained by no other test sharing the DVC cache
    repo = new_repo(tmp_path / "repo", params, shared_cache)
    dvc(repo, "repro")
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "baseline results", cwd=repo)

    # A --temp experiment runs in a fresh copy: unchanged stages come from the cache, not from a re-run.
    temp = dvc(repo, "exp", "run", "--temp", "-S", "seed=22").stdout
    for stage in ("evaluator", "calibrate"):
        assert f"Running stage '{stage}'" not in temp, temp
    assert "Running stage 'train'" in temp

    # Back in the workspace, a param set trained before is restored from the run cache, not retrained.
    for seed in ("22", "21"):
        out = dvc(repo, "exp", "run", "-S", f"seed={seed}").stdout
        assert "Running stage 'train'" not in out and "Stage 'train' is cached" in out, out
        assert yaml.safe_load((repo / "params.yaml").read_text())["seed"] == int(seed)
    # Seed 21 and seed 22, each trained once: one parent run per training (its replicas are child runs).
    parents = [r for r in runs(repo) if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 2, [r.info.run_name for r in parents]

    # A refused param stops DVC before any stage deletes its outputs.
    before = {p: (repo / p).read_bytes() for p in OUTPUTS}
    refused = dvc(repo, "exp", "run", "-S", "seed=-1", check=False)
    assert refused.returncode != 0
    said = refused.stdout + refused.stderr
    assert "seed" in said and "Traceback" not in said
    assert "Running stage 'train'" not in said and "Running stage 'download'" not in said
    for path, content in before.items():
        if path != "outputs/params_check.txt":  # the check's own output: cached, so dvc checkout restores it
            assert (repo / path).read_bytes() == content, path
    git("checkout", "params.yaml", cwd=repo)
    dvc(repo, "checkout")
    for path, content in before.items():
        assert (repo / path).read_bytes() == content, path
    assert "up to date" in dvc(repo, "status").stdout

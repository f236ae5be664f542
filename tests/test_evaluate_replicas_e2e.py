"""End to end, the replica axis as a user meets it: `dvc exp run -S replicas=3` in a real git + DVC repo on
real MNIST, then metrics/evaluate.json, the per-replica CSV and plots, the MLflow parent with its nested
replica runs, and `ganpipe compare` reading them back."""

from __future__ import annotations

import json
import subprocess

import pandas as pd
import pytest

from tests.conftest import dvc, dvc_env, new_repo, runs, tiny_params

pytestmark = pytest.mark.slow  # a real DVC experiment: about a minute on 2 cores


def test_exp_run_with_three_replicas_reports_a_rate_and_nests_three_replica_runs(tmp_path, shared_cache):
    from pipeline.instrument.rates import wilson_interval

    repo = new_repo(tmp_path / "repo", tiny_params(), shared_cache)
    dvc(repo, "exp", "run", "-S", "replicas=3")

    metrics = json.loads((repo / "metrics/evaluate.json").read_text())
    assert metrics["replicas"] == 3 and metrics["evaluated"] + metrics["diverged"] == 3
    k, n = metrics["collapsed"], metrics["evaluated"]
    assert metrics["collapse_rate"] == pytest.approx(k / n)
    assert metrics["collapse_rate_ci"] == pytest.approx(wilson_interval(k, n), abs=1e-6)
    assert 0 <= metrics["collapse_rate_ci"][0] <= metrics["collapse_rate"] <= metrics["collapse_rate_ci"][1] <= 1
    assert metrics["fld"] > 0 and metrics["fld_iqr"] >= 0 and "class_coverage_iqr" in metrics

    table = pd.read_csv(repo / "outputs/evaluate/replicas.csv")
    assert table["replica"].tolist() == [0, 1, 2]
    assert table["fld"].median() == pytest.approx(metrics["fld"], rel=1e-4)
    assert table["seed"].nunique() == 3  # independent replicas

    all_runs = runs(repo)
    parents = [r for r in all_runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    children = sorted((r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
                      key=lambda r: int(r.data.tags["replica"]))
    assert [c.data.tags["replica"] for c in children] == ["0", "1", "2"]
    for child, row in zip(children, table.itertuples()):
        assert child.data.tags["collapse"] == row.collapse
        if row.status == "evaluated":
            assert child.data.metrics["eval_fld"] == pytest.approx(row.fld, rel=1e-4)
    assert parent.data.metrics["collapse_rate"] == pytest.approx(metrics["collapse_rate"])
    assert parent.data.metrics["collapse_rate_ci_hi"] == pytest.approx(metrics["collapse_rate_ci"][1])
    assert parent.data.metrics["eval_fld"] == pytest.approx(metrics["fld"])

    # DVC draws one dot per replica; the compare report reads the training back as one row of 3 replicas.
    dvc(repo, "plots", "show", "-o", str(tmp_path / "plots"))
    assert "FLD per replica" in (tmp_path / "plots" / "index.html").read_text()
    out = tmp_path / "comparison"
    subprocess.run(["ganpipe", "compare", "--out-dir", str(out)], cwd=repo, env=dvc_env(repo), check=True,
                   capture_output=True, text=True)
    md = (out / "comparison.md").read_text()
    assert f"vanilla {k}/{n} [{metrics['collapse_rate_ci'][0]:.2f}, {metrics['collapse_rate_ci'][1]:.2f}]" in md
    report = (repo / "reports/report.html").read_text()
    assert all(f'id="sample_grid_r{r}"' in report for r in range(3) if table["status"][r] == "evaluated")

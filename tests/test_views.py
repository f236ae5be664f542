"""The views users read: MLflow params and run descriptions, DVC's plot declarations, progress lines
in a log, and the CLI's --version and generator choices. Real MLflow sqlite stores; no mocks."""

from __future__ import annotations

import io
import re
from pathlib import Path

import mlflow
import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.common import mlflow_store, run_description, run_logging, views
from pipeline.common.console import StageProgress
from pipeline.common.params import parse_params
from tests.conftest import REPO, dvc, dvc_env, git, new_repo, tiny_params


def _params(model: str):
    raw = tiny_params()
    raw["model"] = model
    return parse_params(raw)


def test_a_run_logs_only_its_own_variant_with_grouped_names(tmp_path, monkeypatch):
    # mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI, which would point at an earlier test's store.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    experiment_id = mlflow_store.connect(tmp_path)  # a real sqlite store in tmp_path
    with mlflow.start_run(experiment_id=experiment_id) as run:
        run_logging.log_params_flat(run_logging.run_params(_params("wgan")))
    logged = mlflow.MlflowClient().get_run(run.info.run_id).data.params
    assert logged["model"] == "wgan" and logged["seed"] == "0"
    assert logged["variant/objective"] == "wasserstein" and logged["variant/n_critic"] == "5"
    assert logged["variant/optimizer"] == "rmsprop" and float(logged["variant/lr"]) == 5e-05
    assert logged["eval/verdict/min_share_ratio"] == "0.25" and logged["train/log_every"] == "20"
    # Nothing of the presets it did not train, nothing ungrouped besides the top-level scalars.
    assert not any("vanilla" in k or "cgan" in k or k.startswith("variants") for k in logged)
    assert all("/" in k for k in logged if k not in ("model", "seed", "replicas", "dataset"))
    from pipeline.common.params import VariantParams

    assert {k for k in logged if k.startswith("variant/")} == {f"variant/{f}" for f in VariantParams.model_fields}
    # MLflow 3 opens this experiment in the model-training view, not the GenAI one.
    tags = mlflow.MlflowClient().get_experiment(experiment_id).tags
    assert tags[mlflow_store.EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_the_params_of_two_variants_differ_in_what_makes_them_different():
    vanilla, wgan = run_logging.run_params(_params("vanilla")), run_logging.run_params(_params("wgan"))
    differ = {k for k in vanilla if vanilla[k] != wgan.get(k)}
    assert differ == {"model", "variant/objective", "variant/optimizer", "variant/lr", "variant/n_critic", "variant/clip"}


def _result(kind: str, confidence: float) -> dict:
    detected = kind != "none"
    return {
        "fld": 321.54, "class_coverage": 3, "mean_confidence": confidence, "label_accuracy": None,
        "collapse": {"detected": detected, "kind": kind,
                     "evidence": ["only 3 of 10 digits have >= 0.25 of their MNIST share"] if detected else []},
    }


def test_the_run_description_and_the_verdict_line_carry_the_verdict_and_its_evidence():
    text = run_description.describe_verdict(_result("inter-class", 0.36), exp_name="wgan-tiny")
    assert text.startswith("**Mode collapse: inter-class**")
    assert "- only 3 of 10 digits have >= 0.25 of their MNIST share" in text
    assert "FLD 321.5" in text and "mean confidence 0.36" in text
    assert "not recognisable digits" in text  # 0.36: mostly blobs
    assert "dvc exp apply wgan-tiny" in text
    healthy = run_description.describe_verdict(_result("none", 0.97))
    assert healthy.startswith("**No mode collapse detected**") and "not recognisable" not in healthy
    line = views.verdict_line(_result("inter-class", 0.36))
    assert "\n" not in line and line.startswith("verdict: mode collapse (inter-class): FLD 321.5, 3/10 digits")
    assert views.verdict_metrics(_result("both", 0.5)) == {"collapse_kind": "both", "collapse_code": 3}
    assert sorted(views.KIND_CODES.values()) == [0, 1, 2, 3]


def test_without_a_terminal_progress_is_a_plain_line_every_ten_percent():
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    with StageProgress("train wgan", 2000, console=console) as bar:
        for step in range(100, 2001, 100):
            bar.update(step, d_loss=-0.0123, g_loss=0.5)
            if step % 400 == 0:
                bar.update(step, coverage=9, fld=210.37)
    lines = out.getvalue().splitlines()
    assert lines[0] == "train wgan: started (2000 steps)"
    progress = lines[1:]
    assert [int(re.search(r"(\d+)%", line).group(1)) for line in progress] == list(range(10, 101, 10))
    assert all("\x1b" not in line for line in lines)  # no terminal escapes in a log
    assert progress[0].startswith("train wgan:  10% (200/2000) elapsed 0:00:00, ETA 0:00:00 · ")
    assert "d_loss -0.0123 · g_loss 0.5" in progress[0] and "fld" not in progress[0]
    assert "coverage 9 · fld 210.4" in progress[-1]


def test_a_stage_stopped_early_says_where_in_the_log():
    out = io.StringIO()
    with StageProgress("evaluate", 3, console=Console(file=out, force_terminal=False)) as bar:
        bar.advance(step="sampled")
    assert out.getvalue().splitlines()[-1] == "evaluate: stopped at 1/3"


def test_every_declared_plot_has_axis_titles_and_a_title_safe_for_dvc_javascript():
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    declared = [p for p in plots if isinstance(p, dict)]
    assert len(declared) >= 5
    for plot in declared:
        ((title, spec),) = plot.items()
        assert not set("'\"`\\") & set(title), title
        assert spec.get("x_label") and spec.get("y_label"), title
    losses = [spec for p in declared for t, spec in p.items() if "Losses" in t][0]
    assert "w_estimate" not in str(losses["y"])  # the W-estimate has its own plot (non-WGAN revisions lack it)
    # Training curves come from replica 0's copies: the long files interleave replicas (a zigzag in DVC).
    curves = [spec for p in declared for t, spec in p.items() if "replica 0" in t]
    assert len(curves) == 4 and all(f.endswith("_r0.csv") for spec in curves for f in spec["y"])
    shares = [spec for p in declared for t, spec in p.items() if "Digit shares" in t][0]
    assert shares["template"].startswith("bar_horizontal")


def test_version_and_examples_in_every_help():
    runner = CliRunner()
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and re.fullmatch(r"ganpipe \S+\n", version.output)
    for command in ("evaluate", "sample", "compare"):
        shown = runner.invoke(app, [command, "--help"], terminal_width=200).output
        assert "Examples" in shown and f"ganpipe {command} --" in shown, command


def test_sample_refuses_two_generator_choices_and_an_unknown_run(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    runner = CliRunner()
    both = runner.invoke(app, ["sample", "--exp", "wgan-tiny", "--run-id", "abc", "--out", str(tmp_path / "x.png")])
    assert both.exit_code != 0 and "pass only one of them" in both.output and "Traceback" not in both.output
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store.tracking_uri(tmp_path))
    mlflow_store.connect(tmp_path)  # an empty but real store
    unknown = runner.invoke(app, ["sample", "--run-id", "0123456789abcdef", "--out", str(tmp_path / "x.png")])
    assert unknown.exit_code != 0 and "holds no run '0123456789abcdef'" in unknown.output
    assert not (tmp_path / "x.png").exists()


def test_mlflow_info_lines_stay_out_of_the_progress_bar():
    import logging

    from pipeline.common.console import quiet_mlflow

    monitor = logging.getLogger("mlflow.system_metrics.system_metrics_monitor")
    with quiet_mlflow():
        assert not monitor.isEnabledFor(logging.INFO) and monitor.isEnabledFor(logging.WARNING)
    assert monitor.isEnabledFor(logging.INFO)  # restored afterwards


def test_plot_tables_hold_one_replica_in_step_order():
    from pipeline.common import tables

    long = [{"step": s, "replica": r, "d_loss": 10 * r + s} for s in (20, 40) for r in (0, 1, 2)]
    rows = tables.replica_rows(long, 0)
    assert rows == [{"step": 20, "d_loss": 20}, {"step": 40, "d_loss": 40}]  # no zigzag across replicas
    assert [row["d_loss"] for row in tables.replica_rows(long, 2)] == [40, 60]


@pytest.mark.slow
def test_exp_show_view_has_the_comparison_columns_and_nothing_else(tmp_path, shared_cache):
    """`ganpipe exp-show` on a real DVC repo with a baseline and a wgan experiment of another replica count:
    exactly the ten columns, each with the experiment's value (the interval as two numbers)."""
    import csv
    import json
    import subprocess
    import sys

    from pipeline.instrument.rates import wilson_interval

    repo = new_repo(tmp_path / "repo", tiny_params(40), shared_cache)
    dvc(repo, "repro")
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "baseline results", cwd=repo)
    dvc(repo, "exp", "run", "-n", "wgan-3", "-S", "model=wgan", "-S", "replicas=3")
    shown = subprocess.run([sys.executable, "-m", "pipeline.cli", "exp-show", "--csv"], cwd=repo,
                           env=dvc_env(repo), capture_output=True, text=True, check=True).stdout
    table = list(csv.DictReader(shown.splitlines()))
    assert sorted(table[0]) == sorted(views.EXP_SHOW_COLUMNS)  # DVC orders metrics before params
    row = next(r for r in table if r["Experiment"] == "wgan-3")
    baseline = json.loads(git("show", "HEAD:metrics/evaluate.json", cwd=repo))
    assert (row["model"], row["dataset"], row["seed"]) == ("wgan", "mnist", "0")
    assert (row["params.yaml:replicas"], row["outputs/train/variant.yaml:iterations"]) == ("3", "40")
    metrics = json.loads((repo / "metrics" / "evaluate.json").read_text())  # the workspace holds the experiment
    lo, hi = wilson_interval(metrics["collapsed"], metrics["evaluated"])
    assert [float(row[k]) for k in ("collapse_rate_ci_lo", "collapse_rate_ci_hi")] == pytest.approx([lo, hi], abs=1e-6)
    assert float(row["collapse_rate"]) == pytest.approx(metrics["collapsed"] / 3)
    assert float(row["fld"]) == pytest.approx(metrics["fld"])
    main = next(r for r in table if r["Experiment"] == "" and r["model"] == "vanilla")  # the committed baseline
    assert (main["params.yaml:replicas"], float(main["fld"])) == ("2", pytest.approx(baseline["fld"]))

"""Reports: the per-run report stage and `ganpipe compare`, on real inputs and a real sqlite MLflow store.

The per-run report runs after the real evaluate stage (stages.evaluate) in a temporary workspace with a
quickly trained evaluator; the comparison reads runs logged through the pipeline's own tracking code
(tracking.connect, run_identity, log_params_flat, MetricBuffer, reopen_run), shaped like training and
evaluation log them. Budgets are tiny; training itself is tested elsewhere.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.stats import spearmanr
from typer.testing import CliRunner

from tests.conftest import tiny_params

GRID_PX = 2 * (10 * (28 + 2) + 2)  # 10x10 tiles of 28 px with a 2 px gutter, enlarged 2x by save_png
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------ helpers


class Page(HTMLParser):
    """Collects what the tests look at, and every nesting error of the markup."""

    VOID = {"meta", "img", "br", "hr", "link", "input", "col", "wbr", "source"}

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.images: list[dict[str, str]] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.external: list[str] = []
        self.text: list[str] = []
        self._table: list[list[str]] | None = None
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()
        if self.stack:
            self.errors.append(f"unclosed: {self.stack}")

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag not in self.VOID:
            self.stack.append(tag)
        if tag == "img":
            self.images.append(a)
        if tag in ("script", "link") and (a.get("src") or a.get("href")):
            self.external.append(a.get("src") or a.get("href"))
        if tag == "table":
            self._table = self.tables.setdefault(a.get("id", f"anon{len(self.tables)}"), [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()
        if tag in ("td", "th") and self._table is not None and self._cell is not None:
            self._table[-1].append("".join(self._cell).replace("\u200b", "").strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    def body_rows(self, table_id: str) -> list[list[str]]:
        return self.tables[table_id][1:]  # the first row holds the headers

    def header(self, table_id: str) -> list[str]:
        return self.tables[table_id][0]

    def image(self, image_id: str) -> bytes:
        (img,) = [i for i in self.images if i.get("id") == image_id]
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix), img["src"][:40]
        return base64.b64decode(img["src"][len(prefix):], validate=True)

    @property
    def all_text(self) -> str:
        return " ".join(" ".join(self.text).split())


def png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == PNG_SIGNATURE, "not a PNG"
    assert png[12:16] == b"IHDR"
    return struct.unpack(">II", png[16:24])


def number(cell: str) -> float:
    return float(cell.replace(",", ""))


def parse_page(path: Path) -> Page:
    page = Page(path.read_text(encoding="utf-8"))
    assert not page.errors, page.errors
    assert not page.external, f"the page fetches {page.external}"
    return page


def md_table_rows(md: str, first_header: str) -> list[list[str]]:
    """Body rows of the markdown table whose header row starts with `first_header`."""
    lines = md.splitlines()
    start = next(i for i, l in enumerate(lines) if re.match(rf"\|\s*{re.escape(first_header)}\s*\|", l))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real sqlite MLflow store, used through MLFLOW_TRACKING_URI as a user would."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv("DVC_EXP_NAME", raising=False)
        yield root


# ------------------------------------------------------------------------- per-run report (stage)


def _training_curves(steps: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Losses every 20 iterations and the collapse check every 40, as the train stage writes them; the
    W-estimate falls as FLD falls, except for one blip, so Spearman's rho is high but not 1."""
    w = 1.5 * np.exp(-steps / 120) + 0.05
    w[3] += 0.4
    losses = pd.DataFrame({"step": steps, "d_loss": -w, "g_loss": 0.2 + 0.1 * np.sin(steps), "w_estimate": w})
    check = steps[1::2]
    curve = pd.DataFrame({
        "step": check,
        "class_coverage": np.minimum(10, 4 + check // 40),
        "class_kl": 1.5 * np.exp(-check / 100),
        "fld": 40 * np.exp(-check / 90) + 3,
    })
    return losses, curve


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, mnist, store):
    """A pipeline workspace after train (generator, curves, MLflow run) and the real evaluate stage,
    then the real report stage, run in-process."""
    import mlflow
    import torch

    from pipeline.common import atomic, layout, tables, tracking
    from pipeline.instrument import evaluator, reference
    from pipeline.instrument.calibration import calibrate
    from pipeline.data.mnist import MNIST
    from pipeline.common.params import flatten, parse_params
    from pipeline.gan.generator_file import save_generators
    from pipeline.gan.variants import build
    from stages import evaluate as evaluate_stage
    from stages import report as report_stage

    ws = tmp_path_factory.mktemp("workspace")
    raw = tiny_params()
    raw.update(model="wgan", seed=0)
    raw["evaluate"].update(n_samples=200, kid_subsets=2, kid_subset_size=100, calibration_subsets=3)
    raw["report"]["neighbour_panel"] = 5
    params = parse_params(raw)
    idx = np.random.default_rng(0).permutation(len(mnist.x_train))[:3000]
    data = MNIST(mnist.x_train[idx], mnist.y_train[idx], mnist.x_test[:500], mnist.y_test[:500])

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ws)
        mp.setenv("DVC_ROOT", str(ws))
        (ws / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        atomic.save_npz(
            layout.PREPARED, x_train=data.x_train, y_train=data.y_train, x_test=data.x_test, y_test=data.y_test
        )
        # A rough evaluator (a third of the images, one epoch) is enough to exercise the report; CPU time is not.
        classifier = evaluator.train_classifier(
            data.x_train[:1000], data.y_train[:1000], epochs=1, batch_size=64, lr=2e-3, seed=0
        )
        heldout = np.arange(len(data.x_train)) >= 2000  # unseen by the classifier: part of the real baseline pool
        ref = reference.build(classifier, data, heldout=heldout, ndb_bins=10, kmeans_fit_size=1000, seed=0)
        evaluator.save(classifier, layout.CLASSIFIER)
        reference.save(ref, layout.REFERENCE)
        atomic.write_json(layout.CALIBRATION, calibrate(ref, params.evaluate, 0))

        # What the train stage leaves behind (an untrained generator is enough for the report).
        save_generators(layout.GENERATOR, [build(params.variant, torch.device("cpu"), 0).generator], params.variant, [0], [None])
        # Two replicas in the long format; replica 1's W-estimate runs against its FLD, so a report that
        # mixed the replicas would state another rho than replica 0's.
        losses, curve = _training_curves(np.arange(20, 420, 20))
        other = losses.assign(w_estimate=losses["w_estimate"][::-1].to_numpy())
        long_losses = pd.concat([losses.assign(replica=0), other.assign(replica=1)]).sort_values(["step", "replica"])
        long_curve = pd.concat([curve.assign(replica=0), curve.assign(replica=1)]).sort_values(["step", "replica"])
        tables.write_long_and_replica0(layout.LOSS_HISTORY, layout.LOSS_HISTORY_PLOT, long_losses.to_dict("records"))
        tables.write_long_and_replica0(layout.COLLAPSE_CURVE, layout.COLLAPSE_CURVE_PLOT, long_curve.to_dict("records"))
        experiment_id = tracking.connect(ws)
        name, tags = tracking.run_identity(params.model, params.seed)
        with mlflow.start_run(experiment_id=experiment_id, run_name=name, tags=tags) as run:
            tracking.log_params_flat(flatten(params))
        atomic.write_json(layout.RUN_INFO, {"run_id": run.info.run_id})

        evaluate_stage.main()
        report_stage.main()
    return ws, run.info.run_id


def test_report_html_parses_and_is_self_contained(workspace):
    ws, _ = workspace
    page = parse_page(ws / "reports" / "report.html")
    assert page.images and all(i["src"].startswith("data:image/png;base64,") for i in page.images)
    for img in page.images:  # every embedded picture is a real PNG whose declared size matches
        png = base64.b64decode(img["src"].split(",", 1)[1], validate=True)
        assert (int(img["width"]), int(img["height"])) == png_size(png)
    assert {"sample_grid", "class_histogram", "losses", "collapse_curves", "wgan_signal", "neighbours"} <= {
        i.get("id") for i in page.images
    }


def test_report_embeds_the_sample_grid_at_its_real_size(workspace):
    ws, _ = workspace
    grid = parse_page(ws / "reports" / "report.html").image("sample_grid")
    assert png_size(grid) == (GRID_PX, GRID_PX)
    assert grid == (ws / "outputs/evaluate/sample_grid.png").read_bytes()


def test_report_shows_the_evaluate_stage_metrics_beside_real_data(workspace):
    ws, _ = workspace
    evaluation = json.loads((ws / "outputs/evaluate/evaluation.json").read_text())
    real = json.loads((ws / "outputs/calibration/calibration.json").read_text())["real"]
    page = parse_page(ws / "reports" / "report.html")
    metrics_table = next(rows for rows in page.tables.values() if rows[0][:2] == ["metric", "this run"])
    shown = {row[0]: row for row in metrics_table[1:]}
    for key in ("fld", "kid", "class_coverage", "class_kl", "precision", "recall", "density", "coverage",
                "ndb", "duplicate_rate", "intra_class_diversity", "memorisation_ratio"):
        assert number(shown[key][1]) == pytest.approx(evaluation[key], rel=1e-3, abs=1e-9), key
    assert number(shown["fld"][2].split("±")[0]) == pytest.approx(real["fld"]["mean"], rel=1e-3)
    assert "label_accuracy" not in shown  # an unconditional model has none
    verdict = evaluation["collapse"]
    text = page.all_text
    assert verdict["kind"] in text
    for line in verdict["evidence"]:
        assert " ".join(line.split()) in text


def test_report_states_the_wgan_claim_as_spearman_rho(workspace):
    ws, _ = workspace
    losses = pd.read_csv(ws / "outputs/train/losses.csv").query("replica == 0")  # the replica evaluated
    curve = pd.read_csv(ws / "outputs/train/collapse_curve.csv").query("replica == 0")
    both = losses.merge(curve, on="step")
    rho = spearmanr(both["w_estimate"], both["fld"]).statistic
    assert 0.5 < rho < 1  # the fixture's blip keeps it below 1
    for text in (parse_page(ws / "reports" / "report.html").all_text, (ws / "reports/report.md").read_text()):
        assert f"Spearman ρ = {rho:+.2f}" in text
        assert f"over {len(both)} training checks" in text


def test_report_markdown_links_figures_that_exist_and_all_is_logged_to_mlflow(workspace):
    import mlflow

    ws, run_id = workspace
    md = (ws / "reports" / "report.md").read_text()
    links = re.findall(r"\]\((figures/[^)]+\.png)\)", md)
    assert "figures/sample_grid.png" in links and len(links) >= 6
    for link in links:
        assert (ws / "reports" / link).read_bytes()[:8] == PNG_SIGNATURE
    assert sorted(p.name for p in (ws / "reports/figures").iterdir()) == sorted(Path(l).name for l in links)
    client = mlflow.MlflowClient()
    logged = {a.path for a in client.list_artifacts(run_id, "report")}
    assert {"report/report.html", "report/report.md", "report/figures"} <= logged
    assert "report/figures/sample_grid.png" in {a.path for a in client.list_artifacts(run_id, "report/figures")}


def test_verdict_reaches_the_report_the_run_description_and_dvc_metrics(workspace):
    """Quality beside diversity in the report; the verdict and its evidence in the MLflow run's
    description; the kind as text and code in metrics/evaluate.json; grouped eval/ metric names."""
    import mlflow

    from pipeline.common import views
    from pipeline.reports.glossary import fmt

    ws, run_id = workspace
    e = json.loads((ws / "outputs/evaluate/evaluation.json").read_text())
    page = parse_page(ws / "reports" / "report.html")
    assert f"mean confidence {fmt(e['mean_confidence'])}" in page.all_text
    assert ("Samples are mostly not digits" in page.all_text) == (e["mean_confidence"] < 0.5)
    run = mlflow.MlflowClient().get_run(run_id)
    description = run.data.tags["mlflow.note.content"]
    assert description.startswith("**Mode collapse: " if e["collapse"]["detected"] else "**No mode collapse")
    assert all(f"- {line}" in description for line in e["collapse"]["evidence"])
    assert run.data.metrics["eval/fld"] == pytest.approx(e["fld"], rel=1e-5)
    assert not any(k.startswith("eval_") for k in run.data.metrics)
    dvc_metrics = json.loads((ws / "metrics/evaluate.json").read_text())
    assert dvc_metrics["collapse_kind"] == e["collapse"]["kind"]
    assert dvc_metrics["collapse_code"] == views.KIND_CODES[e["collapse"]["kind"]]


def test_cgan_report_labels_grid_rows_and_neighbours_with_the_digit_asked_for(workspace):
    """A conditional model's grid has row r = digit r, and its samples were asked to be a digit."""
    from pipeline.instrument import evaluator, reference
    from pipeline.reports import run_report
    from pipeline.reports.document import to_html
    from pipeline.reports.neighbours import nearest_training

    ws, _ = workspace
    evaluation = json.loads((ws / "outputs/evaluate/evaluation.json").read_text())
    with np.load(ws / "data/prepared/mnist.npz") as f:
        train_images = f["x_train"]
    classifier = evaluator.load(ws / "outputs/evaluator/classifier.pt")
    ref = reference.load(ws / "outputs/evaluator/reference.npz")
    panel = nearest_training(train_images[100:104], np.arange(4), classifier, ref, train_images, 4)
    assert panel.train_indices.tolist() == [100, 101, 102, 103]  # a training image is its own nearest neighbour
    assert np.allclose(panel.distances, 0, atol=1e-3) and panel.requested.tolist() == [0, 1, 2, 3]

    inputs = run_report.RunInputs(
        model="cgan", seed=0, variant={"objective": "minimax", "conditional": True},
        evaluation={**evaluation, "label_accuracy": 0.875},
        calibration=json.loads((ws / "outputs/calibration/calibration.json").read_text()),
        sample_grid_png=(ws / "outputs/evaluate/sample_grid.png").read_bytes(),
        class_histogram=pd.read_csv(ws / "outputs/evaluate/class_histogram.csv"),
        losses=pd.read_csv(ws / "outputs/train/losses_r0.csv").drop(columns="w_estimate"),
        collapse_curve=pd.read_csv(ws / "outputs/train/collapse_curve_r0.csv"),
        neighbours=panel,
        evaluator_accuracy=0.97,
    )
    html_text = to_html(run_report.build(inputs))
    page = Page(html_text)
    assert not page.errors
    labels = re.search(r'<div class="rows"><ol>(.*?)</ol>', html_text).group(1)
    assert re.findall(r"<li>(\d)</li>", labels) == [str(d) for d in range(10)]
    assert "row r asks the generator for digit r" in page.all_text
    images = {i.get("id") for i in page.images}
    assert "neighbours" in images and "wgan_signal" not in images  # no W-estimate, no claim section
    metrics = next(rows for rows in page.tables.values() if rows[0][:2] == ["metric", "this run"])
    # Real images asked for their own digit are read right as often as the evaluator is accurate.
    assert ["label_accuracy", "0.875", "0.97"] == metrics[[r[0] for r in metrics].index("label_accuracy")][:3]


# ------------------------------------------------------------------------------------- compare


def _evaluation(fld: float, coverage: int, kind: str) -> dict:
    """An evaluation result with every key the evaluate stage logs (pipeline.instrument.evaluation.SCALARS)."""
    from pipeline.instrument.evaluation import SCALARS

    result = {k: 0.5 for k in SCALARS}
    result.update(n_samples=200, fld=fld, class_coverage=coverage, label_accuracy=None, first_collapse_iteration=None)
    evidence = [] if kind == "none" else [f"{10 - coverage} of 10 digits are missing or far under-represented"]
    result["collapse"] = {
        "detected": kind != "none", "kind": kind, "evidence": evidence, "severity": "none", "borderline": False,
    }
    return result


def _log_pipeline_run(root: Path, model: str, seed: int, evaluation: dict | None, w_tracks_fld: bool = True,
                      status: str = "FINISHED") -> str:
    """Log one training the way stages.train (train_tracked, finish_run) and stages.evaluate do: a parent
    run with the evaluation, and two replica child runs with the curves. Replica 1's W-estimate is noise,
    so a comparison reading the wrong replica's history states another rho."""
    import mlflow

    from pipeline.gan import sampling
    from pipeline.common import tracking
    from pipeline.instrument.evaluation import metrics_for_dvc
    from pipeline.common.params import parse_params

    raw = tiny_params()
    raw.update(model=model, seed=seed)
    params = parse_params(raw)
    experiment_id = tracking.connect(root)
    name, tags = tracking.training_identity(model, seed, 2)
    run = mlflow.start_run(experiment_id=experiment_id, run_name=name, tags=tags)
    flat = tracking.run_params(params)
    tracking.log_params_flat(flat)
    children = tracking.start_replica_runs(experiment_id, run.info.run_id, name, tags, [seed, seed + 1], flat)
    for r, child in enumerate(children):
        metrics = tracking.MetricBuffer(child)
        for step in range(20, 220, 20):
            losses = {"d_loss": -1.0 / step, "g_loss": 0.7}
            if params.variant.objective == "wasserstein":
                tracks = w_tracks_fld and r == 0
                losses["w_estimate"] = (10.0 / step) if tracks else float(np.sin(step + r))
            metrics.add(step, tracking.metric_names(tracking.TRAIN, losses))
            if step % 40 == 0:
                metrics.add(step, tracking.metric_names(tracking.TRAIN, {
                    "class_coverage": min(10, step // 20), "class_kl": 1.0 / step, "fld": 1000.0 / step + seed}))
        metrics.flush()
        mlflow.MlflowClient().set_terminated(child, status=status)
    mlflow.end_run(status=status)
    if evaluation is not None:
        grid = sampling.tile(np.random.default_rng(seed).random((100, 28, 28), dtype=np.float32), 10, 10)
        with tracking.reopen_run(root, run.info.run_id, model, seed):
            mlflow.log_metrics(tracking.metric_names(tracking.EVAL, metrics_for_dvc(evaluation)))
            mlflow.set_tags({"collapse": evaluation["collapse"]["kind"]})
            mlflow.log_dict(evaluation, "evaluation/evaluation.json")
            mlflow.log_image(grid, "evaluation/sample_grid.png")
    return run.info.run_id


@pytest.fixture(scope="module")
def runs(store):
    """Five current runs of three variants (vanilla with two seeds), plus an older vanilla seed-0 run and
    a failed run, neither of which the default selection may pick."""
    ids = {}
    ids["old vanilla s0"] = _log_pipeline_run(store, "vanilla", 0, _evaluation(300.0, 1, "both"))
    ids["failed cgan s1"] = _log_pipeline_run(store, "cgan", 1, None, status="FAILED")
    ids["vanilla s0"] = _log_pipeline_run(store, "vanilla", 0, _evaluation(120.0, 3, "inter-class"))
    ids["vanilla s1"] = _log_pipeline_run(store, "vanilla", 1, _evaluation(140.0, 2, "both"))
    ids["wgan s0"] = _log_pipeline_run(store, "wgan", 0, _evaluation(30.0, 10, "none"))
    ids["wgan s1"] = _log_pipeline_run(store, "wgan", 1, _evaluation(35.0, 10, "none"), w_tracks_fld=False)
    ids["cgan s0"] = _log_pipeline_run(store, "cgan", 0, _evaluation(8.5, 10, "none") | {"label_accuracy": 0.9})
    return ids


def test_comparison_shows_runs_that_were_never_evaluated():
    """A run whose evaluate stage never ran (no eval_ metrics, grid or verdict) is listed, not a crash."""
    from pipeline.reports import compare
    from pipeline.reports.document import to_html, to_markdown
    from pipeline.reports.store import RunData

    history = pd.DataFrame({"step": [40, 80], "train_fld": [50.0, 30.0], "w_estimate": [3.0, 2.0]})
    runs = [
        RunData("a" * 32, "wgan", "0", "workspace-wgan-s0", {"fld": 20.0, "class_coverage": 10.0}, "none",
                history=history),
        RunData("b" * 32, "vanilla", "0", "workspace-vanilla-s0", {}, "not evaluated"),
    ]
    doc = compare.build(runs, "two runs")
    page = Page(to_html(doc))
    assert not page.errors
    header, rows = page.header("runs"), page.body_rows("runs")
    assert [r[header.index("collapse")] for r in rows] == ["none", "not evaluated"]
    assert rows[1][header.index("fld")] == "—"
    assert "No sample grid logged for wgan s0, vanilla s0" in page.all_text
    assert "Not evaluated yet (no eval/* metrics): runs bbbbbbbb." in page.all_text
    assert "untestable" in page.all_text  # two training checks are too few for a rank correlation
    assert "vanilla s0 (run bbbbbbbb)" in to_markdown(doc, "figures")


def test_comparison_has_a_real_data_row_mean_confidence_and_where_each_run_lives():
    from pipeline.reports import compare
    from pipeline.reports.document import to_html, to_markdown
    from pipeline.reports.store import RunData

    calibration = {"subsets": 3, "n_samples": 400, "real": {
        "fld": {"mean": 0.6}, "mean_confidence": {"mean": 0.99}, "class_coverage": {"mean": 10.0}}}
    runs = [RunData("c" * 32, "wgan", "0", "wgan-tiny-wgan-s0", {"fld": 1440.0, "mean_confidence": 0.36,
                    "class_coverage": 3.0}, "both", dvc_exp="wgan-tiny",
                    history=pd.DataFrame({"step": [40, 80], "train_fld": [1400.0, 1440.0]}),
                    url="http://127.0.0.1:5000/#/experiments/1/runs/" + "c" * 32)]
    doc = compare.build(runs, "one run", calibration)
    page = Page(to_html(doc))
    assert not page.errors
    header, rows = page.header("runs"), page.body_rows("runs")
    assert [r[header.index("model")] for r in rows] == ["wgan", "real MNIST"]
    assert [number(r[header.index("mean_confidence")]) for r in rows] == [0.36, 0.99]
    assert rows[1][header.index("collapse")] == "none (real data)"
    assert rows[1][header.index("class_coverage")] == "10"  # by definition; calibration does not hold it
    assert "dvc exp apply wgan-tiny" in page.all_text
    assert '<a href="http://127.0.0.1:5000/#/experiments/1/runs/' + "c" * 32 + '">' in to_html(doc)
    assert "[MLflow run cccccccc](http://127.0.0.1:5000/#/experiments/1/runs/" in to_markdown(doc, "figures")


def _compare(*args: str):
    from pipeline.cli import app

    return CliRunner().invoke(app, ["compare", *args])


def _run_table_ids(page: Page) -> list[str]:
    header = page.header("runs")
    return [row[header.index("run")] for row in page.body_rows("runs")]


def test_compare_writes_both_reports_with_one_row_per_latest_run(runs, store, tmp_path):
    import mlflow

    out = tmp_path / "reports"
    result = _compare("--out-dir", str(out))
    assert result.exit_code == 0, result.output
    page = parse_page(out / "comparison.html")
    expected = [runs[k][:8] for k in ("cgan s0", "vanilla s0", "vanilla s1", "wgan s0", "wgan s1")]
    assert _run_table_ids(page) == expected  # sorted by model, then seed; not the old or failed run
    md = (out / "comparison.md").read_text()
    assert [row[2] for row in md_table_rows(md, "model")] == expected

    # The table holds the logged eval/ metrics.
    header, rows = page.header("runs"), page.body_rows("runs")
    assert [number(r[header.index("fld")]) for r in rows] == [8.5, 120.0, 140.0, 30.0, 35.0]
    assert [r[header.index("collapse")] for r in rows] == ["none", "inter-class", "both", "none", "none"]

    # Two seeds of vanilla and wgan: mean ± std per model (std over seeds, pandas' default ddof=1).
    per_model = {row[0]: row for row in page.body_rows("per-model")}
    columns = page.header("per-model")
    vanilla = per_model["fld"][columns.index("vanilla (2 runs)")]
    assert vanilla == f"130 ± {np.std([120.0, 140.0], ddof=1):.2g}"

    # One sample grid per run, each the PNG logged to that run.
    grids = [i for i in page.images if i.get("id", "").startswith("grid-")]
    assert len(grids) == 5
    logged = mlflow.artifacts.download_artifacts(run_id=runs["cgan s0"], artifact_path="evaluation/sample_grid.png",
                                                 dst_path=str(tmp_path / "dl"))
    cgan = next(i["id"] for i in grids if i["id"].startswith("grid-cgan-s0"))
    assert page.image(cgan) == Path(logged).read_bytes()
    assert "training_curves" in {i.get("id") for i in page.images}

    # The generated summary, from the numbers.
    text = page.all_text
    assert "All ten digits covered (in every run): cgan, wgan." in text
    assert "Collapsed: vanilla (seeds 0, 1: both, inter-class)." in text
    assert "Closest to real data by FLD: cgan (mean FLD 8.5)" in text
    assert "1 of 2 WGAN runs support it" in text


def test_wgan_claim_needs_more_than_a_perfect_ranking_of_three_points():
    """scipy's approximate p-value calls 3 perfectly ranked points certain; the exact one says 1 in 3."""
    from pipeline.reports import wgan_signal

    three = wgan_signal.correlation(pd.DataFrame({"step": [1, 2, 3], "w_estimate": [3.0, 2, 1], "fld": [9.0, 5, 4]}))
    assert (three.rho, three.p_value, three.verdict) == (pytest.approx(1.0), pytest.approx(1 / 3), "weak")
    steps = np.arange(12)
    noisy = wgan_signal.correlation(pd.DataFrame({"step": steps, "w_estimate": -steps, "fld": np.cos(steps)}))
    assert noisy.rho == pytest.approx(spearmanr(-steps, np.cos(steps)).statistic)
    assert noisy.p_value == pytest.approx(spearmanr(-steps, np.cos(steps)).pvalue)


def test_compare_reports_the_wgan_claim_from_mlflow_histories(runs, tmp_path):
    import mlflow

    out = tmp_path / "reports"
    assert _compare("--out-dir", str(out), "--models", "wgan").exit_code == 0
    page = parse_page(out / "comparison.html")
    client = mlflow.MlflowClient()
    claim = {row[1]: row for row in page.body_rows("wgan-claim")}
    header = page.header("wgan-claim")
    for key in ("wgan s0", "wgan s1"):
        run_id = runs[key]
        (replica0,) = client.search_runs(  # the curves live in the replica runs; rho is replica 0's
            [client.get_run(run_id).info.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{run_id}' and tags.replica = '0'",
        )
        curves = replica0.info.run_id
        w = {m.step: m.value for m in client.get_metric_history(curves, "train/w_estimate")}
        fld = {m.step: m.value for m in client.get_metric_history(curves, "train/fld")}
        steps = sorted(set(w) & set(fld))
        rho = spearmanr([w[s] for s in steps], [fld[s] for s in steps]).statistic
        row = claim[run_id[:8]]
        assert number(row[header.index("ρ")]) == pytest.approx(rho, abs=1e-3)
        assert row[header.index("checks")] == str(len(steps))
    assert claim[runs["wgan s0"][:8]][header.index("claim")] == "supported"
    assert _run_table_ids(page) == [runs["wgan s0"][:8], runs["wgan s1"][:8]]


def test_compare_selects_by_run_id_and_by_model(runs, tmp_path):
    out = tmp_path / "a"
    result = _compare("--out-dir", str(out), "--runs", f"{runs['old vanilla s0']},{runs['cgan s0']}")
    assert result.exit_code == 0, result.output
    page = parse_page(out / "comparison.html")
    assert _run_table_ids(page) == [runs["cgan s0"][:8], runs["old vanilla s0"][:8]]
    assert "per-model" not in page.tables  # one run per model: nothing to average

    out = tmp_path / "b"
    assert _compare("--out-dir", str(out), "--models", "cgan", "--models", "vanilla").exit_code == 0
    ids = _run_table_ids(parse_page(out / "comparison.html"))
    assert ids == [runs[k][:8] for k in ("cgan s0", "vanilla s0", "vanilla s1")]


def _assert_user_error(result, *phrases: str) -> None:
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception  # handled, not a crash
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    assert "error:" in text
    for phrase in phrases:
        assert phrase in text, text


def test_compare_on_a_missing_store_says_so_and_creates_nothing(tmp_path, monkeypatch):
    db = tmp_path / "nothing-here" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    result = _compare("--out-dir", str(tmp_path / "out"))
    _assert_user_error(result, "no MLflow store", str(db), "dvc repro", "MLFLOW_TRACKING_URI")
    assert not db.exists() and not (tmp_path / "out").exists()


def test_compare_on_an_empty_store_says_so(tmp_path, monkeypatch):
    from pipeline.common import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    tracking.connect(tmp_path)  # the store and the ganpipe experiment exist, without a single run
    result = _compare("--out-dir", str(tmp_path / "out"))
    _assert_user_error(result, 'experiment "ganpipe"', "no finished pipeline run", "dvc repro")
    assert not (tmp_path / "out").exists()


def test_compare_with_no_matching_runs_says_what_there_is(runs, tmp_path):
    out = ("--out-dir", str(tmp_path / "out"))
    _assert_user_error(
        _compare(*out, "--models", "vanila"), "no finished pipeline run of model vanila", "cgan, vanilla, wgan"
    )
    _assert_user_error(_compare(*out, "--experiment", "other"), 'no experiment named "other"', "ganpipe")
    _assert_user_error(_compare(*out, "--runs", "0123456789abcdef"), "no run with id 0123456789abcdef")
    assert not (tmp_path / "out").exists()

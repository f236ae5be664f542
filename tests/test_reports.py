"""Reports: the per-run report stage and `ganpipe compare`, on real inputs and a real sqlite MLflow store.

The per-run report runs after the real evaluate stage (stages.evaluate) in a temporary workspace with a
quickly trained evaluator; the comparison reads runs logged through the pipeline's own tracking code
(mlflow_store.connect, run_identity, log_params_flat, MetricBuffer, reopen_run), shaped like training and
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


def md_table_rows(md: str, *first_headers: str) -> list[list[str]]:
    """Body rows of the markdown table whose header row starts with the cells `first_headers`."""
    lines = md.splitlines()

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split("|")]

    start = next(i for i, l in enumerate(lines) if l.startswith("|") and cells(l)[: len(first_headers)] == list(first_headers))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(cells(line))
    return rows


@pytest.fixture(autouse=True)
def isolated_root(tmp_path_factory, monkeypatch):
    """Every test's repository root is an empty folder of its own: `ganpipe compare` reads the root's
    calibration (and, without MLFLOW_TRACKING_URI, its mlflow.db), and after `make repro` the checkout's own
    root holds both, which would add a real-data row and the user's runs to the pages under test."""
    root = tmp_path_factory.mktemp("root")
    monkeypatch.setenv("DVC_ROOT", str(root))
    return root


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


def _training_curves(steps: np.ndarray, replicas: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Losses every 20 iterations and the collapse check every 40, per replica in long format, as the
    train stage writes them; the W-estimate falls as FLD falls, except for one blip, so Spearman's rho is
    high but not 1. Replica r's curves are shifted by r, so the replicas differ."""
    losses, curves = [], []
    for r in range(replicas):
        w = 1.5 * np.exp(-steps / 120) + 0.05 + 0.1 * r
        w[3] += 0.4
        losses.append(pd.DataFrame({"step": steps, "replica": r, "d_loss": -w,
                                    "g_loss": 0.2 + 0.1 * np.sin(steps), "w_estimate": w}))
        check = steps[1::2]
        curves.append(pd.DataFrame({
            "step": check,
            "replica": r,
            "class_coverage": np.minimum(10, 4 + check // 40) - (check >= 320) * r,  # replica 1 loses a digit
            "class_kl": 1.5 * np.exp(-check / 100),
            "fld": 40 * np.exp(-check / 90) + 3 + r,
        }))
    return pd.concat(losses, ignore_index=True), pd.concat(curves, ignore_index=True)


REPLICAS = 3  # replica 2 diverged in training: two are evaluated


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, mnist, store):
    """A pipeline workspace after train (three replicas' generators, one diverged; curves; an MLflow
    parent run with a child per replica) and the real evaluate stage, then the real report stage."""
    import mlflow
    import torch

    from pipeline.common import atomic, layout, mlflow_store, run_identity, run_logging, tables
    from pipeline.instrument import evaluator, reference
    from pipeline.instrument.calibration import calibrate
    from pipeline.data.mnist import MNIST
    from pipeline.common.params import flatten, parse_params
    from pipeline.gan.generator_file import save_generators
    from pipeline.gan.replicas import replica_seeds
    from pipeline.gan.variants import build
    from stages import evaluate as evaluate_stage
    from stages import report as report_stage

    ws = tmp_path_factory.mktemp("workspace")
    raw = tiny_params()
    raw.update(model="wgan", seed=0, replicas=REPLICAS)
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

        # What the train stage leaves behind: untrained generators (enough for the report), each built from
        # its replica seed, replica 2 marked diverged; curves in long format; a parent run and its children.
        seeds = replica_seeds(params.seed, REPLICAS)
        generators = [build(params.variant, torch.device("cpu"), s).generator for s in seeds]
        diverged = [None, None, "g_loss became NaN/Inf by generator iteration 40"]
        save_generators(layout.GENERATOR, [g if d is None else None for g, d in zip(generators, diverged)],
                        params.variant, seeds, diverged)
        losses, curve = _training_curves(np.arange(20, 420, 20), replicas=2)
        tables.write_long_and_replica0(layout.LOSS_HISTORY, layout.LOSS_HISTORY_PLOT, losses.to_dict("records"))
        tables.write_long_and_replica0(layout.COLLAPSE_CURVE, layout.COLLAPSE_CURVE_PLOT, curve.to_dict("records"))
        experiment_id = mlflow_store.connect(ws)
        name, tags = run_identity.run_identity(params.model, params.seed)
        children = []
        with mlflow.start_run(experiment_id=experiment_id, run_name=name, tags={**tags, "replicas": "3"}) as run:
            run_logging.log_params_flat(flatten(params))
            for r, s in enumerate(seeds):
                with mlflow.start_run(experiment_id=experiment_id, run_name=f"{name}-r{r}", nested=True,
                                      tags={**tags, "replica": str(r), "replica_seed": str(s)}) as child:
                    children.append(child.info.run_id)
                    if diverged[r]:
                        mlflow.set_tag("failure_reason", diverged[r])
                if diverged[r]:
                    mlflow.MlflowClient().set_terminated(children[-1], "FAILED")
        atomic.write_json(layout.RUN_INFO, {"run_id": run.info.run_id, "replica_run_ids": children})

        evaluate_stage.main()
        report_stage.main()
    return ws, run.info.run_id


def test_evaluate_stage_summarises_replicas_as_a_rate_with_its_interval(workspace):
    """evaluate.json: medians, IQRs, the collapse rate over the evaluated replicas and its Wilson interval;
    the diverged replica is counted apart; replicas.csv has one row per replica."""
    from pipeline.instrument.rates import wilson_interval

    ws, _ = workspace
    metrics = json.loads((ws / "metrics/evaluate.json").read_text())
    document = json.loads((ws / "outputs/evaluate/evaluation.json").read_text())
    replicas = document["replicas"]
    assert [r["status"] for r in replicas] == ["evaluated", "evaluated", "diverged"]
    assert (metrics["replicas"], metrics["evaluated"], metrics["diverged"]) == (3, 2, 1)
    collapsed = sum(r["collapse"]["detected"] for r in replicas[:2])
    assert metrics["collapsed"] == collapsed and metrics["collapse_rate"] == collapsed / 2
    assert metrics["collapse_rate_ci"] == pytest.approx(wilson_interval(collapsed, 2), abs=1e-6)
    for key in ("fld", "class_kl", "intra_class_diversity"):
        values = [r[key] for r in replicas[:2]]
        assert metrics[key] == pytest.approx(np.median(values), abs=1e-6)
        assert metrics[f"{key}_iqr"] == pytest.approx(np.subtract(*np.percentile(values, [75, 25])), abs=1e-6)
    assert replicas[0]["fld"] != replicas[1]["fld"]  # different replicas, different samples
    assert replicas[0]["sample_seed"] != replicas[1]["sample_seed"]
    table = pd.read_csv(ws / "outputs/evaluate/replicas.csv")
    assert table["replica"].tolist() == [0, 1, 2]
    assert table["status"].tolist() == ["evaluated", "evaluated", "diverged"]
    assert table["collapse"].iloc[2] == "diverged" and np.isnan(table["fld"].iloc[2])
    assert table["fld"].iloc[:2].tolist() == pytest.approx([r["fld"] for r in replicas[:2]], rel=1e-5)
    # The in-training check of replica 1 lost a digit at iteration 320; replica 0 never did.
    assert [r["first_collapse_iteration"] for r in replicas[:2]] == [None, 320]
    assert sorted(p.name for p in (ws / "outputs/evaluate/grids").iterdir()) == ["replica_0.png", "replica_1.png"]


def test_evaluation_reaches_each_replica_run_and_the_parent_in_mlflow(workspace):
    import mlflow

    ws, parent_id = workspace
    client = mlflow.MlflowClient()
    info = json.loads((ws / "outputs/train/mlflow_run.json").read_text())
    document = json.loads((ws / "outputs/evaluate/evaluation.json").read_text())
    for r, child_id in enumerate(info["replica_run_ids"]):
        child = client.get_run(child_id)
        assert child.data.tags["mlflow.parentRunId"] == parent_id
        if r < 2:
            assert child.info.status == "FINISHED"
            assert child.data.metrics["eval/fld"] == pytest.approx(document["replicas"][r]["fld"], rel=1e-5)
            assert child.data.tags["collapse"] == document["replicas"][r]["collapse"]["kind"]
            logged = {a.path for a in client.list_artifacts(child_id, "evaluation")}
            assert logged == {"evaluation/evaluation.json", "evaluation/sample_grid.png"}
        else:  # the diverged replica stays FAILED and is marked, never evaluated
            assert child.info.status == "FAILED" and child.data.tags["collapse"] == "diverged"
            assert "eval/fld" not in child.data.metrics
    parent = client.get_run(parent_id).data
    summary = document["summary"]
    assert parent.metrics["eval/collapse_rate"] == summary["collapse_rate"]
    assert [parent.metrics["eval/collapse_rate_ci_lo"], parent.metrics["eval/collapse_rate_ci_hi"]] == summary["collapse_rate_ci"]
    assert parent.metrics["eval/fld"] == summary["fld"] and parent.metrics["eval/fld_iqr"] == summary["fld_iqr"]
    assert "collapse" not in parent.tags  # a parent has a rate, not one verdict


def test_report_html_parses_and_is_self_contained(workspace):
    ws, _ = workspace
    page = parse_page(ws / "reports" / "report.html")
    assert page.images and all(i["src"].startswith("data:image/png;base64,") for i in page.images)
    for img in page.images:  # every embedded picture is a real PNG whose declared size matches
        png = base64.b64decode(img["src"].split(",", 1)[1], validate=True)
        assert (int(img["width"]), int(img["height"])) == png_size(png)
    assert {"sample_grid_r0", "sample_grid_r1", "replica_dots", "class_histogram", "losses", "collapse_curves",
            "wgan_signal", "neighbours"} <= {i.get("id") for i in page.images}


def test_report_shows_every_replica_grid_and_the_rate_with_its_interval(workspace):
    ws, _ = workspace
    page = parse_page(ws / "reports" / "report.html")
    for r in (0, 1):
        grid = page.image(f"sample_grid_r{r}")
        assert png_size(grid) == (GRID_PX, GRID_PX)
        assert grid == (ws / f"outputs/evaluate/grids/replica_{r}.png").read_bytes()
    assert (ws / "outputs/evaluate/sample_grid.png").read_bytes() == page.image("sample_grid_r0")
    metrics = json.loads((ws / "metrics/evaluate.json").read_text())
    lo, hi = metrics["collapse_rate_ci"]
    text = page.all_text
    assert f"{metrics['collapsed']}/2 = {metrics['collapse_rate']:.2f}, 95% Wilson interval [{lo:.2f}, {hi:.2f}]" in text
    assert "1 replica diverged and is counted apart" in text
    assert "Replica 2 diverged: g_loss became NaN/Inf by generator iteration 40" in text
    rows = page.body_rows("replicas")
    header = page.header("replicas")
    assert [r[header.index("verdict")] for r in rows][2] == "diverged"
    assert [r[header.index("first collapse")] for r in rows] == ["—", "320", "—"]


def test_report_shows_the_evaluate_stage_metrics_beside_real_data(workspace):
    ws, _ = workspace
    document = json.loads((ws / "outputs/evaluate/evaluation.json").read_text())
    summary = document["summary"]
    real = json.loads((ws / "outputs/calibration/calibration.json").read_text())["real"]
    page = parse_page(ws / "reports" / "report.html")
    assert page.header("metrics")[:3] == ["metric", "median", "IQR"]
    shown = {row[0]: row for row in page.body_rows("metrics")}
    for key in ("fld", "kid", "class_coverage", "class_kl", "precision", "recall", "density", "coverage",
                "ndb", "duplicate_rate", "intra_class_diversity", "memorisation_ratio"):
        assert number(shown[key][1]) == pytest.approx(summary[key], rel=1e-3, abs=1e-9), key
    assert number(shown["fld"][2]) == pytest.approx(summary["fld_iqr"], rel=1e-3, abs=1e-9)
    assert number(shown["fld"][3].split("±")[0]) == pytest.approx(real["fld"]["mean"], rel=1e-3)
    assert "label_accuracy" not in shown  # an unconditional model has none
    text = page.all_text
    for replica in document["replicas"][:2]:
        verdict = replica["collapse"]
        assert f"Replica {replica['index']}: {verdict['kind']}" in text
        for line in verdict["evidence"]:
            assert " ".join(line.split()) in text


def test_report_states_the_wgan_claim_per_replica_as_spearman_rho(workspace):
    ws, _ = workspace
    losses = pd.read_csv(ws / "outputs/train/losses.csv")
    curve = pd.read_csv(ws / "outputs/train/collapse_curve.csv")
    page = parse_page(ws / "reports" / "report.html")
    header, rows = page.header("wgan-claim"), page.body_rows("wgan-claim")
    for r in (0, 1):
        both = losses[losses["replica"] == r].merge(curve[curve["replica"] == r], on=["step", "replica"])
        rho = spearmanr(both["w_estimate"], both["fld"]).statistic
        assert 0.5 < rho < 1  # the fixture's blip keeps it below 1
        row = rows[r]
        assert number(row[header.index("ρ")]) == pytest.approx(rho, abs=1e-3)
        assert row[header.index("checks")] == str(len(both))
    md = (ws / "reports/report.md").read_text()
    assert "WGAN claim: supported in" in md and "of 2 replicas" in md


def test_report_markdown_links_figures_that_exist_and_all_is_logged_to_mlflow(workspace):
    import mlflow

    ws, run_id = workspace
    md = (ws / "reports" / "report.md").read_text()
    links = re.findall(r"\]\((figures/[^)]+\.png)\)", md)
    assert {"figures/sample_grid_r0.png", "figures/sample_grid_r1.png", "figures/replica_dots.png"} <= set(links)
    for link in links:
        assert (ws / "reports" / link).read_bytes()[:8] == PNG_SIGNATURE
    assert sorted(p.name for p in (ws / "reports/figures").iterdir()) == sorted(Path(l).name for l in links)
    client = mlflow.MlflowClient()
    logged = {a.path for a in client.list_artifacts(run_id, "report")}
    assert {"report/report.html", "report/report.md", "report/figures"} <= logged
    assert "report/figures/sample_grid_r0.png" in {a.path for a in client.list_artifacts(run_id, "report/figures")}


def test_verdict_reaches_the_report_the_run_descriptions_and_dvc_metrics(workspace):
    """Quality beside diversity in the report; the collapse rate in the parent run's description and each
    replica's verdict and evidence in its child run's; the kind as text and code in metrics/evaluate.json
    (the median replica's kind); grouped eval/ metric names on parent and children."""
    import mlflow

    from pipeline.common import views
    from pipeline.reports import run_report
    from pipeline.reports.glossary import fmt

    ws, run_id = workspace
    document = json.loads((ws / "outputs/evaluate/evaluation.json").read_text())
    summary = document["summary"]
    evaluated = [r for r in document["replicas"] if r["status"] == "evaluated"]
    page = parse_page(ws / "reports" / "report.html")
    assert f"mean confidence {fmt(summary['mean_confidence'])}" in page.all_text
    # the report says which checks decide, read from the verdict's own roles
    decide = re.search(r"Checks that decide collapse\s*:\s*(.*?)\. Shown but not deciding:\s*(.*?)\. Recall", page.all_text)
    deciding = {run_report.check_name(c) for r in evaluated for c in r["collapse"]["checks"] if c["role"] in ("inter-class", "intra-class")}
    assert deciding == {"smallest digit share / MNIST share", "near-duplicate rate", "neighbour spread"}
    assert set(decide.group(1).split("; ")) == deciding
    shown = set(decide.group(2).split("; "))
    assert {"recall (diagnostic)", "coverage (diagnostic)", "intra-class diversity (diagnostic)"} <= shown
    assert ("Samples are mostly not digits" in page.all_text) == (summary["mean_confidence"] < 0.5)
    client = mlflow.MlflowClient()
    parent = client.get_run(run_id)
    description = parent.data.tags["mlflow.note.content"]
    head = (f"**Mode collapse in {summary['collapsed']} of {summary['evaluated']} replicas**" if summary["collapsed"]
            else f"**No mode collapse detected in {summary['evaluated']} replicas**")
    assert description.startswith(head)
    assert "- replica 2: diverged" in description
    assert parent.data.metrics["eval/fld"] == pytest.approx(summary["fld"], rel=1e-5)
    assert parent.data.metrics["eval/collapse_rate"] == pytest.approx(summary["collapse_rate"], rel=1e-5)
    assert not any(k.startswith("eval_") for k in parent.data.metrics)
    child_ids = json.loads((ws / "outputs/train/mlflow_run.json").read_text())["replica_run_ids"]
    for replica in evaluated:
        child = client.get_run(child_ids[replica["index"]])
        text = child.data.tags["mlflow.note.content"]
        verdict = replica["collapse"]
        assert text.startswith("**Mode collapse: " if verdict["detected"] else "**No mode collapse")
        assert all(f"- {line}" in text for line in verdict["evidence"])
        assert child.data.metrics["eval/fld"] == pytest.approx(replica["fld"], rel=1e-5)
        assert not any(k.startswith("eval_") for k in child.data.metrics)
    dvc_metrics = json.loads((ws / "metrics/evaluate.json").read_text())
    codes = sorted(views.KIND_CODES[r["collapse"]["kind"]] for r in evaluated)
    median_code = codes[(len(codes) - 1) // 2]
    assert dvc_metrics["collapse_code"] == median_code
    assert views.KIND_CODES[dvc_metrics["collapse_kind"]] == median_code


def test_cgan_report_labels_grid_rows_and_neighbours_with_the_digit_asked_for(workspace):
    """A conditional model's grid has row r = digit r, and its samples were asked to be a digit."""
    from pipeline.instrument import evaluator, reference
    from pipeline.reports import run_report
    from pipeline.reports.document import to_html
    from pipeline.reports.neighbours import nearest_training

    ws, _ = workspace
    document = json.loads((ws / "outputs/evaluate/evaluation.json").read_text())
    with np.load(ws / "data/prepared/mnist.npz") as f:
        train_images = f["x_train"]
    classifier = evaluator.load(ws / "outputs/evaluator/classifier.pt")
    ref = reference.load(ws / "outputs/evaluator/reference.npz")
    panel = nearest_training(train_images[100:104], np.arange(4), classifier, ref, train_images, 4)
    assert panel.train_indices.tolist() == [100, 101, 102, 103]  # a training image is its own nearest neighbour
    assert np.allclose(panel.distances, 0, atol=1e-3) and panel.requested.tolist() == [0, 1, 2, 3]

    document["summary"]["label_accuracy"] = 0.875
    inputs = run_report.RunInputs(
        model="cgan", seed=0, variant={"objective": "minimax", "conditional": True},
        evaluation=document,
        calibration=json.loads((ws / "outputs/calibration/calibration.json").read_text()),
        replica_grids={0: (ws / "outputs/evaluate/grids/replica_0.png").read_bytes()},
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
    metrics = page.tables["metrics"]
    # Real images asked for their own digit are read right as often as the evaluator is accurate.
    row = metrics[[r[0] for r in metrics].index("label_accuracy")]
    assert [row[0], row[1], row[3]] == ["label_accuracy", "0.875", "0.97"]


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
    """Log one run the way stages.train (train_tracked, finish_run) and stages.evaluate do."""
    import mlflow

    from pipeline.gan import sampling
    from pipeline.common import mlflow_store, run_identity, run_lifecycle, run_logging
    from pipeline.instrument.evaluation import metrics_for_dvc
    from pipeline.common.params import flatten, parse_params

    raw = tiny_params()
    raw.update(model=model, seed=seed)
    params = parse_params(raw)
    experiment_id = mlflow_store.connect(root)
    name, tags = run_identity.run_identity(model, seed)
    run = mlflow.start_run(experiment_id=experiment_id, run_name=name, tags=tags)
    run_logging.log_params_flat(flatten(params))
    metrics = run_logging.MetricBuffer(run.info.run_id)
    for step in range(20, 220, 20):
        losses = {"d_loss": -1.0 / step, "g_loss": 0.7}
        if params.variant.objective == "wasserstein":
            losses["w_estimate"] = (10.0 / step) if w_tracks_fld else float(np.sin(step))
        metrics.add(step, losses)
        if step % 40 == 0:
            metrics.add(step, {"train_class_coverage": min(10, step // 20), "train_class_kl": 1.0 / step,
                               "train_fld": 1000.0 / step + seed})
    metrics.flush()
    mlflow.end_run(status=status)
    if evaluation is not None:
        grid = sampling.tile(np.random.default_rng(seed).random((100, 28, 28), dtype=np.float32), 10, 10)
        with run_lifecycle.reopen_run(root, run.info.run_id, model, seed):
            mlflow.log_metrics({f"eval_{k}": v for k, v in metrics_for_dvc(evaluation).items()})
            mlflow.set_tags({"collapse": evaluation["collapse"]["kind"]})
            mlflow.log_dict(evaluation, "evaluation/evaluation.json")
            mlflow.log_image(grid, "evaluation/sample_grid.png")
    return run.info.run_id


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Five current runs of three variants (vanilla with two seeds), plus an older vanilla seed-0 run and
    a failed run, neither of which the default selection may pick; in a store of their own (the report
    tests' workspace logs a training of another budget, which the comparison would rightly show too)."""
    root = tmp_path_factory.mktemp("compare-store")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        mp.delenv("DVC_EXP_NAME", raising=False)
        yield _log_runs(root)


def _log_runs(store: Path) -> dict[str, str]:
    ids = {}
    ids["old vanilla s0"] = _log_pipeline_run(store, "vanilla", 0, _evaluation(300.0, 1, "both"))
    ids["failed cgan s1"] = _log_pipeline_run(store, "cgan", 1, None, status="FAILED")
    ids["vanilla s0"] = _log_pipeline_run(store, "vanilla", 0, _evaluation(120.0, 3, "inter-class"))
    ids["vanilla s1"] = _log_pipeline_run(store, "vanilla", 1, _evaluation(140.0, 2, "both"))
    ids["wgan s0"] = _log_pipeline_run(store, "wgan", 0, _evaluation(30.0, 10, "none"))
    ids["wgan s1"] = _log_pipeline_run(store, "wgan", 1, _evaluation(35.0, 10, "none"), w_tracks_fld=False)
    ids["cgan s0"] = _log_pipeline_run(store, "cgan", 0, _evaluation(8.5, 10, "none") | {"label_accuracy": 0.9})
    return ids


def _log_training(root: Path, model: str, seed: int, kinds: list[str | None], dataset: str = "mnist",
                  iterations: int = 60, **preset: object) -> tuple[str, list[str]]:
    """Log one training with a replica per entry of `kinds` the way training does (a parent run with the
    params training logs, a nested child per replica, a FAILED child for a diverged one: kind None), then
    evaluate it through the evaluate stage's own MLflow code (replica_tracking.log_evaluation)."""
    import mlflow

    from pipeline.common import mlflow_store, run_identity, run_logging
    from pipeline.common.params import parse_params
    from pipeline.runs import replica_tracking
    from pipeline.gan import sampling
    from pipeline.instrument.replica_summary import ReplicaOutcome, evaluation_document

    raw = tiny_params(iterations)
    raw.update(model=model, seed=seed, replicas=len(kinds), dataset=dataset)
    raw["variants"][model].update(preset)  # as `dvc exp run -S variants.<model>.<key>=...` would
    experiment_id = mlflow_store.connect(root)
    name, tags = run_identity.run_identity(model, seed)
    children = []
    with mlflow.start_run(experiment_id=experiment_id, run_name=name, tags={**tags, "replicas": str(len(kinds))}) as parent:
        run_logging.log_params_flat(run_logging.run_params(parse_params(raw)))
        for r, kind in enumerate(kinds):
            with mlflow.start_run(experiment_id=experiment_id, run_name=f"{name}-r{r}", nested=True,
                                  tags={**tags, "replica": str(r), "replica_seed": str(1000 * seed + r)}) as child:
                metrics = run_logging.MetricBuffer(child.info.run_id)
                for step in range(40, 240, 40):
                    metrics.add(step, run_logging.metric_names(run_logging.TRAIN, {
                        "d_loss": -1.0 / step, "g_loss": 0.7, "fld": 1000.0 / step + r, "class_coverage": 10}))
                metrics.flush()
                children.append(child.info.run_id)
            if kind is None:
                mlflow.MlflowClient().set_terminated(child.info.run_id, "FAILED")
    outcomes, grids = [], {}
    for r, kind in enumerate(kinds):
        if kind is None:
            outcomes.append(ReplicaOutcome(r, 1000 * seed + r, None, None, "d_loss became NaN/Inf"))
            continue
        fld = (150.0 if kind != "none" else 20.0) + r
        outcomes.append(ReplicaOutcome(r, 1000 * seed + r, r, _evaluation(fld, 10 if kind == "none" else 3, kind)))
        grids[r] = sampling.tile(np.random.default_rng(r).random((100, 28, 28), dtype=np.float32), 10, 10)
    info = {"run_id": parent.info.run_id, "replica_run_ids": children}
    replica_tracking.log_evaluation(root, info, model, seed, outcomes, grids, evaluation_document(outcomes))
    return parent.info.run_id, children


def test_compare_groups_replicas_under_their_training_and_claims_only_separated_intervals(tmp_path, monkeypatch):
    """Trainings with replicas: one row per training, its replicas beneath, one grid per evaluated
    replica, rates per variant, and "beats" only when the Wilson intervals do not overlap."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    vanilla, vanilla_children = _log_training(tmp_path, "vanilla", 0, ["both", "inter-class", "both", "inter-class"])
    wgan, _ = _log_training(tmp_path, "wgan", 0, ["none", "none", "none", "none"])
    cgan, cgan_children = _log_training(tmp_path, "cgan", 0, ["none", "both", None, "none"])
    old = _log_pipeline_run(tmp_path, "vanilla-ns", 0, _evaluation(60.0, 10, "none"))  # from before replicas

    out = tmp_path / "reports"
    result = _compare("--out-dir", str(out))
    assert result.exit_code == 0, result.output
    page = parse_page(out / "comparison.html")
    assert _run_table_ids(page) == [cgan[:8], vanilla[:8], old[:8], wgan[:8]]  # children are not trainings
    header, rows = page.header("runs"), page.body_rows("runs")
    by_run = {r[header.index("run")]: r for r in rows}
    assert by_run[cgan[:8]][header.index("replicas")] == "4"
    assert by_run[cgan[:8]][header.index("collapsed")] == "1/3 (1 diverged)"
    assert by_run[cgan[:8]][header.index("95% interval")] == "[0.06, 0.79]"
    assert number(by_run[vanilla[:8]][header.index("fld")]) == pytest.approx(np.median([150, 151, 152, 153]))
    assert by_run[old[:8]][header.index("replicas")] == "1"

    # Every replica beneath its training, the diverged one marked as such.
    header, detail = page.header("replicas"), page.body_rows("replicas")
    assert len(detail) == 4 + 4 + 4 + 1
    cgan_rows = [r for r in detail if r[header.index("run")] == cgan[:8]]
    assert [r[header.index("verdict")] for r in cgan_rows] == ["none", "both", "diverged", "none"]
    assert [r[header.index("replica run")] for r in cgan_rows] == [c[:8] for c in cgan_children]
    grids = [i["id"] for i in page.images if i.get("id", "").startswith("grid-")]
    assert len(grids) == 4 + 4 + 3 + 1  # no grid for the diverged replica
    assert any(g.startswith(f"grid-vanilla-s0-{vanilla[:8]}-r3") for g in grids)

    text = page.all_text
    assert ("wgan collapsed in 0/4 replicas [0.00, 0.49], vanilla in 4/4 [0.51, 1.00]: the intervals do not "
            "overlap, so wgan collapses less often than vanilla.") in text
    assert "wgan collapsed in 0/4 replicas" in text and "cgan collapsed in" not in text  # one pair separates
    assert ("Difference not established (the intervals overlap; more replicas would narrow them): "
            "wgan vs cgan, cgan vs vanilla.") in text
    # The run from before replicas was trained with another budget (2 replicas): a group of its own.
    assert "vanilla-ns vs" not in text and "Group B: mnist, 60 iterations, 4 replicas, 400 evaluation samples" in text
    assert "cgan 1/3 [0.06, 0.79], 1 diverged" in text
    rates = {row[0]: row for row in page.body_rows("rates")}
    columns = page.header("rates")
    assert [rates["cgan"][columns.index(c)] for c in ("replicas evaluated", "diverged", "collapsed")] == ["3", "1", "1/3"]
    assert rates["vanilla-ns"][columns.index("collapsed")] == "0/1"


def test_compare_never_ranks_across_datasets_or_budgets_unless_asked(tmp_path, monkeypatch):
    """One store holding MNIST runs of two budgets, two learning rates of one preset and a Stacked MNIST run:
    each training stays (a later run of another budget replaces nothing), dataset and iterations are
    columns, and rates and rankings are formed per group; --across-budgets merges budgets, never datasets."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    short, _ = _log_training(tmp_path, "vanilla", 0, ["both", "both", "both"])
    wgan, _ = _log_training(tmp_path, "wgan", 0, ["none", "none", "none"])
    wgan_fast, _ = _log_training(tmp_path, "wgan", 0, ["none", "both", "none"], lr=1e-4)
    stacked, _ = _log_training(tmp_path, "vanilla-ns", 0, ["none", "none", "none"], dataset="stacked-mnist")
    long, _ = _log_training(tmp_path, "vanilla", 0, ["none", "none", "none"], iterations=120)

    out = tmp_path / "by-budget"
    assert _compare("--out-dir", str(out)).exit_code == 0
    page = parse_page(out / "comparison.html")
    header, rows = page.header("runs"), page.body_rows("runs")
    cells = {r[header.index("run")]: (r[header.index("model")], r[header.index("dataset")], r[header.index("iterations")])
             for r in rows}
    assert cells == {
        short[:8]: ("vanilla", "mnist", "60"), long[:8]: ("vanilla", "mnist", "120"),
        wgan[:8]: ("wgan (lr=5e-05)", "mnist", "60"), wgan_fast[:8]: ("wgan (lr=0.0001)", "mnist", "60"),
        stacked[:8]: ("vanilla-ns", "stacked-mnist", "60"),
    }
    text = page.all_text
    assert "3 comparison groups" in text
    for group in ("mnist, 120 iterations, 3 replicas", "mnist, 60 iterations, 3 replicas", "stacked-mnist, 60 iterations"):
        assert group in text
    # The Stacked MNIST run and the 120-iteration run are alone in their groups: nothing is ranked against them.
    md = (out / "comparison.md").read_text()
    summary = md[md.index("Summary"):md.index("Collapse rates")].splitlines()
    sentences = [line for line in summary if " vs " in line or "ranking:" in line or "less often" in line]
    assert sentences and not any("vanilla-ns" in line or long[:8] in line for line in sentences)
    assert "vanilla 3/3 [0.44, 1.00]; wgan (lr=0.0001) 1/3" in text  # the 60-iteration vanilla, beside the wgans only
    rates = page.body_rows("rates")
    columns = page.header("rates")
    assert sorted((r[0], r[columns.index("dataset")], r[columns.index("iterations")]) for r in rates) == [
        ("vanilla", "mnist", "120"), ("vanilla", "mnist", "60"), ("vanilla-ns", "stacked-mnist", "60"),
        ("wgan (lr=0.0001)", "mnist", "60"), ("wgan (lr=5e-05)", "mnist", "60")]

    out = tmp_path / "across"
    assert _compare("--out-dir", str(out), "--across-budgets").exit_code == 0
    page = parse_page(out / "comparison.html")
    columns, rates = page.header("rates"), page.body_rows("rates")
    by_variant = {(r[0], r[columns.index("dataset")]): r for r in rates}
    assert by_variant[("vanilla", "mnist")][columns.index("collapsed")] == "3/6"  # both budgets pooled
    assert by_variant[("vanilla-ns", "stacked-mnist")][columns.index("collapsed")] == "0/3"
    assert "2 comparison groups" in page.all_text and "vanilla-ns vs" not in page.all_text

    out = tmp_path / "models"
    assert _compare("--out-dir", str(out), "--models", "vanilla").exit_code == 0
    assert sorted(_run_table_ids(parse_page(out / "comparison.html"))) == sorted([short[:8], long[:8]])


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
    assert [r[header.index("collapsed")] for r in rows] == ["0/1", "—"]
    assert rows[1][header.index("fld")] == "—"
    header = page.header("replicas")
    assert [r[header.index("verdict")] for r in page.body_rows("replicas")] == ["none", "not evaluated"]
    assert "No sample grid logged for r0 (none)" in page.all_text
    assert "No sample grid logged for r0 (not evaluated)" in page.all_text
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
    assert rows[1][header.index("collapsed")] == "none (real data)"
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


def test_compare_writes_both_reports_with_one_row_per_latest_run(runs, tmp_path):
    """Runs logged before replicas existed (no child runs) each show as a training of one replica."""
    import mlflow

    out = tmp_path / "reports"
    result = _compare("--out-dir", str(out))
    assert result.exit_code == 0, result.output
    page = parse_page(out / "comparison.html")
    expected = [runs[k][:8] for k in ("cgan s0", "vanilla s0", "vanilla s1", "wgan s0", "wgan s1")]
    assert _run_table_ids(page) == expected  # sorted by model, then seed; not the old or failed run
    md = (out / "comparison.md").read_text()
    assert [row[2] for row in md_table_rows(md, "model", "seed", "run")] == expected

    # The table holds the logged eval/ metrics (the median of one replica is its value).
    header, rows = page.header("runs"), page.body_rows("runs")
    assert [number(r[header.index("fld")]) for r in rows] == [8.5, 120.0, 140.0, 30.0, 35.0]
    assert [r[header.index("replicas")] for r in rows] == ["1"] * 5
    assert [r[header.index("collapsed")] for r in rows] == ["0/1", "1/1", "1/1", "0/1", "0/1"]
    header = page.header("replicas")
    assert [r[header.index("verdict")] for r in page.body_rows("replicas")] == ["none", "inter-class", "both", "none", "none"]

    # Per variant: the rate over its replicas with the Wilson interval.
    rates = {row[0]: row for row in page.body_rows("rates")}
    columns = page.header("rates")
    assert [rates["vanilla"][columns.index(c)] for c in ("collapsed", "collapse rate", "95% interval")] == [
        "2/2", "1.00", "[0.34, 1.00]"]
    assert rates["wgan"][columns.index("95% interval")] == "[0.00, 0.66]"
    assert rates["vanilla"][columns.index("median FLD")] == "130 (IQR 10)"

    # One sample grid per replica, each the PNG logged to that run.
    grids = [i for i in page.images if i.get("id", "").startswith("grid-")]
    assert len(grids) == 5
    logged = mlflow.artifacts.download_artifacts(run_id=runs["cgan s0"], artifact_path="evaluation/sample_grid.png",
                                                 dst_path=str(tmp_path / "dl"))
    cgan = next(i["id"] for i in grids if i["id"].startswith("grid-cgan-s0"))
    assert page.image(cgan) == Path(logged).read_bytes()
    assert {"training_curves", "replica_dots"} <= {i.get("id") for i in page.images}

    # The generated summary, from the numbers: two replicas per variant establish no difference.
    text = page.all_text
    assert "All ten digits covered (in every replica): cgan, wgan." in text
    assert "Collapse rate per variant (collapsed replicas / evaluated replicas, 95% Wilson interval): cgan 0/1 " \
           "[0.00, 0.79]; vanilla 2/2 [0.34, 1.00]; wgan 0/2 [0.00, 0.66]." in text
    assert "Difference not established (the intervals overlap; more replicas would narrow them): cgan vs wgan, " \
           "cgan vs vanilla, wgan vs vanilla." in text
    assert "Closest to real data by median FLD: cgan (8.5)" in text
    assert "1 of 2 WGAN replicas support it" in text


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
        w = {m.step: m.value for m in client.get_metric_history(run_id, "w_estimate")}
        fld = {m.step: m.value for m in client.get_metric_history(run_id, "train_fld")}
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
    from pipeline.common import mlflow_store

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    mlflow_store.connect(tmp_path)  # the store and the ganpipe experiment exist, without a single run
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


def test_compare_records_a_study_that_ganpipe_tables_renders_with_its_conditions(tmp_path, monkeypatch):
    """`ganpipe compare --record` writes the runs as a study of results/ (verdicts, each replica's metrics,
    kernels, commit, date); its rendered table counts the diverged replica apart and takes medians of the
    replicas' own FLDs; without --title and --command it is refused before anything is read."""
    from pipeline.reports import recorded

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    _log_training(tmp_path, "cgan", 0, ["none", "both", None, "none"])
    study_file = tmp_path / "results" / "study.json"
    refused = _compare("--out-dir", str(tmp_path / "reports"), "--record", str(study_file))
    assert refused.exit_code != 0 and "--title" in refused.output and not study_file.exists()

    result = _compare("--out-dir", str(tmp_path / "reports"), "--record", str(study_file), "--title", "cgan at 4 replicas",
                      "--command", "dvc exp run -S model=cgan -S replicas=4", "--machine", "a test machine")
    assert result.exit_code == 0, result.output
    study = json.loads(study_file.read_text())
    assert study["variants"][0]["verdicts"] == ["none", "both", "diverged", "none"]
    assert study["conditions"]["kernels"] == tiny_params(60)["compute"]["cpu_kernels"]
    row = recorded.rate_row(study["variants"][0])
    assert row[:4] == ["cgan", "1/3 (1)", "0.33 [0.06, 0.79]", "23.0 (65.5)"]  # FLDs 20, 151, 23 of replicas 0, 1, 3
    (tmp_path / "page.md").write_text("<!-- table: results/study.json -->\n<!-- /table -->\n")
    page = recorded.render_page(tmp_path, (tmp_path / "page.md").read_text())
    assert "| cgan | 1/3 (1) |" in page and "Machine: a test machine. Kernels:" in page
    assert "Reproduce: `dvc exp run -S model=cgan -S replicas=4`" in page

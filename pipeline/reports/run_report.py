"""The per-run report: did this variant collapse, what do its samples look like, and why the verdict.

`build` turns what the earlier stages wrote into a `Document`; the report stage renders it as
report.md (figures as files) and report.html (self-contained).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline.common import tracking
from pipeline.reports import charts, wgan_signal
from pipeline.reports.document import (
    MISSING, Bullets, Callout, Document, Figure, Heading, Paragraph, Table,
)
from pipeline.reports.glossary import METRICS, REAL_BY_DEFINITION, fmt, mean_std, pct
from pipeline.reports.neighbours import NeighbourPanel

FIGURE_DIR = "figures"  # relative to report.md
TONES = {"supported": "ok", "weak": "warn", "not supported": "alert", "untestable": "info"}


@dataclass(frozen=True)
class RunInputs:
    """Everything the report shows, as the earlier stages wrote it."""

    model: str
    seed: int
    variant: dict[str, Any]  # the preset under variants.<model>
    evaluation: dict[str, Any]  # outputs/evaluate/evaluation.json
    calibration: dict[str, Any]  # outputs/calibration/calibration.json
    sample_grid_png: bytes  # outputs/evaluate/sample_grid.png
    class_histogram: pd.DataFrame  # digit, samples, mnist
    losses: pd.DataFrame  # step, d_loss, g_loss[, w_estimate]
    collapse_curve: pd.DataFrame  # step, class_coverage, class_kl, fld
    neighbours: NeighbourPanel | None
    run_id: str = ""
    evaluator_accuracy: float | None = None  # on MNIST's test set: the real-data value of label_accuracy
    dvc_exp: str = ""  # the DVC experiment being run ("workspace" for a plain `dvc repro`)


def build(inputs: RunInputs) -> Document:
    e = inputs.evaluation
    subtitle = f"variant **{inputs.model}** · seed {inputs.seed} · {fmt(e['n_samples'])} samples evaluated"
    if inputs.run_id:
        subtitle += f" · MLflow run `{inputs.run_id}`"
    if inputs.dvc_exp and inputs.dvc_exp != "workspace":
        subtitle += f" · DVC experiment `{inputs.dvc_exp}`"
    doc = Document(f"ganpipe report: {inputs.model}", subtitle)
    doc.add(_verdict_callout(e))
    doc.add(*_quality(e, inputs.calibration))
    doc.add(*_samples(inputs))
    doc.add(*_verdict_evidence(e, inputs.calibration, checks_ran=len(inputs.collapse_curve) > 0))
    doc.add(*_metrics(e, inputs.calibration, inputs.evaluator_accuracy))
    doc.add(*_digits(inputs))
    doc.add(*_training(inputs))
    if "w_estimate" in inputs.losses:
        doc.add(*_wgan_claim(inputs))
    if inputs.neighbours is not None:
        doc.add(*_neighbours(inputs.neighbours))
    doc.add(*_settings(inputs))
    return doc


def _verdict_callout(e: dict[str, Any]) -> Callout:
    verdict = e["collapse"]
    summary = (
        f"FLD {fmt(e['fld'])} · mean confidence {fmt(e.get('mean_confidence'))} · {e['class_coverage']} of 10 digits covered · "
        f"intra-class diversity {fmt(e['intra_class_diversity'])} × MNIST's · "
        f"near-duplicates {pct(e['duplicate_rate'])}"
    )
    if verdict["detected"]:
        return Callout(f"Mode collapse detected: {verdict['kind']}", summary, "alert")
    return Callout("No mode collapse detected", summary, "ok")


def _quality(e: dict[str, Any], calibration: dict[str, Any]) -> list:
    """Quality beside diversity: a diversity verdict on samples that are not digits says little."""
    note = tracking.quality_note(e, calibration["real"].get("mean_confidence", {}).get("mean"))
    return [Callout("Samples are mostly not digits", note, "warn")] if note else []


def _samples(inputs: RunInputs) -> list:
    conditional = bool(inputs.variant.get("conditional"))
    caption = "100 samples from fixed noise (the same noise for every run with this seed), 2× enlarged."
    if conditional:
        caption += " One row per digit: row r asks the generator for digit r."
    grid = Figure(
        "sample_grid", inputs.sample_grid_png, caption, "10x10 grid of generated digits", pixelated=True,
        row_labels=tuple(str(d) for d in range(10)) if conditional else (),
    )
    return [Heading("Samples"), grid]


def _verdict_evidence(e: dict[str, Any], calibration: dict[str, Any], checks_ran: bool) -> list:
    verdict = e["collapse"]
    blocks: list = [Heading("Collapse verdict")]
    imbalanced = (verdict.get("imbalance") or {}).get("detected") and verdict["kind"] == "none"
    blocks.append(Paragraph(
        f"Verdict: **{verdict['kind']}** (severity {verdict.get('severity', MISSING)}"
        f"{', **borderline**: an interval straddles its threshold' if verdict.get('borderline') else ''})"
        f"{'; digit shares imbalanced, not collapse' if imbalanced else ''}. "
        f"Each threshold lies beyond the worst of {calibration['subsets']} random subsets of "
        f"{fmt(calibration['n_samples'])} real MNIST images the instrument never saw, so real data is never called "
        "collapsed. Margin > 0: on the safe side of the threshold by that much."
    ))
    blocks.append(Bullets(tuple(verdict["evidence"]) or ("No threshold crossed.",)))
    rows = [
        {
            "check": c["name"],
            "role": c["role"],
            "this run": fmt(c["value"]),
            "95% interval": f"{fmt(c['interval'][0])} … {fmt(c['interval'][1])}",
            "threshold": f"{c['op']} {fmt(c['threshold'])}",
            "margin": fmt(c["margin"]),
            "crossed": ("YES" if c["crossed"] else "no") + (" (borderline)" if c["borderline"] else ""),
        }
        for c in verdict.get("checks", [])
    ]
    if rows:
        blocks.append(Table(pd.DataFrame(rows)))
    first, full = e.get("first_collapse_iteration"), e.get("first_full_coverage_iteration")
    if first is not None:
        blocks.append(Paragraph(
            f"During training, all ten digits were first covered at iteration {full} and a digit first lost its "
            f"share at iteration **{first}** (the in-training checks)."
        ))
    elif checks_ran and full is None:
        blocks.append(Paragraph("During training, no in-training check ever found all ten digits."))
    elif checks_ran:
        blocks.append(Paragraph(
            f"During training, all ten digits were first covered at iteration {full} and never lost afterwards."
        ))
    return blocks


def _vs_real(value: float, ref: dict[str, float]) -> str:
    if value > ref["max"]:
        return "above all real"
    if value < ref["min"]:
        return "below all real"
    return "within real range"


def _metrics(e: dict[str, Any], calibration: dict[str, Any], evaluator_accuracy: float | None) -> list:
    real = calibration["real"]
    # Real images asked for their own label are read correctly as often as the evaluator is accurate.
    by_definition = {**REAL_BY_DEFINITION, "label_accuracy": evaluator_accuracy}
    rows = []
    for key, meaning in METRICS.items():
        value = e.get(key)
        if value is None:
            continue  # e.g. label_accuracy of an unconditional model
        ref = real.get(key)
        if ref is not None:
            real_cols = {
                "real data (mean ± std)": mean_std(ref["mean"], ref["std"]),
                "real range": f"{fmt(ref['min'])} … {fmt(ref['max'])}",
                "vs real": _vs_real(value, ref),
            }
        else:
            real_cols = {
                "real data (mean ± std)": fmt(by_definition.get(key)), "real range": MISSING, "vs real": MISSING,
            }
        rows.append({"metric": key, "this run": fmt(value), **real_cols, "how to read it": meaning})
    caption = (
        f"Real data: the same metrics on {calibration['subsets']} random subsets of {fmt(calibration['n_samples'])} "
        "real MNIST images neither the evaluator nor the reference used (outputs/calibration/calibration.json)."
    )
    return [Heading("Metrics beside real data"), Table(pd.DataFrame(rows), caption)]


def _digits(inputs: RunInputs) -> list:
    hist = inputs.class_histogram
    share = inputs.calibration["thresholds"]["share_ratio"]
    table = pd.DataFrame(
        [["samples", *map(pct, hist["samples"])], ["MNIST", *map(pct, hist["mnist"])]],
        columns=["", *map(str, hist["digit"])],
    )
    figure = Figure(
        "class_histogram", charts.class_histogram(hist, share),
        "Share of samples the evaluator reads as each digit, beside MNIST's. A digit counts as covered from "
        f"{share:g} × its MNIST share (red ticks).",
        "bar chart of digit shares, samples against MNIST",
    )
    return [Heading("Digits"), figure, Table(table)]


def _training(inputs: RunInputs) -> list:
    blocks: list = [Heading("Training curves")]
    if len(inputs.losses):
        caption = "Losses as logged every `train.log_every` iterations."
        if "w_estimate" in inputs.losses:
            caption += " A WGAN's critic also reports its W-estimate (−critic loss), the seed's interpretable signal."
        blocks.append(Figure("losses", charts.loss_curves(inputs.losses), caption, "loss curves"))
    else:
        blocks.append(Paragraph("No losses were logged (outputs/train/losses.csv is empty)."))
    curve = inputs.collapse_curve
    if len(curve):
        blocks.append(Figure(
            "collapse_curves",
            charts.collapse_curves(curve, inputs.evaluation.get("first_collapse_iteration")),
            "The in-training collapse check every `train.eval_every` iterations on "
            "`train.eval_samples` samples: digits covered, and FLD (lower is closer to MNIST).",
            "class coverage and FLD over training",
        ))
    else:
        blocks.append(Paragraph(
            "No in-training collapse checks ran: `train.eval_every` is larger than the training run."
        ))
    return blocks


def _wgan_claim(inputs: RunInputs) -> list:
    fld = inputs.collapse_curve if "fld" in inputs.collapse_curve else pd.DataFrame(columns=["step", "fld"])
    aligned = wgan_signal.align(inputs.losses, fld)
    result = wgan_signal.correlation(aligned)
    blocks: list = [
        Heading("Does the W-estimate track quality?"),
        Paragraph(
            "The seed claims the WGAN critic's loss is an interpretable training signal. If it is, the "
            "W-estimate falls as samples get closer to MNIST, i.e. it rises and falls with FLD: a positive "
            "Spearman rank correlation over the training checks."
        ),
        Callout(f"WGAN claim: {result.verdict}", wgan_signal.describe(result), TONES[result.verdict]),
    ]
    if len(aligned) >= 2:
        blocks.append(Figure(
            "wgan_signal", charts.w_against_fld(aligned),
            "Left: both series over training. Right: each training check, coloured by iteration.",
            "W-estimate against FLD",
        ))
    return blocks


def _neighbours(panel: NeighbourPanel) -> list:
    closest = float(panel.distances.min())
    note = (
        f"Median distance {fmt(float(np.median(panel.distances)))}; the closest pair is "
        f"{fmt(closest)} apart. For scale, a real held-out MNIST image lies a median "
        f"{fmt(panel.real_median)} from its nearest training image"
    )
    note += (
        ": the closest sample sits at under half that distance, so it may copy a training image."
        if closest < 0.5 * panel.real_median
        else ": none of these samples sits suspiciously close to a training image."
    )
    figure = Figure(
        "neighbours",
        charts.neighbour_panel(panel.samples, panel.neighbours, panel.distances, panel.requested),
        f"The first {len(panel.samples)} evaluation samples (top) and their nearest training images (bottom) "
        "in evaluator feature space, with the feature distance d.",
        "samples beside their nearest training images",
    )
    return [Heading("Nearest training images"), figure, Paragraph(note)]


def _settings(inputs: RunInputs) -> list:
    rows = [("model", inputs.model), ("seed", inputs.seed)]
    rows += [(f"variants.{inputs.model}.{k}", v) for k, v in inputs.variant.items()]
    rows += [("evaluation samples", inputs.evaluation["n_samples"])]
    if inputs.run_id:
        rows.append(("MLflow run", inputs.run_id))
    if inputs.dvc_exp:
        rows.append(("DVC experiment", inputs.dvc_exp))
    frame = pd.DataFrame([{"setting": k, "value": "null" if v is None else fmt(v)} for k, v in rows])
    return [Heading("Variant and parameters"), Table(frame)]

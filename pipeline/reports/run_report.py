"""The per-run report: did this variant collapse, what do its samples look like, and why the verdict.

`build` turns what the earlier stages wrote into a `Document`; the report stage renders it as
report.md (figures as files) and report.html (self-contained).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline.common import run_description
from pipeline.reports import charts, wgan_signal
from pipeline.reports.document import (
    MISSING, Bullets, Callout, Document, Figure, Gallery, Heading, Paragraph, Table,
)
from pipeline.instrument.rates import rate_of
from pipeline.instrument.replica_summary import HEADLINE
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
    evaluation: dict[str, Any]  # outputs/evaluate/evaluation.json: {"summary": {...}, "replicas": [...]}
    calibration: dict[str, Any]  # outputs/calibration/calibration.json
    replica_grids: dict[int, bytes]  # outputs/evaluate/grids/replica_<r>.png, per evaluated replica
    class_histogram: pd.DataFrame  # digit, samples, mnist
    losses: pd.DataFrame  # step, replica, d_loss, g_loss[, w_estimate]
    collapse_curve: pd.DataFrame  # step, replica, class_coverage, class_kl, fld
    neighbours: NeighbourPanel | None
    run_id: str = ""
    evaluator_accuracy: float | None = None  # on MNIST's test set: the real-data value of label_accuracy
    dvc_exp: str = ""  # the DVC experiment being run ("workspace" for a plain `dvc repro`)


# The per-replica dots: the metrics a reader checks first for collapse and quality.
DOT_PANELS = (
    ("fld", "FLD (lower is closer to MNIST)"),
    ("class_coverage", "Digits covered (of 10)"),
    ("class_kl", "Class KL (nats)"),
    ("intra_class_diversity", "Intra-class diversity (× MNIST's)"),
    ("duplicate_rate", "Near-duplicate rate"),
    ("recall", "Recall (diversity)"),
)


def evaluated(e: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in e["replicas"] if r["status"] == "evaluated"]


def build(inputs: RunInputs) -> Document:
    e = inputs.evaluation
    s = e["summary"]
    n_samples = evaluated(e)[0]["n_samples"] if evaluated(e) else 0
    subtitle = (
        f"variant **{inputs.model}** · seed {inputs.seed} · {s['replicas']} replica{'s' if s['replicas'] != 1 else ''}"
        f" · {fmt(n_samples)} samples evaluated per replica"
    )
    if inputs.run_id:
        subtitle += f" · MLflow parent run `{inputs.run_id}`"
    if inputs.dvc_exp and inputs.dvc_exp != "workspace":
        subtitle += f" · DVC experiment `{inputs.dvc_exp}`"
    doc = Document(f"ganpipe report: {inputs.model}", subtitle)
    doc.add(_rate_callout(e))
    doc.add(*_quality(e, inputs.calibration))
    doc.add(*_replicas(inputs))
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


def _rate_callout(e: dict[str, Any]) -> Callout:
    s = e["summary"]
    rate = rate_of(None if r["status"] == "diverged" else bool(r["collapse"]["detected"]) for r in e["replicas"])
    diverged = f" {rate.diverged} replica{'s' if rate.diverged != 1 else ''} diverged and {'are' if rate.diverged != 1 else 'is'} counted apart." if rate.diverged else ""
    if not rate.evaluated:
        return Callout("No replica could be evaluated", f"All {rate.diverged} replicas diverged in training.", "alert")
    lo, hi = rate.interval
    summary = (
        f"Collapse rate {rate.collapsed}/{rate.evaluated} = {rate.value:.2f}, 95% Wilson interval "
        f"[{lo:.2f}, {hi:.2f}].{diverged} Medians over the evaluated replicas: FLD {fmt(s['fld'])} "
        f"(IQR {fmt(s['fld_iqr'])}) · mean confidence {fmt(s.get('mean_confidence'))} · "
        f"{fmt(s['class_coverage'])} of 10 digits covered · intra-class "
        f"diversity {fmt(s['intra_class_diversity'])} × MNIST's · near-duplicates {pct(s['duplicate_rate'])}"
    )
    title = f"Mode collapse in {rate.collapsed} of {rate.evaluated} replicas"
    tone = "ok" if rate.collapsed == 0 else ("alert" if rate.collapsed == rate.evaluated else "warn")
    return Callout(title if rate.collapsed else f"No mode collapse in any of {rate.evaluated} replicas", summary, tone)


REPLICA_COLUMNS = ("fld", "class_coverage", "class_kl", "intra_class_diversity", "duplicate_rate", "recall")


def replica_frame(e: dict[str, Any]) -> pd.DataFrame:
    """One numeric row per replica (NaN metrics for a diverged one), with its verdict."""
    rows = []
    for r in e["replicas"]:
        ok = r["status"] == "evaluated"
        rows.append({
            "replica": r["index"], "seed": r["seed"],
            "verdict": r["collapse"]["kind"] if ok else "diverged",
            "collapsed": bool(r["collapse"]["detected"]) if ok else None,
            **{k: (r.get(k) if ok else None) for k in HEADLINE},
            "first collapse": r.get("first_collapse_iteration") if ok else None,
        })
    frame = pd.DataFrame(rows)
    frame[list(HEADLINE)] = frame[list(HEADLINE)].apply(pd.to_numeric)
    return frame


def _replicas(inputs: RunInputs) -> list:
    e = inputs.evaluation
    frame = replica_frame(e)
    shown = frame[["replica", "seed", "verdict", *REPLICA_COLUMNS, "first collapse"]].astype(object).map(fmt)
    shown["seed"] = frame["seed"].astype(str)  # an identifier, not a quantity: no thousands separators
    blocks: list = [Heading("Replicas"), Table(
        shown,
        "One row per replica: an independent training of the same variant with its own seed (SeedSequence of "
        "the params seed and the replica index). `first collapse`: the training iteration at which the "
        "in-training check first lost a digit.",
        id="replicas",
    )]
    for r in e["replicas"]:
        if r["status"] == "diverged":
            blocks.append(Paragraph(f"Replica {r['index']} diverged: {r['diverged']}"))
    if frame["collapsed"].notna().any():
        real = {k: (v["min"], v["max"]) for k, v in inputs.calibration["real"].items()
                if isinstance(v, dict) and "min" in v}
        blocks.append(Figure(
            "replica_dots",
            charts.replica_dots(frame.assign(replica=[f"r{i}" + (" (diverged)" if v == "diverged" else "")
                                                    for i, v in zip(frame["replica"], frame["verdict"])]), "replica",
                                DOT_PANELS, real),
            "One dot per replica per metric, red where the replica's verdict is collapse; the dashed line is the "
            "median over replicas, the grey band the range over random real MNIST subsets of the same size.",
            "per-replica values of the headline metrics",
        ))
    return blocks


def _quality(e: dict[str, Any], calibration: dict[str, Any]) -> list:
    """Quality beside diversity: a diversity verdict on samples that are not digits says little (read on the
    median over the evaluated replicas)."""
    note = run_description.quality_note(e["summary"], calibration["real"].get("mean_confidence", {}).get("mean"))
    return [Callout("Samples are mostly not digits", note, "warn")] if note else []


def _samples(inputs: RunInputs) -> list:
    conditional = bool(inputs.variant.get("conditional"))
    caption = "100 samples from fixed noise (the same noise for every replica and every run with this seed), 2× enlarged."
    if conditional:
        caption += " One row per digit: row r asks the generator for digit r."
    kinds = {r["index"]: r["collapse"]["kind"] for r in evaluated(inputs.evaluation)}
    figures = tuple(
        Figure(f"sample_grid_r{i}", png, f"**replica {i}** · {kinds.get(i, 'not evaluated')}",
               f"10x10 grid of generated digits, replica {i}", pixelated=True,
               row_labels=tuple(str(d) for d in range(10)) if conditional else ())
        for i, png in sorted(inputs.replica_grids.items())
    )
    return [Heading("Samples"), Paragraph(caption), Gallery(figures)]


def _verdict_evidence(e: dict[str, Any], calibration: dict[str, Any], checks_ran: bool) -> list:
    blocks: list = [Heading("Collapse verdict")]
    blocks.append(Paragraph(
        f"Each replica is judged on its own. Each threshold lies beyond the worst of {calibration['subsets']} random "
        f"subsets of {fmt(calibration['n_samples'])} real MNIST images the instrument never saw, so real data is never "
        "called collapsed. Margin > 0: on the safe side of the threshold by that much."
    ))
    blocks.append(Paragraph(_which_checks_decide(evaluated(e))))
    if any(r["collapse"].get("conditional") for r in evaluated(e)):
        blocks.append(Paragraph(
            "**Conditional model**: its samples were drawn for requested digits in MNIST's proportions, so the digit "
            "shares are set by the request and only shown. Inter-class collapse is read from per-label accuracy "
            "instead: a requested digit whose samples are mostly read as other digits is a lost mode. Its verdicts "
            "and collapse rate are not like for like with an unconditional model's."
        ))
    for r in evaluated(e):
        verdict = r["collapse"]
        imbalanced = (verdict.get("imbalance") or {}).get("detected") and verdict["kind"] == "none"
        blocks.append(Heading(f"Replica {r['index']}: {verdict['kind']}", level=3))
        blocks.append(Paragraph(
            f"Severity {verdict.get('severity', MISSING)}"
            f"{'; **borderline**: an interval straddles its threshold' if verdict.get('borderline') else ''}"
            f"{'; digit shares imbalanced, not collapse' if imbalanced else ''}."
        ))
        blocks.append(Bullets(tuple(verdict["evidence"]) or ("No threshold crossed.",)))
        rows = [
            {
                "check": c["name"],
                "role": c["role"],
                "this replica": fmt(c["value"]),
                "95% interval": f"{fmt(c['interval'][0])} … {fmt(c['interval'][1])}",
                "threshold": f"{c['op']} {fmt(c['threshold'])}",
                "margin": fmt(c["margin"]),
                "crossed": ("YES" if c["crossed"] else "no") + (" (borderline)" if c["borderline"] else ""),
            }
            for c in verdict.get("checks", [])
        ]
        if rows:
            blocks.append(Table(pd.DataFrame(rows), id=f"checks-r{r['index']}"))
        first, full = r.get("first_collapse_iteration"), r.get("first_full_coverage_iteration")
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


DECIDING_ROLES = ("inter-class", "intra-class")


def check_name(check: dict[str, Any]) -> str:
    """A check's name without this replica's particulars ("... (digit 3)", "... (label 5)")."""
    return re.sub(r" \((digit|label) \d\)", "", check["name"])


def _which_checks_decide(replicas: list[dict[str, Any]]) -> str:
    """One sentence naming the checks that decide the verdict and those only shown, read from the checks'
    roles (so it cannot drift from the verdict)."""
    checks = [c for r in replicas for c in r["collapse"].get("checks", [])]
    deciding = list(dict.fromkeys(check_name(c) for c in checks if c["role"] in DECIDING_ROLES))
    shown = list(dict.fromkeys(f"{check_name(c)} ({c['role']})" for c in checks if c["role"] not in DECIDING_ROLES))
    return (
        f"**Checks that decide collapse**: {'; '.join(deciding) or 'none'}. Shown but not deciding: "
        f"{'; '.join(shown + ['recall (diagnostic)', 'coverage (diagnostic)'])}. Recall and coverage fall as far for blurred or noisy digits "
        "as for a few prototypes in the known-answer ladder, so they measure quality as much as variety "
        "(docs/instrument.md, Recall and coverage)."
    )


def _vs_real(value: float, ref: dict[str, float]) -> str:
    if value > ref["max"]:
        return "above all real"
    if value < ref["min"]:
        return "below all real"
    return "within real range"


def _metrics(e: dict[str, Any], calibration: dict[str, Any], evaluator_accuracy: float | None) -> list:
    real = calibration["real"]
    s = e["summary"]
    # Real images asked for their own label are read correctly as often as the evaluator is accurate.
    by_definition = {**REAL_BY_DEFINITION, "label_accuracy": evaluator_accuracy}
    rows = []
    for key, meaning in METRICS.items():
        value = s.get(key)
        if value is None:
            continue  # e.g. label_accuracy of an unconditional model
        ref = real.get(key)
        if ref is not None:
            real_cols = {
                "real data (mean ± std)": mean_std(ref["mean"], ref["std"]),
                "real range": f"{fmt(ref['min'])} … {fmt(ref['max'])}",
                "median vs real": _vs_real(value, ref),
            }
        else:
            real_cols = {
                "real data (mean ± std)": fmt(by_definition.get(key)), "real range": MISSING, "median vs real": MISSING,
            }
        rows.append({"metric": key, "median": fmt(value), "IQR": fmt(s.get(f"{key}_iqr")), **real_cols,
                     "how to read it": meaning})
    caption = (
        f"Median and interquartile range over the {s['evaluated']} evaluated replicas (IQR only for the headline "
        f"metrics). Real data: the same metrics on {calibration['subsets']} random subsets of "
        f"{fmt(calibration['n_samples'])} real MNIST images neither the evaluator nor the reference used "
        "(outputs/calibration/calibration.json)."
    )
    return [Heading("Metrics beside real data"), Table(pd.DataFrame(rows), caption, id="metrics")]


def _digits(inputs: RunInputs) -> list:
    hist = inputs.class_histogram
    share = inputs.calibration["thresholds"]["share_ratio"]
    per_replica = [c for c in hist.columns if c.startswith("replica_")]
    table = pd.DataFrame(
        [["samples (mean)", *map(pct, hist["samples"])]]
        + [[c.replace("replica_", "replica "), *map(pct, hist[c])] for c in per_replica]
        + [["MNIST", *map(pct, hist["mnist"])]],
        columns=["", *map(str, hist["digit"])],
    )
    figure = Figure(
        "class_histogram", charts.class_histogram(hist, share),
        "Share of samples the evaluator reads as each digit (mean over replicas), beside MNIST's. A digit counts "
        "as covered in a replica from "
        f"{share:g} × its MNIST share (red ticks).",
        "bar chart of digit shares, samples against MNIST",
    )
    return [Heading("Digits"), figure, Table(table)]


def _training(inputs: RunInputs) -> list:
    blocks: list = [Heading("Training curves")]
    if len(inputs.losses):
        caption = "Losses as logged every `train.log_every` iterations, one line per replica."
        if "w_estimate" in inputs.losses:
            caption += " A WGAN's critic also reports its W-estimate (−critic loss), the seed's interpretable signal."
        blocks.append(Figure("losses", charts.loss_curves(inputs.losses), caption, "loss curves"))
    else:
        blocks.append(Paragraph("No losses were logged (outputs/train/losses.csv is empty)."))
    curve = inputs.collapse_curve
    if len(curve):
        blocks.append(Figure(
            "collapse_curves",
            charts.collapse_curves(
                curve, {r["index"]: r.get("first_collapse_iteration") for r in evaluated(inputs.evaluation)}
            ),
            "The in-training collapse check every `train.eval_every` iterations on "
            "`train.eval_samples` samples, one line per replica: digits covered, and FLD (lower is closer to "
            "MNIST). A cross marks a replica's first failed check.",
            "class coverage and FLD over training",
        ))
    else:
        blocks.append(Paragraph(
            "No in-training collapse checks ran: `train.eval_every` is larger than the training run."
        ))
    return blocks


def _wgan_claim(inputs: RunInputs) -> list:
    fld = inputs.collapse_curve if "fld" in inputs.collapse_curve else pd.DataFrame(columns=["step", "fld"])
    losses = dict(charts.per_replica(inputs.losses))
    curves = dict(charts.per_replica(fld))
    aligned = {r: wgan_signal.align(rows, curves.get(r, fld.iloc[:0])) for r, rows in losses.items()}
    results = {r: wgan_signal.correlation(a) for r, a in aligned.items()}
    supported = sum(c.verdict == "supported" for c in results.values())
    blocks: list = [
        Heading("Does the W-estimate track quality?"),
        Paragraph(
            "The seed claims the WGAN critic's loss is an interpretable training signal. If it is, the "
            "W-estimate falls as samples get closer to MNIST, i.e. it rises and falls with FLD: a positive "
            "Spearman rank correlation over the training checks, tested per replica."
        ),
    ]
    if len(results) == 1:
        (only,) = results.values()
        blocks.append(Callout(f"WGAN claim: {only.verdict}", wgan_signal.describe(only), TONES[only.verdict]))
    else:
        verdict = "supported" if supported == len(results) else ("not supported" if supported == 0 else "weak")
        blocks.append(Callout(f"WGAN claim: supported in {supported} of {len(results)} replicas", "", TONES[verdict]))
        rows = [{"replica": str(r), "claim": c.verdict, "ρ": fmt(c.rho), "p": fmt(c.p_value),
                 "checks": str(c.n_points), "reading": wgan_signal.describe(c)} for r, c in results.items()]
        blocks.append(Table(pd.DataFrame(rows), id="wgan-claim"))
    first = next(iter(aligned))
    if len(aligned[first]) >= 2:
        blocks.append(Figure(
            "wgan_signal", charts.w_against_fld(aligned[first]),
            f"Replica {first}. Left: both series over training. Right: each training check, coloured by iteration.",
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
        f"The first {len(panel.samples)} evaluation samples of the first evaluated replica (top) and their "
        "nearest training images (bottom) "
        "in evaluator feature space, with the feature distance d.",
        "samples beside their nearest training images",
    )
    return [Heading("Nearest training images"), figure, Paragraph(note)]


def _settings(inputs: RunInputs) -> list:
    rows = [("model", inputs.model), ("seed", inputs.seed), ("replicas", inputs.evaluation["summary"]["replicas"])]
    rows += [(f"variants.{inputs.model}.{k}", v) for k, v in inputs.variant.items()]
    rows += [("evaluation samples per replica", evaluated(inputs.evaluation)[0]["n_samples"] if evaluated(inputs.evaluation) else 0)]
    if inputs.run_id:
        rows.append(("MLflow parent run", inputs.run_id))
    if inputs.dvc_exp:
        rows.append(("DVC experiment", inputs.dvc_exp))
    frame = pd.DataFrame([{"setting": k, "value": "null" if v is None else fmt(v)} for k, v in rows])
    return [Heading("Variant and parameters"), Table(frame)]

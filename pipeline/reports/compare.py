"""`ganpipe compare`: the variants side by side, read back from the MLflow store.

One row per run (by default the latest finished run of each model and seed), the sample grids next to
each other, the training curves overlaid, the verdicts, the WGAN claim per WGAN run, and a summary
written from the numbers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from pipeline.common import layout
from pipeline.reports import charts, output, store, wgan_signal
from pipeline.reports.document import Bullets, Document, Figure, Gallery, Heading, Paragraph, Table
from pipeline.reports.glossary import REAL_BY_DEFINITION, fmt, mean_std
from pipeline.reports.store import RunData

FIGURE_DIR = "comparison_figures"  # relative to comparison.md; apart from the run report's figures/
TABLE_METRICS = (
    "fld", "kid", "mean_confidence", "class_coverage", "class_kl", "precision", "recall", "coverage", "duplicate_rate",
    "intra_class_diversity", "label_accuracy", "memorisation_ratio",
)
CURVE_PANELS = (
    ("train_fld", "FLD during training (lower is closer to MNIST)"),
    ("train_class_coverage", "Digits covered during training"),
    ("train_class_kl", "Class KL during training (nats)"),
)
W_PANEL = ("w_estimate", "WGAN critic's W-estimate")


def compare(root: Path, out_dir: Path, experiment: str, run_ids: list[str], models: list[str]) -> list[Path]:
    """Read the runs, build the comparison and write comparison.html/.md into out_dir."""
    uri, runs = store.load_runs(root, experiment, run_ids, models)
    selection = (
        "the runs given with --runs" if run_ids
        else f'the latest finished run of each model and seed in experiment "{experiment}"'
    )
    calibration_file = root / layout.CALIBRATION
    calibration = json.loads(calibration_file.read_text()) if calibration_file.is_file() else None
    doc = build(runs, f"{len(runs)} runs: {selection} · store `{uri}`", calibration)
    return output.write(doc, out_dir, "comparison", FIGURE_DIR)


def signals(runs: list[RunData]) -> dict[str, wgan_signal.SignalCorrelation]:
    """The W-estimate/FLD rank correlation of every run that logged a W-estimate (the WGAN runs)."""
    out = {}
    for run in runs:
        h = run.history
        if "w_estimate" in h and "train_fld" in h:
            w = h[["step", "w_estimate"]].dropna()
            fld = h[["step", "train_fld"]].rename(columns={"train_fld": "fld"}).dropna()
            aligned = wgan_signal.align(w, fld)
            out[run.run_id] = wgan_signal.correlation(aligned)
    return out


def metrics_frame(runs: list[RunData], rho: dict[str, wgan_signal.SignalCorrelation]) -> pd.DataFrame:
    """One numeric row per run: identity, final metrics, verdict and (WGAN) the signal correlation."""
    rows = []
    for run in runs:
        corr = rho.get(run.run_id)
        rows.append({
            "model": run.model, "seed": run.seed, "run": run.run_id[:8],
            **{k: run.metrics.get(k) for k in TABLE_METRICS},
            "collapse": run.collapse,
            "W–FLD ρ": None if corr is None else corr.rho,
        })
    frame = pd.DataFrame(rows)
    numbers = [*TABLE_METRICS, "W–FLD ρ"]
    frame[numbers] = frame[numbers].apply(pd.to_numeric)  # a missing metric becomes NaN, not an object None
    return frame


def build(runs: list[RunData], subtitle: str, calibration: dict | None = None) -> Document:
    rho = signals(runs)
    frame = metrics_frame(runs, rho)
    doc = Document("ganpipe comparison", subtitle)
    doc.add(Heading("Summary"), _summary(runs, frame, rho))
    caption = "Final evaluation of each run (MLflow metrics `eval/*`)."
    if calibration is not None:
        frame_shown = pd.concat([frame, reference_row(calibration)], ignore_index=True)
        caption += (
            f" Last row: real MNIST, the mean over {calibration['subsets']} random real subsets of "
            f"{fmt(calibration['n_samples'])} images (outputs/calibration/calibration.json)."
        )
    else:
        frame_shown = frame
    doc.add(Heading("Metrics"), Table(_formatted(frame_shown), caption, id="runs"))
    per_model = _per_model(frame)
    if per_model is not None:
        doc.add(Table(per_model, "Per model over seeds: mean ± standard deviation.", id="per-model"))
    doc.add(Heading("Where each run lives"), where_runs_live(runs))
    doc.add(Heading("Samples"), *_gallery(runs))
    doc.add(Heading("Training curves"), _curves(runs))
    doc.add(Heading("Verdicts"), *_verdicts(runs))
    doc.add(*_wgan_claim(runs, rho))
    return doc


def reference_row(calibration: dict) -> pd.DataFrame:
    """The table row of real data: each metric's mean over the calibration's real subsets (or its value by
    definition: all ten digits, a memorisation ratio of 1)."""
    real = calibration["real"]
    row = {"model": "real MNIST", "seed": "", "run": "", "collapse": "none (real data)"}
    row.update({k: real[k]["mean"] if k in real else REAL_BY_DEFINITION.get(k) for k in TABLE_METRICS})
    frame = pd.DataFrame([row])
    frame[list(TABLE_METRICS)] = frame[list(TABLE_METRICS)].apply(pd.to_numeric)
    return frame


def where_runs_live(runs: list[RunData]) -> Bullets:
    """Per run: the DVC experiment to restore (`dvc exp apply`) and the MLflow page to open."""
    items = []
    for r in runs:
        exp = (
            f"DVC experiment `{r.dvc_exp}` (`dvc exp apply {r.dvc_exp}` restores it)"
            if r.dvc_exp and r.dvc_exp != "workspace" else "DVC workspace (`dvc repro`)"
        )
        link = f"[MLflow run {r.run_id[:8]}]({r.url})" if r.url else f"MLflow run `{r.run_id}`"
        items.append(f"**{r.label}**: {exp} · {link}")
    return Bullets(tuple(items))


def _summary(runs: list[RunData], frame: pd.DataFrame, rho: dict[str, wgan_signal.SignalCorrelation]) -> Bullets:
    by_model = frame.groupby("model", sort=True)
    full = [m for m, g in by_model if (g["class_coverage"] == 10).all()]
    some = [m for m, g in by_model if m not in full and (g["class_coverage"] == 10).any()]
    items = [
        "**All ten digits covered** (in every run): " + (", ".join(full) or "no variant")
        + (f"; in some runs only: {', '.join(some)}" if some else "") + "."
    ]
    collapsed = frame[~frame["collapse"].isin(["none", "not evaluated"])]
    if len(collapsed):
        parts = [
            f"{m} (seed{'s' if len(g) > 1 else ''} {', '.join(g['seed'])}: {', '.join(sorted(set(g['collapse'])))})"
            for m, g in collapsed.groupby("model", sort=True)
        ]
        items.append("**Collapsed:** " + "; ".join(parts) + ".")
    else:
        items.append("**Collapsed:** no run.")
    healthy = [m for m, g in by_model if (g["collapse"] == "none").all()]
    if healthy:
        items.append("**No collapse in any run:** " + ", ".join(healthy) + ".")
    fld = by_model["fld"].mean().dropna().sort_values()
    if len(fld):
        ranking = " < ".join(f"{m} {fmt(v)}" for m, v in fld.items())
        items.append(
            f"**Closest to real data by FLD:** {fld.index[0]} (mean FLD {fmt(fld.iloc[0])}); ranking: {ranking}."
        )
    if rho:
        supported = sum(c.verdict == "supported" for c in rho.values())
        each = "; ".join(
            f"{r.label}: ρ = {fmt(rho[r.run_id].rho)}, {rho[r.run_id].verdict}" for r in runs if r.run_id in rho
        )
        items.append(
            f"**WGAN claim** (the W-estimate tracks FLD): {supported} of {len(rho)} WGAN runs support it ({each})."
        )
    not_evaluated = frame.loc[frame["collapse"] == "not evaluated", "run"]
    if len(not_evaluated):
        items.append(f"Not evaluated yet (no eval/* metrics): runs {', '.join(not_evaluated)}.")
    return Bullets(tuple(items))


def _formatted(frame: pd.DataFrame) -> pd.DataFrame:
    """Cells as text; a metric no compared run has (label_accuracy without a CGAN) is left out."""
    return frame.dropna(axis=1, how="all").astype(object).map(fmt)


def _per_model(frame: pd.DataFrame) -> pd.DataFrame | None:
    """Mean ± std per model over its seeds (one column per model, one row per metric), when some model
    has at least two seeds."""
    counts = frame.groupby("model").size()
    if counts.max() < 2:
        return None
    numeric = frame[["model", *TABLE_METRICS]].set_index("model").apply(pd.to_numeric, errors="coerce")
    grouped = numeric.groupby(level=0)
    mean, std = grouped.mean(), grouped.std()  # std over seeds: NaN for a single seed, shown as the mean alone

    def column(m: str) -> list[str]:
        return [mean_std(mean.at[m, k], std.at[m, k]) for k in TABLE_METRICS]

    table = pd.DataFrame({f"{m} ({counts[m]} run{'s' if counts[m] > 1 else ''})": column(m) for m in mean.index})
    table.insert(0, "metric", list(TABLE_METRICS))
    return table[mean.notna().any(axis=0).to_numpy()]


def _file_stem(run: RunData) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"grid-{run.model}-s{run.seed}-{run.run_id[:8]}")


def _gallery(runs: list[RunData]) -> list:
    figures = tuple(
        Figure(_file_stem(r), r.grid_png, f"**{r.label}** · {r.collapse} · run `{r.run_id[:8]}`",
               f"sample grid of {r.label}", pixelated=True)
        for r in runs if r.grid_png
    )
    blocks: list = [Gallery(figures)] if figures else []
    missing = [r.label for r in runs if not r.grid_png]
    if missing:
        blocks.append(Paragraph(
            f"No sample grid logged for {', '.join(missing)} (the evaluate stage logs evaluation/sample_grid.png)."
        ))
    return blocks


def _curves(runs: list[RunData]) -> Figure:
    panels = list(CURVE_PANELS) + ([W_PANEL] if any("w_estimate" in r.history for r in runs) else [])
    png = charts.overlaid_curves([(r.model, r.label, r.history) for r in runs], panels)
    return Figure(
        "training_curves", png,
        "One line per run: colour = model, line style = seed. The in-training check runs every "
        "`train.eval_every` iterations; the W-estimate is logged every `train.log_every`.",
        "training curves of all runs overlaid",
    )


def _verdicts(runs: list[RunData]) -> list:
    blocks: list = []
    for r in runs:
        first = r.metrics.get("first_collapse_iteration")
        blocks.append(Heading(f"{r.label} (run {r.run_id[:8]}): {r.collapse}", level=3))
        if first is not None:
            blocks.append(Paragraph(f"During training, a digit first lost its share at iteration {fmt(first)}."))
        if r.evidence:
            blocks.append(Bullets(tuple(r.evidence)))
        elif r.collapse not in ("none", "not evaluated"):
            blocks.append(Paragraph("The evidence (evaluation/evaluation.json) was not logged with this run."))
    return blocks


def _wgan_claim(runs: list[RunData], rho: dict[str, wgan_signal.SignalCorrelation]) -> list:
    blocks: list = [Heading("Does the WGAN critic's loss track quality?")]
    if not rho:
        return blocks + [Paragraph("No compared run logged a W-estimate (only WGAN runs do).")]
    blocks.append(Paragraph(
        "Spearman rank correlation between the critic's W-estimate (metric `w_estimate`) and FLD from the "
        "in-training check (`train_fld`), on the training steps both were logged. The seed's claim holds "
        f"when ρ ≥ {wgan_signal.STRONG_RHO} with p < {wgan_signal.ALPHA}."
    ))
    rows = [
        {"run": r.label, "run id": r.run_id[:8], "ρ": fmt(rho[r.run_id].rho), "p": fmt(rho[r.run_id].p_value),
         "checks": str(rho[r.run_id].n_points), "claim": rho[r.run_id].verdict}
        for r in runs if r.run_id in rho
    ]
    return blocks + [Table(pd.DataFrame(rows), id="wgan-claim")]

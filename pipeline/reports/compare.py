"""`ganpipe compare`: the variants side by side, read back from the MLflow store.

One row per training (by default the latest finished training of each model and seed) with its replicas
beneath; per variant the collapse rate over all its replicas with a 95% Wilson interval, one dot per
replica per headline metric, every replica's sample grid, the training curves overlaid, the verdicts, the
WGAN claim per WGAN replica, and a summary written from the numbers that calls one variant better than
another only when their intervals separate.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pandas as pd

from pipeline.common import layout
from pipeline.instrument.rates import Rate, compare_sentence, intervals_separate, median_iqr, rate_of
from pipeline.reports import charts, output, store, wgan_signal
from pipeline.reports.document import Bullets, Document, Figure, Gallery, Heading, Paragraph, Table
from pipeline.reports.glossary import REAL_BY_DEFINITION, fmt
from pipeline.reports.store import ReplicaData, RunData

FIGURE_DIR = "comparison_figures"  # relative to comparison.md; apart from the run report's figures/
# The tables' metric columns: few enough that a row of the per-replica table fits a laptop screen.
TABLE_METRICS = (
    "fld", "kid", "mean_confidence", "class_coverage", "class_kl", "precision", "recall", "duplicate_rate", "intra_class_diversity",
    "label_accuracy",
)
DOT_PANELS = (
    ("fld", "FLD (lower is closer to MNIST)"),
    ("class_coverage", "Digits covered (of 10)"),
    ("class_kl", "Class KL (nats)"),
    ("intra_class_diversity", "Intra-class diversity (× MNIST's)"),
    ("recall", "Recall (diversity)"),
    ("duplicate_rate", "Near-duplicate rate"),
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
    """The W-estimate/FLD rank correlation of every replica that logged a W-estimate (the WGAN runs),
    keyed by the replica's run id."""
    out = {}
    for run in runs:
        for rep in run.replicas:
            h = rep.history
            if "w_estimate" in h and "train_fld" in h:
                w = h[["step", "w_estimate"]].dropna()
                fld = h[["step", "train_fld"]].rename(columns={"train_fld": "fld"}).dropna()
                out[rep.run_id] = wgan_signal.correlation(wgan_signal.align(w, fld))
    return out


def replica_frame(runs: list[RunData]) -> pd.DataFrame:
    """One numeric row per replica: its training, index, verdict and final metrics."""
    rows = []
    for run in runs:
        for rep in run.replicas:
            rows.append({
                "model": run.model, "seed": run.seed, "run": run.run_id[:8], "replica": rep.index,
                "replica run": rep.run_id[:8], "verdict": rep.collapse, "collapsed": rep.collapsed,
                **{k: rep.metrics.get(k) for k in TABLE_METRICS},
            })
    frame = pd.DataFrame(rows)
    frame[list(TABLE_METRICS)] = frame[list(TABLE_METRICS)].apply(pd.to_numeric)  # missing -> NaN, not None
    return frame


def run_rate(run: RunData) -> Rate:
    return rate_of(rep.collapsed for rep in run.replicas if rep.collapse != "not evaluated")


def variant_rates(runs: list[RunData]) -> dict[str, Rate]:
    """Each model's collapse rate over the replicas of all its compared trainings."""
    out = {}
    for model in sorted({r.model for r in runs}):
        reps = [rep for r in runs if r.model == model for rep in r.replicas if rep.collapse != "not evaluated"]
        out[model] = rate_of(rep.collapsed for rep in reps)
    return out


def _interval(rate: Rate) -> str:
    return "—" if rate.interval is None else f"[{rate.interval[0]:.2f}, {rate.interval[1]:.2f}]"


def _rate_cell(rate: Rate) -> str:
    if not rate.evaluated:
        return "—"
    return f"{rate.collapsed}/{rate.evaluated}"


def _median_iqr_cell(values: pd.Series) -> str:
    median, iqr = median_iqr(values.dropna().tolist())
    if median is None:
        return "—"
    return fmt(median) if len(values.dropna()) == 1 else f"{fmt(median)} (IQR {fmt(iqr)})"


def training_frame(runs: list[RunData], replicas: pd.DataFrame) -> pd.DataFrame:
    """One row per training: identity, replica counts, collapse rate and interval, metric medians."""
    rows = []
    for run in runs:
        rate = run_rate(run)
        mine = replicas[(replicas["run"] == run.run_id[:8])]
        evaluated = mine[mine["collapsed"].notna()]
        rows.append({
            "model": run.model, "seed": run.seed, "run": run.run_id[:8],
            "replicas": str(len(run.replicas)),
            "collapsed": _rate_cell(rate) + (f" ({rate.diverged} diverged)" if rate.diverged else ""),
            "95% interval": _interval(rate),
            **{k: evaluated[k].median() for k in TABLE_METRICS},
        })
    frame = pd.DataFrame(rows)
    frame[list(TABLE_METRICS)] = frame[list(TABLE_METRICS)].apply(pd.to_numeric)
    return frame


def rates_frame(runs: list[RunData], replicas: pd.DataFrame) -> pd.DataFrame:
    """Per variant over all its replicas: the rate table the README's variant table is made of."""
    rows = []
    for model, rate in variant_rates(runs).items():
        mine = replicas[(replicas["model"] == model) & replicas["collapsed"].notna()]
        rows.append({
            "model": model,
            "trainings": str(sum(r.model == model for r in runs)),
            "replicas evaluated": str(rate.evaluated),
            "diverged": str(rate.diverged),
            "collapsed": _rate_cell(rate),
            "collapse rate": "—" if rate.value is None else f"{rate.value:.2f}",
            "95% interval": _interval(rate),
            "median FLD": _median_iqr_cell(mine["fld"]),
            "median digits covered": _median_iqr_cell(mine["class_coverage"]),
        })
    return pd.DataFrame(rows)


def build(runs: list[RunData], subtitle: str, calibration: dict | None = None) -> Document:
    rho = signals(runs)
    replicas = replica_frame(runs)
    trainings = training_frame(runs, replicas)
    doc = Document("ganpipe comparison", subtitle)
    doc.add(Heading("Summary"), _summary(runs, replicas, rho))
    doc.add(Heading("Collapse rates"), Table(
        rates_frame(runs, replicas),
        "Per variant over the replicas of all its compared trainings. A replica that diverged in training is "
        "counted apart, never as collapsed or clean. The interval is the 95% Wilson score interval of the rate; "
        "medians come with their interquartile range.",
        id="rates",
    ))
    if replicas["collapsed"].notna().any():
        dots = replicas[replicas["collapsed"].notna()]
        doc.add(Figure(
            "replica_dots", charts.replica_dots(dots, "model", DOT_PANELS),
            "One dot per evaluated replica per metric, red where its verdict is collapse; the black bar is the "
            "variant's median.",
            "per-replica values of the headline metrics, by variant",
        ))
    caption = (
        "One row per training (an MLflow parent run; a run from before replicas counts as one replica): its "
        "collapse count and interval, and each metric's median over its evaluated replicas (MLflow metrics `eval/*`)."
    )
    trainings_shown = trainings
    if calibration is not None:
        trainings_shown = pd.concat([trainings, reference_row(calibration)], ignore_index=True)
        caption += (
            f" Last row: real MNIST, the mean over {calibration['subsets']} random real subsets of "
            f"{fmt(calibration['n_samples'])} images (outputs/calibration/calibration.json)."
        )
    doc.add(Heading("Metrics"), Table(_formatted(trainings_shown), caption, id="runs"))
    detail = replicas.drop(columns="collapsed")
    doc.add(Table(_formatted(detail), "Every replica (MLflow child run) of the trainings above.", id="replicas"))
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
    row = {"model": "real MNIST", "seed": "", "run": "", "replicas": "", "collapsed": "none (real data)",
           "95% interval": ""}
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


def _summary(runs: list[RunData], replicas: pd.DataFrame, rho: dict[str, wgan_signal.SignalCorrelation]) -> Bullets:
    rates = variant_rates(runs)
    items = [
        "**Collapse rate per variant** (collapsed replicas / evaluated replicas, 95% Wilson interval): "
        + "; ".join(f"{m} {r.describe()}" for m, r in rates.items()) + "."
    ]
    comparable = [(m, r) for m, r in sorted(rates.items(), key=lambda mr: (mr[1].value is None, mr[1].value)) if r.evaluated]
    overlapping = []
    for (name_a, a), (name_b, b) in itertools.combinations(comparable, 2):
        if intervals_separate(a, b):
            items.append(compare_sentence(name_a, a, name_b, b))
        else:
            overlapping.append(f"{name_a} vs {name_b}")
    if len(comparable) == 2 and overlapping:
        (name_a, a), (name_b, b) = comparable
        items.append(compare_sentence(name_a, a, name_b, b))
    elif overlapping:
        items.append(
            "**Difference not established** (the intervals overlap; more replicas would narrow them): "
            + ", ".join(overlapping) + "."
        )
    evaluated = replicas[replicas["collapsed"].notna()]
    by_model = evaluated.groupby("model", sort=True)
    full = [m for m, g in by_model if (g["class_coverage"] == 10).all()]
    some = [m for m, g in by_model if m not in full and (g["class_coverage"] == 10).any()]
    items.append(
        "**All ten digits covered** (in every replica): " + (", ".join(full) or "no variant")
        + (f"; in some replicas only: {', '.join(some)}" if some else "") + "."
    )
    fld = by_model["fld"].median().dropna().sort_values()
    if len(fld):
        ranking = " < ".join(f"{m} {fmt(v)}" for m, v in fld.items())
        items.append(
            f"**Closest to real data by median FLD:** {fld.index[0]} ({fmt(fld.iloc[0])}); ranking: {ranking}. "
            "See the dots for the spread across replicas before reading a ranking."
        )
    if rho:
        supported = sum(c.verdict == "supported" for c in rho.values())
        items.append(
            f"**WGAN claim** (the W-estimate tracks FLD): {supported} of {len(rho)} WGAN replicas support it."
        )
    not_evaluated = replicas.loc[replicas["verdict"] == "not evaluated"]
    if len(not_evaluated):
        names = ", ".join(sorted(set(not_evaluated["run"])))
        items.append(f"Not evaluated yet (no eval/* metrics): runs {names}.")
    return Bullets(tuple(items))


def _formatted(frame: pd.DataFrame) -> pd.DataFrame:
    """Cells as text; a metric no compared run has (label_accuracy without a CGAN) is left out."""
    return frame.dropna(axis=1, how="all").astype(object).map(fmt)


def _file_stem(run: RunData, rep: ReplicaData) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"grid-{run.model}-s{run.seed}-{run.run_id[:8]}-r{rep.index}")


def _gallery(runs: list[RunData]) -> list:
    blocks: list = [Paragraph(
        "Every replica's grid from the same fixed noise, one gallery per training (the evidence is under Verdicts)."
    )]
    for run in runs:
        rate = run_rate(run)
        blocks.append(Heading(f"{run.label} (run {run.run_id[:8]}): collapse in {_rate_cell(rate)}", level=3))
        figures = tuple(
            Figure(_file_stem(run, rep), rep.grid_png, f"**r{rep.index}** · {rep.collapse}",
                   f"sample grid of {run.label} replica {rep.index}", pixelated=True)
            for rep in run.replicas if rep.grid_png
        )
        if figures:
            blocks.append(Gallery(figures))
        missing = [f"r{rep.index} ({rep.collapse})" for rep in run.replicas if not rep.grid_png]
        if missing:
            blocks.append(Paragraph(
                f"No sample grid logged for {', '.join(missing)} (the evaluate stage logs evaluation/sample_grid.png "
                "to each evaluated replica)."
            ))
    return blocks


def _curves(runs: list[RunData]) -> Figure:
    histories = [(r.model, r.label, rep.history) for r in runs for rep in r.replicas]
    panels = list(CURVE_PANELS) + ([W_PANEL] if any("w_estimate" in h for _, _, h in histories) else [])
    png = charts.overlaid_curves(histories, panels)
    return Figure(
        "training_curves", png,
        "One line per replica: colour = model, line style = training (seed). The in-training check runs every "
        "`train.eval_every` iterations; the W-estimate is logged every `train.log_every`.",
        "training curves of all replicas overlaid",
    )


def _verdicts(runs: list[RunData]) -> list:
    blocks: list = []
    for r in runs:
        blocks.append(Heading(f"{r.label} (run {r.run_id[:8]}): collapse in {_rate_cell(run_rate(r))}", level=3))
        items = []
        for rep in r.replicas:
            text = f"**r{rep.index}: {rep.collapse}**"
            first = rep.metrics.get("first_collapse_iteration")
            if first is not None:
                text += f" (a digit first lost its share at iteration {fmt(first)})"
            if rep.evidence:
                text += ": " + "; ".join(rep.evidence)
            elif rep.collapse not in ("none", "not evaluated", "diverged"):
                text += ": the evidence (evaluation/evaluation.json) was not logged with this run"
            items.append(text)
        blocks.append(Bullets(tuple(items)))
    return blocks


def _wgan_claim(runs: list[RunData], rho: dict[str, wgan_signal.SignalCorrelation]) -> list:
    blocks: list = [Heading("Does the WGAN critic's loss track quality?")]
    if not rho:
        return blocks + [Paragraph("No compared run logged a W-estimate (only WGAN runs do).")]
    blocks.append(Paragraph(
        "Spearman rank correlation between the critic's W-estimate (metric `w_estimate`) and FLD from the "
        "in-training check (`train_fld`), on the training steps both were logged, per replica. The seed's claim "
        f"holds when ρ ≥ {wgan_signal.STRONG_RHO} with p < {wgan_signal.ALPHA}."
    ))
    rows = [
        {"run": r.label, "run id": r.run_id[:8], "replica": str(rep.index), "ρ": fmt(rho[rep.run_id].rho),
         "p": fmt(rho[rep.run_id].p_value), "checks": str(rho[rep.run_id].n_points), "claim": rho[rep.run_id].verdict}
        for r in runs for rep in r.replicas if rep.run_id in rho
    ]
    return blocks + [Table(pd.DataFrame(rows), id="wgan-claim")]

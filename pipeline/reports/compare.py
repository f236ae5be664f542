"""`ganpipe compare`: the variants side by side, read back from the MLflow store.

One row per training (by default the latest finished training of each model, seed, dataset, preset settings
and budget) with its replicas beneath; per variant the collapse rate over all its replicas with a 95% Wilson
interval, one dot per replica per headline metric, every replica's sample grid, the training curves overlaid,
the verdicts, the WGAN claim per WGAN replica, and a summary written from the numbers that calls one variant
better than another only when their intervals separate. Rates and rankings are only ever formed within one
comparison group (pipeline.reports.groups): one dataset and budget, or with --across-budgets one dataset.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.common import atomic, layout
from pipeline.instrument.rates import Rate, compare_sentence, intervals_separate, median_iqr, rate_of
from pipeline.reports import charts, groups, output, recorded, store, wgan_signal
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


def compare(root: Path, out_dir: Path, experiment: str, run_ids: list[str], models: list[str],
            across_budgets: bool = False, record_as: dict[str, Any] | None = None) -> list[Path]:
    """Read the runs, build the comparison and write comparison.html/.md into out_dir; with `record_as`
    ({file, title, command, machine}) also write the runs as a recorded study (pipeline.reports.recorded)."""
    uri, runs = store.load_runs(root, experiment, run_ids, models)
    if record_as:
        study = recorded.record(runs, record_as["title"], record_as["command"], record_as["machine"])
        atomic.write_json(record_as["file"], study)
    selection = (
        "the runs given with --runs" if run_ids
        else f'the latest finished run of each model, seed, dataset, preset and budget in experiment "{experiment}"'
    )
    calibration_file = root / layout.CALIBRATION
    calibration = json.loads(calibration_file.read_text()) if calibration_file.is_file() else None
    doc = build(runs, f"{len(runs)} runs: {selection} · store `{uri}`", calibration, across_budgets)
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


def _identity_cells(run: RunData, names: dict[str, str]) -> dict[str, str]:
    """The columns that say what a training is: variant, seed, run, dataset, iterations, conditional."""
    return {"model": names.get(run.run_id, run.model), "seed": run.seed, "run": run.run_id[:8],
            "dataset": run.budget.dataset, "iterations": run.budget.iterations,
            "conditional": "yes" if run.conditional else "no"}


def replica_frame(runs: list[RunData], names: dict[str, str] | None = None, tags: dict[str, str] | None = None) -> pd.DataFrame:
    """One numeric row per replica: its training, index, verdict and final metrics. `tags`: the group tag
    of each run id (shown beside the variant in the dot chart when there are several groups)."""
    names, tags = names or {}, tags or {}
    rows = []
    for run in runs:
        for rep in run.replicas:
            name = names.get(run.run_id, run.model)
            rows.append({
                **_identity_cells(run, names), "replica": rep.index,
                "_dot": f"{name} {tags[run.run_id]}" if tags.get(run.run_id) else name,
                "replica run": rep.run_id[:8], "verdict": rep.collapse, "collapsed": rep.collapsed,
                **{k: rep.metrics.get(k) for k in TABLE_METRICS},
            })
    frame = pd.DataFrame(rows)
    frame[list(TABLE_METRICS)] = frame[list(TABLE_METRICS)].apply(pd.to_numeric)  # missing -> NaN, not None
    return frame


def run_rate(run: RunData) -> Rate:
    return rate_of(rep.collapsed for rep in run.replicas if rep.collapse != "not evaluated")


def variant_rates(runs: list[RunData], names: dict[str, str] | None = None) -> dict[str, Rate]:
    """Each variant's collapse rate over the replicas of all its compared trainings (of one group)."""
    names = names or {}
    name = {r.run_id: names.get(r.run_id, r.model) for r in runs}
    out = {}
    for variant in sorted(set(name.values())):
        reps = [rep for r in runs if name[r.run_id] == variant for rep in r.replicas if rep.collapse != "not evaluated"]
        out[variant] = rate_of(rep.collapsed for rep in reps)
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


def training_frame(runs: list[RunData], replicas: pd.DataFrame, names: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per training: identity, replica counts, collapse rate and interval, metric medians."""
    rows = []
    for run in runs:
        rate = run_rate(run)
        mine = replicas[(replicas["run"] == run.run_id[:8])]
        evaluated = mine[mine["collapsed"].notna()]
        rows.append({
            **_identity_cells(run, names or {}),
            "replicas": str(len(run.replicas)),
            "collapsed": _rate_cell(rate) + (f" ({rate.diverged} diverged)" if rate.diverged else ""),
            "95% interval": _interval(rate),
            **{k: evaluated[k].median() for k in TABLE_METRICS},
        })
    frame = pd.DataFrame(rows)
    frame[list(TABLE_METRICS)] = frame[list(TABLE_METRICS)].apply(pd.to_numeric)
    return frame


def rates_frame(grouped: dict[store.Budget, list[RunData]], replicas: pd.DataFrame, names: dict[str, str]) -> pd.DataFrame:
    """Per comparison group and variant, over all its replicas: the rate table the README's variant table
    is made of."""
    rows = []
    for group, runs in grouped.items():
        ids = {r.run_id[:8] for r in runs}
        for model, rate in variant_rates(runs, names).items():
            mine = replicas[replicas["run"].isin(ids) & (replicas["model"] == model) & replicas["collapsed"].notna()]
            rows.append(_rate_row(model, group, [r for r in runs if names.get(r.run_id, r.model) == model], rate, mine))
    return pd.DataFrame(rows)


def _rate_row(model: str, group: store.Budget, runs: list[RunData], rate: Rate, mine: pd.DataFrame) -> dict:
    return {
        "model": model, "dataset": group.dataset, "iterations": group.iterations,
        "conditional": "yes" if any(r.conditional for r in runs) else "no",
        "trainings": str(len(runs)),
        "replicas evaluated": str(rate.evaluated),
        "diverged": str(rate.diverged),
        "collapsed": _rate_cell(rate),
        "collapse rate": "—" if rate.value is None else f"{rate.value:.2f}",
        "95% interval": _interval(rate),
        "median FLD": _median_iqr_cell(mine["fld"]),
        "median digits covered": _median_iqr_cell(mine["class_coverage"]),
    }


def build(runs: list[RunData], subtitle: str, calibration: dict | None = None, across_budgets: bool = False) -> Document:
    rho = signals(runs)
    grouped = groups.group_runs(runs, across_budgets)
    names = groups.variant_names(runs, across_budgets)
    tags = {r.run_id: f"[{_GROUP_TAGS[i]}]" for i, members in enumerate(grouped.values()) for r in members} if len(grouped) > 1 else {}
    replicas = replica_frame(runs, names, tags)
    trainings = training_frame(runs, replicas, names)
    doc = Document("ganpipe comparison", subtitle)
    doc.add(Heading("Summary"), *_summaries(grouped, names, replicas, rho))
    doc.add(Heading("Collapse rates"), Table(
        rates_frame(grouped, replicas, names),
        "Per variant and comparison group (one dataset and budget) over the replicas of all its compared "
        "trainings. A replica that diverged in training is counted apart, never as collapsed or clean. The "
        "interval is the 95% Wilson score interval of the rate; medians come with their interquartile range. "
        "A conditional model (conditional: yes) draws the digits it is asked for, so its class shares are set by "
        "the request: its inter-class verdict reads per-label accuracy instead, and its rate measures a different "
        "thing from an unconditional model's.",
        id="rates",
    ))
    if replicas["collapsed"].notna().any():
        dots = replicas[replicas["collapsed"].notna()]
        doc.add(Figure(
            "replica_dots", charts.replica_dots(dots, "_dot", DOT_PANELS),
            "One dot per evaluated replica per metric, red where its verdict is collapse; the black bar is the "
            "variant's median" + (" (the letter in brackets is the comparison group of the Summary)." if tags else "."),
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
    detail = replicas.drop(columns=["collapsed", "_dot"])
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
    row = {"model": "real MNIST", "seed": "", "run": "", "dataset": "mnist", "iterations": "", "conditional": "",
           "replicas": "", "collapsed": "none (real data)",
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


_GROUP_TAGS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _summaries(grouped: dict[store.Budget, list[RunData]], names: dict[str, str], replicas: pd.DataFrame,
               rho: dict[str, wgan_signal.SignalCorrelation]) -> list:
    """One summary per comparison group: rates, rankings and claims never reach across groups."""
    if len(grouped) == 1:
        (group, runs), = grouped.items()
        return [Paragraph(f"All compared trainings share one dataset and budget: {groups.describe(group)}."),
                _summary(runs, names, replicas, rho)]
    blocks: list = [Paragraph(
        f"The trainings fall into {len(grouped)} comparison groups (dataset, iterations, replicas, evaluation "
        "samples); rates and rankings are compared only within a group. "
        + ("Budgets are merged (--across-budgets); datasets never are." if next(iter(grouped)).iterations == groups.MIXED
           else "`ganpipe compare --across-budgets` merges the budgets of one dataset; datasets are never mixed.")
    )]
    for tag, (group, runs) in zip(_GROUP_TAGS, grouped.items()):
        ids = {r.run_id[:8] for r in runs}
        blocks += [Heading(f"Group {tag}: {groups.describe(group)}", level=3),
                   _summary(runs, names, replicas[replicas["run"].isin(ids)], rho)]
    return blocks


def _summary(runs: list[RunData], names: dict[str, str], replicas: pd.DataFrame,
             rho: dict[str, wgan_signal.SignalCorrelation]) -> Bullets:
    rates = variant_rates(runs, names)
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
    if len(fld) > 1:  # a ranking of one variant says nothing
        ranking = " < ".join(f"{m} {fmt(v)}" for m, v in fld.items())
        items.append(
            f"**Closest to real data by median FLD:** {fld.index[0]} ({fmt(fld.iloc[0])}); ranking: {ranking}. "
            "See the dots for the spread across replicas before reading a ranking."
        )
    mine = {rep.run_id for r in runs for rep in r.replicas} & set(rho)
    if mine:
        supported = sum(rho[k].verdict == "supported" for k in mine)
        items.append(
            f"**WGAN claim** (the W-estimate tracks FLD): {supported} of {len(mine)} WGAN replicas support it."
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

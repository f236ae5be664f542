"""The reports' charts: matplotlib figures returned as PNG bytes (see pipeline.reports.figures)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from pipeline.reports.figures import figure_png, pyplot

WIDE = (10.0, 3.4)  # inches; 1000 px at the figures' dpi
REAL_COLOUR, SAMPLE_COLOUR = "#8c959f", "#0969da"


def _style(ax, title: str, xlabel: str = "generator iteration") -> None:
    ax.set_title(title, fontsize=11, loc="left")
    ax.set_xlabel(xlabel, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


def _log_if_wide(ax, values: pd.Series) -> None:
    # FLD spans orders of magnitude between a collapsed start and a good end; a log axis shows both.
    v = values.dropna()
    if len(v) and (v > 0).all() and v.max() / v.min() > 20:
        ax.set_yscale("log")


def per_replica(frame: pd.DataFrame):
    """(replica, rows) pairs; a frame without a `replica` column (an old single run) is replica 0."""
    if "replica" not in frame:
        return [(0, frame)]
    return [(int(r), rows) for r, rows in frame.groupby("replica", sort=True)]


def _replica_alpha(n: int) -> float:
    return 0.9 if n == 1 else max(0.35, 0.8 - 0.05 * n)


def loss_curves(losses: pd.DataFrame) -> bytes:
    """D and G losses over training, one line per replica; a WGAN's W-estimate gets its own panel."""
    plt = pyplot()
    has_w = "w_estimate" in losses
    fig, axes = plt.subplots(1, 2 if has_w else 1, figsize=WIDE, squeeze=False)
    ax = axes[0, 0]
    groups = per_replica(losses)
    alpha = _replica_alpha(len(groups))
    for i, (_, rows) in enumerate(groups):
        first = i == 0  # one legend entry per series, not per replica
        ax.plot(rows["step"], rows["d_loss"], color="#cf222e", alpha=alpha, lw=1,
                label="D / critic loss" if first else None)
        ax.plot(rows["step"], rows["g_loss"], color=SAMPLE_COLOUR, alpha=alpha, lw=1, label="G loss" if first else None)
    ax.legend(fontsize=8, frameon=False, loc="best")
    _style(ax, "Losses" + (f" ({len(groups)} replicas)" if len(groups) > 1 else ""))
    if has_w:
        ax = axes[0, 1]
        for _, rows in groups:
            ax.plot(rows["step"], rows["w_estimate"], color="#8250df", alpha=alpha, lw=1)
        _style(ax, "Critic's W-estimate  (mean D(real) − mean D(fake))")
    fig.tight_layout()
    return figure_png(fig)


def collapse_curves(curve: pd.DataFrame, first_collapse: dict[int, int | None] | int | None) -> bytes:
    """The in-training collapse check, one line per replica: digits covered and FLD; each replica's
    first failed check is marked with a cross on its own line."""
    plt = pyplot()
    fig, (cov, fld) = plt.subplots(1, 2, figsize=WIDE)
    groups = per_replica(curve)
    alpha = _replica_alpha(len(groups))
    if not isinstance(first_collapse, dict):
        first_collapse = {0: first_collapse}
    marked = False
    for r, rows in groups:
        cov.plot(rows["step"], rows["class_coverage"], marker="o", ms=3, color=SAMPLE_COLOUR, alpha=alpha, lw=1)
        fld.plot(rows["step"], rows["fld"], marker="o", ms=3, color="#bc4c00", alpha=alpha, lw=1)
        step = first_collapse.get(r)
        hit = rows[rows["step"] == step]
        if step is not None and len(hit):
            label = None if marked else "first failed check (per replica)"
            cov.scatter(hit["step"], hit["class_coverage"], marker="x", s=60, color="#cf222e", zorder=3, label=label)
            fld.scatter(hit["step"], hit["fld"], marker="x", s=60, color="#cf222e", zorder=3)
            marked = True
    cov.axhline(10, color=REAL_COLOUR, ls="--", lw=1, label="all ten digits")
    cov.set_ylim(0, 10.5)
    cov.set_yticks(range(0, 11, 2))
    _style(cov, "Digits covered (class coverage)")
    _log_if_wide(fld, curve["fld"])
    _style(fld, "FLD to MNIST (lower is closer)")
    cov.legend(fontsize=8, frameon=False, loc="best")
    fig.tight_layout()
    return figure_png(fig)


COLLAPSED_COLOUR, CLEAN_COLOUR = "#cf222e", SAMPLE_COLOUR


def replica_dots(
    rows: pd.DataFrame,
    x: str,
    panels: Sequence[tuple[str, str]],
    real_ranges: dict[str, tuple[float, float]] | None = None,
) -> bytes:
    """One dot per replica per metric: a panel per (column, title), replicas spread along x (a replica
    index, or a variant name with the replicas jittered), red when the replica's verdict is collapse.
    A black bar marks each group's median (a dashed line, the median of all, when each x holds one dot);
    a grey band, real MNIST subsets' range where known."""
    plt = pyplot()
    cols = min(len(panels), 3)
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(12.0, 3.0 * nrows), squeeze=False)
    groups = list(dict.fromkeys(rows[x]))  # first-seen order
    pos = {g: i for i, g in enumerate(groups)}
    jitter = np.random.default_rng(0).uniform(-0.18, 0.18, len(rows)) if rows[x].duplicated().any() else np.zeros(len(rows))
    xs = rows[x].map(pos).to_numpy(dtype=float) + jitter
    collapsed = rows["collapsed"].fillna(0).astype(bool).to_numpy()
    for ax, (column, title) in zip(axes.flat, panels):
        values = pd.to_numeric(rows[column], errors="coerce")
        band = (real_ranges or {}).get(column)
        if band is not None:
            ax.axhspan(band[0], band[1], color=REAL_COLOUR, alpha=0.25, lw=0, label="real MNIST range")
        for mask, colour, label in ((~collapsed, CLEAN_COLOUR, "no collapse"), (collapsed, COLLAPSED_COLOUR, "collapse")):
            ok = mask & values.notna().to_numpy()
            if ok.any():
                ax.scatter(xs[ok], values[ok], s=36, color=colour, alpha=0.85, edgecolor="white", lw=0.5,
                           label=label, zorder=3)
        grouped = False
        for g, i in pos.items():
            group = values[rows[x] == g].dropna()
            if len(group) > 1:
                ax.hlines(group.median(), i - 0.3, i + 0.3, color="black", lw=1.5, zorder=4)
                grouped = True
        if not grouped and values.notna().sum() > 1:  # one dot per x (a replica axis): the median of all
            ax.axhline(values.median(), color="black", lw=1, ls="--", zorder=2, label="median")
        if column.endswith("class_coverage"):
            ax.set_ylim(-0.3, 10.5)
            ax.set_yticks(range(0, 11, 2))
        ax.set_xticks(range(len(groups)), [str(g) for g in groups], rotation=20 if len(groups) > 4 else 0)
        ax.set_xlim(-0.6, len(groups) - 0.4)
        _style(ax, title, xlabel=x)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for ax in list(axes.flat)[1:len(panels)]:
        for h, l in zip(*ax.get_legend_handles_labels()):
            if l not in labels:
                handles.append(h)
                labels.append(l)
    if handles:
        fig.legend(handles, labels, loc="upper right", fontsize=8, frameon=False, ncols=len(labels))
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout(rect=(0, 0, 1, 0.94 if nrows == 1 else 0.97))
    return figure_png(fig)


def class_histogram(hist: pd.DataFrame, min_share_ratio: float) -> bytes:
    """Share of samples per digit beside MNIST's; ticks mark the share a digit needs to count as covered."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10.0, 3.2))
    x = hist["digit"].to_numpy()
    ax.bar(x - 0.2, hist["mnist"], width=0.4, color=REAL_COLOUR, label="MNIST")
    ax.bar(x + 0.2, hist["samples"], width=0.4, color=SAMPLE_COLOUR, label="samples")
    ax.scatter(x + 0.2, hist["mnist"] * min_share_ratio, marker="_", s=300, color="#cf222e", zorder=3,
               label=f"covered from here ({min_share_ratio:g} × MNIST share)")
    ax.set_xticks(x)
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    ax.legend(fontsize=8, frameon=False)
    _style(ax, "Digits the evaluator sees in the samples", xlabel="digit")
    fig.tight_layout()
    return figure_png(fig)


def neighbour_panel(
    samples: np.ndarray, neighbours: np.ndarray, distances: np.ndarray, requested: np.ndarray | None = None
) -> bytes:
    """Each sample (top) above its nearest training image (bottom), with their feature distance; a
    conditional model's samples are titled with the digit they were asked to be."""
    plt = pyplot()
    n = len(samples)
    fig, axes = plt.subplots(2, n, figsize=(1.25 * n + 0.8, 3.0), squeeze=False)
    for i in range(n):
        for row, image in ((0, samples[i]), (1, neighbours[i])):
            ax = axes[row, i]
            ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[1, i].set_xlabel(f"d = {distances[i]:.2f}", fontsize=9)
        if requested is not None:
            axes[0, i].set_title(f"asked: {requested[i]}", fontsize=9)
    axes[0, 0].set_ylabel("sample", fontsize=9)
    axes[1, 0].set_ylabel("nearest\ntraining image", fontsize=9)
    fig.tight_layout()
    return figure_png(fig)


def w_against_fld(aligned: pd.DataFrame) -> bytes:
    """The WGAN claim as a picture: W-estimate and FLD over training, and one against the other."""
    plt = pyplot()
    fig, (over_time, scatter) = plt.subplots(1, 2, figsize=WIDE)
    over_time.plot(aligned["step"], aligned["w_estimate"], color="#8250df", label="W-estimate")
    twin = over_time.twinx()
    twin.plot(aligned["step"], aligned["fld"], color="#bc4c00", label="FLD")
    _log_if_wide(twin, aligned["fld"])
    twin.tick_params(labelsize=8)
    over_time.set_ylabel("W-estimate", color="#8250df", fontsize=9)
    twin.set_ylabel("FLD", color="#bc4c00", fontsize=9)
    _style(over_time, "W-estimate and FLD over training")
    points = scatter.scatter(aligned["w_estimate"], aligned["fld"], c=aligned["step"], cmap="viridis", s=18)
    _log_if_wide(scatter, aligned["fld"])
    cbar = fig.colorbar(points, ax=scatter)
    cbar.set_label("iteration", fontsize=9)
    cbar.ax.tick_params(labelsize=8)
    _style(scatter, "FLD against W-estimate", xlabel="W-estimate")
    scatter.set_ylabel("FLD", fontsize=9)
    fig.tight_layout()
    return figure_png(fig)


def overlaid_curves(
    histories: Sequence[tuple[str, str, pd.DataFrame]],
    panels: Sequence[tuple[str, str]],
) -> bytes:
    """One panel per (column, title); one line per run. `histories` holds (model, label, frame with
    `step` and the columns); a model keeps its colour across panels, and its seeds differ by line style.
    Histories sharing a label (the replicas of one training) share a style and one legend entry."""
    plt = pyplot()
    models = sorted({model for model, _, _ in histories})
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    styles = ["-", "--", ":", "-."]
    seen: dict[str, list[str]] = {}
    in_legend: set[str] = set()
    alpha = 0.9 if len({label for _, label, _ in histories}) == len(histories) else 0.55
    cols = min(len(panels), 2)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(12.0, 3.6 * rows), squeeze=False)
    for model, label, frame in histories:
        labels = seen.setdefault(model, [])
        if label not in labels:
            labels.append(label)
        style = styles[labels.index(label) % len(styles)]
        shown = label not in in_legend
        in_legend.add(label)
        for ax, (column, _) in zip(axes.flat, panels):
            if column in frame:
                # Series logged at different intervals share the frame; NaN gaps would break the line.
                points = frame[["step", column]].dropna()
                if len(points):
                    ax.plot(points["step"], points[column], ls=style, color=colours[model], alpha=alpha,
                            label=label if shown else "_nolegend_")
    for ax, (column, title) in zip(axes.flat, panels):
        if column.endswith("class_coverage"):
            ax.set_ylim(0, 10.5)  # the full scale: 10 is "no digit missing"
            ax.set_yticks(range(0, 11, 2))
        if column.endswith("fld"):
            values = pd.concat([f[column] for _, _, f in histories if column in f], ignore_index=True)
            _log_if_wide(ax, values)
        _style(ax, title)
        if ax.has_data():
            ax.legend(fontsize=7, frameon=False, ncols=2)
        else:
            ax.text(0.5, 0.5, "no run logged this", ha="center", va="center", transform=ax.transAxes, color="#59636e")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    return figure_png(fig)

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


def loss_curves(losses: pd.DataFrame) -> bytes:
    """D and G losses over training; a WGAN's W-estimate gets its own panel (its scale differs)."""
    plt = pyplot()
    has_w = "w_estimate" in losses
    fig, axes = plt.subplots(1, 2 if has_w else 1, figsize=WIDE, squeeze=False)
    ax = axes[0, 0]
    ax.plot(losses["step"], losses["d_loss"], label="D / critic loss", color="#cf222e")
    ax.plot(losses["step"], losses["g_loss"], label="G loss", color=SAMPLE_COLOUR)
    ax.legend(fontsize=8, frameon=False, loc="best")
    _style(ax, "Losses")
    if has_w:
        ax = axes[0, 1]
        ax.plot(losses["step"], losses["w_estimate"], color="#8250df")
        _style(ax, "Critic's W-estimate  (mean D(real) − mean D(fake))")
    fig.tight_layout()
    return figure_png(fig)


def collapse_curves(curve: pd.DataFrame, first_collapse: int | None) -> bytes:
    """The in-training collapse check: digits covered and FLD, with the first collapse marked."""
    plt = pyplot()
    fig, (cov, fld) = plt.subplots(1, 2, figsize=WIDE)
    cov.plot(curve["step"], curve["class_coverage"], marker="o", ms=3, color=SAMPLE_COLOUR)
    cov.axhline(10, color=REAL_COLOUR, ls="--", lw=1, label="all ten digits")
    cov.set_ylim(0, 10.5)
    cov.set_yticks(range(0, 11, 2))
    _style(cov, "Digits covered (class coverage)")
    fld.plot(curve["step"], curve["fld"], marker="o", ms=3, color="#bc4c00")
    _log_if_wide(fld, curve["fld"])
    _style(fld, "FLD to MNIST (lower is closer)")
    if first_collapse is not None:
        for ax in (cov, fld):
            ax.axvline(first_collapse, color="#cf222e", lw=1, alpha=0.7, label="first collapse check failed")
    cov.legend(fontsize=8, frameon=False, loc="best")
    fig.tight_layout()
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
    `step` and the columns); a model keeps its colour across panels, and its seeds differ by line style."""
    plt = pyplot()
    models = sorted({model for model, _, _ in histories})
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    styles = ["-", "--", ":", "-."]
    seen: dict[str, int] = {}
    cols = min(len(panels), 2)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(12.0, 3.6 * rows), squeeze=False)
    for model, label, frame in histories:
        style = styles[seen.setdefault(model, 0) % len(styles)]
        seen[model] += 1
        for ax, (column, _) in zip(axes.flat, panels):
            if column in frame:
                # Series logged at different intervals share the frame; NaN gaps would break the line.
                points = frame[["step", column]].dropna()
                if len(points):
                    ax.plot(points["step"], points[column], ls=style, color=colours[model], label=label)
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

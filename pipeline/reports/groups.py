"""Which compared trainings may be ranked against each other, and what each variant is called.

A collapse rate or a median FLD only means something beside another one measured on the same data with the
same budget: a 200-iteration Stacked MNIST run and a 20,000-iteration MNIST run differ in far more than their
variant. So `ganpipe compare` ranks only within a group of one Budget (dataset, iterations, replicas,
evaluation samples); with `--across-budgets` a group is one dataset, and datasets are never mixed.
"""

from __future__ import annotations

from pipeline.reports.store import NOT_RECORDED, Budget, RunData

MIXED = "mixed"  # a budget field of a group that spans budgets (--across-budgets)


def group_key(run: RunData, across_budgets: bool) -> Budget:
    if across_budgets:
        return Budget(run.budget.dataset, MIXED, MIXED, MIXED)
    return run.budget


def group_runs(runs: list[RunData], across_budgets: bool = False) -> dict[Budget, list[RunData]]:
    """The trainings by comparison group, the groups in a stable order (dataset, then budget)."""
    out: dict[Budget, list[RunData]] = {}
    for run in runs:
        out.setdefault(group_key(run, across_budgets), []).append(run)
    return dict(sorted(out.items()))


def describe(group: Budget) -> str:
    if group == Budget(NOT_RECORDED, NOT_RECORDED, NOT_RECORDED, NOT_RECORDED):
        return "dataset and budget not recorded (runs logged before ganpipe logged them)"
    if group.iterations == MIXED:
        return f"{group.dataset}, budgets mixed (--across-budgets)"
    return group.describe()


def variant_names(runs: list[RunData], across_budgets: bool = False) -> dict[str, str]:
    """Each training's variant name (by run id): its model, and where one group holds trainings of the
    same model with different preset settings (e.g. `-S variants.wgan.lr=1e-4`), the settings that differ,
    so that they are counted as different variants and not pooled into one rate."""
    names = {}
    for group_runs_ in group_runs(runs, across_budgets).values():
        for model in {r.model for r in group_runs_}:
            mine = [r for r in group_runs_ if r.model == model]
            keys = sorted({k for r in mine for k in r.settings})
            differing = [k for k in keys if len({r.settings.get(k) for r in mine}) > 1 and k != "iterations"]
            for r in mine:
                suffix = ", ".join(f"{k}={r.settings.get(k, '—')}" for k in differing)
                names[r.run_id] = f"{model} ({suffix})" if suffix else model
    return names

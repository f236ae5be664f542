"""metrics/train.json: what `dvc exp show` shows for a training of R replicas."""

from __future__ import annotations

import statistics


def train_metrics(final_losses: dict[int, dict[str, float]], iterations: int, diverged: list[str | None]) -> dict:
    """Iterations, replica counts and each final loss as the median over the replicas that finished.

    The median, not the mean: one replica far off (nearly diverged) should not move the summary.
    """
    out: dict = {"iterations": iterations, "replicas": len(diverged), "diverged": sum(d is not None for d in diverged)}
    names = sorted({k for losses in final_losses.values() for k in losses})
    for name in names:
        values = [losses[name] for losses in final_losses.values() if name in losses]
        out[f"final_{name}_median"] = round(statistics.median(values), 6)
    return out

"""A Stacked MNIST mode-count study (benchmarks/stacked_mnist.py's output) as tables: ganpipe's rows beside the
published ones, the contrast of each later preset with the first, the modes during training, and the re-count of
saved generators every way with the two counters' agreement.

The benchmark prints these tables (`--report`) and records a study (`--report ... --record results/NAME.json`);
`ganpipe tables` renders a recorded study where a page asks for it (pipeline/reports/recorded.py's markers with
the kinds `table3`, `table3-contrast`, `table3-curve`, `table3-recount`), so no figure of a study is typed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# (model, modes captured, KL, source): the published rows, as the papers print them (± standard error).
_T3 = "PacGAN Table 3, 50 trials, 500,000 iterations"
PUBLISHED = {
    "dcgan": [
        ("DCGAN", "99", "3.40", "VEEGAN Table 2"),
        ("DCGAN", "78.9 ± 6.5", "4.50 ± 0.13", "PacGAN Table 2, 10 trials"),
    ],
    "pacdcgan2": [("PacDCGAN2", "1000.0 ± 0.0", "0.06 ± 0.003", "PacGAN Table 2, 10 trials")],
    "dcgan-quarter-d": [("DCGAN, D = 0.25G", "78.5 ± 17.56", "5.21 ± 0.19", _T3)],
    "pacdcgan2-quarter-d": [("PacDCGAN2, D = 0.25G", "484.5 ± 32.99", "2.61 ± 0.22", _T3)],
    "pacdcgan3-quarter-d": [("PacDCGAN3, D = 0.25G", "601.3 ± 32.18", "2.00 ± 0.17", _T3)],
    "pacdcgan4-quarter-d": [("PacDCGAN4, D = 0.25G", "667.4 ± 29.00", "1.81 ± 0.15", _T3)],
    "dcgan-half-d": [("DCGAN, D = 0.5G", "487.7 ± 34.59", "2.24 ± 0.15", _T3)],
    "pacdcgan2-half-d": [("PacDCGAN2, D = 0.5G", "840.7 ± 15.92", "1.00 ± 0.05", _T3)],
    "pacdcgan3-half-d": [("PacDCGAN3, D = 0.5G", "866.6 ± 12.10", "0.90 ± 0.04", _T3)],
    "pacdcgan4-half-d": [("PacDCGAN4, D = 0.5G", "820.2 ± 25.50", "1.15 ± 0.14", _T3)],
}
STACKED_SET = 128_000  # the papers' training images: an epoch for --epochs
# The ways a generator's modes can be counted (pipeline/instrument/stacked.py's CLASSIFIERS x SAMPLINGS), spelt
# here so that rendering a page does not load torch.
CLASSIFIERS = ("evaluator", "released-cnn")
SAMPLINGS = ("running-stats", "batch-stats")
WAYS = tuple(f"{c}_{s}" for s in SAMPLINGS for c in CLASSIFIERS)


def mean_and_se(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    se = float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None
    return float(np.mean(values)), se


def plus_minus(mean: float | None, se: float | None, digits: int) -> str:
    """`mean ± se` as the tables print it (— without values, the mean alone for one value)."""
    if mean is None:
        return "—"
    return f"{mean:.{digits}f}" + ("" if se is None else f" ± {se:.{digits}f}")


def table(results: list[dict]) -> str:
    lines = [
        "| model | modes (of 1000) | KL to uniform | each seed's modes | source / budget |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in results:
        for name, m, kl, source in PUBLISHED.get(r["preset"], []):
            lines.append(f"| {name} | {m} | {kl} | — | {source} |")
        n = len(r.get("modes_captured", []))
        epochs = r["iterations"] * r["batch_size"] / STACKED_SET
        budget = (
            f"ganpipe, {n} seeds ({r.get('diverged', 0)} diverged), {r['iterations']:,} iterations "
            f"({epochs:.3g} epochs of 128k samples), {r['samples']:,} samples, {r['device']}, {r['threads']} thread(s), "
            f"counted {r.get('mode_count', 'evaluator_running-stats')}"
        )
        if n:
            lines.append(f"| ganpipe `{r['preset']}` | {plus_minus(r['modes_captured_mean'], r['modes_captured_se'], 1)} | "
                         f"{plus_minus(r['mode_kl_mean'], r['mode_kl_se'], 2)} | {', '.join(f'{m:g}' for m in r['modes_captured'])} | "
                         f"{budget} |")
        else:
            lines.append(f"| ganpipe `{r['preset']}` | — | — | — | {budget}: no seed finished |")
    return "\n".join(lines)


def _curve_point(result: dict, step: int) -> tuple[float | None, float | None]:
    """Mean ± SE of the seeds' modes at a count: from each seed's count, or, in an archive that kept only the
    printed curve, as recorded (`curve_summary`)."""
    values = [row["modes_captured"] for row in result["curve"] if row["step"] == step]
    if values:
        return mean_and_se(values)
    kept = next((row for row in result.get("curve_summary", []) if row["step"] == step), None)
    return (kept["mean"], kept["se"]) if kept else (None, None)


def curve_table(results: list[dict]) -> str:
    """Modes captured at each count, mean ± SE over the seeds, one column per preset."""
    steps = sorted({row["step"] for r in results for row in r["curve"] + r.get("curve_summary", [])})
    lines = ["| iteration | " + " | ".join(f"`{r['preset']}`" for r in results) + " |",
             "| --- |" + " --- |" * len(results)]
    for step in steps:
        lines.append(f"| {step:,} | " + " | ".join(plus_minus(*_curve_point(r, step), 1) for r in results) + " |")
    return "\n".join(lines)


def difference(a: list[float], b: list[float]) -> dict[str, Any]:
    """mean(a) - mean(b) with its Welch 95% interval and percentile-bootstrap 95% interval (10,000 resamples of each
    group, seed 0), and the exact two-sided Mann-Whitney p (no normality assumed; 5 against 5 can reach 0.008)."""
    from scipy import stats

    welch = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    boot = stats.bootstrap((a, b), lambda x, y: np.mean(x) - np.mean(y), n_resamples=10_000, method="percentile",
                           random_state=np.random.default_rng(0), vectorized=False).confidence_interval
    u = stats.mannwhitneyu(a, b, alternative="two-sided", method="exact")
    return {"difference": float(np.mean(a) - np.mean(b)), "welch": (float(welch.low), float(welch.high)),
            "bootstrap": (float(boot.low), float(boot.high)), "u": float(u.statistic), "p": float(u.pvalue)}


def contrasts(results: list[dict], metric: str = "modes_captured") -> str:
    """Each later preset against the first at the final count, in modes (or, with metric="mode_kl", in KL)."""
    unit = "mean modes" if metric == "modes_captured" else "mean KL (nats)"
    digits = 1 if metric == "modes_captured" else 2
    lines = [f"| preset against the first | difference in {unit} [Welch 95%] [bootstrap 95%] | Mann-Whitney U, exact p |",
             "| --- | --- | --- |"]
    base = results[0]
    for r in results[1:]:
        a, b = r.get(metric, []), base.get(metric, [])
        if len(a) < 2 or len(b) < 2:
            lines.append(f"| `{r['preset']}` − `{base['preset']}` | each seed's figure not recorded | — |")
            continue
        d = difference(a, b)
        show = lambda x: f"{x:+.{digits}f}"  # noqa: E731
        lines.append(f"| `{r['preset']}` − `{base['preset']}` | {show(d['difference'])} [{show(d['welch'][0])}, "
                     f"{show(d['welch'][1])}] [{show(d['bootstrap'][0])}, {show(d['bootstrap'][1])}] | "
                     f"U = {d['u']:g}, p = {d['p']:.3f} |")
    return "\n".join(lines)


def ways_table(document: dict) -> str:
    """The re-count: each seed's modes every way, the counters' agreement, and both counters on real triples."""
    lines = ["| preset | step | seed | " + " | ".join(WAYS) + " | same triple, running-stats | same triple, batch-stats |",
             "| --- | --- | --- |" + " --- |" * (len(WAYS) + 2)]
    for row in document["recount"]:
        cells = [str(row["ways"].get(w, {}).get("modes_captured", "—")) for w in WAYS]
        agree = [f"{row['agreement'].get(s, float('nan')):.3f}" for s in SAMPLINGS]
        lines.append(f"| `{row['preset']}` | {row['step']:,} | {row['seed']} | " + " | ".join(cells + agree) + " |")
    real = document["real"]
    lines += ["", f"Real stacked test triples ({real['n_samples']:,}): " + "; ".join(
        f"{name} {real[name]['modes_captured']} modes, KL {real[name]['mode_kl']:.3f}, "
        f"{real[name].get('triples_read_right', float('nan')):.4f} of triples read right"
        for name in CLASSIFIERS if name in real) + f"; both read the same triple in {real.get('agreement', float('nan')):.4f}"]
    return "\n".join(lines)


def ways_summary(document: dict) -> str:
    """Per preset and step, each way's mean ± SE over seeds and its difference from the headline way
    (released-cnn_batch-stats, the published protocol), with the paired seeds' range of that difference."""
    headline = "released-cnn_batch-stats"
    lines = ["| preset | step | " + " | ".join(WAYS) + " | same triple (batch-stats) |",
             "| --- | --- |" + " --- |" * (len(WAYS) + 1)]
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in document["recount"]:
        groups.setdefault((row["preset"], row["step"]), []).append(row)
    for (preset, step), rows in groups.items():
        cells = []
        for way in WAYS:
            values = [r["ways"][way]["modes_captured"] for r in rows if way in r["ways"]]
            cell = plus_minus(*mean_and_se(values), 1)
            if way != headline and values:
                diffs = [r["ways"][way]["modes_captured"] - r["ways"][headline]["modes_captured"] for r in rows]
                cell += f" (paired {min(diffs):+g} to {max(diffs):+g})"
            cells.append(cell)
        agree = plus_minus(*mean_and_se([r["agreement"]["batch-stats"] for r in rows]), 3)
        lines.append(f"| `{preset}` | {step:,} | " + " | ".join(cells) + f" | {agree} |")
    return "\n".join(lines)


def record(results: list[dict], recounts: list[dict], title: str, conditions: dict[str, str]) -> dict[str, Any]:
    """A recorded study: the benchmark's saved runs and re-counts with the conditions they were measured under
    (command, machine, kernels, commit, date; benchmarks/stacked_mnist.py --record refuses a study without them)."""
    return {"title": title, "kind": "stacked-mnist", "conditions": conditions, "results": results, "recounts": recounts}


def conditions_line(study: dict[str, Any]) -> str:
    c = study["conditions"]
    archive = f" Archive: {study['archive']}" if study.get("archive") else ""
    return (f"*{study['title']}.* Machine: {c['machine']}. Kernels: `{c['kernels']}`. Commit: {c['commit']}. "
            f"Date: {c['date']}. Reproduce: {c['command']}.{archive} Rendered by `ganpipe tables` from {study['file']}.")


KINDS = ("table3", "table3-contrast", "table3-curve", "table3-recount")


def render(study: dict[str, Any], kind: str) -> str:
    """One of a recorded study's tables (KINDS), with the conditions beneath."""
    results = study["results"]
    if kind == "table3":
        body = table(results)
    elif kind == "table3-contrast":
        body = contrasts(results) + "\n\nIn KL to uniform:\n\n" + contrasts(results, "mode_kl")
    elif kind == "table3-curve":
        body = curve_table(results)
    else:
        body = "\n\n".join(ways_summary(doc) + "\n\nEach seed:\n\n" + ways_table(doc) for doc in study["recounts"])
    return f"{body}\n\n{conditions_line(study)}\n"

"""Stacked MNIST mode counts of ganpipe's presets beside the published tables, with the count during training.

Two published settings, each a set of presets in params.yaml:
- PacGAN's Table 2 (and VEEGAN's Table 2): `dcgan`, `pacdcgan2`; 128,000 stacked training images, z 100,
  batch 64, Adam 2e-4 (beta1 0.5), 50 epochs, 26,000 samples.
- PacGAN's Table 3 (Lin et al. 2018; the Unrolled-GAN architecture, Metz et al. 2017): `dcgan-quarter-d`,
  `pacdcgan2-quarter-d` ... `pacdcgan4-half-d`; triples drawn fresh each batch, 500,000 iterations,
  25,600 samples, 50 trials.
A mode is captured when one sample is classified as that digit triple; KL is to the uniform over the 1,000
triples. Every preset and seed is trained with ganpipe's own trainer and networks, sampled, and counted with
the pipeline's evaluator classifier; the seeds of one preset train side by side as replicas. ganpipe's rows
are mean +- standard error over seeds, each with its budget and device. With --count-every, modes and KL are
counted every that many iterations for every seed (the curve); the last point is the final count.

    python benchmarks/stacked_mnist.py                              # Table 2's setting: needs a GPU
    python benchmarks/stacked_mnist.py --iterations 2000 --samples 10000 --seeds 0,1,2   # reduced
    python benchmarks/stacked_mnist.py --presets dcgan-quarter-d,pacdcgan2-quarter-d --seeds 0,1,2,3,4 \
        --iterations 2000 --count-every 250 --out table3.json      # Table 3's setting, short budget, curve
    python benchmarks/stacked_mnist.py --report a.json b.json       # the tables again from saved runs
    python benchmarks/stacked_mnist.py --json                       # one JSON object per preset

Needs the prepared MNIST and the evaluator: `dvc repro evaluator` first. --out is rewritten after every
count, so an interrupted run keeps the curve so far.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.common import cpu_kernels  # noqa: E402

# Before numpy and torch load: the kernels params.yaml asks for, or --cpu-kernels' (pipeline/common/cpu_kernels.py).
cpu_kernels.pin_or_exit(ROOT / "params.yaml", cpu_kernels.mode_from_argv(sys.argv))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.common import atomic, devices, layout  # noqa: E402
from pipeline.common.errors import GanpipeError  # noqa: E402
from pipeline.common.params import VariantParams, load_params  # noqa: E402
from pipeline.data import stacked_mnist  # noqa: E402
from pipeline.data.mnist import load_prepared  # noqa: E402
from pipeline.gan import sampling  # noqa: E402
from pipeline.gan import threads as gan_threads  # noqa: E402
from pipeline.instrument import evaluator  # noqa: E402
from pipeline.instrument.stacked import quick_modes  # noqa: E402

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
TABLE2 = {"epochs": 50}  # Table 2's budget in epochs of the 128,000-image set


def count_modes(classifier, generator, n: int, seed: int) -> dict[str, float]:
    found = quick_modes(classifier, sampling.sample(generator, n, seed=seed))  # the train stage's own count
    return {"modes_captured": found["modes_captured"], "mode_kl": round(found["mode_kl"], 4)}


def train_and_count(variant: VariantParams, rows, labels, seeds: list[int], iterations: int, count_every: int | None,
                    count, on_count) -> tuple[dict[int, dict], float]:
    """Train the seeds side by side for `iterations` generator steps, counting each live seed's modes every
    `count_every` steps and at the end. Returns {seed index: final count} and the training seconds (counting
    excluded); `on_count(step, rows)` receives each round of counts."""
    from pipeline.gan.trainer import NonFiniteTraining, Trainer

    trainer = Trainer(variant, rows, labels, seeds, batched=len(seeds) > 1)
    final: dict[int, dict] = {}
    seconds = 0.0
    chunk = min(count_every or 1000, 1000)
    while trainer.step < iterations:
        start = time.perf_counter()
        trainer.advance(min(chunk - trainer.step % chunk, iterations - trainer.step))
        try:
            trainer.read_losses()  # the NaN/Inf check (and a host sync, so the timing is honest)
        except NonFiniteTraining:
            return {}, seconds + time.perf_counter() - start
        seconds += time.perf_counter() - start
        if trainer.step == iterations or (count_every and trainer.step % count_every == 0):
            step_rows = []
            for r in trainer.live:
                final[r] = count(trainer.replica_generator(r), seeds[r])
                step_rows.append({"step": trainer.step, "seed": seeds[r], **final[r]})
            on_count(trainer.step, step_rows)
    return {r: final[r] for r in trainer.live}, seconds


def mean_and_se(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    se = float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None
    return float(np.mean(values)), se


def run(args: argparse.Namespace) -> list[dict]:
    params = load_params(ROOT / "params.yaml")
    for preset in args.presets:
        if preset not in params.variants:
            raise GanpipeError(f"no preset {preset!r} under `variants` in params.yaml: name one of {', '.join(params.variants)}")
    device = devices.resolve(args.device)
    # One count for training and counting alike, params' train.threads unless --threads (it changes results;
    # docs/speed.md), resolved as the train stage resolves it and reported per row.
    torch.set_num_threads(gan_threads.resolve(args.threads or params.train.threads, device.type))
    data = load_prepared(ROOT / layout.PREPARED)
    classifier = evaluator.load(ROOT / layout.CLASSIFIER)
    stacked = stacked_mnist.build(data.y_train, params.stacked_mnist.size, params.stacked_mnist.seed)
    from pipeline.data.training_set import training_rows

    rows, labels = training_rows(data, device, stacked)
    results: list[dict] = []
    for preset in args.presets:
        variant = params.variants[preset]
        samples = args.samples or variant.stacked_eval_samples or params.stacked_mnist.eval_samples
        iterations = args.iterations or args.epochs * len(stacked) // variant.batch_size
        result = {
            "preset": preset, "device": str(device), "threads": torch.get_num_threads(), "iterations": iterations,
            "batch_size": variant.batch_size, "samples": samples, "seeds": args.seeds, "curve": [],
        }
        results.append(result)

        def on_count(step: int, step_rows: list[dict], result=result) -> None:
            result["curve"].extend(step_rows)
            captured = [r["modes_captured"] for r in step_rows]
            print(f"{result['preset']} at {step:,}: modes {captured}", file=sys.stderr, flush=True)
            if args.out:
                atomic.write_json(args.out, results)

        count = lambda generator, seed: count_modes(classifier, generator, samples, seed)  # noqa: E731
        start = time.perf_counter()
        final, train_seconds = train_and_count(variant, rows, labels, args.seeds, iterations, args.count_every,
                                               count, on_count)
        captured = [final[r]["modes_captured"] for r in sorted(final)]
        kl = [final[r]["mode_kl"] for r in sorted(final)]
        result.update(summarise(captured, kl, len(args.seeds), iterations, train_seconds))
        result["total_seconds"] = round(time.perf_counter() - start, 1)
        if args.out:
            atomic.write_json(args.out, results)
    return results


def summarise(captured: list[float], kl: list[float], n_seeds: int, iterations: int, train_seconds: float) -> dict:
    m, m_se = mean_and_se(captured)
    k, k_se = mean_and_se(kl)
    return {
        "diverged": n_seeds - len(captured), "modes_captured": captured, "mode_kl": kl,
        "modes_captured_mean": m, "modes_captured_se": m_se, "mode_kl_mean": k, "mode_kl_se": k_se,
        "train_seconds": round(train_seconds, 1),
        # generator iterations per second of each replica, trained side by side with the others
        "iterations_per_second": round(iterations / train_seconds, 3) if train_seconds else None,
    }


def _pm(mean: float | None, se: float | None, digits: int) -> str:
    if mean is None:
        return "—"
    return f"{mean:.{digits}f}" + ("" if se is None else f" ± {se:.{digits}f}")


def table(results: list[dict]) -> str:
    lines = [
        "| model | modes (of 1000) | KL to uniform | source / budget |",
        "| --- | --- | --- | --- |",
    ]
    for r in results:
        for name, m, kl, source in PUBLISHED.get(r["preset"], []):
            lines.append(f"| {name} | {m} | {kl} | {source} |")
        n = len(r.get("modes_captured", []))
        epochs = r["iterations"] * r["batch_size"] / 128_000
        budget = (
            f"ganpipe, {n} seeds ({r.get('diverged', 0)} diverged), {r['iterations']:,} iterations "
            f"({epochs:.3g} epochs of 128k samples), {r['samples']:,} samples, {r['device']}, {r['threads']} thread(s)"
        )
        if n:
            lines.append(f"| ganpipe `{r['preset']}` | {_pm(r['modes_captured_mean'], r['modes_captured_se'], 1)} | "
                         f"{_pm(r['mode_kl_mean'], r['mode_kl_se'], 2)} | {budget} |")
        else:
            lines.append(f"| ganpipe `{r['preset']}` | — | — | {budget}: no seed finished |")
    return "\n".join(lines)


def curve_table(results: list[dict]) -> str:
    """Modes captured at each count, mean ± SE over the seeds, one column per preset."""
    steps = sorted({row["step"] for r in results for row in r["curve"]})
    lines = ["| iteration | " + " | ".join(f"`{r['preset']}`" for r in results) + " |",
             "| --- |" + " --- |" * len(results)]
    for step in steps:
        cells = []
        for r in results:
            values = [row["modes_captured"] for row in r["curve"] if row["step"] == step]
            cells.append(_pm(*mean_and_se(values), 1))
        lines.append(f"| {step:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def contrasts(results: list[dict]) -> str:
    """Each later preset against the first, at the final count: the difference of mean modes with its Welch
    95% interval, and the exact two-sided Mann-Whitney p (no normality assumed; 5 against 5 seeds can reach
    p = 0.008 at best)."""
    from scipy import stats

    lines = ["| preset against the first | difference in mean modes [Welch 95% interval] | Mann-Whitney U, exact p |",
             "| --- | --- | --- |"]
    base = results[0]
    for r in results[1:]:
        a, b = r.get("modes_captured", []), base.get("modes_captured", [])
        if len(a) < 2 or len(b) < 2:
            continue
        welch = stats.ttest_ind(a, b, equal_var=False)
        lo, hi = welch.confidence_interval(0.95)
        u = stats.mannwhitneyu(a, b, alternative="two-sided", method="exact")
        lines.append(f"| `{r['preset']}` − `{base['preset']}` | {np.mean(a) - np.mean(b):+.1f} [{lo:+.1f}, {hi:+.1f}] | "
                     f"U = {u.statistic:g}, p = {u.pvalue:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-kernels", choices=cpu_kernels.MODES,
                        help="portable or native kernels (default: params.yaml's compute.cpu_kernels)")
    parser.add_argument("--presets", default="dcgan,pacdcgan2", help="comma-separated presets (default: dcgan,pacdcgan2)")
    parser.add_argument("--seeds", default=",".join(map(str, range(10))), help="comma-separated seeds (PacGAN Table 2: 10 trials)")
    parser.add_argument("--epochs", type=int, default=TABLE2["epochs"], help="epochs of the stacked set (Table 2: 50)")
    parser.add_argument("--iterations", type=int, default=None, help="generator iterations; overrides --epochs")
    parser.add_argument("--samples", type=int, default=None,
                        help="samples counted (default: the preset's stacked_eval_samples, else stacked_mnist.eval_samples)")
    parser.add_argument("--count-every", type=int, default=None, help="count modes every this many iterations (the curve)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here (rewritten after every count)")
    parser.add_argument("--report", type=Path, nargs="+", default=None,
                        help="print the tables of saved --out files (in this order); train nothing")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: params.yaml train.threads)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per preset")
    args = parser.parse_args()
    args.presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    try:
        results = [r for path in args.report for r in json.loads(path.read_text())] if args.report else run(args)
    except GanpipeError as exc:
        sys.exit(f"error: {exc}")
    if args.json:
        for r in results:
            print(json.dumps(r))
    else:
        print(table(results))
        if len(results) > 1:
            print("\nAt the final count:\n")
            print(contrasts(results))
        if any(r["curve"] for r in results):
            print("\nModes captured during training (mean ± SE over seeds):\n")
            print(curve_table(results))


if __name__ == "__main__":
    main()

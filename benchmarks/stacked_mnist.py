"""Stacked MNIST mode counts of DCGAN and PacDCGAN2 beside the published tables.

The papers' setting (VEEGAN, Srivastava et al. 2017, Table 2; PacGAN, Lin et al. 2018, Section 5 and
Table 2): 128,000 stacked training images, z 100, batch 64, Adam 2e-4 (beta1 0.5), 50 epochs, 26,000
samples, a mode captured when one sample is classified as that digit triple, KL to the uniform over the
1,000 triples. Every preset and seed is trained here with ganpipe's own trainer and networks (the
presets' `dcgan` nets, 3 channels), sampled, and counted with the pipeline's evaluator classifier; the
seeds of one preset train side by side as replicas. ganpipe's rows are mean +- standard error over seeds.

    python benchmarks/stacked_mnist.py                              # the papers' setting: needs a GPU
    python benchmarks/stacked_mnist.py --iterations 2000 --samples 10000 --seeds 0,1,2   # reduced
    python benchmarks/stacked_mnist.py --json                       # one JSON object per preset

Needs the prepared MNIST and the evaluator: `dvc repro evaluator` first.
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

from pipeline.common import devices, layout  # noqa: E402
from pipeline.common.errors import GanpipeError  # noqa: E402
from pipeline.common.params import VariantParams, load_params  # noqa: E402
from pipeline.data import stacked_mnist  # noqa: E402
from pipeline.data.mnist import load_prepared  # noqa: E402
from pipeline.gan import sampling  # noqa: E402
from pipeline.gan import threads as gan_threads  # noqa: E402
from pipeline.instrument import evaluator  # noqa: E402
from pipeline.instrument.metrics import modes  # noqa: E402
from pipeline.instrument.stacked import channel_digits  # noqa: E402

# (model, modes captured, KL, source): the published rows, as the papers print them.
PUBLISHED = {
    "dcgan": [
        ("DCGAN", "99", "3.40", "VEEGAN Table 2"),
        ("DCGAN", "78.9 ± 6.5", "4.50 ± 0.13", "PacGAN Table 2, 10 trials"),
    ],
    "pacdcgan2": [("PacDCGAN2", "1000.0 ± 0.0", "0.06 ± 0.003", "PacGAN Table 2, 10 trials")],
}
PAPER = {"size": 128_000, "batch_size": 64, "epochs": 50, "samples": 26_000}


def train_generators(variant: VariantParams, rows, labels, seeds: list[int], iterations: int) -> list:
    """Every seed's generator after `iterations` generator steps, trained as replicas of one trainer
    (None for a seed that diverged)."""
    from pipeline.gan.trainer import NonFiniteTraining, Trainer

    trainer = Trainer(variant, rows, labels, seeds, batched=len(seeds) > 1)
    try:
        while trainer.step < iterations:
            trainer.advance(min(1000, iterations - trainer.step))
            trainer.read_losses()  # the NaN/Inf check: a diverged seed is dropped, the others go on
    except NonFiniteTraining:
        return [None] * len(seeds)
    return [trainer.replica_generator(r) if r in trainer.live else None for r in range(len(seeds))]


def stderr_of_mean(values: list[float]) -> float:
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")


def run(args: argparse.Namespace) -> list[dict]:
    params = load_params(ROOT / "params.yaml")
    device = devices.resolve(args.device)
    # One count for training and counting alike, params' train.threads unless --threads (it changes results;
    # README "Threads"), resolved as the train stage resolves it and reported per row.
    torch.set_num_threads(gan_threads.resolve(args.threads or params.train.threads, device.type))
    data = load_prepared(ROOT / layout.PREPARED)
    classifier = evaluator.load(ROOT / layout.CLASSIFIER)
    stacked = stacked_mnist.build(data.y_train, params.stacked_mnist.size, params.stacked_mnist.seed)
    from pipeline.data.training_set import training_rows

    rows, labels = training_rows(data, device, stacked)
    results = []
    for preset in args.presets:
        if preset not in params.variants:
            raise GanpipeError(f"no preset {preset!r} under `variants` in params.yaml")
        variant = params.variants[preset]
        iterations = args.iterations or args.epochs * len(stacked) // variant.batch_size
        start = time.perf_counter()
        generators = train_generators(variant, rows, labels, args.seeds, iterations)
        seconds = time.perf_counter() - start
        captured, kl = [], []
        for seed, generator in zip(args.seeds, generators):
            if generator is None:
                continue  # diverged: reported by count below
            images = sampling.sample(generator.to(device), args.samples, seed=seed)
            counts = modes.mode_counts(channel_digits(classifier, images))
            captured.append(modes.modes_captured(counts))
            kl.append(modes.mode_kl(counts))
        results.append(
            {
                "preset": preset, "device": str(device), "threads": torch.get_num_threads(), "iterations": iterations,
                "epochs": round(iterations * variant.batch_size / len(stacked), 3), "samples": args.samples,
                "seeds": args.seeds, "diverged": len(args.seeds) - len(captured),
                "modes_captured": captured, "mode_kl": [round(k, 4) for k in kl],
                "modes_captured_mean": float(np.mean(captured)) if captured else None,
                "modes_captured_se": stderr_of_mean(captured), "mode_kl_mean": float(np.mean(kl)) if kl else None,
                "mode_kl_se": stderr_of_mean(kl), "train_seconds": round(seconds, 1),
            }
        )
    return results


def table(results: list[dict]) -> str:
    lines = [
        "| model | modes (of 1000) | KL to uniform | source / budget |",
        "| --- | --- | --- | --- |",
    ]
    for r in results:
        for name, m, kl, source in PUBLISHED.get(r["preset"], []):
            lines.append(f"| {name} | {m} | {kl} | {source} |")
        n = len(r["modes_captured"])
        budget = (
            f"ganpipe, {n} seeds ({r['diverged']} diverged), {r['iterations']:,} iterations "
            f"({r['epochs']:g} epochs of 128k), {r['samples']:,} samples, {r['device']}"
        )
        if n:
            lines.append(
                f"| ganpipe `{r['preset']}` | {r['modes_captured_mean']:.1f} ± {r['modes_captured_se']:.1f} | "
                f"{r['mode_kl_mean']:.2f} ± {r['mode_kl_se']:.2f} | {budget} |"
            )
        else:
            lines.append(f"| ganpipe `{r['preset']}` | — | — | {budget}: every seed diverged |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-kernels", choices=cpu_kernels.MODES,
                        help="portable or native kernels (default: params.yaml's compute.cpu_kernels)")
    parser.add_argument("--presets", default="dcgan,pacdcgan2", help="comma-separated presets (default: dcgan,pacdcgan2)")
    parser.add_argument("--seeds", default=",".join(map(str, range(10))), help="comma-separated seeds (papers: 10 trials)")
    parser.add_argument("--epochs", type=int, default=PAPER["epochs"], help="epochs of the stacked set (papers: 50)")
    parser.add_argument("--iterations", type=int, default=None, help="generator iterations; overrides --epochs")
    parser.add_argument("--samples", type=int, default=PAPER["samples"], help="samples counted (papers: 26000)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: params.yaml train.threads)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per preset")
    args = parser.parse_args()
    args.presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    try:
        results = run(args)
    except GanpipeError as exc:
        sys.exit(f"error: {exc}")
    if args.json:
        for r in results:
            print(json.dumps(r))
    else:
        print(table(results))


if __name__ == "__main__":
    main()

"""Generator iterations per second: a plain reference loop against ganpipe's trainer, in one process.

The reference loop is written the way the seed post and most tutorials write it: a DataLoader over a
TensorDataset with shuffling, `.to(device)` per batch, `.item()` on every loss, the generator's forward
pass inside the critic step without `no_grad` (its gradients are computed and thrown away), and weight
clipping as a Python loop over the critic's parameters. Both loops build the same networks, losses and
optimiser settings from params.yaml, so the ratio measures the loop, not a different computation; the
`--check` option trains both for a while and prints their final losses (and FLD with the pipeline's
evaluator, when it has been trained) to show they optimise the same objective.

    python benchmarks/train_speed.py                       # vanilla and wgan at batch 64, this machine
    python benchmarks/train_speed.py --device cuda --json  # on a GPU, as JSON
    python benchmarks/train_speed.py --batch-sizes 64,256,1024,4096 --variants wgan
    python benchmarks/train_speed.py --variants dcgan --nchw   # the conv nets in NCHW instead of their channels_last
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.common import devices, layout  # noqa: E402
from pipeline.data.mnist import load_prepared  # noqa: E402
from pipeline.common.params import VariantParams, load_params  # noqa: E402
from pipeline.gan.trainer import Trainer  # noqa: E402
from pipeline.gan.variants import build  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ReferenceLoop:
    """The seed's loop, step for step."""

    def __init__(self, variant: VariantParams, x: torch.Tensor, y: torch.Tensor, device: torch.device, seed: int):
        torch.manual_seed(seed)
        self.v, self.device = variant, device
        parts = build(variant, device, seed)
        self.G, self.D, self.obj = parts.generator, parts.critic, parts.objective
        make = (
            (lambda ps: torch.optim.RMSprop(ps, lr=variant.lr))
            if variant.optimizer == "rmsprop"
            else (lambda ps: torch.optim.Adam(ps, lr=variant.lr, betas=variant.betas))
        )
        self.g_opt, self.d_opt = make(self.G.parameters()), make(self.D.parameters())
        self.loader = DataLoader(TensorDataset(x, y), batch_size=variant.batch_size, shuffle=True, drop_last=True)
        self.batches = self._forever()
        self.last = {}

    def _forever(self):
        while True:
            yield from self.loader

    def _onehot(self, labels: torch.Tensor):
        return torch.nn.functional.one_hot(labels, 10).float() if self.v.conditional else None

    def iteration(self) -> None:
        v, G, D, obj = self.v, self.G, self.D, self.obj
        for _ in range(v.n_critic):
            x, y = next(self.batches)
            x, y = x.to(self.device), y.to(self.device)
            c = self._onehot(y)
            z = torch.randn(v.batch_size, v.z_dim, device=self.device)
            fake = G(z, c)  # not detached, as in the seed: G's gradients are computed, then discarded
            d_loss = obj.d_loss(D(x, c), D(fake, c))
            if v.gradient_penalty is not None:  # WGAN-GP the textbook way: autograd.grad with create_graph
                eps = torch.rand(v.batch_size, 1, device=self.device)
                x_hat = (eps * x + (1 - eps) * fake.detach()).requires_grad_(True)
                (slopes,) = torch.autograd.grad(D(x_hat, c).sum(), x_hat, create_graph=True)
                d_loss = d_loss + v.gradient_penalty * ((slopes.norm(2, dim=1) - 1) ** 2).mean()
            d_loss.backward()
            self.d_opt.step()
            if v.clip is not None:
                for p in D.parameters():
                    p.data.clamp_(-v.clip, v.clip)
            self.d_opt.zero_grad()
            self.g_opt.zero_grad()
            self.last["d_loss"] = d_loss.item()
        _, y = next(self.batches)
        c = self._onehot(y.to(self.device))
        z = torch.randn(v.batch_size, v.z_dim, device=self.device)
        g_loss = obj.g_loss(D(G(z, c), c))
        g_loss.backward()
        self.g_opt.step()
        self.d_opt.zero_grad()
        self.g_opt.zero_grad()
        self.last["g_loss"] = g_loss.item()

    def run(self, n: int) -> None:
        for _ in range(n):
            self.iteration()

    def generator(self):
        return self.G


class GanpipeLoop:
    def __init__(self, variant, x, y, device, seed, log_every: int = 100, compile: bool = False,
                 nchw: bool = False):
        parts = build(variant, device, seed)
        if nchw:  # undo the DCGAN's channels_last weights, to re-measure that choice
            parts.generator.to(memory_format=torch.contiguous_format)
            parts.critic.to(memory_format=torch.contiguous_format)
        if compile:  # what train.compile: true does
            parts.generator.compile()
            parts.critic.compile()
        self.trainer = Trainer(parts, x.to(device), y.to(device), seed)
        self.log_every = log_every
        self.last = {}

    def run(self, n: int) -> None:
        done = 0
        while done < n:
            step = min(self.log_every, n - done)
            self.trainer.advance(step)
            done += step
            if done % self.log_every == 0 or done == n:
                self.last = self.trainer.read_losses()

    def generator(self):
        return self.trainer.parts.generator


def iterations_per_second(loop, device: torch.device, min_seconds: float, warmup: int) -> float:
    loop.run(warmup)
    sync(device)
    n, total, elapsed = 10, 0, 0.0
    while elapsed < min_seconds:
        start = time.perf_counter()
        loop.run(n)
        sync(device)
        elapsed += time.perf_counter() - start
        total += n
        n = min(n * 2, 2000)
    return total / elapsed


def quick_fld(generator, conditional: bool) -> float | None:
    """FLD of 2000 samples with the pipeline's evaluator, if `dvc repro evaluator` has made one."""
    if not (ROOT / layout.REFERENCE).is_file():
        return None
    from pipeline.instrument import evaluator, reference
    from pipeline.gan import sampling
    from pipeline.instrument.evaluation import quick_metrics

    ref = reference.load(ROOT / layout.REFERENCE)
    labels = np.random.default_rng(0).choice(10, 2000, p=ref.class_hist) if conditional else None
    images = sampling.sample(generator.cpu(), 2000, seed=0, labels=labels)
    return quick_metrics(images, evaluator.load(ROOT / layout.CLASSIFIER), ref, 0.25)["fld"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    ap.add_argument("--variants", default="vanilla,wgan")
    ap.add_argument("--batch-sizes", default="64")
    ap.add_argument("--seconds", type=float, default=5.0, help="minimum timed seconds per measurement")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--check", type=int, default=0, metavar="N",
                    help="also train both loops N generator iterations and print final losses and FLD")
    ap.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    ap.add_argument("--compile", action="store_true", help="ganpipe's loop with torch.compile (train.compile: true)")
    ap.add_argument("--nchw", action="store_true", help="ganpipe's loop with conv weights in NCHW, not channels_last")
    args = ap.parse_args()

    device = devices.resolve(args.device)
    params = load_params(ROOT / "params.yaml")
    data = load_prepared(ROOT / layout.PREPARED)
    x_cpu = torch.from_numpy(data.x_train.reshape(len(data.x_train), -1)).float() / 255.0
    y_cpu = torch.from_numpy(data.y_train.astype(np.int64))
    rows = []
    for name in args.variants.split(","):
        for bs in (int(b) for b in args.batch_sizes.split(",")):
            v = params.variants[name].model_copy(update={"batch_size": bs})
            ref_loop = ReferenceLoop(v, x_cpu, y_cpu, device, params.seed)
            fast_loop = GanpipeLoop(v, x_cpu, y_cpu, device, params.seed, params.train.log_every, args.compile,
                                    args.nchw)
            ref_its = iterations_per_second(ref_loop, device, args.seconds, args.warmup)
            fast_its = iterations_per_second(fast_loop, device, args.seconds, args.warmup)
            row = {
                "variant": name, "device": str(device), "batch_size": bs,
                "reference_it_s": round(ref_its, 2), "ganpipe_it_s": round(fast_its, 2),
                "ratio": round(fast_its / ref_its, 2),
                "compile": args.compile, "nchw": args.nchw,
            }
            if args.check:
                for label, loop in (("reference", ReferenceLoop(v, x_cpu, y_cpu, device, params.seed)),
                                    ("ganpipe", GanpipeLoop(v, x_cpu, y_cpu, device, params.seed, params.train.log_every))):
                    loop.run(args.check)
                    row[f"{label}_final_losses"] = {k: round(val, 4) for k, val in loop.last.items()}
                    row[f"{label}_fld"] = quick_fld(loop.generator(), v.conditional)
            rows.append(row)
            if not args.json:
                print(json.dumps(row), file=sys.stderr)
    if args.json:
        print(json.dumps(rows))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"generator iterations / s on {device} (threads: {torch.get_num_threads()})")
    for col in ("variant", "batch", "reference it/s", "ganpipe it/s", "ratio"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["variant"], str(r["batch_size"]), f"{r['reference_it_s']:.1f}", f"{r['ganpipe_it_s']:.1f}", f"{r['ratio']:.2f}x")
    Console().print(table)


if __name__ == "__main__":
    main()

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
    python benchmarks/train_speed.py --variants wgan --replicas 1,4,8,16 --json   # replicas side by side
    python benchmarks/train_speed.py --variants wgan --replicas 1,8 --threads 1,2  # 1 thread vs all cores
    python benchmarks/train_speed.py --variants wgan --replicas 8 --concurrent 2 --threads 1,2  # a `-j 2` queue
    python benchmarks/train_speed.py --variants dcgan --nchw   # the conv nets in NCHW instead of their channels_last
    python benchmarks/train_speed.py --cpu-kernels native      # this CPU's fastest kernels instead of the portable ones

With --replicas, each row also has `replicas`, `per_model_it_s` (generator iterations per second of each
replica times R: the models trained per second) and `replica_speedup` (per_model_it_s at R over the same
at R = 1, measured in the same run). Configurations are measured in interleaved rounds (--rounds) and the
median is kept, so a load change on a shared machine hits every configuration alike. With --concurrent N,
N copies of each measurement run at once in separate processes (what `dvc queue start -j N` does), and
`share_of_solo` is each copy's speed over the solo speed at the same thread count.
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
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from pipeline.common import devices, layout  # noqa: E402
from pipeline.data.mnist import load_prepared  # noqa: E402
from pipeline.common.params import VariantParams, load_params  # noqa: E402
from pipeline.gan import threads as thread_policy  # noqa: E402
from pipeline.gan.replicas import replica_seeds  # noqa: E402
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
        def make(ps, lr, betas):  # the textbook optimisers: no fused or foreach kernels
            if variant.optimizer == "rmsprop":
                return torch.optim.RMSprop(ps, lr=lr)
            return torch.optim.Adam(ps, lr=lr, betas=betas)

        self.g_opt = make(self.G.parameters(), variant.lr, variant.betas)
        self.d_opt = make(self.D.parameters(), variant.critic_lr or variant.lr, variant.critic_betas or variant.betas)
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
    """ganpipe's trainer with R replicas, exactly as the train stage builds it."""

    def __init__(self, variant, x, y, device, seed, log_every: int = 100, replicas: int = 1, nchw: bool = False):
        seeds = replica_seeds(seed, replicas)
        self.trainer = Trainer(variant, x.to(device), y.to(device), seeds, batched=replicas > 1)
        if nchw:  # undo the DCGAN's channels_last weights (kept per replica by the stack), to re-measure that choice
            for stack in (self.trainer.generator, self.trainer.critic):
                stack.params = {k: v.detach().contiguous().requires_grad_() for k, v in stack.params.items()}
            self.trainer._make_optimizers()
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
        return self.trainer.replica_generator(0)


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


def _measure_in_child(args) -> float:
    """One measurement in a fresh process (for --concurrent): build the loop, set threads, time it."""
    variant_json, bs, replicas, n_threads, seconds, warmup, device_name, seed, log_every = args
    torch.set_num_threads(n_threads)
    v = VariantParams.model_validate(variant_json).model_copy(update={"batch_size": bs})
    device = devices.resolve(device_name)
    x, y = _training_tensors()
    loop = GanpipeLoop(v, x, y, device, seed, log_every, replicas)
    return iterations_per_second(loop, device, seconds, warmup)


def _training_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_prepared(ROOT / layout.PREPARED)
    x = torch.from_numpy(data.x_train.reshape(len(data.x_train), -1)).float() / 255.0
    return x, torch.from_numpy(data.y_train.astype(np.int64))


def _concurrent(n: int, job: tuple) -> float:
    """The mean speed of n copies of `job` run at once in separate processes."""
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(n) as pool:
        return float(np.mean(pool.map(_measure_in_child, [job] * n)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    ap.add_argument("--variants", default="vanilla,wgan")
    ap.add_argument("--batch-sizes", default="64")
    ap.add_argument("--replicas", default="1", help="replica counts trained side by side, e.g. 1,4,8,16")
    ap.add_argument("--threads", default="", help="CPU thread counts to compare, e.g. 1,2 (default: train.threads auto)")
    ap.add_argument("--concurrent", type=int, default=1, metavar="N",
                    help="run N copies of each ganpipe measurement at once, as a `dvc queue start -j N` would")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per measurement (median kept)")
    ap.add_argument("--seconds", type=float, default=5.0, help="minimum timed seconds per measurement and round")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--no-reference", action="store_true", help="skip the plain reference loop")
    ap.add_argument("--check", type=int, default=0, metavar="N",
                    help="also train both loops N generator iterations and print final losses and FLD")
    ap.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    ap.add_argument("--nchw", action="store_true", help="ganpipe's loop with conv weights in NCHW, not channels_last")
    ap.add_argument("--cpu-kernels", choices=cpu_kernels.MODES,
                    help="portable or native kernels (default: params.yaml's compute.cpu_kernels)")
    args = ap.parse_args()

    device = devices.resolve(args.device)
    params = load_params(ROOT / "params.yaml")
    x_cpu, y_cpu = _training_tensors()
    replica_counts = [int(r) for r in args.replicas.split(",")]
    if 1 not in replica_counts:
        replica_counts.insert(0, 1)  # replica_speedup is relative to R = 1 of the same run
    auto = {r: thread_policy.resolve("auto", device.type) for r in replica_counts}
    thread_counts = [int(t) for t in args.threads.split(",")] if args.threads else [None]
    rows = []
    for name in args.variants.split(","):
        for bs in (int(b) for b in args.batch_sizes.split(",")):
            v = params.variants[name].model_copy(update={"batch_size": bs})
            configs = [(r, t) for t in thread_counts for r in replica_counts]
            speeds: dict[tuple, list[float]] = {c: [] for c in configs}
            solo: dict[tuple, list[float]] = {c: [] for c in configs}
            ref_speeds: list[float] = []
            for _ in range(args.rounds):  # interleaved: every configuration once per round
                if not args.no_reference:
                    torch.set_num_threads(thread_counts[0] or auto[1])
                    ref_loop = ReferenceLoop(v, x_cpu, y_cpu, device, params.seed)
                    ref_speeds.append(iterations_per_second(ref_loop, device, args.seconds, args.warmup))
                for r, t in configs:
                    n_threads = t or auto[r]
                    torch.set_num_threads(n_threads)
                    loop = GanpipeLoop(v, x_cpu, y_cpu, device, params.seed, params.train.log_every, r, args.nchw)
                    solo[(r, t)].append(iterations_per_second(loop, device, args.seconds, args.warmup))
                    if args.concurrent > 1:
                        job = (v.model_dump(mode="json"), bs, r, n_threads, args.seconds, args.warmup,
                               args.device, params.seed, params.train.log_every)
                        speeds[(r, t)].append(_concurrent(args.concurrent, job))
            for r, t in configs:
                its = float(np.median(solo[(r, t)]))
                base = float(np.median(solo[(1, t)]))
                row = {
                    "variant": name, "device": str(device), "batch_size": bs, "replicas": r,
                    "threads": t or auto[r], "threads_auto": t is None, "nchw": args.nchw,
                    "cpu_kernels": cpu_kernels.in_force()["requested"],
                    "ganpipe_it_s": round(its, 2), "per_model_it_s": round(its * r, 2),
                    "replica_speedup": round(its * r / base, 2),
                }
                if ref_speeds:
                    ref_its = float(np.median(ref_speeds))
                    row.update(reference_it_s=round(ref_its, 2), ratio=round(its * r / ref_its, 2))
                if args.concurrent > 1:
                    shared = float(np.median(speeds[(r, t)]))
                    row.update(concurrent=args.concurrent, concurrent_it_s=round(shared, 2),
                               share_of_solo=round(shared / its, 2))
                if args.check and r == 1:
                    for label, loop in (("reference", ReferenceLoop(v, x_cpu, y_cpu, device, params.seed)),
                                        ("ganpipe", GanpipeLoop(v, x_cpu, y_cpu, device, params.seed, params.train.log_every))):
                        loop.run(args.check)
                        last = loop.last if label == "reference" else loop.last.get(0, {})
                        row[f"{label}_final_losses"] = {k: round(val, 4) for k, val in last.items()}
                        row[f"{label}_fld"] = quick_fld(loop.generator(), v.conditional)
                rows.append(row)
                if not args.json:
                    print(json.dumps(row), file=sys.stderr)
    if args.json:
        print(json.dumps(rows))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"generator iterations / s on {device} (one per replica; per model = x replicas)")
    for col in ("variant", "batch", "replicas", "threads", "it/s", "per-model it/s", "vs R=1", "vs reference"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["variant"], str(r["batch_size"]), str(r["replicas"]), str(r["threads"]),
                      f"{r['ganpipe_it_s']:.1f}", f"{r['per_model_it_s']:.1f}", f"{r['replica_speedup']:.2f}x",
                      f"{r['ratio']:.2f}x" if "ratio" in r else "-")
    Console().print(table)


if __name__ == "__main__":
    main()

"""Stacked MNIST mode counts of ganpipe's presets beside the published tables, with the count during training.

Two published settings, each a set of presets in params.yaml:
- PacGAN's Table 2 (and VEEGAN's Table 2): `dcgan`, `pacdcgan2`; 128,000 stacked training images, z 100,
  batch 64, Adam 2e-4 (beta1 0.5), 50 epochs (`--epochs 50`: 100,000 iterations), 26,000 samples.
- PacGAN's Table 3 (Lin et al. 2018; the Unrolled-GAN architecture, Metz et al. 2017): `dcgan-quarter-d`,
  `pacdcgan2-quarter-d` ... `pacdcgan4-half-d`; 500,000 iterations, 25,600 samples, 50 trials; trained and
  counted as the authors' released code does (the presets' fields: real triples drawn afresh from the 60,000
  training digits for every batch, tanh output, a packed G called once per pack position, the G step on the D
  step's noise; modes read by their classifier on samples drawn with G's batch norm on each batch of 128).
Every preset and seed is trained with ganpipe's own trainer and networks, the seeds of one preset side by side as
replicas, for the preset's own `iterations` unless --iterations or --epochs says otherwise. Modes are counted the
preset's way (its mode_count_classifier and mode_count_sampling) every --count-every iterations and at the end
(the curve; a mode is one sample classified as that digit triple, KL is to the uniform over the 1,000 triples).
ganpipe's rows are mean ± standard error over seeds, each seed's count beside them, with budget and device.

    python benchmarks/stacked_mnist.py --presets dcgan-quarter-d --seeds 0,1,2,3,4 --iterations 8000 \
        --count-every 2000 --save-generators gens --out dcgan.json             # Table 3's setting, short budget
    python benchmarks/stacked_mnist.py ... --until 4000    # stop at 4,000 (a count or a multiple of 1,000); the same
                                                           # command again resumes from gens/ and dcgan.json
    python benchmarks/stacked_mnist.py --recount gens --presets dcgan-quarter-d --steps 8000 --out recount.json
                                                           # the saved generators counted all four ways
    python benchmarks/stacked_mnist.py --report dcgan.json pac.json recount.json   # the tables from saved runs
    python benchmarks/stacked_mnist.py --report dcgan.json pac.json recount.json --record results/t3.json \
        --title ... --command ... --machine ... --commit ... --date ...   # and a study `ganpipe tables` renders
    python benchmarks/stacked_mnist.py --presets dcgan,pacdcgan2 --epochs 50      # Table 2's setting (a GPU's job)

Needs the prepared MNIST and both classifiers: `dvc repro evaluator`, and PacGAN's counter, which the
mode_counter stage trains for Stacked MNIST: `dvc exp run -S dataset=stacked-mnist mode_counter`. --out is
rewritten after every count, so an interrupted run keeps the curve so far.
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
from pipeline.gan.generator_file import load_generators, save_generators  # noqa: E402
from pipeline.instrument import evaluator, mode_counter, stacked  # noqa: E402
from pipeline.reports import stacked_study  # noqa: E402
from pipeline.reports.stacked_study import STACKED_SET, contrasts, curve_table, mean_and_se, table, ways_table  # noqa: E402,F401



class Counter:
    """Counts one generator's modes the preset's way, or any (classifier, sampling) way."""

    def __init__(self, classifiers: dict[str, stacked.ModeClassifier], variant: VariantParams, samples: int):
        self.classifiers, self.variant, self.samples = classifiers, variant, samples

    def draw(self, generator, seed: int, how: str) -> np.ndarray:
        return sampling.sample(generator, self.samples, seed=seed, **sampling.way_of_sampling(self.variant, how))

    def headline(self, generator, seed: int) -> dict[str, float]:
        v = self.variant
        found = stacked.quick_modes(self.classifiers[v.mode_count_classifier].model, self.draw(generator, seed, v.mode_count_sampling))
        return {"modes_captured": found["modes_captured"], "mode_kl": round(found["mode_kl"], 4)}

    def every_way(self, generator, seed: int) -> dict:
        models = {name: c.model for name, c in self.classifiers.items()}
        return stacked.count_ways(lambda how: self.draw(generator, seed, how), models)


def load_classifiers(counter_path: Path, released: bool = True) -> dict[str, stacked.ModeClassifier]:
    """The evaluator, and with `released` PacGAN's counter (needed by a preset that counts with it, and by --recount)."""
    from pipeline.instrument import reference

    ref = reference.load(ROOT / layout.REFERENCE)
    found = {"evaluator": stacked.ModeClassifier("evaluator", evaluator.load(ROOT / layout.CLASSIFIER), ref.test_predicted)}
    if released:
        found["released-cnn"] = mode_counter.load(counter_path)
    return found


def train_and_count(variant: VariantParams, rows, labels, seeds: list[int], iterations: int, args, count, on_count,
                    saved: Path | None) -> tuple[dict[int, dict], float, int]:
    """Train the seeds side by side, counting each live seed's modes every `count_every` steps and at the end, saving
    the generators (and the trainer, to resume) at each count under `saved`. Stops after the count at args.until.
    Returns ({seed index: last count}, training seconds, the step reached)."""
    from pipeline.gan.trainer import NonFiniteTraining, Trainer

    trainer = Trainer(variant, rows, labels, seeds, batched=len(seeds) > 1)
    state = saved / "trainer.pt" if saved else None
    if state and state.is_file():
        resumed = torch.load(state, map_location="cpu", weights_only=False)
        if (resumed["seeds"], resumed["iterations"]) != (seeds, iterations):
            raise GanpipeError(f"{state} holds a run of seeds {resumed['seeds']} to {resumed['iterations']} iterations, "
                               f"not {seeds} to {iterations}: pass its settings, or another --save-generators folder.")
        trainer.load_state_dict(resumed["trainer"])
    final: dict[int, dict] = {}
    seconds, chunk = 0.0, min(args.count_every or 1000, 1000)
    while trainer.step < iterations and not (args.until and trainer.step >= args.until):
        start = time.perf_counter()
        trainer.advance(min(chunk - trainer.step % chunk, iterations - trainer.step))
        try:
            trainer.read_losses()  # the NaN/Inf check (and a host sync, so the timing is honest)
        except NonFiniteTraining:
            return {}, seconds + time.perf_counter() - start, trainer.step
        seconds += time.perf_counter() - start
        if trainer.step == iterations or (args.count_every and trainer.step % args.count_every == 0):
            step_rows = []
            for r in trainer.live:
                final[r] = count(trainer.replica_generator(r), seeds[r])
                step_rows.append({"step": trainer.step, "seed": seeds[r], **final[r]})
            if saved:
                _save_step(saved, trainer, variant, seeds, iterations)
            on_count(trainer.step, step_rows, seconds)
        elif saved and args.until and trainer.step >= args.until:  # stopping between counts: keep the trainer
            _save_trainer(saved, trainer, seeds, iterations)
            on_count(trainer.step, [], seconds)
    return {r: final[r] for r in trainer.live if r in final}, seconds, trainer.step


def _save_step(folder: Path, trainer, variant: VariantParams, seeds: list[int], iterations: int) -> None:
    """Every seed's generator at this step (a re-count costs seconds), and the trainer to resume from."""
    generators = trainer.generators()
    diverged = [None if g is not None else "diverged" for g in generators]
    save_generators(folder / f"step_{trainer.step}.pt", generators, variant, seeds, diverged, channels=stacked_mnist.CHANNELS)
    _save_trainer(folder, trainer, seeds, iterations)


def _save_trainer(folder: Path, trainer, seeds: list[int], iterations: int) -> None:
    atomic.save_torch(folder / "trainer.pt", {"seeds": seeds, "iterations": iterations, "trainer": trainer.state_dict()})


def _earlier(path: Path | None, preset: str) -> dict | None:
    """The preset's result in an earlier --out file (resuming), if any."""
    if not path or not path.is_file():
        return None
    return next((r for r in json.loads(path.read_text()) if r["preset"] == preset), None)


def run(args: argparse.Namespace) -> list[dict]:
    params = load_params(ROOT / "params.yaml")
    _check_presets(params, args.presets)
    device = devices.resolve(args.device)
    # One count for training and counting alike, params' train.threads unless --threads (it changes results;
    # docs/speed.md), resolved as the train stage resolves it and reported per row.
    torch.set_num_threads(gan_threads.resolve(args.threads or params.train.threads, device.type))
    data = load_prepared(ROOT / layout.PREPARED)
    classifiers = load_classifiers(args.counter, any(params.variants[p].mode_count_classifier == "released-cnn" for p in args.presets))
    stacked_set = stacked_mnist.build(data.y_train, params.stacked_mnist.size, params.stacked_mnist.seed)
    from pipeline.data.training_set import training_rows

    results: list[dict] = []
    for preset in args.presets:
        variant = params.variants[preset]
        rows, labels = training_rows(data, device, stacked_set, variant.real_triples)
        samples = args.samples or variant.stacked_eval_samples or params.stacked_mnist.eval_samples
        iterations = iterations_for(args, variant)
        result = _earlier(args.out, preset) or {
            "preset": preset, "device": str(device), "threads": torch.get_num_threads(), "iterations": iterations,
            "batch_size": variant.batch_size, "samples": samples, "seeds": args.seeds, "curve": [], "train_seconds": 0.0,
            "mode_count": stacked.way(variant.mode_count_classifier, variant.mode_count_sampling),
            "kernels": cpu_kernels.in_force().get("mode", "not pinned"),
        }
        results.append(result)
        before = result["train_seconds"]

        def on_count(step: int, step_rows: list[dict], seconds: float, result=result, before=before) -> None:
            result["curve"] = [row for row in result["curve"] if row["step"] != step] + step_rows
            result["train_seconds"] = round(before + seconds, 1)
            result["reached"] = step
            print(f"{result['preset']} at {step:,}: modes {[r['modes_captured'] for r in step_rows]}", file=sys.stderr, flush=True)
            if args.out:
                atomic.write_json(args.out, results)

        counter = Counter(classifiers, variant, samples)
        saved = args.save_generators / preset if args.save_generators else None
        final, _, reached = train_and_count(variant, rows, labels, args.seeds, iterations, args, counter.headline, on_count, saved)
        if reached == iterations:
            last = [row for row in result["curve"] if row["step"] == iterations]
            result.update(summarise([r["modes_captured"] for r in last], [r["mode_kl"] for r in last], len(args.seeds),
                                    iterations, result["train_seconds"]))
        if args.out:
            atomic.write_json(args.out, results)
    return results


def iterations_for(args: argparse.Namespace, variant: VariantParams) -> int:
    """--iterations, or --epochs of the papers' 128,000 images at the preset's batch, else the preset's own
    `iterations` (500,000 for PacGAN's Table 3 presets, at every packing, as their config.py trains them)."""
    if args.iterations:
        return args.iterations
    return args.epochs * STACKED_SET // variant.batch_size if args.epochs else variant.iterations


def _check_presets(params, presets: list[str]) -> None:
    for preset in presets:
        if preset not in params.variants:
            raise GanpipeError(f"no preset {preset!r} under `variants` in params.yaml: name one of {', '.join(params.variants)}")


def summarise(captured: list[float], kl: list[float], n_seeds: int, iterations: int, train_seconds: float) -> dict:
    m, m_se = mean_and_se(captured)
    k, k_se = mean_and_se(kl)
    return {
        "diverged": n_seeds - len(captured), "modes_captured": captured, "mode_kl": kl,
        "modes_captured_mean": m, "modes_captured_se": m_se, "mode_kl_mean": k, "mode_kl_se": k_se,
        "modes_captured_sd": float(np.std(captured, ddof=1)) if len(captured) > 1 else None,
        "train_seconds": round(train_seconds, 1),
        # generator iterations per second of each replica, trained side by side with the others
        "iterations_per_second": round(iterations / train_seconds, 3) if train_seconds else None,
    }


def recount(args: argparse.Namespace) -> dict:
    """Every saved generator of --steps counted all four ways, and both classifiers on real test triples."""
    params = load_params(ROOT / "params.yaml")
    _check_presets(params, args.presets)
    torch.set_num_threads(gan_threads.resolve(args.threads or params.train.threads, "cpu"))
    classifiers = load_classifiers(args.counter)
    data = load_prepared(ROOT / layout.PREPARED)
    rows = []
    for preset in args.presets:
        for step in args.steps:
            replicas, variant = load_generators(args.recount / preset / f"step_{step}.pt")
            samples = args.samples or variant.stacked_eval_samples or params.stacked_mnist.eval_samples
            counter = Counter(classifiers, variant, samples)
            for rep in replicas:
                if rep.generator is not None:
                    rows.append({"preset": preset, "step": step, "seed": rep.seed, **counter.every_way(rep.generator, rep.seed)})
                    print(f"{preset} seed {rep.seed} at {step:,}: {rows[-1]['ways']}", file=sys.stderr, flush=True)
    n = args.samples or 25_600
    real = stacked.real_counts_by_classifier({name: c.test_predicted for name, c in classifiers.items()}, n, data.y_test)
    document = {"recount": rows, "real": real, "kernels": cpu_kernels.in_force().get("mode", "not pinned")}
    if args.out:
        atomic.write_json(args.out, document)
    return document


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-kernels", choices=cpu_kernels.MODES,
                        help="portable or native kernels (default: params.yaml's compute.cpu_kernels)")
    parser.add_argument("--presets", default="dcgan,pacdcgan2", help="comma-separated presets (default: dcgan,pacdcgan2)")
    parser.add_argument("--seeds", default=",".join(map(str, range(10))), help="comma-separated seeds (PacGAN Table 2: 10 trials)")
    parser.add_argument("--iterations", type=int, default=None, help="generator iterations (default: the preset's own)")
    parser.add_argument("--epochs", type=int, default=None, help="or epochs of the papers' 128,000 images (Table 2: 50)")
    parser.add_argument("--samples", type=int, default=None,
                        help="samples counted (default: the preset's stacked_eval_samples, else stacked_mnist.eval_samples)")
    parser.add_argument("--count-every", type=int, default=None, help="count modes every this many iterations (the curve)")
    parser.add_argument("--save-generators", type=Path, default=None,
                        help="folder for every count's generators (<preset>/step_<N>.pt) and the trainer to resume from")
    parser.add_argument("--until", type=int, default=None,
                        help="stop at this iteration (a count, or a multiple of 1,000) and keep the trainer; the same command resumes")
    parser.add_argument("--recount", type=Path, default=None, help="count the generators saved in this folder all four ways")
    parser.add_argument("--steps", default="", help="with --recount: the comma-separated steps to count")
    parser.add_argument("--counter", type=Path, default=ROOT / layout.MODE_COUNTER, help="PacGAN's counter (the mode_counter stage's)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here (rewritten after every count)")
    parser.add_argument("--report", type=Path, nargs="+", default=None,
                        help="print the tables of saved --out files (in this order); train nothing")
    parser.add_argument("--record", type=Path, default=None,
                        help="with --report: also write the study to this file (results/NAME.json) for `ganpipe tables`")
    parser.add_argument("--title", default=None, help="with --record: what the study is")
    parser.add_argument("--command", default=None, help="with --record: how to reproduce it (or where its commands are)")
    parser.add_argument("--machine", default=None, help="with --record: the machine it ran on (CPU or GPU, cores)")
    parser.add_argument("--commit", default=None, help="with --record: the commit it ran at")
    parser.add_argument("--date", default=None, help="with --record: the date it ran (YYYY-MM-DD)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: params.yaml train.threads)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per preset")
    args = parser.parse_args(argv)
    args.presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.steps = [int(s) for s in args.steps.split(",") if s.strip()]
    return args


def print_report(results: list[dict], recounts: list[dict], as_json: bool) -> None:
    if as_json:
        for r in results + recounts:
            print(json.dumps(r))
        return
    if results:
        print(table(results))
        if len(results) > 1:
            print("\nAt the final count:\n")
            print(contrasts(results))
        if any(r["curve"] for r in results):
            print("\nModes captured during training (mean ± SE over seeds):\n")
            print(curve_table(results))
    for document in recounts:
        print("\nModes captured every way (classifier_sampling), mean ± SE over seeds:\n")
        print(stacked_study.ways_summary(document))
        print("\nPer seed:\n")
        print(ways_table(document))


def record(args: argparse.Namespace, results: list[dict], recounts: list[dict]) -> None:
    """--record: the study with what it was measured under. Kernels come from the saved runs (since issue 32's
    re-run they say which); the rest from the command line, checked before anything is written."""
    kernels = sorted({doc.get("kernels") or args.cpu_kernels or "" for doc in results + recounts})
    conditions = {"command": args.command, "machine": args.machine, "kernels": ", ".join(k for k in kernels if k),
                  "commit": args.commit, "date": args.date}
    missing = [f"--{key}" if key != "kernels" else "--cpu-kernels (the runs do not say)" for key, value in conditions.items() if not value]
    if missing or not args.title:
        raise GanpipeError(f"--record writes a study that names what it was measured under, and {', '.join(missing + (['--title'] if not args.title else []))} "
                           "is missing: pass them (the machine as CPU model and cores, the commit and date the runs were made at).")
    atomic.write_json(args.record, stacked_study.record(results, recounts, args.title, conditions))


def main() -> None:
    args = _parse()
    try:
        if args.report:
            loaded = [json.loads(path.read_text()) for path in args.report]
            results = [r for doc in loaded if isinstance(doc, list) for r in doc]
            recounts = [doc for doc in loaded if isinstance(doc, dict) and "recount" in doc]
            if args.record:
                record(args, results, recounts)
        elif args.recount:
            results, recounts = [], [recount(args)]
        else:
            results, recounts = run(args), []
    except GanpipeError as exc:
        sys.exit(f"error: {exc}")
    print_report(results, recounts, args.json)


if __name__ == "__main__":
    main()

"""Wall time and peak memory of `ganpipe evaluate` at 10k, 50k and 100k samples, on this machine.

Each size is one run of the installed command on a file of real MNIST training digits (drawn with
replacement above 60,000), exactly as a user runs it: reading the file, calibrating the verdict for
min(n, half the unseen real pool) samples on real subsets (unless outputs/calibration/calibration.json
already holds that size: after `dvc repro calibrate` it holds 10,000) and measuring; above 10,000 the
verdict judges a random 10,000 (see evaluation.evaluate_beyond_pool). Needs the pipeline's evaluator:
run `dvc repro evaluator` (or `calibrate`) first. Run it on a quiet machine; the
figures of a loaded machine only say how it compares with other figures taken in the same run.

    python benchmarks/evaluate_speed.py                    # 10k, 50k, 100k
    python benchmarks/evaluate_speed.py --sizes 50000 --json
    python benchmarks/evaluate_speed.py --sizes 10000 --cpu-kernels native   # this CPU's fastest kernels
    python benchmarks/evaluate_speed.py --evaluator-epoch 20000 --cpu-kernels native   # the evaluator CNN's training
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.common import cpu_kernels  # noqa: E402

# Before numpy and torch load: the kernels params.yaml asks for, or --cpu-kernels' (pipeline/common/cpu_kernels.py).
cpu_kernels.pin_or_exit(ROOT / "params.yaml", cpu_kernels.mode_from_argv(sys.argv))

import numpy as np  # noqa: E402

from pipeline.common import layout  # noqa: E402
from pipeline.common.params import load_params  # noqa: E402
from pipeline.data.mnist import load_prepared  # noqa: E402


def phases(stderr: str) -> dict[str, float]:
    """The CLI's own phase lines: 'calibrated the verdict for N samples in S s', 'measured N samples in S s'."""
    out = {}
    for line in stderr.splitlines():
        if line.startswith("calibrated the verdict for"):
            out["calibrate_s"] = float(line.rsplit(" in ", 1)[1].split()[0])
        elif line.startswith("measured "):
            out["measure_s"] = float(line.rsplit(" in ", 1)[1].split()[0])
    return out


def run(n: int, pixels: np.ndarray, folder: Path) -> dict:
    path = folder / f"real_{n}.npz"
    rng = np.random.default_rng(0)
    np.savez(path, images=pixels[rng.choice(len(pixels), n, replace=n > len(pixels))])
    # `ganpipe evaluate` as the installed command runs it, with the kernels this benchmark pinned (the first
    # pin of a process wins over the CLI's own, which would read params.yaml).
    launcher = "import sys; from pipeline.common import cpu_kernels; cpu_kernels.pin_or_exit(mode=sys.argv.pop(1)); " \
               "from pipeline.cli import app; app()"
    mode = cpu_kernels.in_force()["requested"]
    command = [sys.executable, "-c", launcher, mode, "evaluate", "--samples", str(path), "--max-samples", str(n)]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"`{' '.join(command)}` failed:\n{done.stderr}")
    # ru_maxrss of children is the largest child so far; sizes run in increasing order, so it is this one's.
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result = json.loads(done.stdout)
    return {
        "n_samples": n,
        "seconds": round(seconds, 1),
        **phases(done.stderr),
        "peak_rss_mib": round(peak_mib),
        "threads": os.environ.get("OMP_NUM_THREADS", "default"),
        "cpu_kernels": mode,
        "fld": result["fld"],
        "collapse": result["collapse"]["kind"],
        "verdict_samples": result.get("verdict_samples"),
    }


def evaluator_epoch(images: int, pixels: np.ndarray, labels: np.ndarray, threads: int) -> dict:
    """One epoch of the evaluator CNN's training (the evaluator stage's work, its convolutions the part the
    portable kernels slow most) on the first `images` training digits, at `evaluator.threads`."""
    import torch

    from pipeline.instrument.evaluator import train_classifier

    torch.set_num_threads(threads)
    start = time.perf_counter()
    train_classifier(pixels[:images], labels[:images], epochs=1, batch_size=128, lr=2e-3, seed=0)
    return {"evaluator_epoch_images": images, "seconds": round(time.perf_counter() - start, 1), "threads": threads,
            "cpu_kernels": cpu_kernels.in_force()["requested"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,50000,100000", help="comma-separated sample counts")
    parser.add_argument("--json", action="store_true", help="print one JSON object per size")
    parser.add_argument("--evaluator-epoch", type=int, default=0, metavar="IMAGES",
                        help="instead, time one epoch of the evaluator CNN's training on IMAGES training digits")
    parser.add_argument("--cpu-kernels", choices=cpu_kernels.MODES,
                        help="portable or native kernels (default: params.yaml's compute.cpu_kernels)")
    args = parser.parse_args()
    prepared = load_prepared(ROOT / layout.PREPARED)
    pixels = prepared.x_train
    if args.evaluator_epoch:
        threads = load_params(ROOT / "params.yaml").evaluator.threads
        print(json.dumps(evaluator_epoch(args.evaluator_epoch, pixels, prepared.y_train, threads)), flush=True)
        return
    if not (ROOT / layout.CLASSIFIER).is_file():
        raise SystemExit(f"no evaluator at {layout.CLASSIFIER}: run `dvc repro evaluator` first")
    sizes = sorted(int(s) for s in args.sizes.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            row = run(n, pixels, Path(tmp))
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                print(
                    f"{n:>7} samples: {row['seconds']:7.1f} s (calibrate {row.get('calibrate_s', 0):.0f} s, "
                    f"measure {row.get('measure_s', 0):.0f} s), peak {row['peak_rss_mib']} MiB, verdict {row['collapse']}",
                    flush=True,
                )


if __name__ == "__main__":
    main()

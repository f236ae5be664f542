"""Which CPU kernels compute: one fixed choice on every x86-64 machine with AVX2 (`portable`), or the fastest
each machine has (`native`). params.yaml's `compute.cpu_kernels` picks; every entry point calls `pin()` first.

Why this exists: torch, MKL, oneDNN and OpenBLAS each pick their kernels at run time from what the
processor offers (AVX2, AVX-512, AMX; Intel or AMD; its cache sizes). Different kernels add up the same
numbers in a different order, a GAN's training amplifies the last bit into a different model, and so the
same params gave different bytes, verdicts and committed metrics on an AMD EPYC than on the Intel Xeon
that made a baseline. `portable` routes every computation that decides the bytes through code whose path
is fixed by an instruction set we choose, never by the processor's make, model or caches:

- Matrix products (every Linear layer, its backward pass, distances, kernels): numpy's OpenBLAS at its
  Haswell kernels, whose blocking is a constant of that core type, on one thread
  (pipeline/common/portable_products.py). Not MKL: its path follows the processor, and even its COMPATIBLE
  reproducibility branch gave the Xeon and the EPYC different evaluators (docs/reproducibility.md).
- Convolutions: ATen's image-to-column unfolding around the same OpenBLAS products
  (pipeline/common/portable_convolutions.py). Not oneDNN: it blocks the sums of its brgemm and gemm-based
  convolutions (the DCGAN family's strided, channels-last ones) by the cache sizes it reads off the CPU.
- ATen (torch's own elementwise ops, reductions, optimisers): capability AVX2, whatever the CPU has beyond.
- numpy's own loops (exp, log, power) at its AVX2 builds, not its AVX-512 ones, which round differently;
  scipy and scikit-learn's linear algebra through the same OpenBLAS.
- Thread pools that sum in parallel: a fixed count, `evaluator.threads` for the process and torch's own
  count set per stage from the thread params; OpenBLAS on one thread.
- MKL's COMPATIBLE branch stays pinned for anything that still reaches MKL (nothing the pipeline runs does:
  tests/test_cpu_kernels.py takes the census).

The libraries read these settings once, when they load or first dispatch, so `pin()` must run before
anything imports torch or numpy; it refuses to run after (that would be a silent no-op). Where the
settings cannot make results portable, `pin()` says so: a CPU that is not x86-64 (other kernels altogether)
computes as `native` with a warning, and an x86-64 CPU without AVX2 is refused in `portable` mode.
`ganpipe fingerprint` hashes the operations this mode relies on, to check a new machine against the
committed fingerprints (fingerprints/).
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

import yaml

from pipeline.common.errors import GanpipeError

MODES = ("portable", "native")
DEFAULT_MODE = "portable"
DEFAULT_THREADS = 2  # evaluator.threads' committed value, for a process run outside a repository

PORTABLE_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE",  # a safety net: no product the pipeline runs reaches MKL in portable mode
    "MKL_DYNAMIC": "FALSE",  # no thread count changed at run time
    "OMP_DYNAMIC": "FALSE",
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # a safety net: oneDNN is switched off in portable mode
    "OPENBLAS_CORETYPE": "Haswell",  # products and convolutions (portable_*.py), numpy, scipy, scikit-learn
    # numpy's own loops (exp, log, power, ...): its AVX-512 builds round differently from its AVX2 ones.
    # The names of numpy 2.x's dispatch targets above AVX2 (X86_V3), and of 1.x's; unknown names are ignored.
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL",
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",  # cuBLAS's deterministic workspace, which deterministic CUDA needs
}
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
LOADS_KERNELS = ("torch", "numpy")  # the modules whose import reads the settings

_in_force: dict[str, Any] | None = None


def settings_from_params(params_file: Path) -> tuple[str, int]:
    """`compute.cpu_kernels` and `evaluator.threads` from a params file, read raw because this runs before
    anything may import numpy (load_params validates the same keys with the rest; an unreadable file is
    left for it to report). No params file: the defaults."""
    try:
        raw = yaml.safe_load(params_file.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return DEFAULT_MODE, DEFAULT_THREADS
    compute = raw.get("compute") if isinstance(raw, dict) else None
    evaluator = raw.get("evaluator") if isinstance(raw, dict) else None
    mode = compute.get("cpu_kernels", DEFAULT_MODE) if isinstance(compute, dict) else DEFAULT_MODE
    threads = evaluator.get("threads", DEFAULT_THREADS) if isinstance(evaluator, dict) else DEFAULT_THREADS
    return str(mode), threads if isinstance(threads, int) and not isinstance(threads, bool) and threads > 0 else DEFAULT_THREADS


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux), or None where the system does not say."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def is_x86_64(machine: str) -> bool:
    return machine.lower() in ("x86_64", "amd64")


def check_portable(machine: str, flags: set[str] | None) -> str | None:
    """Refuse `portable` on an x86-64 CPU without AVX2; return a warning where it cannot hold (not x86-64,
    so no MKL and other kernels), else None."""
    if not is_x86_64(machine):
        return (
            f"compute.cpu_kernels is portable, but this CPU is {machine}, not x86-64: torch has no MKL here and "
            "its kernels differ from x86's, so results computed here are this machine's own and will not match "
            "the committed x86-64 baseline byte for byte. Computing with the native kernels."
        )
    if flags is not None and "avx2" not in flags:
        raise GanpipeError(
            "compute.cpu_kernels is portable, which computes with AVX2 kernels, but this x86-64 CPU does not "
            "support AVX2 (no 'avx2' in /proc/cpuinfo's flags), so it cannot compute the bytes other machines "
            "do. Run on a CPU with AVX2 (every x86-64 server since about 2015 has it), or set "
            "compute.cpu_kernels: native in params.yaml (or `-S compute.cpu_kernels=native`) and accept results "
            "that are this machine's own."
        )
    return None


def portable_env(threads: int) -> dict[str, str]:
    """The pins, with torch's and MKL's pools at `threads` and OpenBLAS on one thread: its products then
    never depend on a thread count (pipeline/common/portable_products.py)."""
    return {**PORTABLE_ENV, **{name: str(threads) for name in THREAD_ENV}, "OPENBLAS_NUM_THREADS": "1"}


def pin(params_file: Path | str = "params.yaml", mode: str | None = None, threads: int | None = None) -> dict[str, Any]:
    """Set the process's kernel choice from `params_file` (or `mode`, and its pools' thread count from
    `threads`); call before importing torch or numpy. Returns what is in force, which `in_force()` also
    gives later. A second call returns the first's choice."""
    global _in_force
    if _in_force is not None:  # the first pin of a process wins: a benchmark or test may choose before the CLI
        return _in_force
    file_mode, file_threads = settings_from_params(Path(params_file))
    mode, threads = mode or file_mode, threads or file_threads
    if mode not in MODES:
        raise GanpipeError(
            f"compute.cpu_kernels is {mode!r}, which is not a kernel choice: use portable (the same bytes on every "
            "x86-64 CPU with AVX2) or native (this CPU's fastest kernels, results of its own). Fix it in "
            "params.yaml or in `-S compute.cpu_kernels=...`."
        )
    loaded = [name for name in LOADS_KERNELS if name in sys.modules]
    if loaded:
        raise RuntimeError(
            f"pipeline.common.cpu_kernels.pin() ran after {', '.join(loaded)} was imported, so its settings "
            "would not take effect: call it first in the entry point"
        )
    warning = check_portable(platform.machine(), cpu_flags()) if mode == "portable" else None
    effective = "native" if warning else mode
    if warning:
        print(warning, file=sys.stderr)
    if effective == "portable":
        os.environ.update(portable_env(threads))
    _in_force = {"requested": mode, "mode": effective, "torch_capability": _configure_torch(effective)}
    return _in_force


def mode_from_argv(argv: list[str]) -> str | None:
    """A benchmark's `--cpu-kernels MODE`, read before argparse runs (argparse runs after numpy loads)."""
    for i, arg in enumerate(argv):
        if arg == "--cpu-kernels" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--cpu-kernels="):
            return arg.split("=", 1)[1]
    return None


def pin_or_exit(params_file: Path | str = "params.yaml", mode: str | None = None) -> dict[str, Any]:
    """`pin()` for an entry point: a refused setting prints its paragraph and exits, with no traceback."""
    try:
        return pin(params_file, mode)
    except GanpipeError as exc:
        from pipeline.common.console import report_error  # rich, which loads neither torch nor numpy

        sys.exit(report_error(exc))


def _configure_torch(mode: str) -> str:
    """Load torch with the environment set, route portable mode's products and convolutions (see the module
    docstring), and return the capability ATen dispatches at."""
    import torch  # after the environment is set: torch reads it as it loads

    if mode == "portable":
        from pipeline.common import portable_convolutions, portable_products

        torch.backends.mkldnn.enabled = False  # oneDNN sizes its convolutions' sums by the CPU's caches
        torch.backends.nnpack.set_flags(False)  # NNPACK picks its kernels by CPU
        portable_products.install()
        portable_convolutions.install()
    return torch.backends.cpu.get_cpu_capability()


def in_force() -> dict[str, Any]:
    """What computes in this process: the mode asked for and used, torch's capability and the pins, for
    MLflow tags. Empty if `pin()` has not run (a library caller that chose nothing)."""
    if _in_force is None:
        return {}
    pins = {name: os.environ.get(name, "") for name in (*PORTABLE_ENV, *THREAD_ENV)} if _in_force["mode"] == "portable" else {}
    import torch

    return {
        **_in_force, "machine": platform.machine(), "mkldnn": torch.backends.mkldnn.enabled, **pins,
    }



def tags() -> dict[str, str]:
    """`in_force()` as MLflow tags (`compute.mode`, `compute.torch_capability`, `compute.mkl_cbwr`, ...)."""
    return {f"compute.{key.lower()}": str(value) for key, value in in_force().items()}

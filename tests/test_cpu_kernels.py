"""Portable CPU kernels (params.yaml `compute.cpu_kernels`): every entry point pins them before torch and
numpy load, and in `portable` mode a computation gives the same bytes whatever kernels the environment
forces, the way another CPU make would choose other kernels. `native` mode shows the same forcing changes
the bytes on this machine, so the portable checks can fail."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.common import cpu_kernels
from pipeline.common.errors import GanpipeError
from tests.conftest import REPO, mirror_path, repo_params, tiny_params

# Kernel choices another machine could make, forced here through the libraries' own switches.
FORCED = {
    "as-is": {},
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
    "aten-avx2-mkl-avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "OPENBLAS_CORETYPE": "Prescott",
                           "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR"},
}

# A few training steps of a small CNN and an MLP, and numpy linear algebra: every library pinned.
PROBE = r"""
import hashlib, sys
from pipeline.common import cpu_kernels
cpu_kernels.pin(sys.argv[1])
import numpy as np, torch
from torch import nn
torch.manual_seed(0)
torch.set_num_threads(2)
cnn = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 14 * 14, 10))
mlp = nn.Sequential(nn.Linear(100, 128), nn.ReLU(), nn.Linear(128, 784), nn.Sigmoid())
params = list(cnn.parameters()) + list(mlp.parameters())
opt = torch.optim.Adam(params, 1e-3)
g = torch.Generator().manual_seed(1)
x, y, z = torch.rand(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g), torch.randn(64, 100, generator=g)
for _ in range(10):
    opt.zero_grad()
    (nn.functional.cross_entropy(cnn(x), y) + mlp(z).mean()).backward()
    opt.step()
a = np.random.default_rng(0).standard_normal((200, 200))
blob = b"".join(p.detach().numpy().tobytes() for p in params) + (a @ a.T).tobytes() + np.linalg.eigh(a @ a.T)[0].tobytes()
blob += np.exp(a).tobytes() + np.log(np.abs(a)).tobytes()
print(hashlib.md5(blob).hexdigest(), torch.backends.cpu.get_cpu_capability())
"""


def params_file(folder: Path, mode: str, params: dict | None = None) -> Path:
    p = params or repo_params()
    p["compute"] = {"cpu_kernels": mode}
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    return path


def clean_env(**forced: str) -> dict[str, str]:
    """This process's environment less every pin (it was pinned itself), plus `forced`."""
    drop = set(cpu_kernels.PORTABLE_ENV) | set(cpu_kernels.THREAD_ENV)
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, "PYTHONPATH": str(REPO), **forced}


def probe(params: Path, forced: dict[str, str]) -> tuple[str, str]:
    done = subprocess.run([sys.executable, "-c", PROBE, str(params)], env=clean_env(**forced), cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    digest, capability = done.stdout.split()
    return digest, capability


def test_portable_kernels_give_the_same_bytes_whatever_dispatch_the_environment_forces(tmp_path):
    portable = {name: probe(params_file(tmp_path, "portable"), env) for name, env in FORCED.items()}
    assert {cap for _, cap in portable.values()} == {"AVX2"}, portable
    assert len({digest for digest, _ in portable.values()}) == 1, f"portable mode gave different bytes: {portable}"

    native = {name: probe(params_file(tmp_path, "native"), env) for name, env in FORCED.items()}
    if len({digest for digest, _ in native.values()}) == 1:
        pytest.skip(f"this machine cannot show a difference: every forced dispatch gave the same bytes natively ({native})")
    assert native["aten-default"][1] == "DEFAULT"


READ_BACK = "import os, torch; print(torch.backends.cpu.get_cpu_capability(), torch.backends.mkldnn.enabled, os.environ.get('MKL_CBWR'))"


def import_and_read_back(folder: Path, entry: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", f"{entry}; {READ_BACK}"], cwd=folder, env=clean_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.parametrize("module", ["stages.check_params", "stages.download", "stages.prepare", "stages.stack",
                                    "stages.evaluator", "stages.calibrate", "stages.train", "stages.evaluate",
                                    "stages.report", "pipeline.cli"])
def test_every_entry_point_pins_the_kernels_before_torch_loads(module, tmp_path):
    # The stages read params.yaml in their working directory, the CLI in the repository root (no git
    # here, so the working directory too).
    params_file(tmp_path, "portable")
    assert import_and_read_back(tmp_path, f"import {module}") == ["AVX2", "False", "COMPATIBLE"]


def test_native_mode_pins_nothing(tmp_path):
    params_file(tmp_path, "native")
    _, mkldnn, cbwr = import_and_read_back(tmp_path, "import stages.train")
    assert (mkldnn, cbwr) == ("True", "None")


@pytest.mark.parametrize("bench", ["train_speed.py", "evaluate_speed.py", "stacked_mnist.py"])
def test_benchmarks_pin_the_kernels_their_option_names(bench, tmp_path):
    # run_path under another name than __main__ runs the module's top (the pinning), not its main().
    entry = (f"import runpy, sys; sys.argv = ['{bench}', '--cpu-kernels', 'portable']; "
             f"runpy.run_path({str(REPO / 'benchmarks' / bench)!r}, run_name='benchmark')")
    assert import_and_read_back(tmp_path, entry) == ["AVX2", "False", "COMPATIBLE"]


def test_a_cpu_without_avx2_is_refused_in_portable_mode_with_the_reason():
    with pytest.raises(GanpipeError) as refused:
        cpu_kernels.check_portable("x86_64", {"sse2", "avx", "fma"})
    message = str(refused.value)
    assert "does not support AVX2" in message and "compute.cpu_kernels: native" in message
    assert cpu_kernels.check_portable("x86_64", {"avx", "avx2", "avx512f"}) is None


def test_a_cpu_that_is_not_x86_computes_natively_and_says_why():
    warning = cpu_kernels.check_portable("aarch64", None)
    assert warning and "not x86-64" in warning and "native" in warning


def test_pinning_after_numpy_loaded_is_an_error_not_a_silent_no_op(tmp_path):
    code = "import numpy; from pipeline.common import cpu_kernels; cpu_kernels.pin()"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=clean_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0 and "after numpy was imported" in done.stderr


def test_an_unknown_kernel_choice_is_refused_in_one_paragraph(tmp_path):
    p = repo_params()
    p["compute"] = {"cpu_kernels": "fastest"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    done = subprocess.run([sys.executable, "-m", "stages.check_params"], cwd=tmp_path, env=clean_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "'fastest'" in done.stderr and "portable" in done.stderr and "Traceback" not in done.stderr


# --- the pipeline's own stages, trained and evaluated under each forced dispatch -------------------------

STAGES_UPSTREAM = ("check_params", "download", "prepare", "stack", "evaluator", "calibrate")
COMPARED = ("outputs/train/generator.pt", "metrics/train.json", "metrics/evaluate.json",
            "outputs/evaluate/evaluation.json")


def run_stage(folder: Path, stage: str, forced: dict[str, str]) -> None:
    env = clean_env(**forced, MNIST_MIRROR=str(mirror_path()), MLFLOW_TRACKING_URI=f"sqlite:///{folder}/mlflow.db")
    done = subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"stage {stage} failed:\n{done.stderr[-3000:]}"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> Path:
    """A tiny pipeline through calibrate (no DVC needed: stages run in their folder), in portable mode."""
    folder = tmp_path_factory.mktemp("kernels-upstream")
    for name in ("stages", "pipeline"):
        shutil.copytree(REPO / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
    p = tiny_params(iterations=40)
    p["replicas"] = 1
    params_file(folder, "portable", p)
    for stage in STAGES_UPSTREAM:
        run_stage(folder, stage, {})
    return folder


def train_and_evaluate(upstream: Path, dest: Path, mode: str, forced: dict[str, str]) -> dict[str, str]:
    shutil.copytree(upstream, dest, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts", "__pycache__"))
    p = yaml.safe_load((dest / "params.yaml").read_text())
    params_file(dest, mode, p)
    run_stage(dest, "train", forced)
    run_stage(dest, "evaluate", forced)
    return {name: hashlib.md5((dest / name).read_bytes()).hexdigest() for name in COMPARED}


@pytest.mark.slow
def test_training_and_evaluation_give_the_same_bytes_under_every_forced_dispatch_in_portable_mode(upstream, tmp_path):
    portable = {name: train_and_evaluate(upstream, tmp_path / f"p-{name}", "portable", env) for name, env in FORCED.items()}
    first = next(iter(portable.values()))
    for name, hashes in portable.items():
        assert hashes == first, f"portable mode under {name} differs: {json.dumps(portable, indent=1)}"

    native = {name: train_and_evaluate(upstream, tmp_path / f"n-{name}", "native", env) for name, env in FORCED.items()}
    generators = {hashes["outputs/train/generator.pt"] for hashes in native.values()}
    if len(generators) == 1:
        pytest.skip("this machine cannot show a difference: every forced dispatch trained the same generator natively")
    assert len(generators) >= 2


# --- the portable route: matrix products in OpenBLAS, convolutions unfolded around them ------------------

REFERENCE_SCRIPT = r"""
import sys
from pipeline.common import cpu_kernels
cpu_kernels.pin(mode=sys.argv[2], threads=int(sys.argv[3]))
import numpy as np, torch
from tests.route_cases import cases
from tests.route_cases import inference_cases
np.savez(sys.argv[1], **{name: t.detach().numpy() for name, t in {**cases(torch), **inference_cases(torch)}.items()})
"""


def route_outputs(tmp_path: Path, mode: str, threads: int) -> dict:
    out = tmp_path / f"{mode}-{threads}.npz"
    done = subprocess.run([sys.executable, "-c", REFERENCE_SCRIPT, str(out), mode, str(threads)], cwd=REPO,
                          env=clean_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(np.load(out))


def test_portable_products_and_convolutions_compute_what_torch_computes_whatever_the_thread_count(tmp_path):
    """The routed kernels (pipeline/common/portable_products.py, portable_convolutions.py) against torch's own
    (native mode, in another process) on every form the pipeline uses: within float32 rounding, and the same
    bytes at 1 and 2 threads."""
    native = route_outputs(tmp_path, "native", 2)
    one, two = route_outputs(tmp_path, "portable", 1), route_outputs(tmp_path, "portable", 2)
    assert set(native) == set(one) and len(native) > 20
    for name, reference in native.items():
        scale = max(float(np.abs(reference).max()), 1e-6)
        assert np.abs(one[name] - reference).max() <= 2e-5 * scale, name
        assert np.array_equal(one[name], two[name]), f"{name} depends on the thread count"


def test_every_product_and_convolution_the_pipeline_dispatches_takes_the_portable_route(instrument, small_mnist):
    """A census of the aten ops that training (every network family, replicas batched or not), the evaluator's
    training and an evaluation dispatch: each BLAS-backed one has a portable kernel, nothing reaches MKL's
    LAPACK, and convolutions never reach oneDNN or torch's MKL im2col path."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from torch.utils._python_dispatch import TorchDispatchMode

    from pipeline.common import portable_products
    from pipeline.common.params import load_params
    from pipeline.gan.replicas import replica_seeds
    from pipeline.gan.trainer import Trainer
    from pipeline.instrument.calibration import calibrate
    from pipeline.instrument.evaluation import evaluate_images
    from pipeline.instrument.evaluator import train_classifier

    if cpu_kernels.in_force().get("mode") != "portable":
        pytest.skip("params.yaml computes natively: there is no portable route to check")
    seen: set[str] = set()

    class Census(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.add(func._schema.name.removeprefix("aten::") + ("" if func._overloadname == "default" else f".{func._overloadname}"))
            return func(*args, **(kwargs or {}))

    params = load_params(REPO / "params.yaml")
    x = torch.from_numpy(small_mnist.x_train[:512].reshape(512, -1)).float() / 255
    y = torch.from_numpy(small_mnist.y_train[:512].astype(np.int64))
    with profile(activities=[ProfilerActivity.CPU]) as prof, Census():
        for name in ("vanilla", "wgan", "wgan-gp", "cgan", "dcgan", "sngan", "pacdcgan2", "dcgan-quarter-d"):
            for replicas in (1, 2):
                Trainer(params.variants[name], x, y, replica_seeds(0, replicas), batched=replicas > 1).advance(2)
        train_classifier(small_mnist.x_train[:256], small_mnist.y_train[:256], epochs=1, batch_size=128, lr=1e-3, seed=0)
        model, ref = instrument
        settings = params.evaluate.model_copy(update={"n_samples": 500, "kid_subsets": 4, "kid_subset_size": 200,
                                                      "calibration_subsets": 3, "bootstrap_draws": 50})
        evaluate_images(small_mnist.x_test[:500], None, model, ref, calibrate(ref, settings, seed=0), settings, seed=0)
    blas = {op for op in seen if op.split(".")[0] in ("mm", "addmm", "bmm", "baddbmm", "mv", "addmv", "dot", "vdot",
                                                          "addr", "addbmm", "_addmm_activation")}
    assert blas and blas <= set(portable_products.kernels()), sorted(blas - set(portable_products.kernels()))
    lapack = {op for op in seen if op.startswith(("linalg_", "_linalg", "cholesky", "svd", "_fft"))}
    assert not lapack - {"linalg_vector_norm"}, sorted(lapack)  # a norm is an ATen reduction, not LAPACK
    assert "convolution" in seen and "convolution_backward" in seen
    events = {e.key for e in prof.key_averages()}
    assert not events & {"aten::mkldnn_convolution", "aten::_slow_conv2d_forward", "aten::slow_conv_transpose2d",
                         "aten::_nnpack_spatial_convolution"}, sorted(events)


def test_this_machine_computes_the_committed_fingerprints():
    """`ganpipe fingerprint` on this machine against every CPU the portable kernels were verified on
    (fingerprints/): a difference means results computed here would not match that CPU's byte for byte, on
    another make (the route depends on the make after all) or on the same model (the route's code changed)."""
    from pipeline.common import fingerprint

    pinned = {line.split("==")[0].lower(): line.split("==")[1].strip()
              for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line}
    installed = fingerprint.versions()
    if any(pinned.get(name) and not installed[name].startswith(pinned[name]) for name in installed):
        pytest.skip(f"the installed {installed} differ from constraints.txt, for which the fingerprints were made")
    files = {name: theirs for name, theirs in fingerprint.committed().items() if theirs["versions"] == installed}
    assert files, "no committed fingerprint in fingerprints/ made with the pinned versions"
    mine = fingerprint.take()
    for name, theirs in files.items():
        assert fingerprint.differences(mine, theirs) == [], f"{name} ({theirs['cpu']}) differs from this machine"

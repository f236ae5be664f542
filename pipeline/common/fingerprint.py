"""This machine's fingerprint under the portable kernels: a short hash of every kind of computation the
`portable` mode relies on, to hold against the fingerprints committed from CPUs it was verified on.

Each computation runs on seeded inputs in a fresh process pinned to `portable` (the libraries read their
dispatch settings as they load), with 1 and with 2 threads. A hash that differs from a committed CPU's, with
the same torch and numpy, names an operation whose bytes depend on the processor: results computed here
would not match that CPU's. `ganpipe fingerprint` runs it (about a minute); fingerprints/ holds the files.

What is covered: matrix products of the pipeline's shapes (plain, with a transposed or misaligned operand,
batched as vmapped replicas, matrix-vector, dot), convolutions of the evaluator's and the DCGAN family's
shapes (forward and all three gradients, transposed and grouped), ATen's elementwise functions, reductions,
batch norm, pooling and random streams, a few optimiser steps of an MLP GAN and of the evaluator CNN with
its dropout, and numpy, scipy and scikit-learn's linear algebra, k-means included.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

THREADS = (1, 2)
FOLDER = Path(__file__).resolve().parents[2] / "fingerprints"


def cpu_description() -> dict[str, str]:
    """Vendor, family, model, model name and the vector extensions that matter here, from /proc/cpuinfo."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("vendor_id", "cpu family", "model", "model name") and key not in info:
                info[key] = value.strip()
            if key == "flags" and "flags" not in info:
                flags = set(value.split())
                info["flags"] = " ".join(f for f in ("avx2", "fma", "avx512f", "amx_tile") if f in flags)
    except OSError:
        info["model name"] = platform.processor() or platform.machine()
    return info


def digest(value: Any) -> str:
    import numpy as np
    import torch

    if isinstance(value, (list, tuple)):
        return hashlib.sha256("".join(digest(v) for v in value).encode()).hexdigest()[:16]
    array = value.detach().contiguous().numpy() if isinstance(value, torch.Tensor) else np.ascontiguousarray(value)
    return hashlib.sha256(array.tobytes()).hexdigest()[:16]


def _products(torch) -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)
    out = {}
    for m, k, n in ((64, 100, 128), (64, 128, 784), (64, 784, 128), (128, 784, 1), (1000, 128, 2000), (37, 129, 65)):
        a, b, bias = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g), torch.randn(n, generator=g)
        out[f"mm/{m}x{k}x{n}"] = a @ b
        out[f"mm_transposed/{m}x{k}x{n}"] = a.t().contiguous().t() @ b.t().contiguous().t()
        out[f"addmm/{m}x{k}x{n}"] = torch.addmm(bias, a, b)
    big = torch.randn(4097, generator=g)
    out["mm/misaligned"] = big[1:].reshape(64, 64) @ big[1:].reshape(64, 64)
    a, b = torch.randn(3, 64, 784, generator=g), torch.randn(3, 784, 128, generator=g)
    out["bmm/replicas"] = torch.bmm(a, b)
    out["baddbmm/replicas"] = torch.baddbmm(torch.randn(3, 1, 128, generator=g), a, b)
    out["mv"], out["dot"] = torch.mv(a[0], b[0, :, 0]), torch.dot(big[:4096], big[1:])
    out["mm/float64"] = a[0].double() @ b[0].double()
    out["cdist"] = torch.cdist(a[0][:200], a[1][:300])
    return out


def _convolutions(torch) -> dict[str, Any]:
    torch.manual_seed(2)
    nn = torch.nn
    cases = {
        "evaluator_3x3": (nn.Conv2d(32, 64, 3, padding=1), (20, 32, 14, 14)),
        "dcgan_4x4_stride2": (nn.Conv2d(64, 128, 4, 2, 1).to(memory_format=torch.channels_last), (20, 64, 14, 14)),
        "dcgan_transposed": (nn.ConvTranspose2d(128, 64, 4, 2, 1), (20, 128, 7, 7)),
        "grouped_replicas": (nn.Conv2d(6, 12, 4, 2, 1, groups=3), (20, 6, 14, 14)),
    }
    out = {}
    for name, (conv, shape) in cases.items():
        x = torch.randn(shape).requires_grad_()
        y = conv(x)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        out[f"conv/{name}"] = [y, x.grad, conv.weight.grad, conv.bias.grad]
    return out


def _aten(torch) -> dict[str, Any]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1 << 18, generator=g)
    out = {f"elementwise/{f}": getattr(torch, f)(x) for f in ("exp", "tanh", "sigmoid")}
    out["elementwise/log1p"] = torch.log1p(x.abs())
    out["softmax"] = torch.softmax(x.view(512, 512), 1)
    out["reduce/sum"], out["reduce/var"] = x.sum().view(1), x.view(512, 512).var(1)
    out["batch_norm"] = torch.nn.functional.batch_norm(x.view(1024, 256), None, None, training=True)
    images = x[: 20 * 32 * 14 * 14].view(20, 32, 14, 14).requires_grad_()
    pooled = torch.nn.functional.max_pool2d(images, 2)
    pooled.sum().backward()
    out["max_pool2d"] = [pooled, images.grad]
    torch.manual_seed(4)
    out["random"] = [torch.randn(1000), torch.rand(1000), torch.randint(0, 10, (1000,)), torch.randperm(1000),
                     torch.nn.functional.dropout(torch.ones(1000), 0.25)]
    return out


def _mlp_gan_steps(torch) -> Any:
    """Five Adam steps of the seed's MLP GAN (G 100-128-784, D 784-128-1, batch 64)."""
    torch.manual_seed(5)
    nn = torch.nn
    G = nn.Sequential(nn.Linear(100, 128), nn.ReLU(), nn.Linear(128, 784), nn.Sigmoid())
    D = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 1))
    og, od = torch.optim.Adam(G.parameters(), 1e-3), torch.optim.Adam(D.parameters(), 1e-3)
    real, loss = torch.rand(64, 784), nn.functional.binary_cross_entropy_with_logits
    for _ in range(5):
        fake = G(torch.randn(64, 100))
        od.zero_grad()
        (loss(D(real), torch.ones(64, 1)) + loss(D(fake.detach()), torch.zeros(64, 1))).backward()
        od.step()
        og.zero_grad()
        loss(D(fake), torch.ones(64, 1)).backward()
        og.step()
    return list(G.parameters()) + list(D.parameters())


def _evaluator_steps(torch) -> Any:
    """Three Adam steps of a CNN of the evaluator's shapes (pipeline/instrument/evaluator.py), dropout included."""
    torch.manual_seed(6)
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1),
                        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
                        nn.Dropout(0.25), nn.Linear(128, 10))
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return list(net.parameters())


def _numpy_stack() -> dict[str, Any]:
    import numpy as np
    import scipy.linalg
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(7)
    f = rng.standard_normal((2000, 128))
    cov = np.cov(f, rowvar=False)
    a, b = rng.standard_normal((300, 784), np.float32), rng.standard_normal((784, 128), np.float32)
    kmeans = KMeans(20, n_init=1, random_state=0).fit(f[:1000].astype(np.float32))
    return {
        "numpy/sgemm": a @ b, "numpy/cov": cov, "numpy/exp_log_power": np.exp(f) + np.log(np.abs(f) + 1) + np.abs(f) ** 0.3,
        "scipy/sqrtm": np.real(scipy.linalg.sqrtm(cov @ cov.T + np.eye(128))), "sklearn/kmeans": kmeans.cluster_centers_,
    }


def compute(threads: int) -> dict[str, str]:
    """Every operation's hash, in this process, which must already be pinned to portable."""
    import torch

    torch.set_num_threads(threads)
    parts: list[Callable[[], dict[str, Any]]] = [
        lambda: _products(torch), lambda: _convolutions(torch), lambda: _aten(torch),
        lambda: {"steps/mlp_gan": _mlp_gan_steps(torch)}, lambda: {"steps/evaluator": _evaluator_steps(torch)},
        _numpy_stack,
    ]
    return {name: digest(value) for part in parts for name, value in part().items()}


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("torch", "numpy", "scipy", "scikit-learn")}


def take(python: str = sys.executable) -> dict[str, Any]:
    """This machine's fingerprint: each thread count in its own pinned process."""
    results = {}
    for threads in THREADS:
        done = subprocess.run([python, "-m", "pipeline.common.fingerprint", str(threads)], capture_output=True,
                              text=True, cwd=Path(__file__).resolve().parents[2])
        if done.returncode:
            raise RuntimeError(f"the fingerprint's {threads}-thread process failed:\n{done.stderr[-2000:]}")
        results[f"{threads} thread{'s' if threads > 1 else ''}"] = json.loads(done.stdout)
    return {"cpu": cpu_description(), "versions": versions(), "kernels": "portable", "results": results}


def differences(mine: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """The operations whose hash differs between two fingerprints ("<threads>: <operation>")."""
    return [f"{threads}: {op}" for threads, ops in mine["results"].items()
            for op, value in ops.items() if theirs["results"].get(threads, {}).get(op, value) != value]


def committed() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(FOLDER.glob("*.json"))}


if __name__ == "__main__":  # the child process: pin first, then compute
    from pipeline.common import cpu_kernels

    cpu_kernels.pin(mode="portable", threads=int(sys.argv[1]))
    print(json.dumps(compute(int(sys.argv[1]))))

"""The portable mode's matrix products: torch's CPU `mm`, `addmm`, `bmm`, `baddbmm`, `mv` and `dot` computed
by numpy's bundled OpenBLAS at its Haswell (AVX2) kernels, instead of by MKL.

Why: MKL picks its code path by processor vendor and model. Under its COMPATIBLE reproducibility branch the
MLP GANs' training (one thread) gave the same bytes on an Intel Xeon and on AMD EPYCs, but the evaluator CNN
(its convolutions' products and its two-thread products in MKL too) did not, and MKL is the only part of
that path that dispatches by processor (docs/reproducibility.md).
OpenBLAS takes its kernels and its blocking sizes from the core type alone, which `OPENBLAS_CORETYPE=Haswell`
fixes on every x86-64 CPU with AVX2 (the Haswell table sets no size from the cache it reads off the CPU), and
it runs on one thread (`OPENBLAS_NUM_THREADS=1`), so no product depends on how many threads the rest of the
computation uses. One thread also keeps OpenBLAS's spinning pool from fighting torch's OpenMP pool over the
cores: with both on two threads, the evaluator's training ran 2-3x slower.

How: each op's CPU kernel is replaced through `torch.library`, below autograd and vmap, so the networks,
the trainer and the instrument stay plain torch code and every caller (a `Linear`, the backward pass of one,
`torch.cdist`, a vmapped batch of replicas) reaches these kernels. A product runs on numpy views of the
tensors' memory, with no copy unless numpy needs a contiguous operand. Convolutions are unfolded around these same products in
pipeline/common/portable_convolutions.py.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

# Every BLAS-backed product torch's CPU backend offers for these shapes, with its out= and in-place forms;
# tests/test_cpu_kernels.py takes a census of what the pipeline's workloads dispatch and checks it is covered.
PRODUCTS = ("mm", "addmm", "bmm", "baddbmm", "mv", "addmv", "dot")
# numpy's BLAS products (float) and its exact integer products; torch's half types have no numpy twin.
NUMPY_DTYPES = (torch.float32, torch.float64, torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)

_library: torch.library.Library | None = None


def _array(t: torch.Tensor) -> np.ndarray:
    if t.dtype not in NUMPY_DTYPES:
        raise TypeError(
            f"compute.cpu_kernels is portable, which computes CPU matrix products through numpy, and numpy has no "
            f"{t.dtype}: compute this product in float32, or set compute.cpu_kernels: native"
        )
    return t.detach().numpy()


def _product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.matmul(_array(a), _array(b)))


def _scaled_sum(prod: torch.Tensor, base: torch.Tensor, beta, alpha) -> torch.Tensor:
    """beta * base + alpha * prod, with `base` ignored when beta is 0 (torch's rule: NaN in it does not spread)."""
    if alpha != 1:
        prod.mul_(alpha)
    if beta == 0:
        return prod
    return prod.add_(base if beta == 1 else base * beta)


def mm(self, mat2):
    return _product(self, mat2)


def addmm(self, mat1, mat2, *, beta=1, alpha=1):
    return _scaled_sum(_product(mat1, mat2), self, beta, alpha)


def bmm(self, mat2):
    return _product(self, mat2)


def baddbmm(self, batch1, batch2, *, beta=1, alpha=1):
    return _scaled_sum(_product(batch1, batch2), self, beta, alpha)


def mv(self, vec):
    return _product(self, vec)


def addmv(self, mat, vec, *, beta=1, alpha=1):
    return _scaled_sum(_product(mat, vec), self, beta, alpha)


def dot(self, tensor):
    return torch.tensor(np.dot(_array(self), _array(tensor)), dtype=self.dtype)


def _out_form(compute):
    def kernel(*args, out, **kwargs):
        result = compute(*args, **kwargs)
        return out.resize_(result.shape).copy_(result)
    return kernel


def _in_place_form(compute):
    def kernel(self, *args, **kwargs):
        return self.copy_(compute(self, *args, **kwargs))
    return kernel


def kernels() -> dict[str, object]:
    """aten overload name -> its portable kernel: each product, its out= form, and the in-place form of those
    that have one (addmm_, baddbmm_, addmv_)."""
    table = {}
    for name in PRODUCTS:
        compute = globals()[name]
        table[name] = compute
        table[f"{name}.out"] = _out_form(compute)
        if name.startswith(("addmm", "baddbmm", "addmv")):
            table[f"{name}_"] = _in_place_form(compute)
    return table


def register_cpu_kernels(table: dict[str, object]) -> torch.library.Library:
    """Register each aten overload's kernel at the CPU key; the library returned must stay referenced for
    the registrations to last. Shared with pipeline/common/portable_convolutions.py."""
    library = torch.library.Library("aten", "IMPL")
    with warnings.catch_warnings():  # torch warns once that a kernel is being overridden: that is the point
        warnings.simplefilter("ignore", UserWarning)
        for name, kernel in table.items():
            library.impl(name, kernel, "CPU")
    return library


def install() -> None:
    """Route the products through OpenBLAS for the rest of the process (idempotent)."""
    global _library
    if _library is None:
        _library = register_cpu_kernels(kernels())

"""The portable mode's 2-d convolutions: torch's CPU `convolution` and `convolution_backward` computed as
image-to-column unfolding (ATen's `im2col`/`col2im`, plain data movement and sums at the pinned AVX2
capability) around matrix products in numpy's OpenBLAS (the same Haswell kernels, on one thread, as
pipeline/common/portable_products.py).

Why not oneDNN, which torch uses natively: its convolutions for strided and channels-last shapes (the DCGAN
family's) are brgemm kernels whose input-channel blocking, and so the order of every sum, is chosen from the
L1 and L2 cache sizes it reads off the processor; its gemm-based ones size their blocks by the L2 cache too.
So the same params could give other bytes on a CPU with other caches. Here every order is fixed by the
shapes alone.

Speed: each image's product is its own OpenBLAS call, so the images are shared among torch's threads (a
param) with results that do not depend on how many there are; the weight gradient sums the images in fixed
chunks of CHUNK images, added in order, for the same reason.
"""

from __future__ import annotations

from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.common.portable_products import register_cpu_kernels

CHUNK = 16  # images per unit of work: fixed, so no sum's order ever follows the thread count
CACHED_COLUMNS = 8  # forward columns kept for the backward pass (one per convolution awaiting its backward)

_library: torch.library.Library | None = None
_pools: dict[int, ThreadPoolExecutor] = {}
# A training step's forward unfolds each convolution's input; its backward needs the same columns for the
# weight gradient, so they are kept (as torch's own im2col convolution keeps them) until the backward uses
# them, keyed by the input's memory, version and the convolution's geometry.
_columns: OrderedDict[tuple, list[np.ndarray]] = OrderedDict()


def _map(work, items: list) -> list:
    """`work` over `items` on torch's thread count (torch and numpy release the GIL while they compute)."""
    n = min(torch.get_num_threads(), len(items))
    if n <= 1:
        return [work(item) for item in items]
    pool = _pools.get(n) or _pools.setdefault(n, ThreadPoolExecutor(n, thread_name_prefix="ganpipe-conv"))
    # Inference mode is per thread: a convolution under torch.inference_mode() (sampling) writes into
    # inference tensors, which a pool thread may touch only inside inference mode too.
    inference = torch.is_inference_mode_enabled()

    def in_callers_mode(item):
        with torch.inference_mode(inference):
            return work(item)

    return list(pool.map(in_callers_mode, items))


def _chunks(n: int) -> list[slice]:
    return [slice(start, min(start + CHUNK, n)) for start in range(0, n, CHUNK)]


def _key(x: torch.Tensor, geometry: tuple) -> tuple:
    return (x.data_ptr(), x._version, tuple(x.shape), tuple(x.stride()), geometry)


def _unfold(x: torch.Tensor, geometry: tuple) -> np.ndarray:
    """(b, C, H, W) -> columns (b, G, C/G * kh * kw, L) as a numpy array."""
    kernel, stride, padding, dilation, groups = geometry
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    return cols.numpy().reshape(x.shape[0], groups, -1, cols.shape[-1])


def _fold_into(out: torch.Tensor, cols: np.ndarray, geometry: tuple) -> None:
    """Sum columns (b, G, C/G * kh * kw, L) back into images, written into `out` (b, C, H, W)."""
    kernel, stride, padding, dilation, _ = geometry
    torch._C._nn.col2im(torch.from_numpy(cols.reshape(cols.shape[0], -1, cols.shape[-1])), tuple(out.shape[2:]),
                        kernel, dilation, padding, stride, out=out)


def _folded(left: np.ndarray, rows_of: np.ndarray, like: torch.Tensor, shape: tuple, geometry: tuple) -> torch.Tensor:
    """Images (shape, `like`'s dtype) from columns left (G, k, m) @ rows_of[b] (G, m, L), chunk by chunk."""
    out = torch.empty(shape, dtype=like.dtype)
    _map(lambda rows: _fold_into(out[rows], np.matmul(left, rows_of[rows]), geometry), _chunks(shape[0]))
    return out


def _weight_gradient(left, right, n: int) -> np.ndarray:
    """sum over images b of left(b) (G, m, L) @ right(b).T (G, L, k) -> (G, m, k), where left(rows) and
    right(rows) give a chunk's (b, G, m, L) and (b, G, k, L): one product per chunk, summed in order."""
    def partial(rows: slice) -> np.ndarray:
        a, b = left(rows), right(rows)
        a = np.ascontiguousarray(a.transpose(1, 2, 0, 3)).reshape(a.shape[1], a.shape[2], -1)
        b = np.ascontiguousarray(b.transpose(1, 0, 3, 2)).reshape(b.shape[1], -1, b.shape[2])
        return np.matmul(a, b)

    parts = _map(partial, _chunks(n))
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def _transposed_size(n: int, k: int, s: int, p: int, d: int, extra: int) -> int:
    return (n - 1) * s - 2 * p + d * (k - 1) + extra + 1


def _check_2d(weight: torch.Tensor) -> None:
    if weight.dim() != 4:
        raise NotImplementedError(
            f"compute.cpu_kernels is portable, which computes 2-d convolutions only, and got a {weight.dim() - 2}-d "
            "one: set compute.cpu_kernels: native for this computation"
        )


def _forward(x: torch.Tensor, w: torch.Tensor, geometry: tuple, keep: bool) -> torch.Tensor:
    kernel, stride, padding, dilation, g = geometry
    left = w.numpy().reshape(g, w.shape[0] // g, -1)
    size = tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in zip(x.shape[2:], kernel, stride, padding, dilation))
    out = np.empty((x.shape[0], g, w.shape[0] // g, size[0] * size[1]), dtype=left.dtype)

    def chunk(rows: slice) -> np.ndarray | None:
        cols = _unfold(x[rows], geometry)
        np.matmul(left, cols, out=out[rows])
        return cols if keep else None  # without a backward to come, each chunk's columns go as soon as used

    columns = _map(chunk, _chunks(x.shape[0]))
    if keep:
        _columns[_key(x, geometry)] = columns
        while len(_columns) > CACHED_COLUMNS:
            _columns.popitem(last=False)
    return torch.from_numpy(out.reshape(x.shape[0], w.shape[0], *size))


def _transposed_forward(x: torch.Tensor, w: torch.Tensor, geometry: tuple, output_padding) -> torch.Tensor:
    """The input gradient of a convolution: columns from the weights, then folded, chunk by chunk."""
    kernel, stride, padding, dilation, g = geometry
    b, c, h, wd = x.shape
    left = w.numpy().reshape(g, c // g, -1).transpose(0, 2, 1)
    size = tuple(_transposed_size(n, k, s, p, d, e)
                 for n, k, s, p, d, e in zip((h, wd), kernel, stride, padding, dilation, output_padding))
    return _folded(left, x.numpy().reshape(b, g, c // g, h * wd), x, (b, w.shape[1] * g, *size), geometry)


def convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
    _check_2d(weight)
    x, w = input.detach(), weight.detach()
    geometry = (tuple(w.shape[2:]), tuple(stride), tuple(padding), tuple(dilation), groups)
    if transposed:
        out = _transposed_forward(x, w, geometry, output_padding)
    else:
        out = _forward(x, w, geometry, keep=torch.is_grad_enabled() and weight.requires_grad)
    return out if bias is None else out + bias.detach().view(1, -1, 1, 1)


def convolution_backward(grad_output, input, weight, bias_sizes, stride, padding, dilation, transposed,
                         output_padding, groups, output_mask):
    _check_2d(weight)
    go, x, w = grad_output.detach(), input.detach(), weight.detach()
    geometry = (tuple(w.shape[2:]), tuple(stride), tuple(padding), tuple(dilation), groups)
    g = groups
    grad_input = grad_weight = grad_bias = None
    if transposed:  # a convolution of the output gradient gives the input's; the weights pair input and columns
        b, c = x.shape[:2]
        cols = _map(lambda rows: _unfold(go[rows], geometry), _chunks(b))
        if output_mask[0]:
            left = w.numpy().reshape(g, c // g, -1)
            grad_input = torch.from_numpy(np.concatenate([np.matmul(left, chunk) for chunk in cols]).reshape(x.shape))
        if output_mask[1]:
            x_rows = x.numpy().reshape(b, g, c // g, -1)
            grad_weight = _weight_gradient(lambda rows: x_rows[rows], lambda rows: cols[rows.start // CHUNK], b)
    else:
        b, oc = go.shape[:2]
        out_rows = go.numpy().reshape(b, g, oc // g, -1)
        if output_mask[0]:
            left = w.numpy().reshape(g, oc // g, -1).transpose(0, 2, 1)
            grad_input = _folded(left, out_rows, x, tuple(x.shape), geometry)
        if output_mask[1]:
            kept = _columns.pop(_key(x, geometry), None)
            cols = (lambda rows: kept[rows.start // CHUNK]) if kept else (lambda rows: _unfold(x[rows], geometry))
            grad_weight = _weight_gradient(lambda rows: out_rows[rows], cols, b)
    if grad_weight is not None:
        grad_weight = torch.from_numpy(grad_weight.reshape(w.shape))
    if output_mask[2]:
        grad_bias = go.sum((0, 2, 3))
    return grad_input, grad_weight, grad_bias


def install() -> None:
    """Route the convolutions for the rest of the process (idempotent)."""
    global _library
    if _library is None:
        _library = register_cpu_kernels({"convolution": convolution, "convolution_backward": convolution_backward})

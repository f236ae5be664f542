"""R copies of one network, stored as stacked tensors with a leading replica axis.

`torch.func.stack_module_state` turns R modules of the same architecture into one dict of parameters
(and one of buffers) shaped (R, ...). A forward pass maps a per-replica function over that axis with
`torch.vmap` + `functional_call`, so R small networks run as a few batched kernels instead of R rounds
of small ones; one optimiser over the stacked tensors updates every replica at once, which is exact
because Adam, RMSProp and weight clipping act element by element. Buffers (e.g. batch-norm running
statistics, spectral-norm power-iteration vectors) are stacked too, so each replica updates its own.

For a network whose forward pass vmap cannot batch, `batched=False` maps the same per-replica function
with a Python loop over views of the stacked tensors: every other part of training stays the same.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, stack_module_state

Tensors = dict[str, torch.Tensor]


class ReplicaStack:
    def __init__(self, modules: list[nn.Module]):
        if not modules:
            raise ValueError("a replica stack needs at least one module")
        params, buffers = stack_module_state(modules)
        self.params: Tensors = params  # leaf tensors (R, ...) that require grad
        self.buffers: Tensors = buffers
        self.template = copy.deepcopy(modules[0])  # architecture and attributes (z_dim, n_classes, ...)
        self.base = copy.deepcopy(modules[0]).to("meta")  # the stateless module functional_call runs

    @property
    def replicas(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def parameters(self) -> list[torch.Tensor]:
        return list(self.params.values())

    def train(self, mode: bool = True) -> None:
        self.base.train(mode)

    def bind(self, params: Tensors, buffers: Tensors) -> Callable[..., torch.Tensor]:
        """The network as a plain function of its inputs, with one replica's (or all replicas') state."""
        return lambda *inputs: functional_call(self.base, (params, buffers), inputs)

    def select(self, rows: list[int]) -> None:
        """Keep only these replica rows (e.g. drop a diverged replica); new leaf tensors."""
        index = torch.tensor(rows, device=next(iter(self.params.values())).device)
        with torch.no_grad():
            self.params = {k: v.index_select(0, index).requires_grad_(v.requires_grad) for k, v in self.params.items()}
            self.buffers = {k: v.index_select(0, index) for k, v in self.buffers.items()}

    def module(self, row: int) -> nn.Module:
        """A standalone copy of one replica's network (for sampling, saving and MLflow)."""
        module = copy.deepcopy(self.template)
        with torch.no_grad():
            for name, value in self.params.items():
                module.get_parameter(name).copy_(value[row])
            for name, value in self.buffers.items():
                module.get_buffer(name).copy_(value[row])
        return module

    def state_dict(self) -> dict[str, Tensors]:
        return {
            "params": {k: v.detach().clone() for k, v in self.params.items()},
            "buffers": {k: v.clone() for k, v in self.buffers.items()},
        }

    def load_state_dict(self, state: dict[str, Tensors]) -> None:
        with torch.no_grad():
            for k, v in state["params"].items():
                self.params[k].copy_(v)
            for k, v in state["buffers"].items():
                self.buffers[k].copy_(v)


def map_replicas(fn: Callable[..., torch.Tensor], batched: bool, *args) -> torch.Tensor:
    """fn applied to each replica's slice of every argument (leading axis R); results stacked on axis 0.

    Arguments that are None (e.g. no labels for an unconditional GAN) are passed through as None.
    """
    if batched:
        in_dims = tuple(None if a is None else 0 for a in args)
        # randomness="error": every random draw must come from a replica's own generator, outside vmap.
        return torch.vmap(fn, in_dims=in_dims, randomness="error")(*args)
    n = next(_leading(a) for a in args if a is not None)
    return torch.stack([fn(*(_row(a, r) for a in args)) for r in range(n)])


def _leading(a) -> int:
    return next(iter(a.values())).shape[0] if isinstance(a, dict) else a.shape[0]


def _row(a, r: int):
    if a is None:
        return None
    if isinstance(a, dict):
        return {k: v[r] for k, v in a.items()}
    return a[r]

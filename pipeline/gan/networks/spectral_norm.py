"""Spectral normalisation (Miyato et al. 2018): every layer's weight divided by its largest singular value.

`spectral_norm_every_layer(net)` is the one wrapper: it registers the parametrisation below on each
Linear and Conv layer, so the layer computes with W / sigma(W) while the optimiser updates W. sigma is
estimated by one power iteration per training forward pass, carried over between passes in the
buffers u and v (Miyato et al., Algorithm 1); a conv kernel is reshaped to (out, in·k·k) first.

torch.nn.utils.parametrizations.spectral_norm does the same, but its power iteration writes with
`out=`, which torch.vmap cannot batch; this version updates u and v with `copy_` instead, so a stack
of replicas can train in one vmapped step (torch.func.functional_call over stacked params and buffers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

_WARM_UP_ITERATIONS = 15  # power iterations at registration, so the first forward already has a good sigma
_EPS = 1e-12


class UnitSpectralNorm(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        matrix = weight.detach().flatten(1)
        u = F.normalize(torch.randn(matrix.shape[0], dtype=matrix.dtype, device=matrix.device), dim=0, eps=_EPS)
        v = F.normalize(torch.randn(matrix.shape[1], dtype=matrix.dtype, device=matrix.device), dim=0, eps=_EPS)
        self.register_buffer("u", u)
        self.register_buffer("v", v)
        self._power_iteration(matrix, _WARM_UP_ITERATIONS)

    @torch.no_grad()
    def _power_iteration(self, matrix: torch.Tensor, n: int) -> None:
        u, v = self.u, self.v
        for _ in range(n):
            v = F.normalize(matrix.t() @ u, dim=0, eps=_EPS)
            u = F.normalize(matrix @ v, dim=0, eps=_EPS)
        self.u.copy_(u)
        self.v.copy_(v)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        matrix = weight.flatten(1)
        if self.training:
            self._power_iteration(matrix.detach(), 1)
        # u and v are constants here (as in the paper's gradient): sigma = u^T W v is differentiable in W.
        sigma = self.u.clone() @ (matrix @ self.v.clone())
        return weight / sigma


def spectral_norm_every_layer(net: nn.Module) -> nn.Module:
    """Apply spectral normalisation to every Linear and Conv layer of `net` (in place); returns `net`."""
    for layer in list(net.modules()):
        if isinstance(layer, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            parametrize.register_parametrization(layer, "weight", UnitSpectralNorm(layer.weight))
    return net


def normalised_weights(net: nn.Module) -> list[torch.Tensor]:
    """The weights each spectrally normalised layer computes with, as (out, in·k·k) matrices."""
    return [
        layer.weight.flatten(1)
        for layer in net.modules()
        if parametrize.is_parametrized(layer, "weight")
        and any(isinstance(p, UnitSpectralNorm) for p in layer.parametrizations.weight)
    ]

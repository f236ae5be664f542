"""The seed's MLP generator and discriminator.

G: [z, y] -> hidden ReLU -> 784·C sigmoid.  D: [x, y] -> hidden ReLU -> 1 (sigmoid for the minimax
variant, raw logit for BCE-with-logits, raw score for a critic). y is the one-hot label and is present
only for conditional variants (CGAN). With the defaults (one channel, no packing) this is exactly the
seed's network; `channels` and `pack` only widen the input layer.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.gan.networks.packing import pack_rows
from pipeline.gan.networks.shapes import IMAGE_SIDE, N_CLASSES


def _xavier_(module: nn.Module) -> None:
    # The seed initialises weights with Xavier normal and biases with zeros.
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_normal_(layer.weight)
            nn.init.zeros_(layer.bias)


class Generator(nn.Module):
    def __init__(self, z_dim: int, hidden: int, conditional: bool = False, channels: int = 1):
        super().__init__()
        self.z_dim = z_dim
        self.n_classes = N_CLASSES if conditional else 0
        self.net = nn.Sequential(
            nn.Linear(z_dim + self.n_classes, hidden),
            nn.ReLU(),
            nn.Linear(hidden, channels * IMAGE_SIDE * IMAGE_SIDE),
            nn.Sigmoid(),
        )
        _xavier_(self)

    def forward(self, z: torch.Tensor, y_onehot: torch.Tensor | None = None) -> torch.Tensor:
        if self.n_classes:
            z = torch.cat([z, y_onehot], dim=1)  # CGAN: the label joins the noise
        return self.net(z)


class Discriminator(nn.Module):
    def __init__(
        self, hidden: int, conditional: bool = False, sigmoid_output: bool = True, channels: int = 1, pack: int = 1
    ):
        super().__init__()
        self.n_classes = N_CLASSES if conditional else 0
        self.pack = pack
        width = pack * (channels * IMAGE_SIDE * IMAGE_SIDE + self.n_classes)
        layers: list[nn.Module] = [nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, 1)]
        if sigmoid_output:
            layers.append(nn.Sigmoid())
        self.net = nn.Sequential(*layers)
        _xavier_(self)

    def forward(self, x: torch.Tensor, y_onehot: torch.Tensor | None = None) -> torch.Tensor:
        if self.n_classes:
            x = torch.cat([x, y_onehot], dim=1)  # CGAN: the label joins the image
        return self.net(pack_rows(x, self.pack)).squeeze(1)

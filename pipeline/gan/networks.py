"""The seed's MLP generator and discriminator, shared by every variant.

G: [z, y] -> hidden ReLU -> 784 sigmoid.  D: [x, y] -> hidden ReLU -> 1 (sigmoid for the minimax
variant, raw logit for BCE-with-logits, raw score for a WGAN critic). y is the one-hot label and is
present only for conditional variants (CGAN), so all variants compare the same architecture.
"""

from __future__ import annotations

import torch
from torch import nn

IMAGE_DIM = 28 * 28
N_CLASSES = 10


def _xavier_(module: nn.Module) -> None:
    # The seed initialises weights with Xavier normal and biases with zeros.
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_normal_(layer.weight)
            nn.init.zeros_(layer.bias)


class Generator(nn.Module):
    def __init__(self, z_dim: int, hidden: int, conditional: bool = False):
        super().__init__()
        self.z_dim = z_dim
        self.n_classes = N_CLASSES if conditional else 0
        self.net = nn.Sequential(
            nn.Linear(z_dim + self.n_classes, hidden),
            nn.ReLU(),
            nn.Linear(hidden, IMAGE_DIM),
            nn.Sigmoid(),
        )
        _xavier_(self)

    def forward(self, z: torch.Tensor, y_onehot: torch.Tensor | None = None) -> torch.Tensor:
        if self.n_classes:
            z = torch.cat([z, y_onehot], dim=1)  # CGAN: the label joins the noise
        return self.net(z)


class Discriminator(nn.Module):
    def __init__(self, hidden: int, conditional: bool = False, sigmoid_output: bool = True):
        super().__init__()
        self.n_classes = N_CLASSES if conditional else 0
        layers: list[nn.Module] = [nn.Linear(IMAGE_DIM + self.n_classes, hidden), nn.ReLU(), nn.Linear(hidden, 1)]
        if sigmoid_output:
            layers.append(nn.Sigmoid())
        self.net = nn.Sequential(*layers)
        _xavier_(self)

    def forward(self, x: torch.Tensor, y_onehot: torch.Tensor | None = None) -> torch.Tensor:
        if self.n_classes:
            x = torch.cat([x, y_onehot], dim=1)  # CGAN: the label joins the image
        return self.net(x).squeeze(1)

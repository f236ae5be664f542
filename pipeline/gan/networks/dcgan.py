"""A DCGAN-style generator and discriminator sized for 28x28 images (Radford et al. 2016, §3-4).

Radford et al.'s guidelines, scaled down to MNIST as in Gulrajani et al.'s MNIST code (two stride-2
stages, 7 -> 14 -> 28): no pooling, strided (transposed) convolutions do the resampling; batch norm in
G; ReLU in G with a sigmoid output (pixels are in [0, 1] here, where the paper uses tanh on [-1, 1]);
LeakyReLU(0.2) in D; weights drawn from N(0, 0.02).

D has no batch norm. The WGAN-GP critic must not have it (the penalty is per sample; Gulrajani et al.
§4), and the trainer passes real and fake images through D as one batch, where batch statistics would
mix the two kinds. Gulrajani et al.'s MNIST DCGAN baseline has none in D either.

Both nets take and return images as rows of C·28·28 pixels, like the MLP, and reshape inside. C (the
channel count) is a constructor argument, so a 3-channel dataset needs no change here. `width` is the
base channel count (the preset's `hidden`): G's stages have 2·width and width channels, D's width and
2·width.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.gan.networks.packing import pack_rows
from pipeline.gan.networks.shapes import IMAGE_SIDE, N_CLASSES

_QUARTER = IMAGE_SIDE // 4  # 7: the spatial size before the two stride-2 stages


def channels_last_(module: nn.Module) -> None:
    # Conv kernels in NHWC order: measured 1.47x the generator iterations/s of NCHW for this preset on the
    # 2-core CPU (benchmarks/train_speed.py --variants dcgan --channels-last, see README "Speed"); the
    # activations follow the weights' format. torch.compile was slower there, so it stays off.
    module.to(memory_format=torch.channels_last)


def dcgan_init_(module: nn.Module) -> None:
    # Radford et al. §4: all weights from a zero-centred normal with standard deviation 0.02.
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(layer.weight, 0.0, 0.02)
            nn.init.zeros_(layer.bias)
        elif isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(layer.weight, 1.0, 0.02)
            nn.init.zeros_(layer.bias)


class Generator(nn.Module):
    def __init__(self, z_dim: int, width: int, conditional: bool = False, channels: int = 1):
        super().__init__()
        self.z_dim = z_dim
        self.n_classes = N_CLASSES if conditional else 0
        # One Sequential from [z, y] to pixel rows, so the network is one module with one tensor input
        # (what MLflow logs as the model), as for the MLP.
        self.net = nn.Sequential(
            nn.Linear(z_dim + self.n_classes, 2 * width * _QUARTER * _QUARTER),
            nn.BatchNorm1d(2 * width * _QUARTER * _QUARTER),
            nn.ReLU(),
            nn.Unflatten(1, (2 * width, _QUARTER, _QUARTER)),
            nn.ConvTranspose2d(2 * width, width, kernel_size=4, stride=2, padding=1),  # 7 -> 14
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.ConvTranspose2d(width, channels, kernel_size=4, stride=2, padding=1),  # 14 -> 28
            nn.Sigmoid(),
            nn.Flatten(),
        )
        dcgan_init_(self)
        channels_last_(self)

    def forward(self, z: torch.Tensor, y_onehot: torch.Tensor | None = None) -> torch.Tensor:
        if self.n_classes:
            z = torch.cat([z, y_onehot], dim=1)  # conditional: the label joins the noise
        return self.net(z)


class ConvDiscriminator(nn.Module):
    """A conv family's D: `features` (packed image rows -> a flat vector of `feature_dim`), then one score.
    The families differ only in their features (dcgan here, unrolled.py); the packing, the label and the
    head are this one place."""

    def __init__(self, features: nn.Sequential, feature_dim: int, conditional: bool, sigmoid_output: bool, pack: int):
        super().__init__()
        self.n_classes = N_CLASSES if conditional else 0
        self.pack = pack
        self.features = features
        # The label joins the image features before the scoring layer (a conditional D needs it there at
        # the latest; earlier would mean 10 constant feature maps per image).
        head: list[nn.Module] = [nn.Linear(feature_dim + pack * self.n_classes, 1)]
        if sigmoid_output:
            head.append(nn.Sigmoid())
        self.head = nn.Sequential(*head)
        dcgan_init_(self)
        channels_last_(self)

    def forward(self, x: torch.Tensor, y_onehot: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(pack_rows(x, self.pack))
        if self.n_classes:
            h = torch.cat([h, pack_rows(y_onehot, self.pack)], dim=1)
        return self.head(h).squeeze(1)


class Discriminator(ConvDiscriminator):
    def __init__(
        self, width: int, conditional: bool = False, sigmoid_output: bool = True, channels: int = 1, pack: int = 1
    ):
        features = nn.Sequential(
            nn.Unflatten(1, (pack * channels, IMAGE_SIDE, IMAGE_SIDE)),
            nn.Conv2d(pack * channels, width, kernel_size=4, stride=2, padding=1),  # 28 -> 14
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, kernel_size=4, stride=2, padding=1),  # 14 -> 7
            nn.LeakyReLU(0.2),
            nn.Flatten(),
        )
        super().__init__(features, 2 * width * _QUARTER * _QUARTER, conditional, sigmoid_output, pack)

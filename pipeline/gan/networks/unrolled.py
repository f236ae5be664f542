"""The Unrolled-GAN architecture for Stacked MNIST (Metz et al. 2017), as PacGAN's Table 3 trains it.

The layer list is the one in PacGAN's released code (github.com/fjxmlzn/PacGAN,
stacked_MNIST_experiments/unrolled_GAN_experiment/D=0.25G/model.py; D=0.5G differs only in D's widths):

- G: z -> linear to 4x4 with 8·width channels, batch norm, ReLU -> three 3x3 stride-2 transposed convs to
  7x7 (4·width), 14x14 (2·width) and 28x28 (width), each with batch norm and ReLU -> a 3x3 stride-1 conv to
  the image's channels. width 8 gives their 64, 32, 16, 8.
- D: three 3x3 stride-2 convs (28 -> 14 -> 7 -> 4) with width, 2·width and 4·width channels, each
  followed by batch norm and LeakyReLU(0.3), then a linear layer from the 4x4 maps to one logit. width 2
  is their "D = 0.25G" (2, 4, 8 channels), width 4 their "D = 0.5G" (4, 8, 16).

Two departures, neither of which changes what the nets can express:
- G ends in a sigmoid on [0, 1], where theirs ends in tanh on [-1, 1]: pixels are in [0, 1] throughout this
  project, and tanh(a) = 2·sigmoid(2a) - 1. D's first layer is followed by batch norm, which removes any
  affine rescaling of its input, so D sees the same thing either way.
- PyTorch pads a stride-2 convolution symmetrically where TensorFlow's "SAME" pads the bottom and right;
  every feature map has their shape.

Unlike the dcgan family, D has batch norm; the preset passes real and fake through it in separate batches
(`critic_pass: separate`), as their code does, so batch statistics never mix the two kinds. Weights are
drawn from N(0, 0.02) like theirs (DCGAN's initialisation).
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.gan.networks.dcgan import ConvDiscriminator, channels_last_, dcgan_init_
from pipeline.gan.networks.shapes import IMAGE_SIDE, N_CLASSES

_SEED_SIDE = 4  # G's first feature map, and D's last (28 -> 14 -> 7 -> 4)
LEAK = 0.3  # their lrelu(..., leak=0.3)


def _up(c_in: int, c_out: int, output_padding: int) -> list[nn.Module]:
    # kernel 3, stride 2, padding 1: 4 -> 7 with output_padding 0, 7 -> 14 and 14 -> 28 with 1
    return [
        nn.ConvTranspose2d(c_in, c_out, kernel_size=3, stride=2, padding=1, output_padding=output_padding),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    ]


def _down(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.LeakyReLU(LEAK)]


class Generator(nn.Module):
    def __init__(self, z_dim: int, width: int, conditional: bool = False, channels: int = 3):
        super().__init__()
        self.z_dim = z_dim
        self.n_classes = N_CLASSES if conditional else 0
        self.net = nn.Sequential(
            nn.Linear(z_dim + self.n_classes, 8 * width * _SEED_SIDE * _SEED_SIDE),
            nn.Unflatten(1, (8 * width, _SEED_SIDE, _SEED_SIDE)),
            nn.BatchNorm2d(8 * width),
            nn.ReLU(),
            *_up(8 * width, 4 * width, output_padding=0),  # 4 -> 7
            *_up(4 * width, 2 * width, output_padding=1),  # 7 -> 14
            *_up(2 * width, width, output_padding=1),  # 14 -> 28
            nn.Conv2d(width, channels, kernel_size=3, stride=1, padding=1),
            nn.Sigmoid(),
            nn.Flatten(),
        )
        dcgan_init_(self)
        channels_last_(self)

    def forward(self, z: torch.Tensor, y_onehot: torch.Tensor | None = None) -> torch.Tensor:
        if self.n_classes:
            z = torch.cat([z, y_onehot], dim=1)
        return self.net(z)


class Discriminator(ConvDiscriminator):
    def __init__(
        self, width: int, conditional: bool = False, sigmoid_output: bool = True, channels: int = 3, pack: int = 1
    ):
        features = nn.Sequential(
            nn.Unflatten(1, (pack * channels, IMAGE_SIDE, IMAGE_SIDE)),
            *_down(pack * channels, width),  # 28 -> 14
            *_down(width, 2 * width),  # 14 -> 7
            *_down(2 * width, 4 * width),  # 7 -> 4
            nn.Flatten(),
        )
        super().__init__(features, 4 * width * _SEED_SIDE * _SEED_SIDE, conditional, sigmoid_output, pack)

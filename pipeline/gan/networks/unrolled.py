"""The Unrolled-GAN architecture for Stacked MNIST (Metz et al. 2017), as PacGAN's Table 3 trains it.

The layer list is the one in PacGAN's released code (github.com/fjxmlzn/PacGAN,
stacked_MNIST_experiments/unrolled_GAN_experiment/D=0.25G/model.py; D=0.5G differs only in D's widths):

- G: z -> linear to 4x4 with 8·width channels, batch norm, ReLU -> three 3x3 stride-2 transposed convs to
  7x7 (4·width), 14x14 (2·width) and 28x28 (width), each with batch norm and ReLU -> a 3x3 stride-1 conv to
  the image's channels. width 8 gives their 64, 32, 16, 8.
- D: three 3x3 stride-2 convs (28 -> 14 -> 7 -> 4) with width, 2·width and 4·width channels, each
  followed by batch norm and LeakyReLU(0.3), then a linear layer from the 4x4 maps to one logit. width 2
  is their "D = 0.25G" (2, 4, 8 channels), width 4 their "D = 0.5G" (4, 8, 16).

G's last activation is the preset's `output_activation`: tanh, as theirs, with both nets trained on [-1, 1]
pixels (the trainer rescales real images; `sampling` hands out (x + 1) / 2, so every sample the instrument sees is
[0, 1]), or sigmoid on [0, 1]. The two are not equivalent: D's convolutions pad with zeros, which is black on
[0, 1] and mid-grey on [-1, 1].

Two TensorFlow conventions of theirs are kept, so the family computes their functions from their initial
distributions (properties of the family: only PacGAN's Table 3 presets use it):
- "SAME" padding. A stride-2 convolution from an even side pads only the bottom and right (28 -> 14, 14 -> 7),
  and its transpose (7 -> 14, 14 -> 28) crops the full transposed convolution at the bottom and right, where
  PyTorch's padding is symmetric. Rotating a network's input by 180 degrees turns one into the other: a net with
  PyTorch's padding, fed and read out rotated, is their net with every kernel rotated, the 4x4 maps' positions
  permuted and nothing else changed (at the odd sides 7 -> 4, 4 -> 7 and at stride 1 both pad symmetrically).
  Rotated or permuted i.i.d. initial weights are the same distribution, and Adam acts weight by weight, so D
  here rotates its input and G its output: their functions, trained as theirs, on PyTorch's fast kernels
  (tests/test_unrolled.py checks the identity against TensorFlow's padding rule layer by layer).
- Their initialisers (ops.py): linear and transposed-conv weights N(0, 0.02), conv weights the same normal
  truncated at two standard deviations, biases 0, batch-norm scales 1 and offsets 0.

Unlike the dcgan family, D has batch norm; the preset passes real and fake through it in separate batches
(`critic_pass: separate`), as their code does, so batch statistics never mix the two kinds.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.gan.networks.dcgan import ConvDiscriminator, channels_last_, dcgan_init_
from pipeline.gan.networks.shapes import IMAGE_SIDE, N_CLASSES

_SEED_SIDE = 4  # G's first feature map, and D's last (28 -> 14 -> 7 -> 4)
LEAK = 0.3  # their lrelu(..., leak=0.3)


class Rotate180(nn.Module):
    """Turns feature maps (..., H, W) by 180 degrees: TensorFlow's bottom-right SAME padding from PyTorch's
    symmetric one (the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(-2, -1)


def _up(c_in: int, c_out: int, output_padding: int) -> list[nn.Module]:
    # kernel 3, stride 2, padding 1: 4 -> 7 with output_padding 0, 7 -> 14 and 14 -> 28 with 1
    return [
        nn.ConvTranspose2d(c_in, c_out, kernel_size=3, stride=2, padding=1, output_padding=output_padding),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    ]


def _down(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.LeakyReLU(LEAK)]


def released_init_(module: nn.Module) -> None:
    """Their ops.py initialisers (DCGAN's N(0, 0.02), as tensorflow draws it per layer kind)."""
    dcgan_init_(module)  # linear and transposed-conv weights N(0, 0.02), biases 0
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):  # conv2d: tf.truncated_normal_initializer(stddev=0.02)
            nn.init.trunc_normal_(layer.weight, 0.0, 0.02, a=-0.04, b=0.04)
        elif isinstance(layer, nn.BatchNorm2d):  # tf.contrib.layers.batch_norm: scale 1, offset 0
            nn.init.ones_(layer.weight)


OUTPUT_ACTIVATIONS = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


class Generator(nn.Module):
    def __init__(
        self, z_dim: int, width: int, conditional: bool = False, channels: int = 3, output_activation: str = "sigmoid"
    ):
        super().__init__()
        self.z_dim = z_dim
        self.n_classes = N_CLASSES if conditional else 0
        self.output_activation = output_activation  # sampling maps tanh's [-1, 1] to [0, 1]
        self.net = nn.Sequential(
            nn.Linear(z_dim + self.n_classes, 8 * width * _SEED_SIDE * _SEED_SIDE),
            nn.Unflatten(1, (8 * width, _SEED_SIDE, _SEED_SIDE)),
            nn.BatchNorm2d(8 * width),
            nn.ReLU(),
            *_up(8 * width, 4 * width, output_padding=0),  # 4 -> 7
            *_up(4 * width, 2 * width, output_padding=1),  # 7 -> 14
            *_up(2 * width, width, output_padding=1),  # 14 -> 28
            nn.Conv2d(width, channels, kernel_size=3, stride=1, padding=1),
            OUTPUT_ACTIVATIONS[output_activation](),
            Rotate180(),  # TensorFlow's SAME padding (the module docstring)
            nn.Flatten(),
        )
        released_init_(self)
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
            Rotate180(),  # TensorFlow's SAME padding (the module docstring)
            *_down(pack * channels, width),  # 28 -> 14
            *_down(width, 2 * width),  # 14 -> 7
            *_down(2 * width, 4 * width),  # 7 -> 4
            nn.Flatten(),
        )
        super().__init__(features, 4 * width * _SEED_SIDE * _SEED_SIDE, conditional, sigmoid_output, pack)
        released_init_(self)  # after ConvDiscriminator's DCGAN initialisation, which it refines

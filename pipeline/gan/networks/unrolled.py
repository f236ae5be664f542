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
  and its transpose (7 -> 14, 14 -> 28) is the full transposed convolution cropped at the bottom and right;
  PyTorch's symmetric padding would centre every window one pixel up and left. From the odd side 7 (7 -> 4,
  4 -> 7) and at stride 1 both pad symmetrically.
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


class _CropBottomRight(nn.Module):
    """Keeps the top-left side x side of a feature map: TensorFlow's SAME transposed convolution from an odd
    full size (15 -> 14, 29 -> 28) drops the last row and column."""

    def __init__(self, side: int):
        super().__init__()
        self.side = side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., : self.side, : self.side]


def _up(c_in: int, c_out: int, side: int) -> list[nn.Module]:
    """3x3 stride-2 transposed conv to side x side, batch norm, ReLU."""
    if side % 2:  # 4 -> 7: SAME pads the 7 -> 4 convolution 1 on each side, as PyTorch's padding 1
        up = [nn.ConvTranspose2d(c_in, c_out, kernel_size=3, stride=2, padding=1)]
    else:  # 7 -> 15 -> 14, 14 -> 29 -> 28
        up = [nn.ConvTranspose2d(c_in, c_out, kernel_size=3, stride=2), _CropBottomRight(side)]
    return [*up, nn.BatchNorm2d(c_out), nn.ReLU()]


def _down(c_in: int, c_out: int, side_in: int) -> list[nn.Module]:
    """3x3 stride-2 conv from side_in x side_in, batch norm, LeakyReLU(0.3)."""
    if side_in % 2:  # 7 -> 4: one pixel on each side, as PyTorch's padding 1
        down = [nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1)]
    else:  # 28 -> 14, 14 -> 7: one row and column at the bottom and right
        down = [nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(c_in, c_out, kernel_size=3, stride=2)]
    return [*down, nn.BatchNorm2d(c_out), nn.LeakyReLU(LEAK)]


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
            *_up(8 * width, 4 * width, 7),  # 4 -> 7
            *_up(4 * width, 2 * width, 14),  # 7 -> 14
            *_up(2 * width, width, IMAGE_SIDE),  # 14 -> 28
            nn.Conv2d(width, channels, kernel_size=3, stride=1, padding=1),
            OUTPUT_ACTIVATIONS[output_activation](),
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
            *_down(pack * channels, width, IMAGE_SIDE),  # 28 -> 14
            *_down(width, 2 * width, 14),  # 14 -> 7
            *_down(2 * width, 4 * width, 7),  # 7 -> 4
            nn.Flatten(),
        )
        super().__init__(features, 4 * width * _SEED_SIDE * _SEED_SIDE, conditional, sigmoid_output, pack)
        released_init_(self)  # after ConvDiscriminator's DCGAN initialisation, which it refines

"""The variant registry: turn a preset from params.yaml into networks, an objective and optimisers.

A new variant is a new preset in params.yaml, not new control flow: everything that differs between
the presets (objective, optimisers, architecture family and D's size, packing, spectral norm, gradient penalty) is a
field of `VariantParams`, and each is applied here in one line.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from torch import nn

from pipeline.gan.networks import ARCHITECTURES, MNIST_CHANNELS
from pipeline.gan.networks.spectral_norm import spectral_norm_every_layer
from pipeline.gan.objectives import OBJECTIVES, Objective
from pipeline.common.params import VariantParams


@dataclass
class GanParts:
    variant: VariantParams
    objective: Objective
    generator: nn.Module
    critic: nn.Module
    g_opt: torch.optim.Optimizer
    d_opt: torch.optim.Optimizer


def make_optimizer(
    params, variant: VariantParams, device: torch.device, critic: bool = False
) -> torch.optim.Optimizer:
    """G's optimiser, or with `critic` D's: D takes critic_lr / critic_betas where the preset sets them
    (PacGAN's Table 3 code trains D at twice G's rate)."""
    lr = variant.critic_lr if critic and variant.critic_lr is not None else variant.lr
    betas = variant.critic_betas if critic and variant.critic_betas is not None else variant.betas
    if variant.optimizer == "adam":
        # fused=True: one kernel updates every parameter (supported on CPU and CUDA).
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
    # WGAN change 4: RMSProp (no fused kernel exists for it; foreach batches the update instead).
    return torch.optim.RMSprop(params, lr=lr, foreach=True)


def build_generator(variant: VariantParams, channels: int = MNIST_CHANNELS) -> nn.Module:
    family = ARCHITECTURES[variant.arch]
    # a tanh output exists in the unrolled family only (params.py refuses it elsewhere); the others end in a sigmoid
    activation = {"output_activation": variant.output_activation} if variant.arch == "unrolled" else {}
    return family.Generator(variant.z_dim, variant.hidden, conditional=variant.conditional, channels=channels, **activation)


def build_critic(variant: VariantParams, channels: int = MNIST_CHANNELS) -> nn.Module:
    family = ARCHITECTURES[variant.arch]
    critic = family.Discriminator(
        variant.critic_hidden or variant.hidden,  # D sized apart from G (PacGAN's Table 3: a quarter or half)
        variant.conditional,
        sigmoid_output=OBJECTIVES[variant.objective].sigmoid_output,
        channels=channels,
        pack=variant.pack,  # PacGAN: D's input is m samples wide
    )
    return spectral_norm_every_layer(critic) if variant.spectral_norm else critic


def build_networks(
    variant: VariantParams, device: torch.device, seed: int, channels: int = MNIST_CHANNELS
) -> tuple[nn.Module, nn.Module]:
    """G and D for images of `channels` channels (3: Stacked MNIST), initialised from `seed`,
    independently of the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = build_generator(variant, channels)
        critic = build_critic(variant, channels)
    return generator.to(device), critic.to(device)


def build(variant: VariantParams, device: torch.device, seed: int) -> GanParts:
    """Networks initialised from `seed` and their optimisers (one replica, e.g. the benchmark's reference loop)."""
    objective = OBJECTIVES[variant.objective]
    generator, critic = build_networks(variant, device, seed)
    return GanParts(
        variant=variant,
        objective=objective,
        generator=generator,
        critic=critic,
        g_opt=make_optimizer(generator.parameters(), variant, device),
        d_opt=make_optimizer(critic.parameters(), variant, device, critic=True),
    )

"""The variant registry: turn a preset from params.yaml into networks, an objective and optimisers.

A new variant is a new preset in params.yaml, not new control flow: everything that differs between
vanilla, vanilla-ns, WGAN and CGAN is a field of `VariantParams`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.gan.networks import Discriminator, Generator
from pipeline.gan.objectives import OBJECTIVES, Objective
from pipeline.common.params import VariantParams


@dataclass
class GanParts:
    variant: VariantParams
    objective: Objective
    generator: Generator
    critic: Discriminator
    g_opt: torch.optim.Optimizer
    d_opt: torch.optim.Optimizer


def make_optimizer(params, variant: VariantParams, device: torch.device) -> torch.optim.Optimizer:
    if variant.optimizer == "adam":
        # fused=True: one kernel updates every parameter (supported on CPU and CUDA).
        return torch.optim.Adam(params, lr=variant.lr, betas=variant.betas, fused=True)
    # WGAN change 4: RMSProp (no fused kernel exists for it; foreach batches the update instead).
    return torch.optim.RMSprop(params, lr=variant.lr, foreach=True)


def build_generator(variant: VariantParams) -> Generator:
    return Generator(variant.z_dim, variant.hidden, conditional=variant.conditional)


def build_networks(variant: VariantParams, device: torch.device, seed: int) -> tuple[Generator, Discriminator]:
    """G and D initialised from `seed`, independently of the global RNG."""
    objective = OBJECTIVES[variant.objective]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = build_generator(variant)
        critic = Discriminator(variant.hidden, variant.conditional, sigmoid_output=objective.sigmoid_output)
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
        d_opt=make_optimizer(critic.parameters(), variant, device),
    )

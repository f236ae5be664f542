"""GAN objectives: the losses each variant optimises, WGAN's weight clipping and WGAN-GP's gradient penalty.

Each objective takes the discriminator's outputs on real and generated batches. Which output the
discriminator produces (a probability, a logit or an unbounded critic score) is part of the objective.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


# --- minimax, as the seed writes it: logs of the discriminator's sigmoid probabilities ------------
# F.binary_cross_entropy is the seed's PyTorch form: -[y log p + (1 - y) log(1 - p)] on probabilities.
# PyTorch clamps each log at -100, so a saturated discriminator (p rounding to exactly 0 or 1 in
# float32) gives a large finite loss and a vanishing gradient instead of NaN. Taken literally
# (torch.log without the clamp), this preset reached NaN at generator iteration 8,600 of the default
# run on CPU, which is the instability the post's closing tip (BCE-with-logits) avoids.
def _bce_on_probabilities(p: Tensor, target: float) -> Tensor:
    """F.binary_cross_entropy that returns NaN for a NaN probability instead of raising.

    F.binary_cross_entropy refuses inputs outside [0, 1], NaN included. With replicas trained in one
    batch, one diverged replica's NaN would then stop every replica; instead its loss becomes NaN and
    the trainer drops that replica. For finite inputs value and gradient are unchanged: the extra term
    is exactly 0 with a zero gradient.
    """
    nan = p.isnan()
    safe = torch.where(nan, 0.5, p)
    return F.binary_cross_entropy(safe, torch.full_like(safe, target)) + (p - p).mean()


def minimax_d_loss(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """-E[log D(x)] - E[log(1 - D(G(z)))], with D already a probability."""
    return _bce_on_probabilities(d_real, 1.0) + _bce_on_probabilities(d_fake, 0.0)


def minimax_g_loss(d_fake: Tensor) -> Tensor:
    """-E[log D(G(z))]: the post's generator loss (the non-saturating form of the minimax game)."""
    return _bce_on_probabilities(d_fake, 1.0)


# --- the post's closing tip: the same game computed from logits, numerically stable ---------------
def bce_logits_d_loss(real_logit: Tensor, fake_logit: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(
        real_logit, torch.ones_like(real_logit)
    ) + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit))


def bce_logits_g_loss(fake_logit: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(fake_logit, torch.ones_like(fake_logit))


# --- WGAN change 1: no logs, no sigmoid: the critic estimates the Wasserstein distance -------------
def wasserstein_critic_loss(critic_real: Tensor, critic_fake: Tensor) -> Tensor:
    """mean(D(fake)) - mean(D(real)); its negation is the critic's Wasserstein estimate."""
    return critic_fake.mean() - critic_real.mean()


def wasserstein_g_loss(critic_fake: Tensor) -> Tensor:
    return -critic_fake.mean()


# --- WGAN change 2: clip every critic weight to [-c, c] after each critic update ------------------
@torch.no_grad()
def clip_weights_(params: Sequence[Tensor], c: float) -> None:
    """Clamp all tensors in place with two multi-tensor (foreach) kernels instead of a Python loop."""
    torch._foreach_clamp_min_(list(params), -c)
    torch._foreach_clamp_max_(list(params), c)


# --- WGAN-GP: a gradient penalty instead of clipping (Gulrajani et al. 2017, eq. 3 and Algorithm 1) -----
def gradient_penalty(
    critic_fn: Callable[[Tensor, Tensor | None], Tensor],
    real: Tensor,
    fake: Tensor,
    y_onehot: Tensor | None,
    eps: Tensor,
) -> Tensor:
    """mean over the batch of (||grad_x D(x_hat)||_2 - 1)^2 at x_hat = eps·real + (1 - eps)·fake.

    eps ~ U[0, 1) of shape (b, 1) comes from the caller's RNG, so a replica's draws are its own. The
    gradient w.r.t. the interpolates is taken with torch.func.vjp rather than torch.autograd.grad, so the
    penalty also works inside torch.vmap (one batched step for many replicas); the returned value stays
    differentiable w.r.t. the critic's parameters, which is what the critic's update needs.
    """
    interpolates = eps * real + (1 - eps) * fake
    scores, pullback = torch.func.vjp(lambda x: critic_fn(x, y_onehot), interpolates)
    (grad,) = pullback(torch.ones_like(scores))  # each score depends on its own row only
    return ((grad.norm(2, dim=1) - 1) ** 2).mean()


# --- hinge loss (Lim & Ye 2017; the loss of Miyato et al. 2018's SN-GANs, §4 eq. 17) ---------------------
def hinge_d_loss(real_score: Tensor, fake_score: Tensor) -> Tensor:
    """E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))]: only scores on the wrong side of +-1 cost anything."""
    return F.relu(1 - real_score).mean() + F.relu(1 + fake_score).mean()


def hinge_g_loss(fake_score: Tensor) -> Tensor:
    return -fake_score.mean()


@dataclass(frozen=True)
class Objective:
    name: str
    sigmoid_output: bool  # does D end in a sigmoid?
    d_loss: Callable[[Tensor, Tensor], Tensor]
    g_loss: Callable[[Tensor], Tensor]
    reports_wasserstein: bool = False  # -d_loss is a W-distance estimate worth reporting


OBJECTIVES: dict[str, Objective] = {
    "minimax": Objective("minimax", True, minimax_d_loss, minimax_g_loss),
    "bce_logits": Objective("bce_logits", False, bce_logits_d_loss, bce_logits_g_loss),
    "wasserstein": Objective(
        "wasserstein", False, wasserstein_critic_loss, wasserstein_g_loss, reports_wasserstein=True
    ),
    "hinge": Objective("hinge", False, hinge_d_loss, hinge_g_loss),
}

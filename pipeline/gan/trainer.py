"""The GAN training loop, fast by construction.

- The whole training set lives on the training device; batches are drawn by on-device random indexing
  (one `randint` per generator iteration covers all critic batches), so there is no DataLoader,
  no collation and no host-to-device copy in the loop.
- Losses are summed into device tensors and read once per `log_every` iterations: the hot loop never
  calls `.item()`, so a GPU never waits for the host.
- The generator runs under `no_grad` during critic steps, and the critic's weights do not collect
  gradients during the generator step: both are work a plain loop does and throws away.
- Adam is fused and RMSProp uses foreach kernels; WGAN weight clipping is a foreach clamp.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from pipeline.gan.networks import N_CLASSES
from pipeline.gan.objectives import clip_weights_, gradient_penalty
from pipeline.gan.variants import GanParts


class NonFiniteTraining(Exception):
    """A loss or a parameter is NaN or Inf."""

    def __init__(self, step: int, what: str):
        super().__init__(f"{what} became NaN/Inf by generator iteration {step}")
        self.step, self.what = step, what


class Trainer:
    """Owns the networks, optimisers, on-device data and the training RNG.

    `advance(n)` runs n generator iterations; `read_losses()` is the only host synchronisation.
    `state_dict()` captures everything needed to resume bit-identically on the same device.
    """

    def __init__(self, parts: GanParts, images: torch.Tensor, labels: torch.Tensor, seed: int, precision: str = "fp32"):
        self.parts = parts
        self.images = images  # (N, 784) float in [0, 1], on the training device
        self.labels = labels  # (N,) int64, on the training device
        self.device = images.device
        self.rng = torch.Generator(device=self.device)
        self.rng.manual_seed(seed)
        self.step = 0
        self._onehot = torch.eye(N_CLASSES, device=self.device)
        self._critic_params = list(parts.critic.parameters())
        self.precision = precision
        self._zero_sums()

    def _autocast(self):
        # bf16 matmuls with fp32 master weights, fp32 losses and fp32 optimiser state.
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    # ------------------------------------------------------------------ hot loop
    def _zero_sums(self) -> None:
        self._d_sum = torch.zeros((), device=self.device)
        self._g_sum = torch.zeros((), device=self.device)
        self._penalty_sum = torch.zeros((), device=self.device)
        self._n = 0

    def _labels_onehot(self, idx: torch.Tensor) -> torch.Tensor | None:
        return self._onehot[self.labels[idx]] if self.parts.variant.conditional else None

    def _iteration(self) -> None:
        p, v = self.parts, self.parts.variant
        G, D, obj = p.generator, p.critic, p.objective
        b, k = v.batch_size, v.n_critic
        # One draw covers all k critic batches plus the generator step's labels (WGAN change 3: k critic
        # steps per generator step).
        idx = torch.randint(self.images.shape[0], ((k + 1) * b,), device=self.device, generator=self.rng)
        z = torch.randn((k + 1) * b, v.z_dim, device=self.device, generator=self.rng)
        y = self._labels_onehot(idx)
        real = self.images[idx[: k * b]]
        # WGAN-GP: where between each real and fake image the penalty is taken, from this trainer's RNG.
        lam = v.gradient_penalty
        eps = None if lam is None else torch.rand(k * b, 1, device=self.device, generator=self.rng)
        # G does not change during the critic steps, so all k fake batches come from one forward pass.
        with torch.no_grad(), self._autocast():
            fake = G(z[: k * b], None if y is None else y[: k * b])
        for i in range(k):
            sl = slice(i * b, (i + 1) * b)
            y_i = None if y is None else y[sl]
            with self._autocast():
                # Real and fake go through D as one batch: one larger matmul instead of two.
                both = D(torch.cat([real[sl], fake[sl]]), None if y_i is None else torch.cat([y_i, y_i]))
                d_real, d_fake = both.float().chunk(2)  # halves, also when D scores packs of samples
                d_loss = obj.d_loss(d_real, d_fake)
                if lam is not None:
                    penalty = gradient_penalty(D, real[sl], fake[sl], y_i, eps[sl])
                    d_loss = d_loss + lam * penalty
                    self._penalty_sum += penalty.detach()
            p.d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            p.d_opt.step()
            if v.clip is not None:
                clip_weights_(self._critic_params, v.clip)  # WGAN change 2
            self._d_sum += d_loss.detach()
        sl = slice(k * b, (k + 1) * b)
        y_g = None if y is None else y[sl]
        D.requires_grad_(False)  # gradients flow through D to G, but D's own weight grads are not needed
        with self._autocast():
            g_loss = obj.g_loss(D(G(z[sl], y_g), y_g).float())
        p.g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        p.g_opt.step()
        D.requires_grad_(True)
        self._g_sum += g_loss.detach()

    def advance(self, n: int) -> None:
        self.parts.generator.train()
        self.parts.critic.train()
        for _ in range(n):
            self._iteration()
        self.step += n
        self._n += n

    # ------------------------------------------------------------------ readings
    def read_losses(self) -> dict[str, float]:
        """Mean losses since the last reading; raises NonFiniteTraining on NaN/Inf (one host sync)."""
        n = max(self._n, 1)
        k = self.parts.variant.n_critic
        params = [*self.parts.generator.parameters(), *self._critic_params]
        finite_params = torch.stack([q.detach().isfinite().all() for q in params]).all()
        d_loss, g_loss, penalty, params_ok = torch.stack(
            [self._d_sum / (n * k), self._g_sum / n, self._penalty_sum / (n * k), finite_params.float()]
        ).tolist()
        self._zero_sums()
        for name, value in (("the critic/discriminator loss", d_loss), ("the generator loss", g_loss)):
            if value != value or value in (float("inf"), float("-inf")):
                raise NonFiniteTraining(self.step, name)
        if not params_ok:
            raise NonFiniteTraining(self.step, "a network parameter")
        losses = {"d_loss": d_loss, "g_loss": g_loss}
        lam = self.parts.variant.gradient_penalty
        if lam is not None:
            losses["gradient_penalty"] = penalty
        if self.parts.objective.reports_wasserstein:
            # the critic's estimate of the Wasserstein distance: its loss without the penalty, negated
            losses["w_estimate"] = -(d_loss - (0.0 if lam is None else lam * penalty))
        return losses

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        p = self.parts
        return {
            "step": self.step,
            "generator": p.generator.state_dict(),
            "critic": p.critic.state_dict(),
            "g_opt": p.g_opt.state_dict(),
            "d_opt": p.d_opt.state_dict(),
            "rng": self.rng.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        p = self.parts
        p.generator.load_state_dict(state["generator"])
        p.critic.load_state_dict(state["critic"])
        p.g_opt.load_state_dict(state["g_opt"])
        p.d_opt.load_state_dict(state["d_opt"])
        self.rng.set_state(state["rng"])
        self.step = state["step"]
        self._zero_sums()


@dataclass
class Schedule:
    iterations: int
    log_every: int
    checkpoint_every: int
    sample_every: int
    eval_every: int


Hook = Callable[[int], None]


@dataclass
class Hooks:
    """What the caller does at each reading; the trainer itself never touches files or MLflow."""

    on_log: Callable[[int, dict[str, float]], None] = lambda step, losses: None
    on_eval: Hook = lambda step: None
    on_sample: Hook = lambda step: None
    on_checkpoint: Hook = lambda step: None


def fit(trainer: Trainer, schedule: Schedule, hooks: Hooks) -> None:
    """Advance to `schedule.iterations`, calling the hooks at log boundaries (and at the end)."""
    s = schedule
    while trainer.step < s.iterations:
        window = min(s.log_every - trainer.step % s.log_every, s.iterations - trainer.step)
        trainer.advance(window)
        step, last = trainer.step, trainer.step == s.iterations
        hooks.on_log(step, trainer.read_losses())  # raises NonFiniteTraining before any checkpoint
        if step % s.eval_every == 0 or last:
            hooks.on_eval(step)
        if step % s.sample_every == 0 or last:
            hooks.on_sample(step)
        if step % s.checkpoint_every == 0 and not last:
            hooks.on_checkpoint(step)

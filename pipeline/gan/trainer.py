"""The GAN training loop for R replicas of one variant, side by side in one process, fast by construction.

- Replicas are stacked (pipeline/gan/replica_stack.py): one batched forward/backward and one optimiser
  step serve all R networks, and nothing mixes replicas, so replica r's numbers do not depend on R.
- Replica r draws its batches and noise from its own generator, seeded with its replica seed, so it is
  the same training whether it runs alone or next to others.
- The whole training set lives on the training device; batches are drawn by on-device random indexing
  (one `randint` per replica and generator iteration covers all critic batches): no DataLoader, no
  collation and no host-to-device copy in the loop.
- Losses are summed into device tensors and read once per `log_every` iterations: the hot loop never
  calls `.item()`, so a GPU never waits for the host.
- The generator runs under `no_grad` during critic steps, and the critic's weights are detached during
  the generator step: both are work a plain loop does and throws away.
- Adam is fused and RMSProp uses foreach kernels over the stacked tensors; WGAN clipping is a foreach clamp.
- A replica whose losses or weights become NaN/Inf is recorded as diverged and dropped from the stack;
  the others carry on. Only when every replica has diverged does training stop with NonFiniteTraining.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from pipeline.common.params import VariantParams
from pipeline.gan.critic_schedule import critic_steps
from pipeline.gan.networks import IMAGE_DIM, N_CLASSES
from pipeline.gan.objectives import OBJECTIVES, clip_weights_, gradient_penalty
from pipeline.gan.replica_stack import ReplicaStack, map_replicas
from pipeline.gan.variants import build_networks, make_optimizer


class NonFiniteTraining(Exception):
    """Every replica's loss or parameters became NaN or Inf."""

    def __init__(self, step: int, what: str):
        super().__init__(f"{what} became NaN/Inf by generator iteration {step}")
        self.step, self.what = step, what


@dataclass(frozen=True)
class Divergence:
    step: int  # the reading at which it was seen (NaN/Inf appeared within the log_every iterations before)
    what: str

    def __str__(self) -> str:
        return f"{self.what} became NaN/Inf by generator iteration {self.step}"


class Trainer:
    """Owns the stacked networks, optimisers, on-device data and one RNG per replica.

    `advance(n)` runs n generator iterations of every live replica; `read_losses()` is the only host
    synchronisation. `state_dict()` captures everything needed to resume bit-identically on the same
    device. `batched=False` runs the same computation with a loop over replicas (for networks vmap
    cannot batch, and as the reference in tests).
    """

    def __init__(
        self,
        variant: VariantParams,
        images: torch.Tensor,
        labels: torch.Tensor,
        seeds: list[int],
        precision: str = "fp32",
        batched: bool = True,
    ):
        self.variant = variant
        self.objective = OBJECTIVES[variant.objective]
        self.images = images  # (N, 784) float in [0, 1], on the training device
        self.labels = labels  # (N,) int64, on the training device
        self.device = images.device
        self.seeds = list(seeds)
        self.precision = precision
        self.batched = batched
        channels = images.shape[1] // IMAGE_DIM  # 3 for Stacked MNIST's rows
        nets = [build_networks(variant, self.device, s, channels) for s in self.seeds]
        self.generator = ReplicaStack([g for g, _ in nets])
        self.critic = ReplicaStack([d for _, d in nets])
        self.rngs = [torch.Generator(device=self.device).manual_seed(s) for s in self.seeds]
        self.live: list[int] = list(range(len(self.seeds)))  # replica index of each stacked row
        self.diverged: dict[int, Divergence] = {}
        self.step = 0
        self._onehot = torch.eye(N_CLASSES, device=self.device)
        self._make_optimizers()
        self._zero_sums()

    def _make_optimizers(self) -> None:
        self.g_opt = make_optimizer(self.generator.parameters(), self.variant, self.device)
        self.d_opt = make_optimizer(self.critic.parameters(), self.variant, self.device, critic=True)

    def _autocast(self):
        # bf16 matmuls with fp32 master weights, fp32 losses and fp32 optimiser state.
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    # ------------------------------------------------------------------ hot loop
    def _zero_sums(self) -> None:
        self._d_sum = torch.zeros(len(self.live), device=self.device)
        self._g_sum = torch.zeros(len(self.live), device=self.device)
        self._penalty_sum = torch.zeros(len(self.live), device=self.device)
        self._n = 0
        self._critic_steps = 0  # since the last reading: the schedule may vary them per generator step

    def _draw(self, n: int, n_eps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Each live replica's batch indices, noise and (WGAN-GP) interpolation weights, from its own RNG."""
        size, z_dim = self.images.shape[0], self.variant.z_dim
        # an image's index: one row number, or (Stacked MNIST drawn afresh) one MNIST row per channel
        index_shape = (n, *getattr(self.images, "index_shape", ()))
        idx, z, eps = [], [], []
        for r in self.live:
            rng = self.rngs[r]
            idx.append(torch.randint(size, index_shape, device=self.device, generator=rng))
            z.append(torch.randn(n, z_dim, device=self.device, generator=rng))
            if n_eps:
                eps.append(torch.rand(n_eps, 1, device=self.device, generator=rng))
        return torch.stack(idx), torch.stack(z), torch.stack(eps) if n_eps else None

    def _iteration(self, generator_step: int) -> None:
        v, obj = self.variant, self.objective
        G, D = self.generator, self.critic
        b, k = v.batch_size, critic_steps(v.critic_schedule, v.n_critic, generator_step)
        # One draw covers all k critic batches plus the generator step's labels (WGAN change 3: k critic
        # steps per generator step).
        lam = v.gradient_penalty  # WGAN-GP's lambda, or None
        separate = v.critic_pass == "separate"
        idx, z, eps = self._draw((k + 1) * b, 0 if lam is None else k * b)
        y = self._onehot[self.labels[idx]] if v.conditional else None  # (R, (k+1)b, 10)
        real = self.images[idx[:, : k * b]]  # (R, kb, 784)
        if v.output_activation == "tanh":  # both nets on G's [-1, 1] (PacGAN's Table 3 code)
            real = real.mul(2.0).sub_(1.0)
        # the batch-norm batches of G: the whole batch, or one per position of a pack (generator_pack_batches)
        positions = v.pack if v.generator_pack_batches == "per-position" else 1

        def generate(gp, gb, z, y):
            return _generate(G.bind(gp, gb), z, y, b, positions)

        # G does not change during the critic steps, so all k fake batches come from one forward pass.
        with torch.no_grad(), self._autocast():
            fake = map_replicas(generate, self.batched, G.params, G.buffers, z[:, : k * b], _part(y, 0, k * b))

        def critic_loss(dp, db, real, fake, y, eps):
            critic = D.bind(dp, db)
            if separate:  # batch norm in D sees one kind per batch (critic_pass: separate)
                d_real, d_fake = critic(real, y).float(), critic(fake, y).float()
            else:  # one batch: one larger matmul instead of two
                both = critic(torch.cat([real, fake]), None if y is None else torch.cat([y, y]))
                d_real, d_fake = both.float().chunk(2)  # halves, also when D scores packs of samples
            loss = obj.d_loss(d_real, d_fake)
            if lam is None:
                return torch.stack([loss, torch.zeros_like(loss)])
            penalty = gradient_penalty(critic, real, fake, y, eps)
            return torch.stack([loss + lam * penalty, penalty])

        for i in range(k):
            lo, hi = i * b, (i + 1) * b
            with self._autocast():
                out = map_replicas(
                    critic_loss, self.batched, D.params, D.buffers, real[:, lo:hi], fake[:, lo:hi],
                    _part(y, lo, hi), _part(eps, lo, hi),
                )
            d_loss = out[:, 0]
            self.d_opt.zero_grad(set_to_none=True)
            # Replicas share no weights, so the gradient of the sum is each replica's own gradient.
            d_loss.sum().backward()
            self.d_opt.step()
            if v.clip is not None:
                clip_weights_(D.parameters(), v.clip)  # WGAN change 2
            self._d_sum += d_loss.detach()
            self._penalty_sum += out[:, 1].detach()
        self._critic_steps += k

        def generator_loss(gp, gb, dp, db, z, y):
            return obj.g_loss(D.bind(dp, db)(generate(gp, gb, z, y), y).float())

        # Gradients flow through D to G, but D's own weight gradients are not needed: D's weights are detached.
        d_frozen = {name: p.detach() for name, p in D.params.items()}
        # The G step's noise: its own, or the last D step's again (generator_step_noise: critic-step)
        lo = (k - 1) * b if v.generator_step_noise == "critic-step" else k * b
        with self._autocast():
            g_loss = map_replicas(
                generator_loss, self.batched, G.params, G.buffers, d_frozen, D.buffers,
                z[:, lo : lo + b], _part(y, lo, lo + b),
            )
        self.g_opt.zero_grad(set_to_none=True)
        g_loss.sum().backward()
        self.g_opt.step()
        self._g_sum += g_loss.detach()

    def advance(self, n: int) -> None:
        self.generator.train()
        self.critic.train()
        for i in range(n):
            self._iteration(self.step + i)
        self.step += n
        self._n += n

    # ------------------------------------------------------------------ readings
    def read_losses(self) -> dict[int, dict[str, float]]:
        """Each live replica's mean losses since the last reading, keyed by replica index (one host sync).

        A replica whose loss or weights are NaN/Inf is recorded in `diverged` and dropped; raises
        NonFiniteTraining when no replica is left.
        """
        n = max(self._n, 1)
        critic_n = max(self._critic_steps, 1)
        finite = torch.stack(
            [p.detach().isfinite().flatten(1).all(1) for p in [*self.generator.parameters(), *self.critic.parameters()]]
        ).all(0)
        d_mean, g_mean, penalty_mean, params_ok = torch.stack(
            [self._d_sum / critic_n, self._g_sum / n, self._penalty_sum / critic_n, finite.float()]
        ).tolist()
        lam = self.variant.gradient_penalty
        self._zero_sums()
        losses: dict[int, dict[str, float]] = {}
        keep: list[int] = []
        for row, r in enumerate(self.live):
            d_loss, g_loss = d_mean[row], g_mean[row]
            what = None
            if not _finite(d_loss):
                what = "the critic/discriminator loss"
            elif not _finite(g_loss):
                what = "the generator loss"
            elif not params_ok[row]:
                what = "a network parameter"
            if what is not None:
                self.diverged[r] = Divergence(self.step, what)
                continue
            keep.append(row)
            losses[r] = {"d_loss": d_loss, "g_loss": g_loss}
            if lam is not None:
                losses[r]["gradient_penalty"] = penalty_mean[row]
            if self.objective.reports_wasserstein:
                # the critic's estimate of the Wasserstein distance: its loss without the penalty, negated
                losses[r]["w_estimate"] = -(d_loss - (0.0 if lam is None else lam * penalty_mean[row]))
        if not keep:
            first = self.diverged[self.live[0]]
            self.live = []
            raise NonFiniteTraining(first.step, first.what)
        if len(keep) < len(self.live):
            self._keep_rows(keep)
        return losses

    def _keep_rows(self, rows: list[int]) -> None:
        """Drop the other rows from networks, optimiser state and sums; the rest continue unchanged."""
        if rows == list(range(len(self.live))):
            # Nothing to drop (a resume with every replica live): selecting would copy the stacked conv weights
            # into the default layout from their channels-last one, and the resumed training would round differently.
            return
        g_state, d_state = self.g_opt.state_dict(), self.d_opt.state_dict()
        self.generator.select(rows)
        self.critic.select(rows)
        self.live = [self.live[row] for row in rows]
        self._make_optimizers()
        index = torch.tensor(rows)
        self.g_opt.load_state_dict(_select_state(g_state, index))
        self.d_opt.load_state_dict(_select_state(d_state, index))
        self._zero_sums()

    # ------------------------------------------------------------------ results
    def generators(self) -> list[torch.nn.Module | None]:
        """One standalone generator per replica index (None for a diverged replica)."""
        rows = {r: row for row, r in enumerate(self.live)}
        return [self.generator.module(rows[r]) if r in rows else None for r in range(len(self.seeds))]

    def replica_generator(self, r: int) -> torch.nn.Module:
        return self.generator.module(self.live.index(r))

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "seeds": self.seeds,
            "live": self.live,
            "diverged": {r: (d.step, d.what) for r, d in self.diverged.items()},
            "generator": self.generator.state_dict(),
            "critic": self.critic.state_dict(),
            "g_opt": self.g_opt.state_dict(),
            "d_opt": self.d_opt.state_dict(),
            "rngs": {r: self.rngs[r].get_state() for r in self.live},
        }

    def load_state_dict(self, state: dict) -> None:
        if list(state["seeds"]) != self.seeds:
            raise ValueError("the checkpoint belongs to other replica seeds")
        self._keep_rows([self.live.index(r) for r in state["live"]])
        self.diverged = {int(r): Divergence(step, what) for r, (step, what) in state["diverged"].items()}
        self.generator.load_state_dict(state["generator"])
        self.critic.load_state_dict(state["critic"])
        self.g_opt.load_state_dict(state["g_opt"])
        self.d_opt.load_state_dict(state["d_opt"])
        for r, rng_state in state["rngs"].items():
            self.rngs[int(r)].set_state(rng_state)
        self.step = state["step"]
        self._zero_sums()


def _generate(generator: Callable, z: torch.Tensor, y: torch.Tensor | None, batch: int, positions: int) -> torch.Tensor:
    """G's rows for noise z (n, z_dim), n a multiple of the batch. positions 1: one call. positions m: PacGAN's
    released code, which calls G once per position of a pack on batch / m samples, so batch norm normalises each
    call on its own; row k·m + j (position j of pack k, as pack_rows reads them) is sample k of call j."""
    if positions == 1:
        return generator(z, y)
    per_call = batch // positions
    z = z.reshape(-1, per_call, positions, z.shape[-1])  # (batches, packs, positions, z_dim): row k·m + j at [., k, j]
    y = None if y is None else y.reshape(-1, per_call, positions, y.shape[-1])
    rows = [
        torch.stack([generator(z[i, :, j], None if y is None else y[i, :, j]) for j in range(positions)], dim=1)
        for i in range(z.shape[0])
    ]
    return torch.cat(rows).reshape(-1, rows[0].shape[-1])  # (batches·packs·positions, pixels)


def _part(y: torch.Tensor | None, lo: int, hi: int) -> torch.Tensor | None:
    return None if y is None else y[:, lo:hi]


def _finite(x: float) -> bool:
    return x == x and x not in (float("inf"), float("-inf"))


def _select_state(opt_state: dict, index: torch.Tensor) -> dict:
    """An optimiser state_dict with the per-replica tensors (leading axis R) cut to `index` rows."""
    state = {
        pid: {
            key: value.index_select(0, index.to(value.device)) if torch.is_tensor(value) and value.dim() > 0 else value
            for key, value in entry.items()
        }
        for pid, entry in opt_state["state"].items()
    }
    return {"state": state, "param_groups": opt_state["param_groups"]}


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

    on_log: Callable[[int, dict[int, dict[str, float]]], None] = lambda step, losses: None
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
        hooks.on_log(step, trainer.read_losses())  # drops diverged replicas before any checkpoint
        if step % s.eval_every == 0 or last:
            hooks.on_eval(step)
        if step % s.sample_every == 0 or last:
            hooks.on_sample(step)
        if step % s.checkpoint_every == 0 and not last:
            hooks.on_checkpoint(step)

"""The seed's math, pinned: loss signs, BCE equivalence, clipping, n_critic, CGAN conditioning."""

import numpy as np
import pytest
import torch

from pipeline.gan import objectives
from pipeline.gan.networks import N_CLASSES, Discriminator, Generator
from pipeline.common.params import VariantParams
from pipeline.gan.trainer import Trainer
from pipeline.gan.variants import build
from tests.conftest import repo_params


def variant(name: str, **changes) -> VariantParams:
    return VariantParams.model_validate({**repo_params()["variants"][name], **changes})


def toy_data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 784, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_wasserstein_losses_have_the_seed_signs():
    real, fake = torch.tensor([2.0, 4.0]), torch.tensor([1.0, -1.0])
    # D_loss = mean(D(fake)) - mean(D(real)); G_loss = -mean(D(fake))
    assert objectives.wasserstein_critic_loss(real, fake).item() == pytest.approx(0.0 - 3.0)
    assert objectives.wasserstein_g_loss(fake).item() == pytest.approx(-0.0)
    assert objectives.wasserstein_g_loss(torch.tensor([0.5, 1.5])).item() == pytest.approx(-1.0)


def test_a_critic_step_widens_the_gap_between_real_and_fake_scores():
    torch.manual_seed(0)
    critic = Discriminator(16, sigmoid_output=False)
    real, fake = torch.rand(64, 784), torch.rand(64, 784) * 0.2
    opt = torch.optim.RMSprop(critic.parameters(), lr=1e-3)
    gap_before = (critic(real).mean() - critic(fake).mean()).item()
    for _ in range(5):
        loss = objectives.wasserstein_critic_loss(critic(real), critic(fake))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (critic(real).mean() - critic(fake).mean()).item() > gap_before


def test_wgan_critic_has_no_sigmoid_and_vanilla_discriminator_has_one():
    w = build(variant("wgan"), torch.device("cpu"), 0)
    v = build(variant("vanilla"), torch.device("cpu"), 0)
    assert not isinstance(w.critic.net[-1], torch.nn.Sigmoid)
    assert isinstance(v.critic.net[-1], torch.nn.Sigmoid)
    assert isinstance(w.d_opt, torch.optim.RMSprop) and w.d_opt.defaults["lr"] == pytest.approx(5e-5)
    assert isinstance(v.d_opt, torch.optim.Adam)


def test_bce_with_logits_equals_the_sigmoid_log_form_where_both_are_finite():
    logits_real = torch.linspace(-12, 12, 101, dtype=torch.float64)
    logits_fake = torch.linspace(10, -10, 101, dtype=torch.float64)
    d_log = objectives.minimax_d_loss(torch.sigmoid(logits_real), torch.sigmoid(logits_fake))
    d_bce = objectives.bce_logits_d_loss(logits_real, logits_fake)
    g_log = objectives.minimax_g_loss(torch.sigmoid(logits_fake))
    g_bce = objectives.bce_logits_g_loss(logits_fake)
    assert torch.isfinite(d_log) and torch.isfinite(g_log)
    torch.testing.assert_close(d_bce, d_log, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(g_bce, g_log, rtol=1e-9, atol=1e-9)
    # Where the sigmoid saturates in float32 the probability form breaks down (PyTorch clamps its logs
    # at -100, so the value is wrong and the gradient vanishes); the logit form stays exact. This is
    # why the post recommends it.
    extreme = torch.tensor([40.0], requires_grad=True)
    exact = objectives.bce_logits_d_loss(-extreme, extreme)
    assert exact.item() == pytest.approx(80.0)
    saturated = objectives.minimax_d_loss(torch.sigmoid(-extreme), torch.sigmoid(extreme))
    assert torch.isfinite(saturated) and abs(saturated.item() - 80.0) > 10
    (saturated_grad,) = torch.autograd.grad(saturated, extreme)
    (exact_grad,) = torch.autograd.grad(exact, extreme)
    assert saturated_grad.abs().item() < 1e-3 * exact_grad.abs().item()


def test_clipping_bounds_hold_after_every_critic_step_and_n_critic_counts():
    images, labels = toy_data()
    v = variant("wgan", batch_size=16, n_critic=5, lr=0.05)  # a large lr would push weights far out
    # The per-replica loop runs the critic on plain tensors, so a hook can read the weights it sees.
    trainer = Trainer(v, images, labels, [0], batched=False)
    seen_max_abs = []
    trainer.critic.base.register_forward_pre_hook(
        lambda module, args: seen_max_abs.append(max(p.abs().max().item() for p in module.parameters()))
    )
    d_steps, g_steps = [], []
    trainer.d_opt.register_step_post_hook(lambda opt, a, k: d_steps.append(1))
    trainer.g_opt.register_step_post_hook(lambda opt, a, k: g_steps.append(1))
    trainer.advance(7)
    assert len(d_steps) == 5 * 7 and len(g_steps) == 7
    # The first forward sees the Xavier init (clipping happens after a critic update, as in the seed);
    # every later forward sees weights within [-c, c].
    assert seen_max_abs[0] > v.clip
    assert max(seen_max_abs[1:]) <= v.clip + 1e-7
    # The batched trainer clips every replica's stacked weights the same way.
    batched = Trainer(v, images, labels, [0, 1, 2])
    batched.advance(3)
    assert all(p.abs().max().item() <= v.clip + 1e-7 for p in batched.critic.parameters())


def test_wgan_schedule_counts_the_reference_codes_critic_steps():
    """wgan-schedule trains the critic 100 times before each of the first 25 generator steps and before
    every 500th, else n_critic (5), batched across replicas; wgan keeps 5 throughout."""
    images, labels = toy_data()
    v = variant("wgan-schedule", batch_size=16, hidden=32)
    assert (v.critic_schedule, v.n_critic) == ("wgan-reference", 5)
    trainer = Trainer(v, images, labels, [0, 1])  # batched: one optimiser step serves both replicas
    steps: list[str] = []
    trainer.d_opt.register_step_post_hook(lambda opt, a, k: steps.append("d"))
    trainer.g_opt.register_step_post_hook(lambda opt, a, k: steps.append("g"))

    def critic_runs() -> list[int]:
        """Critic steps before each generator step since the last call."""
        runs, count = [], 0
        for s in steps:
            if s == "d":
                count += 1
            else:
                runs.append(count)
                count = 0
        steps.clear()
        return runs

    trainer.advance(27)
    assert critic_runs() == [100] * 25 + [5, 5]
    losses = trainer.read_losses()  # means over the varying critic steps stay finite and per replica
    assert sorted(losses) == [0, 1] and all(np.isfinite(l["d_loss"]) for l in losses.values())
    trainer.step = 498  # as after a resume from a checkpoint at generator step 498
    trainer.advance(4)
    assert critic_runs() == [5, 5, 100, 5]  # generator steps 498, 499, 500, 501
    constant = Trainer(variant("wgan", batch_size=16, hidden=32), images, labels, [0, 1])
    constant.d_opt.register_step_post_hook(lambda opt, a, k: steps.append("d"))
    constant.g_opt.register_step_post_hook(lambda opt, a, k: steps.append("g"))
    constant.advance(3)
    assert critic_runs() == [5, 5, 5]


def test_clip_weights_is_a_foreach_clamp_to_the_bound():
    ps = [torch.tensor([-1.0, 0.005, 2.0]), torch.tensor([[0.3, -0.001]])]
    objectives.clip_weights_(ps, 0.01)
    assert ps[0].tolist() == pytest.approx([-0.01, 0.005, 0.01])
    assert ps[1].tolist() == [pytest.approx([0.01, -0.001])]


def test_cgan_inputs_carry_the_label():
    g, d = Generator(100, 32, conditional=True), Discriminator(32, conditional=True)
    assert g.net[0].in_features == 100 + N_CLASSES and d.net[0].in_features == 784 + N_CLASSES
    z = torch.randn(4, 100)
    ones = torch.nn.functional.one_hot(torch.tensor([1, 1, 1, 1]), 10).float()
    sevens = torch.nn.functional.one_hot(torch.tensor([7, 7, 7, 7]), 10).float()
    assert not torch.allclose(g(z, ones), g(z, sevens))


def test_cgan_training_feeds_each_real_image_with_its_own_label():
    images, labels = toy_data(n=64)
    trainer = Trainer(variant("cgan", batch_size=8), images, labels, [0], batched=False)
    captured = []
    trainer.critic.base.net.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach().clone()))
    trainer.advance(3)
    critic_inputs = captured[0]  # the first critic forward: 8 real rows, then 8 fake rows
    pixels, onehots = critic_inputs[:, :784], critic_inputs[:, 784:]
    assert torch.all(onehots.sum(1) == 1) and set(onehots.unique().tolist()) == {0.0, 1.0}
    for row in range(8):
        matches = torch.nonzero(torch.all(images == pixels[row], dim=1)).flatten()
        assert len(matches) == 1
        assert labels[matches[0]].item() == onehots[row].argmax().item()
    # The fake rows were generated for the same labels as the real rows they are judged against.
    torch.testing.assert_close(onehots[8:], onehots[:8])


@pytest.mark.parametrize("name", ["vanilla", "vanilla-ns", "wgan", "cgan"])
def test_every_preset_trains_and_reports_finite_losses(name):
    images, labels = toy_data()
    trainer = Trainer(variant(name, batch_size=16), images, labels, [0, 1])
    trainer.advance(5)
    by_replica = trainer.read_losses()
    assert sorted(by_replica) == [0, 1] and not trainer.diverged
    for losses in by_replica.values():
        assert all(np.isfinite(v) for v in losses.values())
        assert ("w_estimate" in losses) == (name == "wgan")

"""The mechanisms the field's presets add, pinned: gradient penalty, packing, spectral norm, hinge, DCGAN shapes.

Also that the networks run the way the replica trainer runs them (torch.func.functional_call over
stack_module_state params and buffers, inside torch.vmap, in train mode), and that every new preset
trains through the train stage's code path.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import yaml
from torch.func import functional_call, grad, stack_module_state, vmap

from pipeline.common.params import VariantParams
from pipeline.gan import objectives
from pipeline.gan.networks import dcgan, mlp
from pipeline.gan.networks.spectral_norm import normalised_weights
from pipeline.gan.trainer import Trainer
from pipeline.gan.variants import build, build_critic, build_generator
from tests.conftest import repo_params, tiny_params

NEW_PRESETS = ["wgan-gp", "cwgan-gp", "pacgan2", "sngan", "dcgan", "dcgan-wgan-gp"]


def variant(name: str, **changes) -> VariantParams:
    return VariantParams.model_validate({**repo_params()["variants"][name], **changes})


def toy_data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 784, generator=g), torch.randint(0, 10, (n,), generator=g)


def onehot(n: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.arange(n) % 10, 10).float()


# --- gradient penalty ---------------------------------------------------------------------------------
def test_the_penalty_of_a_linear_critic_is_its_weight_norm_minus_one_squared():
    # D(x) = w.x + b has gradient w at every point, so the penalty is (||w|| - 1)^2 whatever the interpolates.
    critic = torch.nn.Linear(784, 1)
    with torch.no_grad():
        critic.weight.fill_(0.1)  # ||w|| = 0.1 * 28 = 2.8
    real, fake = toy_data(8)[0], toy_data(8, seed=1)[0]
    penalty = objectives.gradient_penalty(lambda x, y: critic(x).squeeze(1), real, fake, None, torch.rand(8, 1))
    assert penalty.item() == pytest.approx((2.8 - 1) ** 2, rel=1e-5)


@pytest.mark.parametrize("family", [mlp, dcgan], ids=["mlp", "dcgan"])
@pytest.mark.parametrize("conditional", [False, True], ids=["unconditional", "conditional"])
def test_the_penalty_and_its_parameter_gradient_equal_an_autograd_double_backward(family, conditional):
    torch.manual_seed(0)
    critic = family.Discriminator(8, conditional, sigmoid_output=False)
    real, fake = toy_data(6)[0], toy_data(6, seed=1)[0]
    y = onehot(6) if conditional else None
    eps = torch.rand(6, 1)
    penalty = objectives.gradient_penalty(critic, real, fake, y, eps)

    # The textbook form: torch.autograd.grad with create_graph=True at x_hat = eps real + (1 - eps) fake.
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (slopes,) = torch.autograd.grad(critic(x_hat, y).sum(), x_hat, create_graph=True)
    reference = ((slopes.norm(2, dim=1) - 1) ** 2).mean()
    torch.testing.assert_close(penalty, reference)
    assert penalty.item() > 1e-3  # a real penalty, not a vanishing one

    params = list(critic.parameters())
    ours = torch.autograd.grad(penalty, params, allow_unused=True, materialize_grads=True)
    theirs = torch.autograd.grad(reference, params, allow_unused=True, materialize_grads=True)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
    assert any(b.abs().max() > 0 for b in theirs)


def test_a_wgan_gp_critic_step_adds_lambda_times_the_penalty_and_reports_the_w_estimate_without_it():
    images, labels = toy_data()
    trainer = Trainer(variant("wgan-gp", batch_size=16), images, labels, [0, 1])
    trainer.advance(3)
    for losses in trainer.read_losses().values():  # each replica's own penalty and estimate
        assert losses["gradient_penalty"] > 0
        assert losses["w_estimate"] == pytest.approx(-(losses["d_loss"] - 10.0 * losses["gradient_penalty"]), rel=1e-5)
    assert all(p.abs().max() > 0.01 for p in trainer.critic.parameters() if p.dim() > 2)  # nothing was clipped


# --- packing ------------------------------------------------------------------------------------------
def test_a_pack_holds_m_distinct_samples_of_one_kind():
    images, labels = toy_data(n=512)
    b = 8
    parts = build(variant("pacgan2", batch_size=b), torch.device("cpu"), 0)
    # The per-replica loop runs the critic on plain tensors, so a hook can read its inputs.
    trainer = Trainer(variant("pacgan2", batch_size=b), images, labels, [0], batched=False)
    packed_inputs = []
    trainer.critic.base.net.register_forward_pre_hook(lambda module, args: packed_inputs.append(args[0].detach().clone()))
    trainer.advance(1)
    packs = packed_inputs[0]  # the critic step: b / 2 real packs, then b / 2 fake packs
    assert packs.shape == (b, 2 * 784)  # 2b samples as b packs of two
    samples = packs.reshape(b, 2, 784)
    for k, pack in enumerate(samples):
        is_real = [bool(torch.all(images == s, dim=1).any()) for s in pack]
        assert is_real == [k < b // 2] * 2, f"pack {k} mixes kinds or is in the wrong half"
        assert not torch.equal(pack[0], pack[1]), f"pack {k} holds the same sample twice"
    assert parts.critic(images[:b]).shape == (b // 2,)  # one score per pack


# --- spectral normalisation ---------------------------------------------------------------------------
@pytest.mark.parametrize("arch, width", [("mlp", 128), ("dcgan", 8)])
def test_after_a_few_updates_every_sn_layer_has_largest_singular_value_one(arch, width):
    images, labels = toy_data()
    trainer = Trainer(variant("sngan", arch=arch, hidden=width, batch_size=16), images, labels, [0, 1])
    critic = trainer.critic.module(1)
    layers = [m for m in critic.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    weights = normalised_weights(critic)
    assert len(weights) == len(layers) >= 2  # every layer, not just some
    raw = [torch.linalg.matrix_norm(m.parametrizations.weight.original.detach().flatten(1), ord=2) for m in layers]
    assert max(abs(s.item() - 1) for s in raw) > 0.3  # the raw weights are far from norm 1
    before = {k: v.clone() for k, v in trainer.critic.buffers.items()}
    trainer.advance(10)  # both replicas batched: each one's power-iteration buffers are its own
    for k, v in trainer.critic.buffers.items():  # the stacked u and v were updated in every replica
        if v[0].numel() > 1:  # (a 1-element u, for the 1-output layer, is always +-1)
            assert all(not torch.equal(before[k][r], v[r]) for r in (0, 1)), k
    for w in normalised_weights(trainer.critic.module(0)):
        assert torch.linalg.matrix_norm(w.detach(), ord=2).item() == pytest.approx(1.0, abs=0.01)
    # Replica 1's power iteration in the stack is the one it runs alone (its seed converges more slowly,
    # so the singular value is checked on replica 0, as for one network).
    alone = Trainer(variant("sngan", arch=arch, hidden=width, batch_size=16), images, labels, [1], batched=False)
    alone.advance(10)
    for k, v in alone.critic.buffers.items():
        torch.testing.assert_close(trainer.critic.buffers[k][1], v[0], atol=1e-4, rtol=1e-4)


# --- hinge --------------------------------------------------------------------------------------------
def test_hinge_loss_signs():
    confident = objectives.hinge_d_loss(torch.tensor([1.5, 3.0]), torch.tensor([-1.0, -2.0]))
    assert confident.item() == 0.0  # scores beyond the margins cost nothing
    undecided = objectives.hinge_d_loss(torch.zeros(4), torch.zeros(4))
    assert undecided.item() == pytest.approx(2.0)
    real = torch.tensor([0.5], requires_grad=True)
    fake = torch.tensor([-0.5], requires_grad=True)
    objectives.hinge_d_loss(real, fake).backward()
    assert real.grad.item() < 0 and fake.grad.item() > 0  # D raises real scores and lowers fake ones
    fake_g = torch.tensor([-0.5, 0.5], requires_grad=True)
    g_loss = objectives.hinge_g_loss(fake_g)
    g_loss.backward()
    assert g_loss.item() == pytest.approx(0.0) and torch.all(fake_g.grad < 0)  # G raises its scores


# --- DCGAN shapes -------------------------------------------------------------------------------------
@pytest.mark.parametrize("conditional", [False, True], ids=["unconditional", "conditional"])
@pytest.mark.parametrize("channels", [1, 3])
def test_the_conv_nets_map_noise_to_28x28_images_and_images_to_one_score(conditional, channels):
    torch.manual_seed(0)
    g = dcgan.Generator(100, 8, conditional, channels=channels)
    d = dcgan.Discriminator(8, conditional, sigmoid_output=False, channels=channels)
    y = onehot(6) if conditional else None
    images = g(torch.randn(6, 100), y)
    assert images.shape == (6, channels * 28 * 28)
    assert images.min() >= 0 and images.max() <= 1
    assert d(images, y).shape == (6,)
    packed = dcgan.Discriminator(8, conditional, sigmoid_output=True, channels=channels, pack=2)
    scores = packed(images, y)
    assert scores.shape == (3,) and scores.min() >= 0 and scores.max() <= 1
    if conditional:  # the label changes the image and the score
        other = onehot(7)[1:]
        assert not torch.allclose(g.eval()(torch.zeros(6, 100), y), g(torch.zeros(6, 100), other))
        assert not torch.allclose(d(images, y), d(images, other))


def test_dcgan_generator_has_batch_norm_and_no_critic_has_any():
    for name in ("dcgan", "dcgan-wgan-gp"):
        g, d = build_generator(variant(name)), build_critic(variant(name))
        assert any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in g.modules())
        assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in d.modules())
        assert any(isinstance(m, torch.nn.LeakyReLU) for m in d.modules())


# --- as the replica trainer runs them -----------------------------------------------------------------
@pytest.mark.parametrize("name, which", [("dcgan", "generator"), ("sngan", "critic"), ("pacgan2", "critic")])
def test_networks_run_stacked_under_vmap_in_train_mode_like_one_replica_each(name, which):
    v, replicas, b = variant(name), 3, 8
    make = build_generator if which == "generator" else build_critic
    torch.manual_seed(0)
    nets = [make(v).train() for _ in range(replicas)]
    singles = copy.deepcopy(nets)
    params, buffers = stack_module_state(nets)
    assert bool(buffers) == (name != "pacgan2")  # BN's running statistics, SN's power-iteration vectors
    base = copy.deepcopy(nets[0]).to("meta")
    inputs = torch.randn(replicas, b, v.z_dim) if which == "generator" else torch.rand(replicas, b, 784)

    out = vmap(lambda p, bufs, x: functional_call(base, (p, bufs), (x,)))(params, buffers, inputs)
    for r, net in enumerate(singles):
        torch.testing.assert_close(out[r], net(inputs[r]))  # each replica as if trained alone
        for key, buf in net.named_buffers():
            torch.testing.assert_close(buffers[key][r], buf)  # and its state advanced the same way


def test_the_penalty_gradient_under_vmap_equals_each_replicas_own():
    v, replicas, b = variant("dcgan-wgan-gp", hidden=8), 2, 4
    torch.manual_seed(0)
    nets = [build_critic(v) for _ in range(replicas)]
    params, buffers = stack_module_state(nets)
    base = copy.deepcopy(nets[0]).to("meta")

    def critic_loss(p, bufs, real, fake, eps):
        critic = lambda x, y: functional_call(base, (p, bufs), (x, y))  # noqa: E731
        gp = objectives.gradient_penalty(critic, real, fake, None, eps)
        return objectives.wasserstein_critic_loss(critic(real, None), critic(fake, None)) + 10 * gp

    real, fake, eps = torch.rand(replicas, b, 784), torch.rand(replicas, b, 784), torch.rand(replicas, b, 1)
    stacked = vmap(grad(critic_loss))(params, buffers, real, fake, eps)
    for r, net in enumerate(nets):
        loss = critic_loss(dict(net.named_parameters()), dict(net.named_buffers()), real[r], fake[r], eps[r])
        own = torch.autograd.grad(loss, list(net.parameters()))
        for (key, _), g in zip(net.named_parameters(), own):
            torch.testing.assert_close(stacked[key][r], g)


# --- every new preset trains ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", NEW_PRESETS)
def test_every_new_preset_trains_and_reports_finite_losses(name):
    images, labels = toy_data()
    v = variant(name, batch_size=16, **({"hidden": 8} if variant(name).arch == "dcgan" else {}))
    trainer = Trainer(v, images, labels, [0, 1])  # batched over two replicas, as the train stage runs it
    trainer.advance(3)
    by_replica = trainer.read_losses()
    assert sorted(by_replica) == [0, 1]
    for losses in by_replica.values():
        assert all(np.isfinite(value) for value in losses.values())
        assert ("w_estimate" in losses) == (v.objective == "wasserstein")
        assert ("gradient_penalty" in losses) == (v.gradient_penalty is not None)


@pytest.mark.slow
def test_every_new_preset_trains_through_the_train_stage(tmp_path, monkeypatch, small_mnist, instrument):
    """`python -m stages.train` for each new preset on a few iterations: params, MLflow, outputs."""
    from pipeline.common import atomic, layout
    from pipeline.instrument import evaluator, reference
    from stages import train

    classifier, ref = instrument
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # the MLflow store lands in tmp_path
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    d = small_mnist
    atomic.save_npz(layout.PREPARED, x_train=d.x_train, y_train=d.y_train, x_test=d.x_test, y_test=d.y_test)
    evaluator.save(classifier, layout.CLASSIFIER)
    reference.save(ref, layout.REFERENCE)
    params = tiny_params(iterations=4)
    params["train"].update(log_every=2, checkpoint_every=2, sample_every=4, eval_every=2, eval_samples=100)
    for name in NEW_PRESETS:
        if params["variants"][name]["arch"] == "dcgan":
            params["variants"][name]["hidden"] = 8  # the preset's nets, narrower: this checks wiring, not quality
        (tmp_path / "params.yaml").write_text(yaml.safe_dump({**params, "model": name}, sort_keys=False))
        train.main()
        metrics = json.loads(layout.TRAIN_METRICS.read_text())
        assert metrics["iterations"] == 4 and metrics["replicas"] == 2 and metrics["diverged"] == 0, name
        assert np.isfinite(metrics["final_d_loss_median"]), name
        header = layout.LOSS_HISTORY.read_text().splitlines()[0]
        assert ("gradient_penalty" in header) == name.endswith("wgan-gp"), name
        from pipeline.gan.generator_file import load_generator

        generator, saved = load_generator(layout.GENERATOR)
        assert saved.model_dump() == {**params["variants"][name], "betas": tuple(params["variants"][name]["betas"])}
        z = torch.randn(4, saved.z_dim)
        y = onehot(4) if saved.conditional else None
        images = generator(z, y)
        assert images.shape == (4, 784) and 0 <= images.min() and images.max() <= 1, name


def test_the_penalty_under_vmap_with_an_outer_backward_equals_each_replicas_own():
    # The replica trainer's pattern: vmap the critic loss over stacked leaf params, then .sum().backward().
    v, replicas, b = variant("wgan-gp", hidden=16), 3, 4
    torch.manual_seed(0)
    nets = [build_critic(v) for _ in range(replicas)]
    params, buffers = stack_module_state(nets)
    base = copy.deepcopy(nets[0]).to("meta")
    real, fake, eps = torch.rand(replicas, b, 784), torch.rand(replicas, b, 784), torch.rand(replicas, b, 1)

    def critic_loss(p, bufs, real, fake, eps):
        critic = lambda x, y: functional_call(base, (p, bufs), (x, y))  # noqa: E731
        d_real, d_fake = critic(torch.cat([real, fake]), None).chunk(2)
        return objectives.wasserstein_critic_loss(d_real, d_fake) + 10 * objectives.gradient_penalty(
            critic, real, fake, None, eps
        )

    vmap(critic_loss)(params, buffers, real, fake, eps).sum().backward()
    for r, net in enumerate(nets):
        own = torch.autograd.grad(critic_loss(dict(net.named_parameters()), {}, real[r], fake[r], eps[r]), list(net.parameters()))
        for (key, _), g in zip(net.named_parameters(), own):
            torch.testing.assert_close(params[key].grad[r], g)

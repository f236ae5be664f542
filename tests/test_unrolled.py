"""PacGAN's Table 3 setting: the Unrolled-GAN nets, D's separate real and fake batches, D's own optimiser
settings, these presets batched across replicas, and each behaviour of the authors' released code the presets
carry (issue 32): tanh output on [-1, 1] data, TensorFlow's SAME padding and initialisers, a packed G called once
per pack position, the G step on the D step's noise, real triples drawn afresh for every batch.

The expected sizes are computed here from the layer list of the authors' released code
(github.com/fjxmlzn/PacGAN, stacked_MNIST_experiments/unrolled_GAN_experiment/D=0.25G/model.py and
D=0.5G), not read back from ganpipe's modules.
"""

from __future__ import annotations

import io

import pytest
import torch

from pipeline.common.params import VariantParams
from pipeline.gan.networks import unrolled
from pipeline.gan.trainer import Trainer
from pipeline.gan.variants import build, build_critic, build_generator
from tests.conftest import repo_params

TABLE3 = [f"{m}-{size}-d" for size in ("quarter", "half") for m in ("dcgan", "pacdcgan2", "pacdcgan3", "pacdcgan4")]
STACKED = 3  # channels of a Stacked MNIST image


def variant(name: str, **changes) -> VariantParams:
    return VariantParams.model_validate({**repo_params()["variants"][name], **changes})


def conv(c_in: int, c_out: int, k: int = 3) -> int:
    return k * k * c_in * c_out + c_out  # weights and biases (their conv2d and deconv2d both add biases)


def released_generator_size(z: int = 256) -> int:
    # linear z -> 4x4x64; batch norm (gamma, beta) on 64, 32, 16, 8 channels; deconvs 64->32->16->8; conv 8->3
    return (z * 1024 + 1024) + 2 * (64 + 32 + 16 + 8) + conv(64, 32) + conv(32, 16) + conv(16, 8) + conv(8, 3)


def released_discriminator_size(widths: tuple[int, int, int], pack: int) -> int:
    a, b, c = widths  # three stride-2 convs, each with batch norm, then a linear layer from 4x4xc to one logit
    return conv(STACKED * pack, a) + conv(a, b) + conv(b, c) + 2 * (a + b + c) + (4 * 4 * c + 1)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- the nets against the released architecture ---------------------------------------------------------
@pytest.mark.parametrize("name", TABLE3)
def test_each_preset_builds_the_released_nets_shapes_and_sizes(name):
    v = variant(name)
    widths = (2, 4, 8) if name.endswith("quarter-d") else (4, 8, 16)
    generator, critic = build_generator(v, STACKED), build_critic(v, STACKED)
    assert n_params(generator) == released_generator_size() == 287_875
    assert n_params(critic) == released_discriminator_size(widths, v.pack)
    convs = [layer for layer in critic.modules() if isinstance(layer, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == list(widths) and convs[0].in_channels == STACKED * v.pack
    assert [c.kernel_size for c in convs] == [(3, 3)] * 3 and [c.stride for c in convs] == [(2, 2)] * 3
    norms = [layer for layer in critic.modules() if isinstance(layer, torch.nn.BatchNorm2d)]
    assert len(norms) == 3  # batch norm after every conv of D, unlike the dcgan family
    leaks = {layer.negative_slope for layer in critic.modules() if isinstance(layer, torch.nn.LeakyReLU)}
    assert leaks == {0.3}
    with torch.no_grad():
        z = torch.randn(4 * v.pack, v.z_dim)
        images = generator(z)
        assert images.shape == (4 * v.pack, STACKED * 28 * 28) and -1 <= images.min() < 0 < images.max() <= 1  # tanh
        assert critic(images).shape == (4,)  # one logit per pack of v.pack samples


def test_the_generator_feature_maps_grow_4_7_14_28():
    generator = unrolled.Generator(256, 8, channels=STACKED)
    shapes = []
    hooks = [layer.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
             for layer in generator.net if isinstance(layer, torch.nn.ReLU)]
    generator(torch.randn(2, 256))
    for h in hooks:
        h.remove()
    assert shapes == [(64, 4, 4), (32, 7, 7), (16, 14, 14), (8, 28, 28)]


@pytest.mark.parametrize("name", TABLE3)
def test_the_presets_carry_the_released_config(name):
    v, m = variant(name), variant(name).pack
    assert name.startswith("dcgan") == (m == 1) and name.startswith(f"pacdcgan{m}") == (m > 1)
    assert (v.z_dim, v.objective, v.optimizer, v.arch, v.conditional) == (256, "bce_logits", "adam", "unrolled", False)
    assert (v.lr, v.critic_lr, v.betas, v.critic_betas) == (1e-4, 2e-4, (0.5, 0.99), None)
    assert v.batch_size == 128 * m  # 128 packs of m samples per batch, as their code feeds D
    assert (v.iterations, v.stacked_eval_samples, v.critic_pass, v.n_critic) == (500_000, 25_600, "separate", 1)
    assert v.critic_hidden == (2 if name.endswith("quarter-d") else 4)
    released = ("tanh", "per-position", "critic-step", "fresh", "released-cnn", "batch-stats")
    assert (v.output_activation, v.generator_pack_batches, v.generator_step_noise, v.real_triples,
            v.mode_count_classifier, v.mode_count_sampling) == released
    assert v.generator_norm_batch == 128  # G normalises 128 samples per call at every packing, as theirs


def test_every_other_preset_keeps_todays_training_and_count():
    others = [name for name in repo_params()["variants"] if name not in TABLE3]
    assert len(others) == 13
    for name in others:
        v = variant(name)
        assert (v.output_activation, v.generator_pack_batches, v.generator_step_noise, v.real_triples,
                v.mode_count_classifier, v.mode_count_sampling) == (
            "sigmoid", "joint", "fresh", "fixed-set", "evaluator", "running-stats"), name


def test_tanh_is_refused_outside_the_unrolled_family_in_one_paragraph():
    from pipeline.common.errors import GanpipeError
    from pipeline.common.params import parse_params

    raw = repo_params()
    raw["variants"]["dcgan"]["output_activation"] = "tanh"
    with pytest.raises(GanpipeError) as refused:
        parse_params(raw)
    message = str(refused.value)
    assert "variants.dcgan.output_activation" in message and "arch unrolled only" in message and "\n" not in message


# --- two learning rates ---------------------------------------------------------------------------------
def test_d_and_g_get_their_own_learning_rates_and_betas():
    v = variant("pacdcgan2-quarter-d", critic_betas=(0.4, 0.9))
    images, labels = torch.rand(64, STACKED * 784), torch.zeros(64, dtype=torch.long)
    trainer = Trainer(v.model_copy(update={"batch_size": 8}), images, labels, [0, 1])
    parts = build(v, torch.device("cpu"), 0)
    for g_opt, d_opt in ((trainer.g_opt, trainer.d_opt), (parts.g_opt, parts.d_opt)):
        assert (g_opt.param_groups[0]["lr"], g_opt.param_groups[0]["betas"]) == (1e-4, (0.5, 0.99))
        assert (d_opt.param_groups[0]["lr"], d_opt.param_groups[0]["betas"]) == (2e-4, (0.4, 0.9))
    same = variant("dcgan")  # critic_lr and critic_betas null: D takes G's settings
    parts = build(same, torch.device("cpu"), 0)
    assert parts.d_opt.param_groups[0]["lr"] == parts.g_opt.param_groups[0]["lr"] == same.lr


# --- real and fake through D in separate batches -------------------------------------------------------
def batches_seen_by_d(v: VariantParams) -> list[torch.Tensor]:
    """D's input batches (after unpacking to images) during one training iteration, with real images all ones."""
    images, labels = torch.ones(64, STACKED * 784), torch.zeros(64, dtype=torch.long)
    trainer = Trainer(v, images, labels, [0], batched=False)  # a loop over replicas: D's inputs are plain tensors
    seen: list[torch.Tensor] = []
    features = trainer.critic.base.features  # its input: the packed rows D judges
    features.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0].detach().clone()))
    trainer.advance(1)
    return seen


def kinds(batch: torch.Tensor) -> set[str]:
    """'real' for every image that is all ones (the training set here), 'fake' for the generator's."""
    is_real = (batch == 1).flatten(1).all(1)
    return {"real" if r else "fake" for r in is_real.tolist()}


def test_with_separate_passes_every_batch_d_normalises_is_all_real_or_all_fake():
    v = variant("pacdcgan2-quarter-d", batch_size=16)
    seen = batches_seen_by_d(v)
    # critic step: a real batch and a fake batch of 8 packs each; generator step: one fake batch
    assert [kinds(b) for b in seen] == [{"real"}, {"fake"}, {"fake"}]
    assert [b.shape[0] for b in seen] == [8, 8, 8] and seen[0].shape[1] == STACKED * 2 * 784


def test_the_joint_pass_mixes_the_kinds_in_one_batch():
    # The check above can fail: the same preset with critic_pass joint shows D one mixed batch.
    seen = batches_seen_by_d(variant("pacdcgan2-quarter-d", batch_size=16, critic_pass="joint"))
    assert [kinds(b) for b in seen] == [{"real", "fake"}, {"fake"}]


def test_without_batch_norm_in_d_separate_and_joint_passes_train_the_same():
    # The dcgan family's D has no batch norm, so no sample's score depends on its batch: the two passes
    # compute the same losses and updates (to float rounding), which pins what `separate` changes.
    images, labels = torch.rand(128, 784, generator=torch.Generator().manual_seed(0)), torch.zeros(128, dtype=torch.long)
    losses, drawn = {}, {}
    for mode in ("joint", "separate"):
        trainer = Trainer(variant("dcgan", hidden=8, batch_size=16, critic_pass=mode), images, labels, [5])
        trainer.advance(3)
        losses[mode], drawn[mode] = trainer.read_losses()[0], generated(trainer, 0)
    assert losses["joint"] == pytest.approx(losses["separate"], rel=1e-5)
    torch.testing.assert_close(drawn["joint"], drawn["separate"], rtol=1e-4, atol=1e-5)


def generated(trainer: Trainer, row: int) -> torch.Tensor:
    """Replica `row`'s images for fixed noise, batch norm on batch statistics. Compared instead of weights:
    a bias right before batch norm has a zero gradient up to rounding, which Adam scales to a full step of
    either sign, so those biases differ between two exact computations while the function does not."""
    generator = trainer.generator.module(row).train()
    with torch.no_grad():
        return generator(torch.randn(32, generator.z_dim, generator=torch.Generator().manual_seed(3)))


# --- batched across replicas ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dcgan-quarter-d", "pacdcgan2-half-d"])
def test_replicas_trained_side_by_side_equal_each_trained_alone(name):
    v = variant(name).model_copy(update={"batch_size": 8 * variant(name).pack})
    g = torch.Generator().manual_seed(1)
    images, labels = torch.rand(256, STACKED * 784, generator=g), torch.zeros(256, dtype=torch.long)
    together = Trainer(v, images, labels, [21, 22], batched=True)
    together.advance(4)
    together_losses = together.read_losses()
    for row, seed in enumerate([21, 22]):
        alone = Trainer(v, images, labels, [seed], batched=False)
        alone.advance(4)
        assert alone.read_losses()[0] == pytest.approx(together_losses[row], rel=1e-4)
        torch.testing.assert_close(generated(alone, 0), generated(together, row), rtol=1e-4, atol=1e-4)
        # batch norm's running statistics are each replica's own (the batch counter, too)
        counts = [value for key, value in together.critic.buffers.items() if key.endswith("num_batches_tracked")]
        assert len(counts) == 3 and all(c.tolist() == [4 * 3] * 2 for c in counts)  # 4 x (real, fake, G step)


@pytest.mark.parametrize("name", TABLE3)
def test_each_preset_trains_on_stacked_rows_with_finite_losses(name):
    v = variant(name)
    v = v.model_copy(update={"batch_size": 4 * v.pack})  # 4 packs: the preset's wiring, at a test's size
    images, labels = torch.rand(64, STACKED * 784, generator=torch.Generator().manual_seed(0)), torch.zeros(64, dtype=torch.long)
    trainer = Trainer(v, images, labels, [0, 1])
    trainer.advance(2)
    losses = trainer.read_losses()
    assert sorted(losses) == [0, 1]
    assert all(torch.isfinite(torch.tensor(list(r.values()))).all() for r in losses.values())


# --- the released code's behaviours (issue 32) ------------------------------------------------------------
def tf_same_conv(x: torch.Tensor, weight: torch.Tensor, stride: int) -> torch.Tensor:
    """TensorFlow's conv2d with padding "SAME", from its documented rule: the output side is ceil(in / stride),
    the padding it needs is split with the odd pixel at the bottom and right."""
    side, k = x.shape[-1], weight.shape[-1]
    out = -(-side // stride)
    total = max((out - 1) * stride + k - side, 0)
    before = total // 2
    return torch.nn.functional.conv2d(torch.nn.functional.pad(x, (before, total - before, before, total - before)),
                                      weight, stride=stride)


def tf_same_transposed(y: torch.Tensor, weight: torch.Tensor, side: int) -> torch.Tensor:
    """tf.nn.conv2d_transpose to side x side with SAME padding: the adjoint of tf_same_conv from side x side."""
    with torch.enable_grad():
        probe = torch.zeros(y.shape[0], weight.shape[1], side, side, requires_grad=True)
        (adjoint,) = torch.autograd.grad((tf_same_conv(probe, weight.detach(), 2) * y.detach()).sum(), probe)
    return adjoint


def rot(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-2, -1)


def bn(x: torch.Tensor, norm: torch.nn.BatchNorm2d) -> torch.Tensor:
    return torch.nn.functional.batch_norm(x, None, None, norm.weight, norm.bias, training=True, eps=norm.eps)


def test_d_is_their_same_padded_d_with_rotated_kernels():
    """D (PyTorch's symmetric padding, input rotated by 180 degrees) equals TensorFlow's SAME-padded D whose
    kernels are D's rotated, map for map (each of D's maps is the rotated TensorFlow map)."""
    torch.manual_seed(0)
    critic = unrolled.Discriminator(2, channels=STACKED, pack=2)
    x = torch.randn(6, STACKED * 28 * 28)  # 6 samples: 3 packs of 2
    convs = [m for m in critic.features if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in critic.features if isinstance(m, torch.nn.BatchNorm2d)]
    seen = []
    hooks = [c.register_forward_hook(lambda m, i, o: seen.append(o)) for c in convs]
    with torch.no_grad():
        logits = critic(x)
    for hk in hooks:
        hk.remove()
    h = x.reshape(3, 2 * STACKED, 28, 28)  # their packs: 3 of 2 images, channels side by side
    with torch.no_grad():
        for conv, norm, ours in zip(convs, norms, seen):
            h = tf_same_conv(h, rot(conv.weight), 2) + conv.bias[:, None, None]  # 28 -> 14 -> 7 -> 4, their windows
            torch.testing.assert_close(rot(ours), h, rtol=1e-4, atol=1e-5)
            h = torch.nn.functional.leaky_relu(bn(h, norm), 0.3)
        torch.testing.assert_close(logits, critic.head(rot(h).flatten(1)).squeeze(1), rtol=1e-4, atol=1e-5)
    assert [tuple(o.shape[-2:]) for o in seen] == [(14, 14), (7, 7), (4, 4)]


def test_g_is_their_same_padded_g_with_rotated_kernels():
    """G (PyTorch's padding, output rotated by 180 degrees) equals TensorFlow's G: its transposed convolutions
    the adjoints of SAME convolutions, kernels G's rotated, the 4x4 seed map rotated."""
    torch.manual_seed(0)
    generator = unrolled.Generator(256, 8, channels=STACKED, output_activation="tanh").train()
    layers = list(generator.net)
    norms = [m for m in layers if isinstance(m, torch.nn.BatchNorm2d)]
    ups = [m for m in layers if isinstance(m, torch.nn.ConvTranspose2d)]
    last = next(m for m in layers if type(m) is torch.nn.Conv2d)
    z = torch.randn(5, 256)
    with torch.no_grad():
        images = generator(z)
        h = rot(layers[0](z).reshape(5, 64, 4, 4))  # their reshape to 4x4x64, in TensorFlow's frame
        h = torch.relu(bn(h, norms[0]))
        for up, norm, side in zip(ups, norms[1:], (7, 14, 28)):
            h = torch.relu(bn(tf_same_transposed(h, rot(up.weight), side) + up.bias[:, None, None], norm))
        expected = torch.tanh(tf_same_conv(h, rot(last.weight), 1) + last.bias[:, None, None])
    torch.testing.assert_close(images.reshape(5, STACKED, 28, 28), expected, rtol=1e-4, atol=1e-5)
    # the identity is not trivial: without the rotation, G's image is not theirs
    assert not torch.allclose(rot(images.reshape(5, STACKED, 28, 28)), expected, atol=1e-3)


def test_the_family_starts_from_their_initialisers():
    torch.manual_seed(0)
    generator, critic = unrolled.Generator(256, 8, channels=STACKED), unrolled.Discriminator(2, channels=STACKED, pack=4)
    norms = [m for net in (generator, critic) for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 7 and all(bool((n.weight == 1).all() and (n.bias == 0).all()) for n in norms)
    convs = [m.weight for net in (generator, critic) for m in net.modules() if type(m) is torch.nn.Conv2d]
    assert all(w.abs().max() <= 0.04 for w in convs)  # truncated at two standard deviations
    linear = generator.net[0].weight  # 262,144 draws of N(0, 0.02): about 4.6% beyond two standard deviations
    assert 0.03 < (linear.abs() > 0.04).float().mean() < 0.06 and abs(linear.std().item() - 0.02) < 5e-4


def d_inputs(v: VariantParams, images, iterations: int = 1, seed: int = 0) -> list[torch.Tensor]:
    """Every batch of packed rows D receives over `iterations` iterations of one replica."""
    trainer = Trainer(v, images, torch.zeros(images.shape[0], dtype=torch.long), [seed], batched=False)
    seen: list[torch.Tensor] = []
    features = trainer.critic.base.features  # its input: the packed rows D judges
    features.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0].detach().clone()))
    trainer.advance(iterations)
    return seen


def g_calls(v: VariantParams, images) -> list[torch.Tensor]:
    """The noise of every call of G during one iteration of one replica (the input of G's first layer)."""
    trainer = Trainer(v, images, torch.zeros(images.shape[0], dtype=torch.long), [0], batched=False)
    calls: list[torch.Tensor] = []
    first = trainer.generator.base.net[0]
    first.register_forward_pre_hook(lambda m, inputs: calls.append(inputs[0].detach().clone()))
    trainer.advance(1)
    return calls


def test_a_tanh_preset_trains_on_minus_one_to_one_and_hands_the_instrument_zero_to_one():
    from pipeline.gan import sampling

    images = torch.full((32, STACKED * 784), 0.25)
    tanh_real = d_inputs(variant("dcgan-quarter-d", batch_size=8), images)[0]
    sigmoid_real = d_inputs(variant("dcgan-quarter-d", batch_size=8, output_activation="sigmoid"), images)[0]
    assert torch.all(tanh_real == -0.5) and torch.all(sigmoid_real == 0.25)  # 2 x - 1: their [-1, 1] data
    generator = build_generator(variant("dcgan-quarter-d"), STACKED)
    assert any(isinstance(m, torch.nn.Tanh) for m in generator.net)
    drawn = sampling.sample(generator, 40, seed=3)
    generator.eval()
    with torch.no_grad():
        raw = generator(torch.randn(40, 256, generator=torch.Generator().manual_seed(3)))
    assert raw.min() < 0  # tanh's own range
    np_expected = ((raw + 1) / 2).reshape(40, STACKED, 28, 28).numpy()
    assert drawn.min() >= 0 and drawn.max() <= 1 and (drawn == np_expected).all()


def test_a_packed_g_is_called_once_per_pack_position_on_128_samples():
    images = torch.rand(512, STACKED * 784, generator=torch.Generator().manual_seed(0))
    for m in (2, 3):
        name = f"pacdcgan{m}-quarter-d"
        calls = g_calls(variant(name), images)  # the preset's own batch: 128 packs of m
        assert [c.shape[0] for c in calls] == [128] * (2 * m)  # m calls in the D step, m in the G step
        joint = g_calls(variant(name, generator_pack_batches="joint"), images)
        assert [c.shape[0] for c in joint] == [128 * m] * 2


def test_per_position_calls_put_sample_k_of_each_call_into_pack_k():
    from pipeline.gan.networks.packing import pack_rows
    from pipeline.gan.trainer import _generate

    torch.manual_seed(0)
    generator = unrolled.Generator(256, 8, channels=STACKED).train()
    z = torch.randn(2 * 256, 256)  # two batches of 128 packs of 2
    with torch.no_grad():
        rows = _generate(generator, z, None, 256, 2)
        for b in range(2):
            zb = z[b * 256 : (b + 1) * 256]
            calls = [generator(zb[j::2]) for j in range(2)]  # their G_sep[j], each normalised on its own 128
            packs = pack_rows(rows[b * 256 : (b + 1) * 256], 2)
            torch.testing.assert_close(packs, torch.cat(calls, dim=1))  # their tf.concat(G_sep, axis=channels)
        assert not torch.allclose(rows[:256], generator(z[:256]), atol=1e-4)  # one call of 256 normalises otherwise
        torch.testing.assert_close(_generate(generator, z[:256], None, 256, 1), generator(z[:256]))


def test_the_g_step_reuses_the_d_steps_noise():
    images = torch.rand(64, STACKED * 784, generator=torch.Generator().manual_seed(0))
    d_step, g_step = g_calls(variant("dcgan-quarter-d", batch_size=16), images)
    assert torch.equal(d_step, g_step)  # their G step is fed the D step's feed_dict_z
    d_step, g_step = g_calls(variant("dcgan-quarter-d", batch_size=16, generator_step_noise="fresh"), images)
    assert not torch.equal(d_step, g_step)
    packed = g_calls(variant("pacdcgan2-quarter-d", batch_size=32), images)
    assert all(torch.equal(a, b) for a, b in zip(packed[:2], packed[2:]))  # position by position


def digit_rows(n: int) -> torch.Tensor:
    """n MNIST-like rows, row i all pixels i / n: a pixel says which row a channel was drawn from."""
    return (torch.arange(n, dtype=torch.float32) / n)[:, None].expand(n, 784).contiguous()


def rows_drawn(batches: list[torch.Tensor], n: int) -> torch.Tensor:
    """(images, 3) row numbers of the real images (N, 3, 28, 28) D saw (tanh presets see 2 x - 1)."""
    return torch.round((torch.cat(batches)[:, :, 0, 0] + 1) / 2 * n).long()


def test_real_triples_are_drawn_afresh_each_batch_from_every_digit_seeded_and_reproducible():
    from pipeline.data import stacked_mnist

    n = 20
    fresh = stacked_mnist.FreshStackedRows(digit_rows(n))
    v = variant("dcgan-quarter-d", batch_size=16)
    seen = d_inputs(v, fresh, iterations=4)
    real = [batch.reshape(-1, STACKED, 28, 28) for batch in seen[0::3]]  # per iteration: real, fake, G-step fake
    drawn = rows_drawn(real, n)  # (4 x 16, 3)
    assert drawn.shape == (64, 3) and set(drawn.flatten().tolist()) == set(range(n))  # every digit drawn from
    first, second = drawn[:16], drawn[16:32]
    assert not torch.equal(first, second)  # a new batch of triples every iteration
    assert (drawn[:, 0] == drawn[:, 1]).float().mean() < 0.2  # channels drawn independently (1 / 20 alike)
    again = rows_drawn([b.reshape(-1, STACKED, 28, 28) for b in d_inputs(v, fresh, iterations=4)[0::3]], n)
    other = rows_drawn([b.reshape(-1, STACKED, 28, 28) for b in d_inputs(v, fresh, iterations=4, seed=1)[0::3]], n)
    assert torch.equal(drawn, again) and not torch.equal(drawn, other)  # the replica's seeded generator
    assert fresh[torch.tensor([[1, 2, 3]])].shape == (1, STACKED * 784)


def test_a_table3_trainer_resumes_bit_identically_from_its_state():
    from pipeline.data import stacked_mnist

    rows = stacked_mnist.FreshStackedRows(torch.rand(300, 784, generator=torch.Generator().manual_seed(0)))
    v = variant("pacdcgan2-quarter-d", batch_size=16)
    straight = Trainer(v, rows, torch.zeros(300, dtype=torch.long), [3, 4])
    straight.advance(4)
    first = Trainer(v, rows, torch.zeros(300, dtype=torch.long), [3, 4])
    first.advance(2)
    saved = io.BytesIO()
    torch.save(first.state_dict(), saved)  # as the benchmark's --save-generators keeps it (the live state shares tensors)
    saved.seek(0)
    resumed = Trainer(v, rows, torch.zeros(300, dtype=torch.long), [3, 4])
    resumed.load_state_dict(torch.load(saved, weights_only=False))
    resumed.advance(2)
    for key, value in straight.generator.params.items():
        assert torch.equal(value, resumed.generator.params[key]), key

"""PacGAN's Table 3 setting: the Unrolled-GAN nets, D's separate real and fake batches, D's own optimiser
settings, and these presets batched across replicas.

The expected sizes are computed here from the layer list of the authors' released code
(github.com/fjxmlzn/PacGAN, stacked_MNIST_experiments/unrolled_GAN_experiment/D=0.25G/model.py and
D=0.5G), not read back from ganpipe's modules.
"""

from __future__ import annotations

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
        assert images.shape == (4 * v.pack, STACKED * 28 * 28) and 0 <= images.min() and images.max() <= 1
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
    first_conv = next(layer for layer in trainer.critic.base.modules() if isinstance(layer, torch.nn.Conv2d))
    first_conv.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0].detach().clone()))
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
    assert [b.shape[0] for b in seen] == [8, 8, 8] and seen[0].shape[1] == STACKED * 2


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

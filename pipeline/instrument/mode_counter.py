"""PacGAN's mode counter: the MNIST classifier their released Table 3 code counts Stacked MNIST modes with.

Their code (github.com/fjxmlzn/PacGAN, stacked_MNIST_experiments/unrolled_GAN_experiment/D=0.25G) classifies
each channel of a sample with a Keras CNN (evaluate.py) trained by train_mnist.py, which is Keras' mnist_cnn
example with 20 epochs. Rebuilt here from that layer list, in PyTorch, with Keras 2's defaults wherever their
code relies on one:

- valid (unpadded) 3x3 convs 1 -> 32 -> 64 with ReLU (28 -> 26 -> 24), 2x2 max-pool (12), dropout 0.25,
  flatten (9,216), dense 128 with ReLU, dropout 0.5, dense 10 with softmax;
- weights Glorot-uniform, biases zero (Keras' layer defaults);
- categorical cross-entropy on the softmax, its probabilities clipped to [1e-7, 1 - 1e-7] as Keras' backend does;
- Adadelta with `keras.optimizers.Adadelta()`'s defaults (params.yaml `mode_counter`): torch's Adadelta is the
  same update (accumulated squared gradients and squared steps, step = sqrt(E[dx²] + eps) / sqrt(E[g²] + eps) · g);
- 20 epochs of batch 128 over all 60,000 training digits, reshuffled every epoch; the last batch is partial.

`features`/`head` split it like the evaluator (`pipeline.instrument.evaluator.MnistCNN`), so `embed` reads
either and the Stacked MNIST count can use either classifier.

Dropout masks come from `torch.rand(..., dtype=float64) < keep` on the default generator: torch's own CPU dropout
draws its masks from MKL's VSL generator on Intel CPUs and from mt19937 elsewhere, so one seed would train a
different counter on an Intel CPU than on an AMD one. This recipe is the mt19937 path's, bit for bit, on every
CPU (tests/test_stacked_mnist.py checks it against torch's dropout where that path is the one in use).

The `mode_counter` stage trains it only when `dataset` is stacked-mnist; otherwise it writes a marker file in the
classifier's place (`{"trained": False, "reason": ...}`), so the default MNIST pipeline does not pay for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from pipeline.common.errors import GanpipeError
from pipeline.common.params import ModeCounterParams
from pipeline.instrument.stacked import ModeClassifier

KERAS_EPSILON = 1e-7  # keras.backend.epsilon(): the clip of categorical_crossentropy's probabilities
TRAIN_DIGITS = 60_000


class PortableDropout(nn.Module):
    """Inverted dropout (what Keras' and torch's Dropout compute) whose masks are the same on every CPU vendor:
    keep = 1 - rate, mask = uniform float64 draw < keep on the default generator, output x · mask / keep."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0:
            return x
        keep = 1.0 - self.rate
        # torch's CPU dropout: noise = bernoulli(keep) in x's dtype, divided by keep, times x (same roundings)
        noise = (torch.rand(x.shape, dtype=torch.float64, device=x.device) < keep).to(x.dtype).div_(keep)
        return x * noise


class ReleasedCNN(nn.Module):
    """Keras' mnist_cnn as PacGAN's train_mnist.py builds it (channels first here)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.ReLU(),  # 32 x 26 x 26
            nn.Conv2d(32, 64, 3), nn.ReLU(),  # 64 x 24 x 24
            nn.MaxPool2d(2),  # 64 x 12 x 12
            PortableDropout(0.25),
            nn.Flatten(),  # 9,216
            nn.Linear(64 * 12 * 12, 128), nn.ReLU(),
        )
        self.head = nn.Sequential(PortableDropout(0.5), nn.Linear(128, 10))
        for layer in self.modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):  # Keras: glorot_uniform kernels, zero biases
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def keras_crossentropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Keras' categorical_crossentropy on a softmax output: the probabilities clipped to [eps, 1 - eps] (no
    gradient beyond the clip), minus the log of the true class's, averaged over the batch."""
    probs = torch.softmax(logits, dim=1).clamp(KERAS_EPSILON, 1.0 - KERAS_EPSILON)
    return -probs.gather(1, labels[:, None]).log().mean()


def train_counter(
    x: np.ndarray, y: np.ndarray, settings: ModeCounterParams, on_step: Callable[[int, int], None] | None = None
) -> ReleasedCNN:
    """Train on uint8 (N, 28, 28) digits x with labels y; seeded init, shuffles and dropout masks."""
    shuffles = torch.Generator().manual_seed(settings.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)  # the weights, then every dropout mask
        model = ReleasedCNN()
        opt = torch.optim.Adadelta(model.parameters(), lr=settings.lr, rho=settings.rho, eps=settings.eps)
        images = torch.from_numpy(np.ascontiguousarray(x)).float().div_(255.0).reshape(-1, 1, 28, 28)
        labels = torch.from_numpy(np.asarray(y, dtype=np.int64))
        steps = (len(images) + settings.batch_size - 1) // settings.batch_size
        model.train()
        for epoch in range(settings.epochs):
            order = torch.randperm(len(images), generator=shuffles)
            for i in range(steps):
                idx = order[i * settings.batch_size : (i + 1) * settings.batch_size]
                loss = keras_crossentropy(model(images[idx]), labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if on_step:
                    on_step(epoch * steps + i + 1, settings.epochs * steps)
    model.eval()
    return model


def training_digits(x_train: np.ndarray, y_train: np.ndarray, settings: ModeCounterParams) -> tuple[np.ndarray, np.ndarray]:
    """All training digits (theirs: mnist.load_data()'s 60,000), or a seeded subset of train_subset (tests)."""
    if settings.train_subset is None or settings.train_subset >= len(x_train):
        return x_train, y_train
    idx = np.random.default_rng(settings.seed).choice(len(x_train), settings.train_subset, replace=False)
    return x_train[idx], y_train[idx]


def save(model: ReleasedCNN, path: Path, test_predicted: np.ndarray) -> None:
    """The weights, and the digit the counter reads in each MNIST test image (the real-data yardstick)."""
    from pipeline.common import atomic

    document = {"trained": True, "state_dict": model.state_dict(), "test_predicted": torch.as_tensor(test_predicted)}
    atomic.save_torch(Path(path), document)


def save_marker(path: Path, reason: str) -> None:
    """What the stage writes in the classifier's place when nothing needs a Stacked MNIST count."""
    from pipeline.common import atomic

    atomic.save_torch(Path(path), {"trained": False, "reason": reason})


def load(path: Path) -> ModeClassifier:
    """The trained counter as the Stacked MNIST count uses it; a one-paragraph error where the stage wrote its
    marker or has not run."""
    path = Path(path)
    fix = (
        "It is trained by the mode_counter stage when params.yaml's dataset is stacked-mnist: run "
        "`dvc exp run -S dataset=stacked-mnist mode_counter` (or any Stacked MNIST experiment), then run this again."
    )
    if not path.is_file():
        raise GanpipeError(f"PacGAN's mode counter {path} does not exist yet. {fix}")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if not saved.get("trained"):
        raise GanpipeError(f"{path} holds no trained mode counter ({saved.get('reason', 'a marker')}). {fix}")
    model = ReleasedCNN()
    model.load_state_dict(saved["state_dict"])
    model.eval()
    return ModeClassifier("released-cnn", model, saved["test_predicted"].numpy())

"""Real-data reference statistics, computed once with the evaluator and cached by DVC.

Everything a metric compares samples against lives here: real feature Gaussians, the real digit
histogram, the NDB bins, real intra-class diversity and the memorisation baseline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from pipeline.common import atomic
from pipeline.common.errors import GanpipeError
from pipeline.instrument.evaluator import MnistCNN, embed
from pipeline.instrument.metrics import classes, diversity, frechet, memorisation, ndb
from pipeline.data.mnist import MNIST


@dataclass
class Reference:
    train_features: np.ndarray  # (60000, 128) float32
    train_predicted: np.ndarray  # (60000,) evaluator predictions
    train_probs: np.ndarray  # (60000, 10) evaluator softmax, so real subsets need no re-embedding
    test_features: np.ndarray  # (10000, 128)
    test_predicted: np.ndarray
    test_accuracy: np.ndarray  # () evaluator accuracy on the test set
    mu: np.ndarray  # (128,) mean of train features
    cov: np.ndarray  # (128, 128) covariance of train features
    class_hist: np.ndarray  # (10,) share of train images predicted as each digit
    ndb_centres: np.ndarray  # (K, 784) k-means centres in pixel space
    ndb_shares: np.ndarray  # (K,) share of train images in each bin
    diversity_per_class: np.ndarray  # (10,) mean pairwise feature distance inside each class
    test_nn_train: np.ndarray  # (10000,) each test image's distance to its nearest train image

    @property
    def n_train(self) -> int:
        return len(self.train_features)


def build(model: MnistCNN, data: MNIST, *, ndb_bins: int, kmeans_fit_size: int, seed: int) -> Reference:
    train, test = embed(model, data.x_train), embed(model, data.x_test)
    rng = np.random.default_rng(seed)
    pixels = data.x_train.reshape(len(data.x_train), -1).astype(np.float32) / 255.0
    fit_idx = rng.choice(len(pixels), min(kmeans_fit_size, len(pixels)), replace=False)
    centres = ndb.fit_bins(pixels[fit_idx], ndb_bins, seed)
    mu, cov = frechet.gaussian(train.features)
    return Reference(
        train_features=train.features,
        train_predicted=train.predicted,
        train_probs=train.probs,
        test_features=test.features,
        test_predicted=test.predicted,
        test_accuracy=np.array(float((test.predicted == data.y_test).mean())),
        mu=mu,
        cov=cov,
        class_hist=classes.histogram(train.predicted),
        ndb_centres=centres,
        ndb_shares=ndb.bin_shares(ndb.assign(pixels, centres), ndb_bins),
        diversity_per_class=diversity.per_class(train.features, train.predicted, seed),
        test_nn_train=memorisation.nearest_train_distances(test.features, train.features),
    )


def save(ref: Reference, path: Path) -> None:
    atomic.save_npz(path, **asdict(ref))


def load(path: Path) -> Reference:
    if not Path(path).is_file():
        raise GanpipeError(
            f"the real-data reference {path} does not exist yet. Create it with `dvc repro evaluator` "
            "(run from the ganpipe repository root), then run this command again."
        )
    with np.load(path) as f:
        return Reference(**{field.name: f[field.name] for field in fields(Reference)})

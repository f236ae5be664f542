"""Real-data reference statistics, computed once with the evaluator and cached by DVC.

Two disjoint kinds of real image live here. The *reference* (training images the evaluator was trained
on) defines what samples are compared against: real feature Gaussians, the real digit histogram, the NDB
bins, real intra-class diversity, the KID and PRDC real sets. The *baseline pool* (MNIST's test set plus
`holdout` training images that neither the evaluator nor the reference saw) is what the calibrate stage
draws real subsets from, so "what real data scores" is measured on real images as unseen as a generator's
samples. Subsets of the reference itself would score better than any unseen image can (the evaluator's
features of its own training images are tighter, and a subset shares its images with the statistics).
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
    train_features: np.ndarray  # (60000, 128) float32, every training image (the neighbour panel indexes it)
    train_predicted: np.ndarray  # (60000,) evaluator predictions
    train_probs: np.ndarray  # (60000, 10) evaluator softmax, so real subsets need no re-embedding
    heldout: np.ndarray  # (60000,) bool: training images held out from the evaluator and the reference
    test_features: np.ndarray  # (10000, 128)
    test_predicted: np.ndarray
    test_probs: np.ndarray  # (10000, 10)
    test_accuracy: np.ndarray  # () evaluator accuracy on the test set
    mu: np.ndarray  # (128,) mean of reference features
    cov: np.ndarray  # (128, 128) covariance of reference features
    class_hist: np.ndarray  # (10,) share of reference images predicted as each digit
    ndb_centres: np.ndarray  # (K, 128) k-means centres in evaluator feature space
    ndb_shares: np.ndarray  # (K,) share of reference images in each bin
    diversity_per_class: np.ndarray  # (10,) mean pairwise feature distance inside each class
    test_nn_train: np.ndarray  # (10000,) each test image's distance to its nearest train image

    @property
    def reference_index(self) -> np.ndarray:
        """Indices of the training images the reference statistics come from."""
        return np.flatnonzero(~self.heldout)

    @property
    def reference_features(self) -> np.ndarray:
        return self.train_features[~self.heldout]

    @property
    def n_reference(self) -> int:
        return int((~self.heldout).sum())

    @property
    def n_train(self) -> int:
        return len(self.train_features)

    def baseline_pool(self) -> tuple[np.ndarray, np.ndarray]:
        """(features, probs) of every real image neither the evaluator nor the reference used."""
        return (
            np.concatenate([self.train_features[self.heldout], self.test_features]),
            np.concatenate([self.train_probs[self.heldout], self.test_probs]),
        )

    @property
    def n_pool(self) -> int:
        return int(self.heldout.sum()) + len(self.test_features)


def holdout_mask(n_train: int, holdout: int, seed: int) -> np.ndarray:
    """Which training images to keep away from the evaluator and the reference (seeded, reproducible)."""
    if holdout >= n_train:
        raise GanpipeError(
            f"evaluator.holdout = {holdout} would hold out all {n_train} training images and leave none to train "
            "the evaluator on. Lower evaluator.holdout in params.yaml (the default holds out 10000 of 60000)."
        )
    mask = np.zeros(n_train, dtype=bool)
    mask[np.random.default_rng(seed).permutation(n_train)[:holdout]] = True
    return mask


def build(
    model: MnistCNN, data: MNIST, *, heldout: np.ndarray, ndb_bins: int, kmeans_fit_size: int, seed: int
) -> Reference:
    """`heldout` is `holdout_mask(...)`, the same mask the evaluator was trained without."""
    train, test = embed(model, data.x_train), embed(model, data.x_test)
    ref_features, ref_predicted = train.features[~heldout], train.predicted[~heldout]
    rng = np.random.default_rng(seed)
    fit_idx = rng.choice(len(ref_features), min(kmeans_fit_size, len(ref_features)), replace=False)
    centres = ndb.fit_bins(ref_features[fit_idx], ndb_bins, seed)
    mu, cov = frechet.gaussian(ref_features)
    return Reference(
        train_features=train.features,
        train_predicted=train.predicted,
        train_probs=train.probs,
        heldout=heldout,
        test_features=test.features,
        test_predicted=test.predicted,
        test_probs=test.probs,
        test_accuracy=np.array(float((test.predicted == data.y_test).mean())),
        mu=mu,
        cov=cov,
        class_hist=classes.histogram(ref_predicted),
        ndb_centres=centres,
        ndb_shares=ndb.bin_shares(ndb.assign(ref_features, centres), ndb_bins),
        diversity_per_class=diversity.per_class(ref_features, ref_predicted, seed),
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
        missing = [field.name for field in fields(Reference) if field.name not in f.files]
        if missing:
            raise GanpipeError(
                f"the real-data reference {path} was made by an older ganpipe (it lacks {', '.join(missing)}). "
                "Rebuild it with `dvc repro evaluator`, then run this command again."
            )
        return Reference(**{field.name: f[field.name] for field in fields(Reference)})

"""The nearest-training-neighbour panel: is a good-looking sample new, or a copy of a training image?

Distances are in the evaluator's feature space, the space every metric uses, so the panel shows what
`memorisation_ratio` summarises. For scale, the report quotes the median distance from a real held-out
(test) image to its nearest training image: samples much closer than that sit on top of training data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.common.errors import GanpipeError
from pipeline.instrument.evaluator import MnistCNN, embed
from pipeline.instrument.metrics.neighbours import nearest
from pipeline.instrument.reference import Reference


@dataclass(frozen=True)
class NeighbourPanel:
    samples: np.ndarray  # (n, 28, 28) uint8
    neighbours: np.ndarray  # (n, 28, 28) uint8, the nearest training image of each sample
    train_indices: np.ndarray  # (n,) their rows in the training set
    distances: np.ndarray  # (n,) feature distances sample -> neighbour
    real_median: float  # median feature distance of a real test image to its nearest training image
    requested: np.ndarray | None = None  # (n,) the digits a conditional model was asked for


def nearest_training(
    samples: np.ndarray,
    labels: np.ndarray | None,
    classifier: MnistCNN,
    ref: Reference,
    train_images: np.ndarray,
    n: int,
) -> NeighbourPanel:
    """The first n samples (already a random draw) beside their nearest training images. `labels` are
    the digits a conditional model was asked for (None for an unconditional one)."""
    if len(train_images) != ref.n_train:
        raise GanpipeError(
            f"the prepared training set has {len(train_images)} images but the evaluator reference was built "
            f"on {ref.n_train}; they come from different runs of the pipeline. Run `dvc repro evaluator` to "
            "rebuild the reference from the current data."
        )
    picked = samples[:n]
    features = embed(classifier, picked).features
    distances, idx = nearest(features, ref.train_features)  # the same search the metrics use
    return NeighbourPanel(
        samples=picked,
        neighbours=train_images[idx],
        train_indices=idx,
        distances=distances,
        real_median=float(np.median(ref.test_nn_train)),
        requested=None if labels is None else labels[:n],
    )

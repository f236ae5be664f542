"""DVC stage: train the MNIST evaluator CNN and compute the real-data reference statistics."""

import numpy as np

from pipeline.common import atomic, cpu_threads, layout
from pipeline.instrument import evaluator, reference
from pipeline.common.console import progress_bar, run_main, stderr
from pipeline.data.mnist import load_prepared
from pipeline.common.params import load_params

TARGET_ACCURACY = 0.99


def main() -> None:
    e = load_params().evaluator
    cpu_threads.use(e.threads)
    data = load_prepared(layout.PREPARED)
    # Held-out training images stay unseen by the evaluator and the reference: with the test set they
    # form the pool the calibrate stage measures real-data baselines on.
    heldout = reference.holdout_mask(len(data.x_train), e.holdout, e.seed)
    x, y = data.x_train[~heldout], data.y_train[~heldout]
    if e.train_subset:
        idx = np.random.default_rng(e.seed).choice(len(x), min(e.train_subset, len(x)), replace=False)
        x, y = x[idx], y[idx]
    with progress_bar() as bar:
        task = bar.add_task("train evaluator CNN", total=None)
        model = evaluator.train_classifier(
            x, y, epochs=e.epochs, batch_size=e.batch_size, lr=e.lr, seed=e.seed,
            on_step=lambda done, total: bar.update(task, completed=done, total=total),
        )
    with stderr.status("real-data reference: features, NDB bins, diversity, nearest neighbours"):
        ref = reference.build(
            model, data, heldout=heldout, ndb_bins=e.ndb_bins, kmeans_fit_size=e.kmeans_fit_size, seed=e.seed
        )
    accuracy = float(ref.test_accuracy)
    evaluator.save(model, layout.CLASSIFIER)
    reference.save(ref, layout.REFERENCE)
    atomic.write_json(layout.EVALUATOR_METRICS, {"test_accuracy": round(accuracy, 5)})
    print(f"evaluator test accuracy: {accuracy:.4f}")
    if accuracy < TARGET_ACCURACY:
        stderr.print(
            f"[yellow]warning:[/] evaluator accuracy {accuracy:.4f} is below {TARGET_ACCURACY}; metrics built "
            "on it are less trustworthy. Raise evaluator.epochs or remove evaluator.train_subset."
        )


if __name__ == "__main__":
    run_main(main)

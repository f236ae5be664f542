"""DVC stage: train R replicas of the variant named by `model`, tracked in MLflow, resumable after interruption."""

import yaml

from pipeline.common import atomic, layout, mlflow_store, run_lifecycle, tables
from pipeline.common.console import StageProgress, quiet_mlflow, run_main
from pipeline.common.params import load_params
from pipeline.data import stacked_mnist, training_set
from pipeline.data.mnist import load_prepared
from pipeline.gan.generator_file import save_generators
from pipeline.runs.training_run import checkpoint_path, finish_run, train_tracked
from pipeline.gan.training_summary import train_metrics
from pipeline.instrument import evaluator, mode_counter, reference


def main() -> None:
    params = load_params()
    root = layout.repo_root()
    mlflow_store.check_store(mlflow_store.tracking_uri(root))  # a bad MLFLOW_TRACKING_URI fails before any loading
    training_set.check(params.dataset, params.model, params.variant.conditional)
    data = load_prepared(layout.PREPARED)
    stacked = stacked_mnist.load(layout.STACKED) if params.dataset == "stacked-mnist" else None
    classifier, ref = evaluator.load(layout.CLASSIFIER), reference.load(layout.REFERENCE)
    # the in-training mode count reads channels with the preset's classifier (PacGAN's Table 3: their counter)
    counts_released = stacked is not None and params.variant.mode_count_classifier == "released-cnn"
    mode_classifier = mode_counter.load(layout.MODE_COUNTER).model if counts_released else None
    # Losses and checks beside the bar are the median over the live replicas.
    with quiet_mlflow(), StageProgress(f"train {params.model} x{params.replicas}", params.variant.iterations) as bar:
        result = train_tracked(
            params, root, data, classifier, ref, progress=lambda done, total, **latest: bar.update(done, **latest),
            stacked=stacked, mode_classifier=mode_classifier,
        )
    with run_lifecycle.run_outcome(result.run_id):  # interrupted while saving: KILLED, never FINISHED
        diverged = [result.diverged.get(r) for r in range(params.replicas)]
        channels = training_set.CHANNELS[params.dataset]
        save_generators(layout.GENERATOR, result.generators(), params.variant, result.seeds, diverged, channels)
        atomic.write_text(layout.RESOLVED_VARIANT, yaml.safe_dump(params.variant.model_dump(mode="json"), sort_keys=False))
        tables.write_long_and_replica0(layout.LOSS_HISTORY, layout.LOSS_HISTORY_PLOT, result.losses)
        tables.write_long_and_replica0(layout.COLLAPSE_CURVE, layout.COLLAPSE_CURVE_PLOT, result.collapse_curve)
        atomic.write_json(layout.RUN_INFO, {"run_id": result.run_id, "replica_run_ids": result.replica_run_ids})
        # Only results go in the metrics file, so the same params and seed give an identical file; the
        # wall time, threads and device are logged to MLflow instead.
        atomic.write_json(layout.TRAIN_METRICS, train_metrics(result.final_losses, params.variant.iterations, diverged))
        with quiet_mlflow():
            finish_run(result, params.variant.iterations)
    checkpoint_path(params, root).unlink(missing_ok=True)  # finished: nothing left to resume
    resumed = f" (resumed from iteration {result.resumed_from})" if result.resumed_from else ""
    lost = f"; {len(result.diverged)} diverged (see MLflow)" if result.diverged else ""
    print(
        f"trained {params.replicas} replicas of {params.model} on {result.device} ({result.threads} threads) in "
        f"{result.seconds:.1f} s{resumed}{lost}; MLflow run {result.run_id}"
    )


if __name__ == "__main__":
    run_main(main)

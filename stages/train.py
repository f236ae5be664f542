"""DVC stage: train the variant named by `model`, tracked in MLflow, resumable after interruption."""

import yaml

from pipeline.common import atomic, layout, tables, tracking
from pipeline.instrument import evaluator, reference
from pipeline.common.console import StageProgress, quiet_mlflow, run_main
from pipeline.data.mnist import load_prepared
from pipeline.common.params import load_params
from pipeline.gan.training_run import checkpoint_path, finish_run, train_tracked
from pipeline.gan.variants import save_generator


def main() -> None:
    params = load_params()
    root = layout.repo_root()
    tracking.check_store(tracking.tracking_uri(root))  # a bad MLFLOW_TRACKING_URI fails before any loading
    data = load_prepared(layout.PREPARED)
    classifier, ref = evaluator.load(layout.CLASSIFIER), reference.load(layout.REFERENCE)
    with quiet_mlflow(), StageProgress(f"train {params.model}", params.variant.iterations) as bar:
        result = train_tracked(
            params, root, data, classifier, ref, progress=lambda done, total, **latest: bar.update(done, **latest)
        )
    save_generator(layout.GENERATOR, result.generator, params.variant)
    atomic.write_text(layout.RESOLVED_VARIANT, yaml.safe_dump(params.variant.model_dump(mode="json"), sort_keys=False))
    tables.write_csv(layout.LOSS_HISTORY, result.losses)
    tables.write_csv(layout.COLLAPSE_CURVE, result.collapse_curve)
    atomic.write_json(layout.RUN_INFO, {"run_id": result.run_id})
    # Only results go in the metrics file, so the same params and seed give an identical file; the
    # wall time and device are logged to MLflow instead.
    final = {k: round(v, 6) for k, v in result.final_losses.items()}
    atomic.write_json(layout.TRAIN_METRICS, {**final, "iterations": params.variant.iterations})
    with quiet_mlflow():
        finish_run(result, params.variant.iterations)
    checkpoint_path(params, root).unlink(missing_ok=True)  # finished: nothing left to resume
    resumed = f" (resumed from iteration {result.resumed_from})" if result.resumed_from else ""
    print(f"trained {params.model} on {result.device} in {result.seconds:.1f} s{resumed}; MLflow run {result.run_id}")


if __name__ == "__main__":
    run_main(main)

"""DVC stage: sample the trained generator and measure it with the collapse instrument."""

import json

import numpy as np

from pipeline.common import atomic, layout, tables, tracking
from pipeline.instrument import evaluator, reference, stacked
from pipeline.gan import sampling
from pipeline.common.console import run_main, stderr
from pipeline.instrument.evaluation import (
    evaluate_images, first_collapse_step, first_full_coverage_step, metrics_for_dvc, requested_labels,
)
from pipeline.reports.figures import save_png
from pipeline.common.params import load_params
from pipeline.gan.training_run import GRID_SEED_OFFSET
from pipeline.gan.generator_file import load_generator


def main() -> None:
    params = load_params()
    generator, variant = load_generator(layout.GENERATOR)
    classifier, ref = evaluator.load(layout.CLASSIFIER), reference.load(layout.REFERENCE)
    calibration = json.loads(layout.CALIBRATION.read_text())
    is_stacked = params.dataset == "stacked-mnist"
    # Stacked MNIST counts modes on the papers' 26,000 samples; its channels get the MNIST instrument on the
    # first evaluate.n_samples of them (the size the verdict is calibrated for).
    n = params.stacked_mnist.eval_samples if is_stacked else params.evaluate.n_samples
    labels = requested_labels(n, params.seed, ref) if variant.conditional else None
    with stderr.status(f"sampling and measuring {n} images"):
        images = sampling.to_uint8(sampling.sample(generator, n, seed=params.seed, labels=labels))
        if is_stacked:
            result = stacked.evaluate_stacked(images, classifier, ref, calibration, params.evaluate, params.evaluator.seed)
        else:
            result = evaluate_images(images, labels, classifier, ref, calibration, params.evaluate, params.evaluator.seed)
    curve = tables.read_csv(layout.COLLAPSE_CURVE)
    if "replica" in curve:  # until evaluation is per replica: replica 0, the generator evaluated here
        curve = curve[curve["replica"] == 0]
    result["first_full_coverage_iteration"] = first_full_coverage_step(curve)
    result["first_collapse_iteration"] = first_collapse_step(curve)
    grid = sampling.sample_grid(generator, params.seed + GRID_SEED_OFFSET)

    extra = {} if labels is None else {"labels": labels.astype(np.uint8)}
    atomic.save_npz(layout.SAMPLES, images=images, **extra)
    save_png(layout.SAMPLE_GRID, grid)
    tables.write_csv(
        layout.CLASS_HISTOGRAM,
        [{"digit": d, "samples": result["class_shares"][d], "mnist": float(ref.class_hist[d])} for d in range(10)],
    )
    atomic.write_json(layout.EVALUATION, result)
    metrics = metrics_for_dvc(result)
    if is_stacked:
        metrics.update({k: v for k, v in stacked.summary([result]).items() if not k.endswith("_iqr")})
        tables.write_csv(layout.MODE_HISTOGRAM, stacked.histogram_rows([result]))
    else:  # declared in dvc.yaml for every dataset; MNIST has no digit triples to count
        atomic.write_text(layout.MODE_HISTOGRAM, "mode,samples,uniform\n")
    atomic.write_json(layout.EVALUATE_METRICS, metrics)

    import mlflow

    run_id = json.loads(layout.RUN_INFO.read_text())["run_id"]
    with tracking.reopen_run(layout.repo_root(), run_id, params.model, params.seed):
        mlflow.log_metrics({f"eval_{k}": v for k, v in metrics.items()})
        mlflow.set_tags({"collapse": result["collapse"]["kind"]})
        mlflow.log_dict(result, "evaluation/evaluation.json")
        mlflow.log_image(grid, "evaluation/sample_grid.png")
    verdict = result["collapse"]
    headline = f"collapse: {verdict['kind']} (severity {verdict['severity']}, borderline {verdict['borderline']})"
    print(headline + "".join(f"\n  - {e}" for e in verdict["evidence"]))
    if is_stacked:
        print(f"Stacked MNIST: {result['modes_captured']} of 1000 modes, KL {result['mode_kl']:.2f} "
              f"(real data at {n} samples: {result['real_modes_captured']}, KL {result['real_mode_kl']:.2f})")


if __name__ == "__main__":
    run_main(main)

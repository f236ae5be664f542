"""DVC stage: sample the trained generator and measure it with the collapse instrument."""

import json

import numpy as np

from pipeline.common import atomic, layout, tables, tracking
from pipeline.instrument import evaluator, reference
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
    tracking.check_store(tracking.tracking_uri(layout.repo_root()))  # a bad store fails before the work
    for out in (layout.SAMPLES, layout.EVALUATION, layout.EVALUATE_METRICS):
        atomic.check_writable(out)  # so does an unwritable output folder
    generator, variant = load_generator(layout.GENERATOR)
    classifier, ref = evaluator.load(layout.CLASSIFIER), reference.load(layout.REFERENCE)
    calibration = json.loads(layout.CALIBRATION.read_text())
    n = params.evaluate.n_samples
    labels = requested_labels(n, params.seed, ref) if variant.conditional else None
    with stderr.status(f"sampling and measuring {n} images"):
        images = sampling.to_uint8(sampling.sample(generator, n, seed=params.seed, labels=labels))
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
    atomic.write_json(layout.EVALUATE_METRICS, metrics_for_dvc(result))

    import mlflow

    run_id = json.loads(layout.RUN_INFO.read_text())["run_id"]
    with tracking.reopen_run(layout.repo_root(), run_id, params.model, params.seed):
        mlflow.log_metrics({f"eval_{k}": v for k, v in metrics_for_dvc(result).items()})
        mlflow.set_tags({"collapse": result["collapse"]["kind"]})
        mlflow.log_dict(result, "evaluation/evaluation.json")
        mlflow.log_image(grid, "evaluation/sample_grid.png")
    verdict = result["collapse"]
    headline = f"collapse: {verdict['kind']} (severity {verdict['severity']}, borderline {verdict['borderline']})"
    print(headline + "".join(f"\n  - {e}" for e in verdict["evidence"]))


if __name__ == "__main__":
    run_main(main)

"""DVC stage: sample the trained generator and measure it with the collapse instrument."""

import json

import numpy as np

from pipeline.common import atomic, layout, tables, tracking, views
from pipeline.instrument import evaluator, reference
from pipeline.gan import sampling
from pipeline.common.console import StageProgress, quiet_mlflow, run_main
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
    n = params.evaluate.n_samples
    labels = requested_labels(n, params.seed, ref) if variant.conditional else None
    # Two steps, sample and measure (the long one); without a terminal each is one plain log line.
    with quiet_mlflow(), StageProgress(f"evaluate {params.model} ({n} samples)", 2) as bar:
        images = sampling.to_uint8(sampling.sample(generator, n, seed=params.seed, labels=labels))
        bar.advance(step="sampled")
        result = evaluate_images(images, labels, classifier, ref, calibration, params.evaluate, params.evaluator.seed)
        bar.advance(step="measured", fld=result["fld"], coverage=result["class_coverage"])
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
    atomic.write_json(layout.EVALUATE_METRICS, {**metrics_for_dvc(result), **views.verdict_metrics(result)})

    import mlflow

    run_id = json.loads(layout.RUN_INFO.read_text())["run_id"]
    with quiet_mlflow(), tracking.reopen_run(layout.repo_root(), run_id, params.model, params.seed):
        mlflow.log_metrics(tracking.metric_names(tracking.EVAL, metrics_for_dvc(result)))
        mlflow.set_tags({"collapse": result["collapse"]["kind"]})
        mlflow.set_tags(tracking.verdict_tags(result, params.model, params.seed, calibration))
        mlflow.log_dict(result, "evaluation/evaluation.json")
        mlflow.log_image(grid, "evaluation/sample_grid.png")
    verdict = result["collapse"]
    headline = f"collapse: {verdict['kind']} (severity {verdict['severity']}, borderline {verdict['borderline']})"
    print(headline + "".join(f"\n  - {e}" for e in verdict["evidence"]))


if __name__ == "__main__":
    run_main(main)

"""DVC stage: write the per-run report (markdown + self-contained HTML) and log it to the MLflow run."""

import json

import numpy as np

from pipeline.instrument import evaluator, reference
from pipeline.common import cpu_threads, layout, mlflow_store, run_identity, run_lifecycle, tables
from pipeline.common.console import run_main, stderr
from pipeline.data.mnist import load_prepared
from pipeline.common.params import load_params
from pipeline.reports import output, run_report
from pipeline.reports.neighbours import nearest_training


def main() -> None:
    params = load_params()
    cpu_threads.use(params.evaluator.threads)
    mlflow_store.check_store(mlflow_store.tracking_uri(layout.repo_root()))  # a bad store fails before the work
    run_id = json.loads(layout.RUN_INFO.read_text())["run_id"]
    with stderr.status("finding the samples' nearest training images"):
        with np.load(layout.SAMPLES) as f:
            samples, labels = f["images"], (f["labels"] if "labels" in f else None)
        if samples.ndim == 4:  # Stacked MNIST (N, 3, 28, 28): each channel beside its nearest training digit
            samples = samples.reshape(-1, 28, 28)
        ref = reference.load(layout.REFERENCE)
        panel = nearest_training(
            samples,
            labels,
            evaluator.load(layout.CLASSIFIER),
            ref,
            load_prepared(layout.PREPARED).x_train,
            params.report.neighbour_panel,
        )
    inputs = run_report.RunInputs(
        model=params.model,
        seed=params.seed,
        variant=params.variant.model_dump(mode="json"),
        evaluation=json.loads(layout.EVALUATION.read_text()),
        calibration=json.loads(layout.CALIBRATION.read_text()),
        replica_grids={
            int(path.stem.removeprefix("replica_")): path.read_bytes()
            for path in layout.REPLICA_GRIDS.glob("replica_*.png")
        },
        class_histogram=tables.read_csv(layout.CLASS_HISTOGRAM),
        # Every replica's curves in long format: the report states the WGAN claim per replica.
        losses=tables.read_csv(layout.LOSS_HISTORY),
        collapse_curve=tables.read_csv(layout.COLLAPSE_CURVE),
        neighbours=panel,
        run_id=run_id,
        evaluator_accuracy=float(ref.test_accuracy),
        dvc_exp=run_identity.identity_tags(params.model, params.seed)["dvc_exp_name"],
    )
    with stderr.status("drawing the report"):
        doc = run_report.build(inputs)
        output.write(doc, layout.REPORTS_DIR, "report", run_report.FIGURE_DIR)

    import mlflow

    with run_lifecycle.reopen_run(layout.repo_root(), run_id, params.model, params.seed):
        mlflow.log_artifact(str(layout.REPORTS_DIR / "report.html"), "report")
        mlflow.log_artifact(str(layout.REPORTS_DIR / "report.md"), "report")
        # The markdown links figures/<name>.png, so they sit beside it in the run's artifacts too.
        mlflow.log_artifacts(str(layout.REPORTS_DIR / run_report.FIGURE_DIR), f"report/{run_report.FIGURE_DIR}")
    s = inputs.evaluation["summary"]
    print(f"wrote {layout.REPORTS_DIR}/report.html and report.md (collapse in {s['collapsed']} of {s['evaluated']} "
          f"evaluated replicas, {s['diverged']} diverged)")


if __name__ == "__main__":
    run_main(main)

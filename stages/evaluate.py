"""DVC stage: sample every trained replica and measure it with the collapse instrument; summarise the
replicas as a collapse rate with its interval and medians."""

import json

import numpy as np

from pipeline.common import atomic, cpu_threads, layout, mlflow_store, tables
from pipeline.common.console import StageProgress, quiet_mlflow, run_main
from pipeline.common.params import load_params
from pipeline.gan.generator_file import load_generators
from pipeline.instrument import evaluator, mode_counter, reference, stacked
from pipeline.instrument.replica_summary import replica_rows
from pipeline.runs import replica_evaluation, replica_tracking
from pipeline.reports.figures import save_png


def main() -> None:
    params = load_params()
    cpu_threads.use(params.evaluator.threads)
    mlflow_store.check_store(mlflow_store.tracking_uri(layout.repo_root()))  # a bad store fails before the work
    for out in (layout.SAMPLES, layout.EVALUATION, layout.EVALUATE_METRICS):
        atomic.check_writable(out)  # so does an unwritable output folder
    replicas, variant = load_generators(layout.GENERATOR)
    replica_evaluation.check_some_replica_trained(replicas, params.model)
    classifier, ref = evaluator.load(layout.CLASSIFIER), reference.load(layout.REFERENCE)
    calibration = json.loads(layout.CALIBRATION.read_text())
    is_stacked = params.dataset == "stacked-mnist"
    released_counter = mode_counter.load(layout.MODE_COUNTER) if is_stacked else None  # PacGAN's, for the mode counts
    n = replica_evaluation.sample_count(params)
    live = sum(rep.generator is not None for rep in replicas)
    # One step per live replica (sample and measure); without a terminal each is one plain log line.
    with quiet_mlflow(), StageProgress(f"evaluate {params.model} x{live} ({n} samples each)", live) as bar:
        evaluation = replica_evaluation.evaluate_replicas(
            params, replicas, variant.conditional, classifier, ref, calibration,
            tables.read_csv(layout.COLLAPSE_CURVE), progress=bar.update, released_counter=released_counter,
        )

    evaluated = evaluation.evaluated
    if evaluated:
        images, labels = evaluation.first_samples
        atomic.save_npz(layout.SAMPLES, images=images, **({} if labels is None else {"labels": labels.astype(np.uint8)}))
        save_png(layout.SAMPLE_GRID, evaluation.grids[evaluated[0].index])
        tables.write_csv(layout.CLASS_HISTOGRAM, replica_evaluation.class_histogram_rows(evaluated, ref))
    for index, grid in evaluation.grids.items():
        save_png(layout.REPLICA_GRIDS / f"replica_{index}.png", grid)
    tables.write_csv(layout.REPLICA_TABLE, replica_rows(evaluation.outcomes))
    if is_stacked:
        tables.write_csv(layout.MODE_HISTOGRAM, stacked.histogram_rows([o.result for o in evaluated]))
    else:  # declared in dvc.yaml for every dataset; MNIST has no digit triples to count
        atomic.write_text(layout.MODE_HISTOGRAM, "mode,samples,uniform\n")
    document = replica_evaluation.summary_document(evaluation, is_stacked)
    atomic.write_json(layout.EVALUATION, document)
    atomic.write_json(layout.EVALUATE_METRICS, document["summary"])

    run_info = json.loads(layout.RUN_INFO.read_text())
    with quiet_mlflow():
        replica_tracking.log_evaluation(layout.repo_root(), run_info, params.model, params.seed,
                                        evaluation.outcomes, evaluation.grids, document, calibration)
    print(replica_evaluation.describe_outcomes(evaluation.outcomes, is_stacked, n))


if __name__ == "__main__":
    run_main(main)

"""DVC stage: sample every trained replica and measure it with the collapse instrument; summarise the
replicas as a collapse rate with its interval and medians."""

import json
from typing import Any

import numpy as np

from pipeline.common import atomic, cpu_threads, layout, replica_tracking, tables, tracking, views
from pipeline.common.console import StageProgress, quiet_mlflow, run_main
from pipeline.common.errors import GanpipeError
from pipeline.common.params import load_params
from pipeline.gan import sampling
from pipeline.gan.generator_file import load_generators
from pipeline.gan.replicas import replica_seed
from pipeline.gan.training_run import GRID_SEED_OFFSET
from pipeline.instrument import evaluator, reference, stacked
from pipeline.instrument.evaluation import (
    evaluate_images, first_collapse_step, first_full_coverage_step, requested_labels,
)
from pipeline.instrument.rates import rate_of
from pipeline.instrument.replica_summary import ReplicaOutcome, evaluation_document, replica_rows
from pipeline.reports.figures import save_png


def collapse_kind_metrics(outcomes: list[ReplicaOutcome]) -> dict[str, Any]:
    """`collapse_kind` / `collapse_code` for `dvc exp show`: the verdict kind of the median replica, i.e. the
    median of the evaluated replicas' kind codes (0 none < 1 intra < 2 inter < 3 both; with an even count the
    lower middle one, so a tie between clean and collapsed reads as the milder kind). No replica evaluated:
    "diverged" with code -1."""
    codes = sorted(views.KIND_CODES[o.result["collapse"]["kind"]] for o in outcomes if o.result is not None)
    if not codes:
        return {"collapse_kind": "diverged", "collapse_code": -1}
    code = codes[(len(codes) - 1) // 2]
    kind = next(k for k, c in views.KIND_CODES.items() if c == code)
    return {"collapse_kind": kind, "collapse_code": code}


def main() -> None:
    params = load_params()
    cpu_threads.use(params.evaluator.threads)
    tracking.check_store(tracking.tracking_uri(layout.repo_root()))  # a bad store fails before the work
    for out in (layout.SAMPLES, layout.EVALUATION, layout.EVALUATE_METRICS):
        atomic.check_writable(out)  # so does an unwritable output folder
    replicas, variant = load_generators(layout.GENERATOR)
    if all(rep.generator is None for rep in replicas):
        reasons = "; ".join(f"replica {rep.index}: {rep.diverged}" for rep in replicas)
        raise GanpipeError(
            f"every replica of {params.model} diverged in training, so there is nothing to evaluate ({reasons}). "
            f"Lower variants.{params.model}.lr or change the seed in params.yaml, then run `dvc repro` again."
        )
    classifier, ref = evaluator.load(layout.CLASSIFIER), reference.load(layout.REFERENCE)
    calibration = json.loads(layout.CALIBRATION.read_text())
    curve = tables.read_csv(layout.COLLAPSE_CURVE)
    is_stacked = params.dataset == "stacked-mnist"
    # Stacked MNIST counts modes on the papers' 26,000 samples; its channels get the MNIST instrument on the
    # first evaluate.n_samples of them (the size the verdict is calibrated for).
    n = params.stacked_mnist.eval_samples if is_stacked else params.evaluate.n_samples
    outcomes, grids, samples = [], {}, {}
    live = sum(rep.generator is not None for rep in replicas)
    # One step per live replica (sample and measure); without a terminal each is one plain log line.
    progress = StageProgress(f"evaluate {params.model} x{live} ({n} samples each)", live)
    with quiet_mlflow(), progress as bar:
        for rep in replicas:
            if rep.generator is None:
                outcomes.append(ReplicaOutcome(rep.index, rep.seed, None, None, rep.diverged))
                continue
            # Replica r's evaluation samples come from its own (seed, r) stream, so they do not depend on R.
            sample_seed = replica_seed(params.seed, rep.index)
            labels = requested_labels(n, sample_seed, ref) if variant.conditional else None
            images = sampling.to_uint8(sampling.sample(rep.generator, n, seed=sample_seed, labels=labels))
            if is_stacked:
                result = stacked.evaluate_stacked(images, classifier, ref, calibration, params.evaluate, params.evaluator.seed)
            else:
                result = evaluate_images(images, labels, classifier, ref, calibration, params.evaluate, params.evaluator.seed)
            own_curve = curve[curve["replica"] == rep.index] if curve is not None and "replica" in curve else curve
            result["first_full_coverage_iteration"] = first_full_coverage_step(own_curve)
            result["first_collapse_iteration"] = first_collapse_step(own_curve)
            # Every replica's grid uses the same fixed noise, so grids differ only by what the replicas learnt.
            grids[rep.index] = sampling.sample_grid(rep.generator, params.seed + GRID_SEED_OFFSET)
            samples.setdefault("first", (images, labels))
            outcomes.append(ReplicaOutcome(rep.index, rep.seed, sample_seed, result))
            bar.update(len(outcomes) - sum(o.result is None for o in outcomes), replica=rep.index,
                       fld=result["fld"], coverage=result["class_coverage"])

    document = evaluation_document(outcomes)
    evaluated = [o for o in outcomes if o.result is not None]
    if evaluated:
        # DESIGN's sample file and the single grid hold the first evaluated replica (replica 0 unless it diverged).
        images, labels = samples["first"]
        atomic.save_npz(layout.SAMPLES, images=images, **({} if labels is None else {"labels": labels.astype(np.uint8)}))
        save_png(layout.SAMPLE_GRID, grids[evaluated[0].index])
        hist = {f"replica_{o.index}": o.result["class_shares"] for o in evaluated}
        tables.write_csv(layout.CLASS_HISTOGRAM, [
            {"digit": d, "samples": float(np.mean([h[d] for h in hist.values()])), "mnist": float(ref.class_hist[d]),
             **{k: h[d] for k, h in hist.items()}}
            for d in range(10)
        ])
    for index, grid in grids.items():
        save_png(layout.REPLICA_GRIDS / f"replica_{index}.png", grid)
    tables.write_csv(layout.REPLICA_TABLE, replica_rows(outcomes))
    if is_stacked:  # the mode counts join the summary, so evaluate.json and the MLflow parent both carry them
        document["summary"].update(stacked.summary([o.result for o in evaluated]))
        tables.write_csv(layout.MODE_HISTOGRAM, stacked.histogram_rows([o.result for o in evaluated]))
    else:  # declared in dvc.yaml for every dataset; MNIST has no digit triples to count
        atomic.write_text(layout.MODE_HISTOGRAM, "mode,samples,uniform\n")
    document["summary"].update(collapse_kind_metrics(outcomes))
    atomic.write_json(layout.EVALUATION, document)
    atomic.write_json(layout.EVALUATE_METRICS, document["summary"])

    run_info = json.loads(layout.RUN_INFO.read_text())
    with quiet_mlflow():
        replica_tracking.log_evaluation(
            layout.repo_root(), run_info, params.model, params.seed, outcomes, grids, document, calibration
        )
    rate = rate_of(o.collapsed for o in outcomes)
    print(f"collapse in {rate.describe()} replicas")
    for o in outcomes:
        if o.result is None:
            print(f"  replica {o.index}: diverged ({o.diverged})")
        else:
            verdict = o.result["collapse"]
            print(f"  replica {o.index}: {verdict['kind']}" + "".join(f"\n    - {e}" for e in verdict["evidence"]))
            if is_stacked:
                print(f"    Stacked MNIST: {o.result['modes_captured']} of 1000 modes, KL {o.result['mode_kl']:.2f} "
                      f"(real data at {n} samples: {o.result['real_modes_captured']}, KL {o.result['real_mode_kl']:.2f})")


if __name__ == "__main__":
    run_main(main)

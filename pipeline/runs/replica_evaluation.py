"""The evaluate stage's work: sample every trained replica and measure it with the collapse instrument,
then sum the replicas up as a collapse rate with its interval and medians.

The stage passes in validated params and loaded inputs, and writes what this module returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd

from pipeline.common import views
from pipeline.common.errors import GanpipeError
from pipeline.common.params import Params
from pipeline.gan import sampling
from pipeline.gan.generator_file import ReplicaGenerator
from pipeline.gan.replicas import replica_seed
from pipeline.instrument import stacked
from pipeline.instrument.evaluation import (
    evaluate_images, first_collapse_step, first_full_coverage_step, requested_labels,
)
from pipeline.instrument.evaluator import MnistCNN
from pipeline.instrument.rates import rate_of
from pipeline.instrument.reference import Reference
from pipeline.instrument.replica_summary import ReplicaOutcome, evaluation_document


@dataclass
class ReplicaEvaluation:
    outcomes: list[ReplicaOutcome] = field(default_factory=list)
    grids: dict[int, np.ndarray] = field(default_factory=dict)  # every evaluated replica's fixed-noise grid
    # outputs/evaluate/samples.npz (the file `ganpipe evaluate --samples` reads) holds the first evaluated
    # replica (replica 0 unless it diverged): its images and, for a conditional model, the labels asked for.
    first_samples: tuple[np.ndarray, np.ndarray | None] | None = None

    @property
    def evaluated(self) -> list[ReplicaOutcome]:
        return [o for o in self.outcomes if o.result is not None]


def check_some_replica_trained(replicas: list[ReplicaGenerator], model: str) -> None:
    if all(rep.generator is None for rep in replicas):
        reasons = "; ".join(f"replica {rep.index}: {rep.diverged}" for rep in replicas)
        raise GanpipeError(
            f"every replica of {model} diverged in training, so there is nothing to evaluate ({reasons}). "
            f"Lower variants.{model}.lr or change the seed in params.yaml, then run `dvc repro` again."
        )


def sample_count(params: Params) -> int:
    """Stacked MNIST counts modes on the papers' samples (26,000, or the preset's protocol: 25,600 in PacGAN's
    Table 3); its channels get the MNIST instrument on the first evaluate.n_samples of them (the size the
    verdict is calibrated for)."""
    return params.stacked_eval_samples if params.dataset == "stacked-mnist" else params.evaluate.n_samples


def evaluate_replicas(
    params: Params,
    replicas: list[ReplicaGenerator],
    conditional: bool,
    classifier: MnistCNN,
    ref: Reference,
    calibration: dict[str, Any],
    curve: pd.DataFrame,
    progress: Callable[..., None] = lambda done, **latest: None,
    released_counter: stacked.ModeClassifier | None = None,
) -> ReplicaEvaluation:
    """Sample and measure each live replica; `progress(done, replica=, fld=, coverage=)` after each. Stacked MNIST
    also counts modes every way (stacked.count_ways) with the evaluator and `released_counter` (PacGAN's)."""
    evaluation = ReplicaEvaluation()
    n = sample_count(params)
    is_stacked = params.dataset == "stacked-mnist"
    for rep in replicas:
        if rep.generator is None:
            evaluation.outcomes.append(ReplicaOutcome(rep.index, rep.seed, None, None, rep.diverged))
            continue
        # Replica r's evaluation samples come from its own (seed, r) stream, so they do not depend on R.
        sample_seed = replica_seed(params.seed, rep.index)
        labels = requested_labels(n, sample_seed, ref) if conditional else None

        def draw(how: str, generator=rep.generator, seed=sample_seed, labels=labels) -> np.ndarray:
            return sampling.to_uint8(sampling.sample(generator, n, seed=seed, labels=labels,
                                                     **sampling.way_of_sampling(params.variant, how)))

        images = draw(params.variant.mode_count_sampling if is_stacked else "running-stats")
        result = _measure(images, labels, params, classifier, ref, calibration, released_counter)
        if is_stacked:
            result["mode_count_ways"] = _count_every_way(draw, classifier, released_counter)
        own_curve = curve[curve["replica"] == rep.index] if curve is not None and "replica" in curve else curve
        result["first_full_coverage_iteration"] = first_full_coverage_step(own_curve)
        result["first_collapse_iteration"] = first_collapse_step(own_curve)
        # Every replica's grid uses the same fixed noise, so grids differ only by what the replicas learnt.
        evaluation.grids[rep.index] = sampling.sample_grid(rep.generator, params.seed + sampling.GRID_SEED_OFFSET)
        if evaluation.first_samples is None:
            evaluation.first_samples = (images, labels)
        evaluation.outcomes.append(ReplicaOutcome(rep.index, rep.seed, sample_seed, result))
        progress(len(evaluation.evaluated), replica=rep.index, fld=result["fld"], coverage=result["class_coverage"])
    return evaluation


def _measure(images: np.ndarray, labels: np.ndarray | None, params: Params, classifier: MnistCNN,
             ref: Reference, calibration: dict[str, Any], released_counter: stacked.ModeClassifier | None) -> dict[str, Any]:
    if params.dataset == "stacked-mnist":
        # the headline mode count reads channels with the preset's classifier; the MNIST metrics with the evaluator's
        counter = released_counter if params.variant.mode_count_classifier == "released-cnn" else None
        if counter is None and params.variant.mode_count_classifier == "released-cnn":
            raise GanpipeError(f"model {params.model} counts modes with PacGAN's released counter, but none was loaded. "
                               "Run the pipeline with `dvc repro` (its mode_counter stage trains it for Stacked MNIST).")
        return stacked.evaluate_stacked(images, classifier, ref, calibration, params.evaluate, params.evaluator.seed,
                                        counter=counter)
    return evaluate_images(images, labels, classifier, ref, calibration, params.evaluate, params.evaluator.seed)


def _count_every_way(draw: Callable[[str], np.ndarray], classifier: MnistCNN,
                     released_counter: stacked.ModeClassifier | None) -> dict[str, Any]:
    """Modes counted every way (each classifier at hand, each sampling), as PacGAN's protocol and as ganpipe's."""
    classifiers = {"evaluator": classifier}
    if released_counter is not None:
        classifiers["released-cnn"] = released_counter.model
    return stacked.count_ways(draw, classifiers)


def class_histogram_rows(evaluated: list[ReplicaOutcome], ref: Reference) -> list[dict[str, Any]]:
    """Per digit: the mean share over the evaluated replicas, MNIST's share, and each replica's share."""
    hist = {f"replica_{o.index}": o.result["class_shares"] for o in evaluated}
    return [
        {"digit": d, "samples": float(np.mean([h[d] for h in hist.values()])), "mnist": float(ref.class_hist[d]),
         **{k: h[d] for k, h in hist.items()}}
        for d in range(10)
    ]


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


def summary_document(evaluation: ReplicaEvaluation, is_stacked: bool) -> dict[str, Any]:
    """outputs/evaluate/evaluation.json: {"summary", "replicas"}; its summary is metrics/evaluate.json."""
    document = evaluation_document(evaluation.outcomes)
    if is_stacked:  # the mode counts join the summary, so evaluate.json and the MLflow parent both carry them
        document["summary"].update(stacked.summary([o.result for o in evaluation.evaluated]))
    document["summary"].update(collapse_kind_metrics(evaluation.outcomes))
    return document


def describe_outcomes(outcomes: list[ReplicaOutcome], is_stacked: bool, n: int) -> str:
    """What the stage prints: the collapse rate, then each replica's verdict and evidence."""
    lines = [f"collapse in {rate_of(o.collapsed for o in outcomes).describe()} replicas"]
    for o in outcomes:
        if o.result is None:
            lines.append(f"  replica {o.index}: diverged ({o.diverged})")
            continue
        verdict = o.result["collapse"]
        lines.append(f"  replica {o.index}: {verdict['kind']}" + "".join(f"\n    - {e}" for e in verdict["evidence"]))
        if is_stacked:
            lines.append(
                f"    Stacked MNIST: {o.result['modes_captured']} of 1000 modes, KL {o.result['mode_kl']:.2f} "
                f"(real data at {n} samples: {o.result['real_modes_captured']}, KL {o.result['real_mode_kl']:.2f})"
            )
    return "\n".join(lines)

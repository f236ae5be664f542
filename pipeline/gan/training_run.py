"""One tracked training run: trainer + checkpoints + in-training collapse checks + MLflow.

The stage module passes in validated params and loaded inputs; this module wires the trainer's hooks
to checkpoints, MLflow and the progress bar, and returns what the stage writes as outputs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from pipeline.gan import checkpoints, sampling
from pipeline.common import devices, tracking
from pipeline.instrument import evaluation
from pipeline.common.errors import TrainingDiverged
from pipeline.instrument.evaluator import MnistCNN
from pipeline.data.mnist import MNIST
from pipeline.common.params import Params
from pipeline.instrument.reference import Reference
from pipeline.gan.trainer import Hooks, NonFiniteTraining, Schedule, Trainer, fit
from pipeline.gan.variants import build

GRID_SEED_OFFSET = 1_000_003  # the fixed-noise grid uses its own stream, apart from training draws


@dataclass
class RunResult:
    generator: torch.nn.Module
    run_id: str
    losses: list[dict[str, float]] = field(default_factory=list)
    collapse_curve: list[dict[str, Any]] = field(default_factory=list)
    final_losses: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    resumed_from: int = 0
    device: str = "cpu"


def _quick_eval_labels(n: int, seed: int, ref: Reference) -> np.ndarray:
    # Conditional samples ask for digits in MNIST's proportions, so the class histogram is comparable.
    return np.random.default_rng(seed).choice(10, size=n, p=ref.class_hist)


def train_tracked(
    params: Params,
    root: Path,
    data: MNIST,
    classifier: MnistCNN,
    ref: Reference,
    progress: Callable[..., None] = lambda done, total, **latest: None,
) -> RunResult:
    import mlflow

    v, t = params.variant, params.train
    device = devices.resolve(t.device)
    fp = checkpoints.fingerprint(params, device)
    ckpt_path = checkpoints.path_for(root, params, fp)
    saved = checkpoints.load(ckpt_path, fp)
    experiment_id = tracking.connect(root)  # fails fast on a bad MLFLOW_TRACKING_URI

    images = devices.images_to_device(data.x_train, device)
    labels = torch.from_numpy(data.y_train.astype(np.int64)).to(device)
    parts = build(v, device, params.seed)
    if t.compile:
        parts.generator.compile()
        parts.critic.compile()
    trainer = Trainer(parts, images, labels, params.seed)
    result = RunResult(generator=parts.generator, run_id="", device=str(device))
    if saved is not None:
        trainer.load_state_dict(saved["trainer"])
        result.losses, result.collapse_curve = saved["losses"], saved["collapse_curve"]
        result.resumed_from = trainer.step

    run_name, tags = tracking.run_identity(params.model, params.seed)
    run = tracking.retry_locked(
        lambda: mlflow.start_run(
            run_id=saved["run_id"] if saved else None,
            experiment_id=None if saved else experiment_id,
            run_name=None if saved else run_name,
            tags=None if saved else tags,
            log_system_metrics=True,
        )
    )
    result.run_id = run.info.run_id
    metrics = tracking.MetricBuffer(result.run_id)
    if not saved:
        tracking.log_params_flat({**tracking.run_params(params), "train/resolved_device": str(device)})
    else:  # a resumed experiment may carry a new DVC experiment name: the run follows it
        tracking.retry_locked(lambda: mlflow.set_tags(tracking.identity_tags(params.model, params.seed)))

    eval_n = t.eval_samples
    eval_labels = _quick_eval_labels(eval_n, params.seed, ref) if v.conditional else None
    grid_seed = params.seed + GRID_SEED_OFFSET

    def on_log(step: int, losses: dict[str, float]) -> None:
        result.losses.append({"step": step, **losses})
        metrics.add(step, tracking.metric_names(tracking.TRAIN, losses))
        progress(step, v.iterations, **losses)

    def on_eval(step: int) -> None:
        imgs = sampling.sample(parts.generator, eval_n, seed=params.seed + step, labels=eval_labels)
        quick = evaluation.quick_metrics(imgs, classifier, ref, params.evaluate.verdict.min_share_ratio)
        result.collapse_curve.append({"step": step, **quick})
        metrics.add(step, tracking.metric_names(tracking.TRAIN, quick))
        progress(step, v.iterations, coverage=quick["class_coverage"], fld=quick["fld"])

    def on_sample(step: int) -> None:
        metrics.flush()
        grid = sampling.sample_grid(parts.generator, grid_seed)
        tracking.retry_locked(lambda: mlflow.log_image(grid, key="samples", step=step))

    def on_checkpoint(step: int) -> None:
        metrics.flush()
        checkpoints.save(
            ckpt_path,
            {
                "fingerprint": fp,
                "run_id": result.run_id,
                "trainer": trainer.state_dict(),
                "losses": result.losses,
                "collapse_curve": result.collapse_curve,
            },
        )

    schedule = Schedule(v.iterations, t.log_every, t.checkpoint_every, t.sample_every, t.eval_every)
    if trainer.step == 0:
        on_sample(0)  # the untrained generator's grid: MLflow's image slider starts at step 0
    start = time.perf_counter()
    try:
        fit(trainer, schedule, Hooks(on_log, on_eval, on_sample, on_checkpoint))
    except NonFiniteTraining as exc:
        metrics.flush()
        reason = (
            f"model {params.model} diverged: {exc.what} became NaN/Inf by generator iteration {exc.step} "
            f"(objective {v.objective}, optimizer {v.optimizer}, lr {v.lr}, batch_size {v.batch_size}, "
            f"n_critic {v.n_critic}, clip {v.clip}, seed {params.seed})"
        )
        mlflow.set_tag("failure_reason", reason)
        mlflow.end_run(status="FAILED")
        last_good = f"the last good checkpoint is {ckpt_path}" if ckpt_path.is_file() else "no checkpoint was reached"
        raise TrainingDiverged(
            f"{reason}; {last_good}. Lower variants.{params.model}.lr, switch the objective to bce_logits "
            "(numerically stable), or change the seed in params.yaml, then run `dvc repro` again."
        ) from None
    result.seconds = time.perf_counter() - start
    metrics.flush()
    result.final_losses = {k: val for k, val in result.losses[-1].items() if k != "step"}
    return result


def finish_run(result: RunResult, iterations: int) -> None:
    """Log the final generator as an MLflow model and close the run."""
    import mlflow

    trained = iterations - result.resumed_from
    mlflow.log_metrics(
        {
            tracking.metric_name(tracking.TRAIN, "seconds"): result.seconds,
            tracking.metric_name(tracking.TRAIN, "generator_it_per_s"): trained / result.seconds if result.seconds else 0.0,
            **tracking.metric_names(tracking.TRAIN, {f"final_{k}": v for k, v in result.final_losses.items()}),
        }
    )
    generator = result.generator.to("cpu").eval()
    # The logged model is G's network on one input: z, with the one-hot label appended for a CGAN.
    # A single tensor input lets MLflow store a traced (pt2) graph that loads without ganpipe.
    width = generator.z_dim + generator.n_classes
    mlflow.pytorch.log_model(
        generator.net,
        name="generator",
        input_example=np.zeros((2, width), dtype=np.float32),
        # Listing the requirement skips MLflow's slow dependency inference in a subprocess.
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        metadata={"input": "z" + (" followed by the one-hot digit" if generator.n_classes else ""), "z_dim": generator.z_dim},
    )
    mlflow.end_run()


def checkpoint_path(params: Params, root: Path) -> Path:
    device = devices.resolve(params.train.device)
    return checkpoints.path_for(root, params, checkpoints.fingerprint(params, device))

"""One tracked training of R replicas: trainer + checkpoints + in-training collapse checks + MLflow.

The stage module passes in validated params and loaded inputs; this module wires the trainer's hooks
to checkpoints, MLflow (one parent run, one nested child run per replica) and the progress bar, and
returns what the stage writes as outputs.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from pipeline.common import cpu_threads, devices, mlflow_store, run_identity, run_lifecycle, run_logging
from pipeline.common.errors import Interrupted, TrainingDiverged
from pipeline.common.params import Params
from pipeline.data.mnist import MNIST
from pipeline.data.stacked_mnist import StackedMNIST
from pipeline.data.training_set import training_rows
from pipeline.gan import checkpoints, sampling, threads
from pipeline.gan.replicas import replica_seeds
from pipeline.gan.trainer import Hooks, NonFiniteTraining, Schedule, Trainer, fit
from pipeline.instrument import evaluation
from pipeline.instrument.evaluator import MnistCNN
from pipeline.instrument.stacked import quick_modes
from pipeline.instrument.reference import Reference


@dataclass
class RunResult:
    trainer: Trainer
    run_id: str  # the parent run
    replica_run_ids: list[str]
    seeds: list[int]
    losses: list[dict[str, float]] = field(default_factory=list)  # long format: step, replica, losses
    collapse_curve: list[dict[str, Any]] = field(default_factory=list)  # step, replica, quick metrics
    final_losses: dict[int, dict[str, float]] = field(default_factory=dict)  # per finished replica
    diverged: dict[int, str] = field(default_factory=dict)  # replica -> reason
    seconds: float = 0.0
    resumed_from: int = 0
    device: str = "cpu"
    threads: int = 1

    def generators(self) -> list[torch.nn.Module | None]:
        return self.trainer.generators()


def _quick_eval_labels(n: int, seed: int, ref: Reference) -> np.ndarray:
    # Conditional samples ask for digits in MNIST's proportions, so the class histogram is comparable.
    return np.random.default_rng(seed).choice(10, size=n, p=ref.class_hist)


def median_over_replicas(readings: dict[int, dict[str, float]]) -> dict[str, float]:
    """The progress bar's one number per reading: the median over the live replicas (with 1 replica, its own)."""
    keys = next(iter(readings.values())).keys()
    return {k: float(np.median([reading[k] for reading in readings.values()])) for k in keys}


def divergence_reason(params: Params, r: int, seed: int, what: str, step: int) -> str:
    v = params.variant
    return (
        f"replica {r} of model {params.model} diverged: {what} became NaN/Inf by generator iteration {step} "
        f"(objective {v.objective}, optimizer {v.optimizer}, lr {v.lr}, batch_size {v.batch_size}, "
        f"n_critic {v.n_critic}, clip {v.clip}, gradient_penalty {v.gradient_penalty}, arch {v.arch}, "
        f"pack {v.pack}, spectral_norm {v.spectral_norm}, seed {params.seed}, replica seed {seed})"
    )


def train_tracked(
    params: Params,
    root: Path,
    data: MNIST,
    classifier: MnistCNN,
    ref: Reference,
    progress: Callable[..., None] = lambda done, total, **latest: None,
    trainer_hook: Callable[[Trainer, int], None] = lambda trainer, step: None,
    stacked: StackedMNIST | None = None,
    mode_classifier: torch.nn.Module | None = None,
) -> RunResult:
    """Train every replica; `trainer_hook(trainer, step)` runs after each loss reading (tests use it).
    With `stacked` (the `stack` stage's index triples) the training set is Stacked MNIST, whose modes are counted
    by `mode_classifier` (the preset's mode_count_classifier; default the evaluator `classifier`)."""
    device = devices.resolve(params.train.device)
    n_threads = threads.resolve(params.train.threads, device.type)
    torch.set_num_threads(n_threads)
    fp = checkpoints.fingerprint(params, device)
    ckpt_path = checkpoints.path_for(root, params, fp)
    saved = checkpoints.load(ckpt_path, fp)
    experiment_id = mlflow_store.connect(root)  # fails fast on a bad MLFLOW_TRACKING_URI
    result = _new_or_resumed_result(params, data, device, n_threads, saved, stacked)
    _start_parent_run(params, result, saved, experiment_id)
    # From the parent run's start on, Ctrl-C or SIGTERM ends it and its children KILLED, and any other
    # error ends them FAILED: MLflow's exit handler would otherwise mark the parent FINISHED.
    try:
        with run_lifecycle.run_outcome(result.run_id):
            _open_replica_runs(params, result, saved, experiment_id, device)
            hooks = _TrainingHooks(params, result, classifier, ref, stacked, progress, trainer_hook, ckpt_path, fp)
            hooks.mode_classifier = mode_classifier or classifier
            _fit_tracked(params, result, hooks, ckpt_path)
    except KeyboardInterrupt:
        raise Interrupted(_interrupted_message(params, ckpt_path)) from None
    result.final_losses = _final_losses(result.losses)
    return result


def _new_or_resumed_result(params: Params, data: MNIST, device: torch.device, n_threads: int,
                           saved: dict[str, Any] | None, stacked: StackedMNIST | None) -> RunResult:
    """The replicas' trainer on the training set, restored from the checkpoint `saved` when there is one."""
    seeds = replica_seeds(params.seed, params.replicas)
    images, labels = training_rows(data, device, stacked, params.variant.real_triples)
    # One replica runs as plain (unbatched) calls: vmap only pays off when there is something to batch.
    trainer = Trainer(params.variant, images, labels, seeds, batched=params.replicas > 1)
    result = RunResult(trainer, "", [], seeds, device=str(device), threads=n_threads)
    if saved is not None:
        trainer.load_state_dict(saved["trainer"])
        result.losses, result.collapse_curve = saved["losses"], saved["collapse_curve"]
        result.diverged = {int(r): reason for r, reason in saved["diverged"].items()}
        result.resumed_from = trainer.step
    return result


def _start_parent_run(params: Params, result: RunResult, saved: dict[str, Any] | None, experiment_id: str) -> None:
    """Start the training's parent run, or re-enter that of the checkpoint `saved`."""
    import mlflow

    run_name, tags = run_identity.training_identity(params.model, params.seed, params.replicas)
    run = mlflow_store.retry_locked(
        lambda: mlflow.start_run(
            run_id=saved["run_id"] if saved else None,
            experiment_id=None if saved else experiment_id,
            run_name=None if saved else run_name,
            tags=None if saved else tags,
            log_system_metrics=True,
        )
    )
    result.run_id = run.info.run_id


def _open_replica_runs(params: Params, result: RunResult, saved: dict[str, Any] | None, experiment_id: str,
                       device: torch.device) -> None:
    """Log the parent's params and start one child run per replica, or re-enter those of the checkpoint `saved`."""
    import mlflow

    # Grouped params (variant/…, train/…, eval/…) on the parent and on each child, so the compare page
    # diffs children of different trainings as well as parents.
    flat = {**run_logging.run_params(params), "train/resolved_device": str(device)}
    if saved:
        result.replica_run_ids = saved["replica_run_ids"]
        run_lifecycle.reopen_runs([result.replica_run_ids[r] for r in result.trainer.live])
        # A resumed experiment may carry a new DVC experiment name: parent and children follow it.
        mlflow_store.retry_locked(lambda: mlflow.set_tags(run_identity.identity_tags(params.model, params.seed)))
        for r, run_id in enumerate(result.replica_run_ids):
            run_identity.set_tags_on(run_id, run_identity.identity_tags(params.model, params.seed, replica=r))
    else:
        run_name, tags = run_identity.training_identity(params.model, params.seed, params.replicas)
        run_logging.log_params_flat(flat)
        result.replica_run_ids = run_lifecycle.start_replica_runs(
            experiment_id, result.run_id, run_name, tags, result.seeds, flat
        )


class _TrainingHooks:
    """The trainer's hooks: loss readings, collapse checks, sample grids and checkpoints, each recorded in
    `result`, in the replicas' MLflow runs (buffered) and on the progress bar."""

    def __init__(self, params: Params, result: RunResult, classifier: MnistCNN, ref: Reference,
                 stacked: StackedMNIST | None, progress: Callable[..., None],
                 trainer_hook: Callable[[Trainer, int], None], ckpt_path: Path, fp: str):
        self.params, self.result, self.trainer = params, result, result.trainer
        self.classifier, self.ref, self.stacked = classifier, ref, stacked
        self.mode_classifier = classifier  # what counts Stacked MNIST modes; train_tracked sets the preset's
        self.progress, self.trainer_hook = progress, trainer_hook
        self.ckpt_path, self.fp = ckpt_path, fp
        self.buffers = {r: run_logging.MetricBuffer(run_id) for r, run_id in enumerate(result.replica_run_ids)}
        self.eval_n = params.train.eval_samples
        self.eval_labels = _quick_eval_labels(self.eval_n, params.seed, ref) if params.variant.conditional else None
        self.grid_seed = params.seed + sampling.GRID_SEED_OFFSET

    def hooks(self) -> Hooks:
        return Hooks(self.on_log, self.on_eval, self.on_sample, self.on_checkpoint)

    def flush(self) -> None:
        for buffer in self.buffers.values():
            buffer.flush()

    def on_log(self, step: int, losses: dict[int, dict[str, float]]) -> None:
        params, result, trainer = self.params, self.result, self.trainer
        for r, replica_losses in losses.items():
            result.losses.append({"step": step, "replica": r, **replica_losses})
            self.buffers[r].add(step, run_logging.metric_names(run_logging.TRAIN, replica_losses))
        for r, divergence in trainer.diverged.items():
            if r not in result.diverged:  # newly diverged: close its child run now, the others go on
                reason = divergence_reason(params, r, result.seeds[r], divergence.what, divergence.step)
                result.diverged[r] = reason
                self.buffers[r].flush()
                run_lifecycle.end_run_failed(result.replica_run_ids[r], reason)
                print(f"warning: {reason}; the other replicas continue", file=sys.stderr)
        self.trainer_hook(trainer, step)
        live = {r: replica_losses for r, replica_losses in losses.items() if r not in trainer.diverged}
        self.progress(step, params.variant.iterations, **(median_over_replicas(live) if live else {}))

    def on_eval(self, step: int) -> None:
        quick_by_replica = {}
        for r in self.trainer.live:
            with cpu_threads.scoped(self.params.evaluator.threads):  # the instrument's count, not the training's
                quick = self.quick_metrics(r, step)
            self.result.collapse_curve.append({"step": step, "replica": r, **quick})
            self.buffers[r].add(step, run_logging.metric_names(run_logging.TRAIN, quick))
            quick_by_replica[r] = quick
        if quick_by_replica:
            median = median_over_replicas(quick_by_replica)
            self.progress(step, self.params.variant.iterations, coverage=median["class_coverage"], fld=median["fld"])

    def quick_metrics(self, r: int, step: int) -> dict[str, float]:
        generator = self.trainer.replica_generator(r)
        # Stacked MNIST counts modes on as many samples as the final evaluation, so the curve's last point
        # and the published tables count alike (a mode count grows with the sample count).
        n = self.params.stacked_eval_samples if self.stacked is not None else self.eval_n
        # Stacked MNIST: sampled as the preset's mode count samples (mode_count_sampling), and counted by its classifier
        how = sampling.way_of_sampling(self.params.variant, self.params.variant.mode_count_sampling) if self.stacked is not None else {}
        imgs = sampling.sample(generator, n, seed=self.params.seed + step, labels=self.eval_labels, **how)
        share = self.params.evaluate.verdict.min_share_ratio
        quick = evaluation.quick_metrics(imgs[: self.eval_n], self.classifier, self.ref, share)
        if self.stacked is not None:  # the digits above are pooled over channels; modes count the triples
            quick.update(quick_modes(self.mode_classifier, imgs))
        return quick

    def on_sample(self, step: int) -> None:
        import mlflow

        self.flush()
        client = mlflow.MlflowClient()
        for r in self.trainer.live:
            grid = sampling.sample_grid(self.trainer.replica_generator(r), self.grid_seed)
            run_id = self.result.replica_run_ids[r]
            mlflow_store.retry_locked(lambda: client.log_image(run_id, grid, key="samples", step=step))

    def on_checkpoint(self, step: int) -> None:
        self.flush()
        result = self.result
        checkpoints.save(
            self.ckpt_path,
            {
                "fingerprint": self.fp,
                "run_id": result.run_id,
                "replica_run_ids": result.replica_run_ids,
                "trainer": self.trainer.state_dict(),
                "losses": result.losses,
                "collapse_curve": result.collapse_curve,
                "diverged": result.diverged,
            },
        )


def _fit_tracked(params: Params, result: RunResult, hooks: _TrainingHooks, ckpt_path: Path) -> None:
    """Run the training loop (inside the caller's run_outcome); all replicas diverging ends every run FAILED."""
    trainer, v, t = result.trainer, params.variant, params.train
    schedule = Schedule(v.iterations, t.log_every, t.checkpoint_every, t.sample_every, t.eval_every)
    if trainer.step == 0:
        hooks.on_sample(0)  # the untrained generator's grid: MLflow's image slider starts at step 0
    start = time.perf_counter()
    try:
        fit(trainer, schedule, hooks.hooks())
    except NonFiniteTraining:
        hooks.flush()
        _fail_all_diverged(params, result, ckpt_path)
    result.seconds = time.perf_counter() - start
    hooks.flush()


def _fail_all_diverged(params: Params, result: RunResult, ckpt_path: Path) -> None:
    """Every replica diverged: end each run FAILED with its reason and raise TrainingDiverged."""
    import mlflow

    trainer = result.trainer
    for r, divergence in trainer.diverged.items():
        if r not in result.diverged:
            result.diverged[r] = divergence_reason(params, r, result.seeds[r], divergence.what, divergence.step)
            run_lifecycle.end_run_failed(result.replica_run_ids[r], result.diverged[r])
    summary = f"all {params.replicas} replicas of model {params.model} diverged, the last by generator iteration {trainer.step}"
    run_lifecycle.end_run_failed(result.run_id, f"{summary}: " + "; ".join(result.diverged.values()))
    mlflow.end_run(status="FAILED")
    last_good = f"the last good checkpoint is {ckpt_path}" if ckpt_path.is_file() else "no checkpoint was reached"
    first = result.diverged[min(result.diverged)]
    raise TrainingDiverged(
        f"{summary} ({first}; see MLflow for each replica); {last_good}. Lower variants.{params.model}.lr, "
        "switch the objective to bce_logits (numerically stable), or change the seed in params.yaml, then "
        "run `dvc repro` again."
    ) from None


def _final_losses(losses: list[dict[str, float]]) -> dict[int, dict[str, float]]:
    """Each replica's last loss reading (a diverged replica's stop earlier and are left out)."""
    last_step = max(row["step"] for row in losses)
    return {
        row["replica"]: {k: val for k, val in row.items() if k not in ("step", "replica")}
        for row in losses
        if row["step"] == last_step
    }


def _interrupted_message(params: Params, ckpt_path: Path) -> str:
    """What an interrupted training leaves: the resume promise only when a checkpoint exists."""
    if ckpt_path.is_file():
        step = torch.load(ckpt_path, map_location="cpu", weights_only=False)["trainer"].get("step", "?")
        return (
            f"training of {params.model} interrupted; its MLflow run is marked KILLED. The checkpoint at "
            f"generator iteration {step} is kept in {ckpt_path}: run `dvc repro` (or the same `dvc exp run`) "
            "again to resume from it in the same MLflow run."
        )
    return (
        f"training of {params.model} interrupted before its first checkpoint (every "
        f"train.checkpoint_every = {params.train.checkpoint_every} iterations); its MLflow run is marked "
        "KILLED. There is nothing to resume: run `dvc repro` again to train from the start."
    )


def finish_run(result: RunResult, iterations: int) -> None:
    """Log each finished replica's generator as an MLflow model in its child run; close every run."""
    import mlflow

    trained = iterations - result.resumed_from
    models = len(result.seeds) - len(result.diverged)
    speed = trained / result.seconds if result.seconds else 0.0
    mlflow.log_metrics(
        {
            run_logging.metric_name(run_logging.TRAIN, "seconds"): result.seconds,
            # per replica: every live replica advances together
            run_logging.metric_name(run_logging.TRAIN, "generator_it_per_s"): speed,
            run_logging.metric_name(run_logging.TRAIN, "replica_it_per_s"): speed * models,
            run_logging.metric_name(run_logging.TRAIN, "threads"): result.threads,
            run_logging.metric_name(run_logging.TRAIN, "replicas_diverged"): len(result.diverged),
        }
    )
    parent = mlflow.active_run()
    for r, generator in enumerate(result.generators()):
        if generator is None:
            continue
        with mlflow_store.retry_locked(lambda: mlflow.start_run(run_id=result.replica_run_ids[r], nested=True)):
            final = {f"final_{k}": val for k, val in result.final_losses[r].items()}
            mlflow.log_metrics(run_logging.metric_names(run_logging.TRAIN, final))
            _log_generator_model(generator)
    assert mlflow.active_run().info.run_id == parent.info.run_id
    mlflow.end_run()


def _log_generator_model(generator: torch.nn.Module) -> None:
    import mlflow

    # Standard (NCHW) layout: the DCGAN nets keep conv weights channels_last for speed, and MLflow's pt2
    # archive then warns "No complete tensor found in the group" once per model (the loaded model is right
    # either way; checked to max |difference| 0).
    generator = generator.to("cpu", memory_format=torch.contiguous_format).eval()
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


def checkpoint_path(params: Params, root: Path) -> Path:
    device = devices.resolve(params.train.device)
    return checkpoints.path_for(root, params, checkpoints.fingerprint(params, device))

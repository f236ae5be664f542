"""The typed schema of params.yaml, and the one function that loads and validates it.

Every stage and CLI command calls `load_params` before doing any work, so a typo in params.yaml (or in
`dvc exp run -S ...`) is refused within seconds with the key path and the accepted values. Every problem
in the file is reported at once, in one paragraph, so one edit fixes them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator,
)
from pydantic_core import PydanticCustomError

from pipeline.common import params_errors
from pipeline.common.errors import GanpipeError


def _not_a_bool(value: Any) -> Any:
    # YAML reads `yes`/`true` as a boolean; pydantic would quietly turn it into 1. A count or a rate
    # written as a boolean is a mistake, so it is refused like any other wrong type.
    if isinstance(value, bool):
        raise PydanticCustomError("bool_for_number", "a boolean is not a number")
    return value


_NUMBER = BeforeValidator(_not_a_bool)
PositiveInt = Annotated[int, _NUMBER, Field(ge=1)]
NonNegativeInt = Annotated[int, _NUMBER, Field(ge=0)]
PositiveFloat = Annotated[float, _NUMBER, Field(gt=0)]
NonNegativeFloat = Annotated[float, _NUMBER, Field(ge=0)]
Fraction = Annotated[float, _NUMBER, Field(gt=0, lt=1)]
Beta = Annotated[float, _NUMBER, Field(ge=0, lt=1)]


class Strict(BaseModel):
    # extra="forbid" turns a misspelt key into an error instead of a silently ignored setting, and no
    # field has a default: every value comes from params.yaml, so nothing result-changing hides here.
    # Infinite and NaN numbers (YAML's .inf / .nan) are refused: no knob here means anything with them.
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True, allow_inf_nan=False)


class VariantParams(Strict):
    """One GAN variant: the objective, the nets and the optimiser, and the mechanisms that change D."""

    objective: Literal["minimax", "bce_logits", "wasserstein", "hinge"]
    conditional: bool
    z_dim: PositiveInt
    hidden: PositiveInt  # the MLP's hidden units, or the conv families' base channel count
    critic_hidden: PositiveInt | None  # D's own base width where it is sized apart from G's; null: hidden
    batch_size: PositiveInt
    iterations: PositiveInt
    optimizer: Literal["adam", "rmsprop"]
    lr: PositiveFloat
    betas: Annotated[
        tuple[Beta, Beta],
        Field(description="a list of two numbers (beta1 and beta2), each >= 0 and < 1, e.g. [0.9, 0.999]"),
    ]
    critic_lr: PositiveFloat | None  # D's learning rate where it differs from G's; null: lr
    critic_betas: Annotated[
        tuple[Beta, Beta] | None,
        Field(description="null, or a list of two numbers (beta1 and beta2), each >= 0 and < 1, e.g. [0.5, 0.99]"),
    ]
    # joint: real and fake go through D as one batch (one larger matmul); separate: two batches, so batch
    # norm in D sees one kind at a time (PacGAN's released Stacked MNIST code, and DCGAN's reference code)
    critic_pass: Literal["joint", "separate"]
    # Stacked MNIST samples whose modes are counted for this preset, in training and at evaluation; null:
    # stacked_mnist.eval_samples. PacGAN's Table 3 protocol counts 25,600 (their Table 2: 26,000).
    stacked_eval_samples: PositiveInt | None
    n_critic: PositiveInt
    # constant: n_critic critic steps per generator step; wgan-reference: the WGAN authors' code, 100 for the
    # first 25 generator steps and every 500th, else n_critic (pipeline/gan/critic_schedule.py)
    critic_schedule: Literal["constant", "wgan-reference"]
    gradient_penalty: PositiveFloat | None  # WGAN-GP's lambda; null: no penalty
    clip: PositiveFloat | None
    arch: Literal["mlp", "dcgan", "unrolled"]
    pack: PositiveInt  # PacGAN's m: D judges m samples at once; 1: no packing
    spectral_norm: bool
    # How PacGAN's released Table 3 code trains and counts, one field per difference, so the other presets keep
    # their trained bytes (docs/results.md, "PacGAN's Table 3 setting").
    # G's last activation and the pixel range both nets train on: sigmoid, [0, 1]; tanh, [-1, 1] (real images
    # rescaled to it). Samples handed to the instrument are [0, 1] either way. tanh: the unrolled family only.
    output_activation: Literal["sigmoid", "tanh"]
    # How a packed G draws its batch-norm batches: joint, one call on the batch's batch_size samples; per-position,
    # one call of batch_size / pack samples per position in the pack (pack k holds sample k of each call).
    generator_pack_batches: Literal["joint", "per-position"]
    # The noise of the G step: fresh, its own draw; critic-step, the last D step's noise again.
    generator_step_noise: Literal["fresh", "critic-step"]
    # Stacked MNIST's real images: fixed-set, drawn from the `stack` stage's stacked_mnist.size triples; fresh,
    # each channel drawn anew from the 60,000 training digits for every batch. MNIST: no effect.
    real_triples: Literal["fixed-set", "fresh"]
    # The Stacked MNIST mode count this preset reports as modes_captured / mode_kl (all four are reported):
    # which classifier reads each channel (evaluator: the instrument's; released-cnn: PacGAN's released counter,
    # the mode_counter stage), and how G's batch norm normalises while sampling (running-stats: evaluation mode;
    # batch-stats: each batch's own statistics, batches the size of G's batch-norm batch in training).
    mode_count_classifier: Literal["evaluator", "released-cnn"]
    mode_count_sampling: Literal["running-stats", "batch-stats"]

    @field_validator("gradient_penalty")
    @classmethod
    def _penalty_belongs_to_a_critic(cls, penalty: float | None, info: ValidationInfo) -> float | None:
        objective = info.data.get("objective")
        if penalty is not None and objective not in (None, "wasserstein"):
            raise ValueError(
                f"the gradient penalty (WGAN-GP) pushes a wasserstein critic's gradient norm to 1 and is not "
                f"defined for the {objective} objective: set it to null, or set objective to wasserstein"
            )
        return penalty

    @field_validator("clip")
    @classmethod
    def _wasserstein_needs_a_lipschitz_constraint(cls, clip: float | None, info: ValidationInfo) -> float | None:
        if info.data.get("objective") != "wasserstein":
            return clip
        penalty = info.data.get("gradient_penalty")
        if clip is None and penalty is None and "gradient_penalty" in info.data:
            raise ValueError(
                "a wasserstein critic needs weight clipping or a gradient penalty to keep it Lipschitz: set clip "
                "to a number > 0 (the WGAN paper uses 0.01) or gradient_penalty to a number > 0 (WGAN-GP uses 10)"
            )
        if clip is not None and penalty is not None:
            raise ValueError(
                "the gradient penalty replaces weight clipping (WGAN-GP clips nothing; clipping both restricts "
                "the critic twice): set clip to null, or gradient_penalty to null"
            )
        return clip

    @field_validator("output_activation")
    @classmethod
    def _tanh_is_the_unrolled_familys(cls, activation: str, info: ValidationInfo) -> str:
        arch = info.data.get("arch")
        if activation == "tanh" and arch not in (None, "unrolled"):
            raise ValueError(
                f"a tanh output ([-1, 1] pixels, PacGAN's released Table 3 code) is built for arch unrolled only; the "
                f"{arch} family ends in a sigmoid: set output_activation to sigmoid, or arch to unrolled"
            )
        return activation

    @field_validator("pack")
    @classmethod
    def _packs_fill_the_batch(cls, pack: int, info: ValidationInfo) -> int:
        batch = info.data.get("batch_size")
        if batch and batch % pack:
            raise ValueError(
                f"D judges the batch in packs of {pack} samples, so batch_size ({batch}) must be a multiple of "
                "pack: change one of the two"
            )
        if pack > 1 and info.data.get("gradient_penalty") is not None:
            raise ValueError(
                "packing with a gradient penalty is not supported (the penalty takes one gradient norm per "
                "sample, a packed critic scores packs): set pack to 1 or gradient_penalty to null"
            )
        return pack

    @property
    def generator_norm_batch(self) -> int:
        """Samples G's batch norm normalises together in training: the batch-stats sampling batch (128 for every
        PacGAN Table 3 preset, the size of their sampler's batch)."""
        return self.batch_size // self.pack if self.generator_pack_batches == "per-position" else self.batch_size


class ComputeParams(Strict):
    cpu_kernels: Annotated[
        Literal["portable", "native"],
        Field(description="portable (the same bytes on every x86-64 CPU with AVX2) or native (this CPU's fastest)"),
    ]


class DownloadParams(Strict):
    timeout_s: PositiveFloat
    retries: PositiveInt
    backoff_s: NonNegativeFloat


class EvaluatorParams(Strict):
    """The MNIST classifier whose penultimate features are the metrics' feature space."""

    epochs: PositiveInt
    batch_size: PositiveInt
    lr: PositiveFloat
    train_subset: PositiveInt | None
    holdout: NonNegativeInt  # training images kept from the evaluator and the reference for real baselines
    ndb_bins: PositiveInt
    kmeans_fit_size: PositiveInt
    seed: NonNegativeInt
    threads: PositiveInt  # CPU threads of every torch computation outside the training loop (cpu_threads.py)


class ModeCounterParams(Strict):
    """PacGAN's released mode-count classifier (their train_mnist.py, Keras' mnist_cnn example): trained by the
    mode_counter stage when the dataset is stacked-mnist, and read by the Stacked MNIST mode count."""

    epochs: PositiveInt  # theirs: 20
    batch_size: PositiveInt  # theirs: 128
    lr: PositiveFloat  # Keras' Adadelta defaults (theirs: keras.optimizers.Adadelta()): lr 1.0,
    rho: Fraction  # rho 0.95,
    eps: PositiveFloat  # epsilon 1e-8 (Keras 2.0.0-2.1.2; K.epsilon() = 1e-7 from 2.1.3)
    train_subset: PositiveInt | None  # null: all 60,000 training digits (theirs); a number: that many (tests)
    seed: NonNegativeInt  # initialisation, shuffles and dropout masks


class TrainParams(Strict):
    device: Annotated[str, Field(description="auto, cpu, cuda or cuda:N (e.g. cuda:0)")]
    log_every: PositiveInt
    checkpoint_every: PositiveInt
    sample_every: PositiveInt
    eval_every: PositiveInt
    eval_samples: PositiveInt
    threads: Annotated[
        Literal["auto"] | PositiveInt,
        Field(description="auto, or a number of CPU threads >= 1 (e.g. 1)"),
    ]

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        index = device.removeprefix("cuda:")
        if device not in ("auto", "cpu", "cuda") and not (device.startswith("cuda:") and index.isdigit()):
            raise ValueError("the device must be auto, cpu, cuda or cuda:N (e.g. cuda:0)")
        return device

    @field_validator("checkpoint_every", "sample_every", "eval_every")
    @classmethod
    def _aligned_with_loss_readings(cls, every: int, info: ValidationInfo) -> int:
        # Divergence is detected when losses are read, so a checkpoint is only known to be good on a
        # log boundary; the other intervals align too so their readings coincide with a sync point.
        log_every = info.data.get("log_every")
        if log_every and every % log_every:
            raise ValueError(f"it must be a multiple of train.log_every ({log_every})")
        return every


class VerdictParams(Strict):
    """How far beyond the real-data range a statistic must fall to count as collapse.

    The calibrate stage measures each statistic on many random real subsets of the evaluation size;
    a threshold is the worst real value moved by one of these effect sizes, so an imperfect but
    diverse generator is not called collapsed while a collapsed one is. The share ratio is absolute
    (it also defines class_coverage during training); calibration refuses it if real data crosses it.
    """

    missing_share_ratio: Fraction  # a digit below this x its MNIST share is missing: severe inter-class collapse
    min_share_ratio: Fraction  # below this x its MNIST share a digit is far under-represented: inter-class collapse
    imbalance_share_ratio: Fraction  # below this (but above min_share_ratio): imbalance, not collapse
    label_accuracy: Fraction  # conditional models: a requested digit drawn as itself less often than this is lost
    class_kl_margin: PositiveFloat  # nats above the highest real class KL: imbalance
    diversity_factor: Fraction  # intra-class diversity below this x the lowest real ratio
    duplicate_rate_margin: Fraction  # above the highest real duplicate rate
    spread_factor: Fraction  # neighbour spread below this x the lowest real value

    @model_validator(mode="after")
    def _ordered(self) -> "VerdictParams":
        if not self.missing_share_ratio <= self.min_share_ratio <= self.imbalance_share_ratio:
            raise ValueError(
                "the share ratios must be ordered missing_share_ratio <= min_share_ratio <= imbalance_share_ratio "
                "(e.g. 0.1, 0.25, 0.4)"
            )
        return self


class EvaluateParams(Strict):
    n_samples: PositiveInt
    nearest_k: PositiveInt
    kid_subsets: PositiveInt
    kid_subset_size: PositiveInt
    ndb_alpha: Fraction
    duplicate_quantile: Fraction
    calibration_subsets: PositiveInt
    interval_confidence: Fraction  # level of every interval the instrument reports
    bootstrap_draws: PositiveInt  # resamples behind the bootstrap intervals
    verdict: VerdictParams


class StackedMNISTParams(Strict):
    """Stacked MNIST (three MNIST digits as the channels of one image; 1,000 modes)."""

    size: PositiveInt  # training images built (VEEGAN and PacGAN: 128,000)
    seed: NonNegativeInt  # which MNIST images fill each channel
    eval_samples: PositiveInt  # samples whose modes are counted (VEEGAN and PacGAN: 26,000)


class ReportParams(Strict):
    neighbour_panel: PositiveInt


MNIST_TEST_IMAGES = 10_000  # MNIST's test split, the fixed part of the real baseline pool
MNIST_TRAIN_IMAGES = 60_000


class Params(Strict):
    model: Annotated[str, Field(description="the name of one of the presets under `variants`")]
    seed: NonNegativeInt
    dataset: Literal["mnist", "stacked-mnist"]
    stacked_mnist: StackedMNISTParams
    replicas: Annotated[PositiveInt, Field(description="how many independent replicas of the variant to train, >= 1")]
    compute: ComputeParams
    download: DownloadParams
    evaluator: EvaluatorParams
    mode_counter: ModeCounterParams
    train: TrainParams
    evaluate: EvaluateParams
    report: ReportParams
    variants: Annotated[
        dict[str, VariantParams],
        Field(description="a mapping of preset names (e.g. vanilla, wgan) to variant settings"),
    ]

    @model_validator(mode="after")
    def _calibratable(self) -> "Params":
        # Real baselines come from MNIST's test set plus the held-out training images, and calibration
        # subsets may hold at most half of that pool (instrument/calibration.py): refuse a larger
        # evaluate.n_samples here, before any stage deletes its outputs, not minutes later in calibrate.
        pool = MNIST_TEST_IMAGES + self.evaluator.holdout
        if self.evaluate.n_samples > pool // 2:
            needed = 2 * self.evaluate.n_samples - MNIST_TEST_IMAGES
            fix = (
                f", or raise evaluator.holdout to {needed} (the evaluator then trains on the other {MNIST_TRAIN_IMAGES - needed})"
                if needed < MNIST_TRAIN_IMAGES - 10_000
                else f" (MNIST has too few unseen images for {self.evaluate.n_samples}; `ganpipe evaluate --samples` "
                "measures a larger file in full and judges a random subset the pool can calibrate)"
            )
            raise ValueError(
                f"evaluate.n_samples is {self.evaluate.n_samples}, but real data can calibrate the verdict for at most "
                f"{pool // 2} samples (half the unseen pool of {MNIST_TEST_IMAGES} test images + evaluator.holdout "
                f"{self.evaluator.holdout}): lower evaluate.n_samples to {pool // 2} or less{fix}"
            )
        return self

    @property
    def variant(self) -> VariantParams:
        return self.variants[self.model]

    @property
    def stacked_eval_samples(self) -> int:
        """Stacked MNIST samples whose modes are counted: the preset's protocol, else the dataset's."""
        return self.variant.stacked_eval_samples or self.stacked_mnist.eval_samples


# ---------------------------------------------------------------------------------------------------
# Turning pydantic's errors into one paragraph a user can act on.


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate an already-loaded params mapping; raise GanpipeError listing every problem."""
    if not isinstance(raw, dict):
        what = "is empty" if raw is None else f"holds {type(raw).__name__} {params_errors.show(raw)}"
        raise GanpipeError(
            f"{source} {what}, but it must hold a mapping of keys to values (model, seed, replicas, "
            "compute, download, evaluator, mode_counter, train, evaluate, report, variants). Restore it from git (`git checkout params.yaml`) "
            "or fix its top level."
        )
    problems: list[str] = []
    params = None
    model_problem = params_errors.model_problem(Params, raw)
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        problems = params_errors.problems(Params, exc, raw, model_checked=model_problem is not None)
    if model_problem:
        problems.insert(0, model_problem)
    if problems:
        count = "a problem" if len(problems) == 1 else f"{len(problems)} problems"
        listed = problems[0] if len(problems) == 1 else " ".join(f"({i}) {p};" for i, p in enumerate(problems, 1))
        raise GanpipeError(
            f"{source} has {count}: {listed.rstrip(';')}. Nothing was run. Fix {source} (or the `-S key=value` "
            "you passed to `dvc exp run`) and run again."
        )
    assert params is not None
    return params


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping (PyYAML silently keeps the last)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"the key `{key}` appears twice in the same mapping (first on line {seen[key].line + 1}); "
                "only one of the two values would be used, so delete the other",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml. Nothing else in ganpipe reads that file."""
    path = Path(path)
    if not path.is_file():
        raise GanpipeError(
            f"{path} not found. Run from the ganpipe repository root (where dvc.yaml and params.yaml "
            "live), or pass the path to your params file."
        )
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError as exc:
        raise GanpipeError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8.") from None
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        problem = " ".join(str(problem).split())
        raise GanpipeError(
            f"{path} is not valid YAML{where}: {problem}. Fix the syntax there (or restore the file with "
            "`git checkout params.yaml`) and run again."
        ) from None
    return parse_params(raw, source=str(path))


def flatten(params: BaseModel | dict, prefix: str = "") -> dict[str, Any]:
    """Flatten nested params into dotted keys, e.g. for MLflow's flat param table."""
    data = params.model_dump(mode="json") if isinstance(params, BaseModel) else params
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat

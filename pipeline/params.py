"""The typed schema of params.yaml, and the one function that loads and validates it.

Every stage and CLI command calls `load_params` before doing any work, so a typo in params.yaml (or in
`dvc exp run -S ...`) is refused within seconds with the key path and the accepted values.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.errors import GanpipeError

PositiveInt = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0, lt=1)]


class Strict(BaseModel):
    # extra="forbid" turns a misspelt key into an error instead of a silently ignored setting, and no
    # field has a default: every value comes from params.yaml, so nothing result-changing hides here.
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)


class VariantParams(Strict):
    """One GAN variant: the objective, the nets and the optimiser. All variants share one MLP shape."""

    objective: Literal["minimax", "bce_logits", "wasserstein"]
    conditional: bool
    z_dim: PositiveInt
    hidden: PositiveInt
    batch_size: PositiveInt
    iterations: PositiveInt
    optimizer: Literal["adam", "rmsprop"]
    lr: PositiveFloat
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]]
    n_critic: PositiveInt
    clip: PositiveFloat | None

    @model_validator(mode="after")
    def _wasserstein_needs_a_lipschitz_constraint(self) -> "VariantParams":
        if self.objective == "wasserstein" and self.clip is None:
            raise ValueError(
                "a wasserstein critic needs weight clipping: set clip (the seed uses 0.01)"
            )
        return self


class DownloadParams(Strict):
    timeout_s: PositiveFloat
    retries: PositiveInt
    backoff_s: Annotated[float, Field(ge=0)]


class EvaluatorParams(Strict):
    """The MNIST classifier whose penultimate features are the metrics' feature space."""

    epochs: PositiveInt
    batch_size: PositiveInt
    lr: PositiveFloat
    train_subset: PositiveInt | None
    ndb_bins: PositiveInt
    kmeans_fit_size: PositiveInt
    seed: Annotated[int, Field(ge=0)]


class TrainParams(Strict):
    device: str
    log_every: PositiveInt
    checkpoint_every: PositiveInt
    sample_every: PositiveInt
    eval_every: PositiveInt
    eval_samples: PositiveInt
    compile: bool

    @model_validator(mode="after")
    def _intervals_align_with_loss_readings(self) -> "TrainParams":
        # Divergence is detected when losses are read, so a checkpoint is only known to be good on a
        # log boundary; the other intervals align too so their readings coincide with a sync point.
        for name in ("checkpoint_every", "sample_every", "eval_every"):
            if getattr(self, name) % self.log_every:
                raise ValueError(f"{name} must be a multiple of log_every ({self.log_every})")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError("device must be auto, cpu, cuda or cuda:N")
        return self


class VerdictParams(Strict):
    """How far beyond the real-data range a statistic must fall to count as collapse.

    The calibrate stage measures each statistic on many random real subsets of the evaluation size;
    a threshold is the worst real value moved by one of these effect sizes, so an imperfect but
    diverse generator is not called collapsed while a collapsed one is. The share ratio is absolute
    (it also defines class_coverage during training); calibration refuses it if real data crosses it.
    """

    min_share_ratio: Fraction  # a digit is covered when its share is >= this x its share in MNIST
    class_kl_margin: PositiveFloat  # nats above the highest real class KL
    diversity_factor: Fraction  # intra-class diversity below this x the lowest real ratio
    duplicate_rate_margin: Fraction  # above the highest real duplicate rate


class EvaluateParams(Strict):
    n_samples: PositiveInt
    nearest_k: PositiveInt
    kid_subsets: PositiveInt
    kid_subset_size: PositiveInt
    ndb_alpha: Fraction
    duplicate_quantile: Fraction
    calibration_subsets: PositiveInt
    verdict: VerdictParams


class ReportParams(Strict):
    neighbour_panel: PositiveInt


class Params(Strict):
    model: str
    seed: Annotated[int, Field(ge=0)]
    download: DownloadParams
    evaluator: EvaluatorParams
    train: TrainParams
    evaluate: EvaluateParams
    report: ReportParams
    variants: dict[str, VariantParams]

    @property
    def variant(self) -> VariantParams:
        return self.variants[self.model]


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f' Did you mean "{close[0]}"?' if close else ""


def _fields_at(loc: tuple) -> list[str]:
    """The accepted keys at the location of an unknown key, for "did you mean"."""
    model: Any = Params
    for part in loc[:-1]:
        if model is Params and part == "variants":
            model = "variants"
            continue
        if model == "variants":
            model = VariantParams
            continue
        field = model.model_fields.get(part) if isinstance(model, type) else None
        if field is None or not isinstance(field.annotation, type):
            return []
        model = field.annotation
    return list(model.model_fields) if isinstance(model, type) else []


def _describe(err: dict) -> str:
    loc = tuple(err["loc"])
    path = ".".join(str(p) for p in loc)
    if err["type"] == "extra_forbidden":
        choices = _fields_at(loc)
        return f"unknown key `{path}`.{_suggest(str(loc[-1]), choices)} Accepted keys here: {', '.join(choices)}."
    if err["type"] == "missing":
        return f"`{path}` is required but missing."
    msg = err["msg"].removeprefix("Value error, ")
    return f"`{path}`: {msg} (got {err.get('input')!r})."


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate an already-loaded params mapping; raise GanpipeError listing every problem."""
    if not isinstance(raw, dict):
        raise GanpipeError(f"{source} must hold a mapping of keys to values; fix the file's top level.")
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise GanpipeError(
            f"{source} is invalid: {problems} Fix the value in {source} (or the `-S key=value` you "
            "passed to `dvc exp run`) and run again."
        ) from None
    if params.model not in params.variants:
        valid = ", ".join(sorted(params.variants))
        raise GanpipeError(
            f'{source}: unknown model "{params.model}".{_suggest(params.model, list(params.variants))} '
            f"Valid models are the presets under `variants`: {valid}. Use e.g. `dvc exp run -S model=wgan`, "
            "or add a new preset under `variants`."
        )
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml. Nothing else in ganpipe reads that file."""
    path = Path(path)
    if not path.is_file():
        raise GanpipeError(
            f"{path} not found. Run from the ganpipe repository root (where dvc.yaml and params.yaml "
            "live), or pass the path to your params file."
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise GanpipeError(f"{path} is not valid YAML ({exc}). Fix the syntax and run again.") from None
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

"""What goes into a run: params.yaml flattened into grouped MLflow params, grouped metric names, and
step metrics written in batches."""

from __future__ import annotations

import time
from typing import Any

from pipeline.common.mlflow_store import retry_locked


# Metric and param name groups: MLflow's UI draws one collapsible chart section per prefix before "/".
TRAIN, EVAL, VARIANT = "train", "eval", "variant"
PARAM_SECTIONS = {
    "train": TRAIN, "evaluate": EVAL, "evaluator": "evaluator", "compute": "compute", "stacked_mnist": "stacked_mnist",
}  # params.yaml section -> prefix


def metric_name(section: str, key: str) -> str:
    """A grouped MLflow metric name, e.g. metric_name(TRAIN, "d_loss") == "train/d_loss"."""
    return f"{section}/{key}"


def metric_names(section: str, values: dict[str, Any]) -> dict[str, Any]:
    return {metric_name(section, k): v for k, v in values.items()}


def run_params(params: Any) -> dict[str, Any]:
    """What one run logs as MLflow params: the resolved variant under `variant/`, the shared sections
    (`train/`, `eval/`, `evaluator/`) and the top-level scalars (model, seed, replicas, ...).

    Other presets are left out, so the compare page's "show diff only" shows what differs between the
    runs, not 50 settings of variants they did not train; download settings change no result."""
    data = params.model_dump(mode="json")
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key == "variants":
            out.update(_flat(data["variants"][data["model"]], f"{VARIANT}/"))
        elif key in PARAM_SECTIONS:
            out.update(_flat(value, f"{PARAM_SECTIONS[key]}/"))
        elif not isinstance(value, dict):
            out[key] = value
    return {k: ("null" if v is None else v) for k, v in out.items()}


def _flat(value: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        return {prefix.rstrip("/"): value}
    out: dict[str, Any] = {}
    for k, v in value.items():
        out.update(_flat(v, f"{prefix}{k}/"))
    return out


def log_params_flat(flat: dict[str, Any]) -> None:
    import mlflow

    mlflow.log_params({k: ("null" if v is None else v) for k, v in flat.items()})


def _param_batches(flat: dict[str, Any]):
    from mlflow.entities import Param

    params = [Param(k, "null" if v is None else str(v)) for k, v in flat.items()]
    for start in range(0, len(params), 100):  # MLflow accepts at most 100 params per batch
        yield params[start : start + 100]


def log_params_to(run_id: str, flat: dict[str, Any]) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    for chunk in _param_batches(flat):
        retry_locked(lambda: client.log_batch(run_id, params=chunk))


class MetricBuffer:
    """Collect step metrics and write them in batches: one store transaction per flush, not per value."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self._pending: list = []

    def add(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending += [Metric(k, float(v), now, step) for k, v in values.items()]

    def flush(self) -> None:
        import mlflow

        client = mlflow.MlflowClient()
        while self._pending:
            chunk, self._pending = self._pending[:1000], self._pending[1000:]
            retry_locked(lambda: client.log_batch(self.run_id, metrics=chunk))

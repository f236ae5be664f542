"""A run's Description box in the MLflow UI: the collapse verdict, its evidence and the headline numbers."""

from __future__ import annotations

from typing import Any

from pipeline.common.run_identity import identity_tags


DESCRIPTION_TAG = "mlflow.note.content"  # the run page's Description box (markdown)
LOW_CONFIDENCE = 0.5  # mean top-class probability below this: the evaluator cannot tell most samples' digit


def quality_note(result: dict[str, Any], real_confidence: float | None = None) -> str | None:
    """A plain sentence when most samples are not recognisable digits, so a diversity verdict is not
    read as a statement about digits. `real_confidence`: the same on real subsets (calibration)."""
    confidence = result.get("mean_confidence")
    if confidence is None or confidence >= LOW_CONFIDENCE:
        return None
    real = f"real MNIST: {real_confidence:.2f}" if real_confidence is not None else "real MNIST: about 0.99"
    return (
        f"Most samples are not recognisable digits: the evaluator's mean confidence is {confidence:.2f} "
        f"({real}), so coverage and diversity describe blobs, not digits."
    )


def describe_verdict(result: dict[str, Any], exp_name: str = "", real_confidence: float | None = None) -> str:
    """The run's description (markdown): the verdict, its evidence, and the headline numbers beside it."""
    verdict = result["collapse"]
    head = f"**Mode collapse: {verdict['kind']}**" if verdict["detected"] else "**No mode collapse detected**"
    numbers = [
        f"FLD {result['fld']:.1f}",
        f"{result['class_coverage']} of 10 digits covered",
        f"mean confidence {result['mean_confidence']:.2f}" if result.get("mean_confidence") is not None else "",
        f"label accuracy {result['label_accuracy']:.2f}" if result.get("label_accuracy") is not None else "",
        f"collapse rate {result['collapse_rate']:.2f}" if result.get("collapse_rate") is not None else "",
    ]
    lines = [head, "", " · ".join(n for n in numbers if n)]
    note = quality_note(result, real_confidence)
    if note:
        lines += ["", note]
    if verdict["evidence"]:
        lines += ["", "Evidence:", *[f"- {e}" for e in verdict["evidence"]]]
    if exp_name and exp_name != "workspace":
        lines += ["", f"DVC experiment `{exp_name}`: `dvc exp apply {exp_name}` restores its workspace."]
    return "\n".join(lines)


def verdict_tags(result: dict[str, Any], model: str, seed: int, calibration: dict[str, Any]) -> dict[str, str]:
    """The run's Description (describe_verdict), naming the DVC experiment the run belongs to now."""
    exp_name = identity_tags(model, seed)["dvc_exp_name"]
    real_confidence = calibration.get("real", {}).get("mean_confidence", {}).get("mean")
    return {DESCRIPTION_TAG: describe_verdict(result, exp_name, real_confidence)}

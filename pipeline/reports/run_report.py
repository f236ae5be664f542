"""The per-run report: markdown and a self-contained HTML page (images embedded as data URIs)."""

from __future__ import annotations

import base64
import html
from typing import Any

KEY_METRICS = ("fld", "kid", "class_coverage", "class_kl", "precision", "recall", "density", "coverage",
               "ndb", "duplicate_rate", "intra_class_diversity", "label_accuracy")


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def markdown(model: str, evaluation: dict[str, Any], calibration: dict[str, Any]) -> str:
    real = calibration["real"]
    verdict = evaluation["collapse"]
    lines = [f"# ganpipe report: {model}", "", f"**Collapse:** {verdict['kind']}", ""]
    lines += [f"- {e}" for e in verdict["evidence"]] or ["- no threshold crossed"]
    lines += ["", "| metric | this run | real data (mean over subsets) |", "| --- | --- | --- |"]
    for k in KEY_METRICS:
        ref = real.get(k, {}).get("mean") if k in real else None
        lines.append(f"| {k} | {_fmt(evaluation.get(k))} | {_fmt(ref)} |")
    lines += ["", "![samples](../outputs/evaluate/sample_grid.png)", ""]
    return "\n".join(lines)


def html_page(model: str, evaluation: dict[str, Any], calibration: dict[str, Any], grid_png: bytes) -> str:
    real = calibration["real"]
    verdict = evaluation["collapse"]
    rows = "".join(
        f"<tr><td>{k}</td><td>{_fmt(evaluation.get(k))}</td><td>{_fmt(real.get(k, {}).get('mean'))}</td></tr>"
        for k in KEY_METRICS
    )
    evidence = "".join(f"<li>{html.escape(e)}</li>" for e in verdict["evidence"]) or "<li>no threshold crossed</li>"
    grid = base64.b64encode(grid_png).decode()
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ganpipe report: {html.escape(model)}</title></head>
<body>
<h1>ganpipe report: {html.escape(model)}</h1>
<h2>Collapse: {html.escape(verdict['kind'])}</h2>
<ul>{evidence}</ul>
<table><tr><th>metric</th><th>this run</th><th>real data</th></tr>{rows}</table>
<h2>Samples</h2>
<img id="sample-grid" alt="10x10 sample grid" src="data:image/png;base64,{grid}">
</body></html>
"""

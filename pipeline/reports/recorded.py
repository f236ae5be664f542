"""Result tables rendered from recorded studies, so that no figure in README.md or docs/ is typed by hand.

A study is one JSON file under results/: the conditions it was measured under (command, machine, kernels,
commit, date) and, per variant, its replicas' verdicts and metrics. `ganpipe compare --record FILE` writes
one from the MLflow store; `ganpipe tables` renders every table a page asks for and rewrites the page, and
`ganpipe tables --check` (run by tests/test_docs_tables.py) fails when a page's table is not what its study
renders. A page asks for a table with a pair of markers, which the rendering replaces with what lies between:

    <!-- table: results/headline.json -->          the rate table, with its conditions beneath
    <!-- /table -->
    <!-- table: results/headline.json verdicts --> each replica's verdict, one line per variant
    <!-- /table -->
    <!-- table: results/table3-NAME.json table3 -->  a Stacked MNIST study beside PacGAN's Table 3; also
    <!-- /table -->                                  table3-contrast, table3-curve, table3-recount
                                                     (pipeline/reports/stacked_study.py)

Counts and Wilson intervals are always computed here from the verdicts (pipeline.instrument.rates), and medians
from the replicas' metrics when the study holds them. An archive study, recorded before this format, holds
counts or verdict lists and the medians `ganpipe compare` printed then; its table says it is an archive.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pipeline.common.errors import GanpipeError
from pipeline.instrument.rates import Rate, median_iqr, rate_of
from pipeline.reports import stacked_study
from pipeline.reports.store import RunData

FOLDER = "results"
PAGES = ("README.md", "docs/*.md")
MARKERS = re.compile(r"(<!-- table: (?P<file>[\w./-]+)(?: (?P<kind>verdicts|table3[\w-]*))? -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)
RATE_HEADER = ("variant", "collapsed / evaluated (diverged)", "collapse rate [95% interval]", "median FLD (IQR)",
               "median digits covered (IQR)", "median class KL", "median mean confidence", "wall time")
# A replica counts as collapsed for any verdict kind but these (diverged replicas are left out of the rate).
CLEAN, NOT_JUDGED = "none", ("diverged", "not evaluated")


def _verdict(kind: str) -> bool | None:
    return None if kind in NOT_JUDGED else kind != CLEAN


def rate(variant: dict[str, Any]) -> Rate:
    """The variant's collapse rate: from its replicas' verdicts, or an archive's recorded counts."""
    if "verdicts" in variant:
        return rate_of(_verdict(kind) for kind in variant["verdicts"])
    counts = variant["counts"]
    return Rate(counts["collapsed"], counts["evaluated"], counts.get("diverged", 0))


def _median(variant: dict[str, Any], metric: str) -> tuple[float | None, float | None]:
    if variant.get("replicas"):
        return median_iqr([replica.get(metric) for replica in variant["replicas"]])
    recorded = variant.get("medians", {}).get(metric)
    if recorded is None:
        return None, None
    return (recorded[0], recorded[1]) if isinstance(recorded, list) else (recorded, None)


def _one_decimal(value: float) -> str:
    return f"{value:.1f}"


def _short(value: float) -> str:
    return f"{value:g}"


def _with_iqr(variant: dict[str, Any], metric: str, show) -> str:
    median, iqr = _median(variant, metric)
    if median is None:
        return "—"
    return show(median) + ("" if iqr is None else f" ({show(iqr)})")


def _rate_cells(r: Rate) -> tuple[str, str]:
    counts = f"{r.collapsed}/{r.evaluated} ({r.diverged})"
    if r.value is None:
        return counts, "—"
    low, high = r.interval
    return counts, f"{r.value:.2f} [{low:.2f}, {high:.2f}]"


def rate_row(variant: dict[str, Any]) -> list[str]:
    confidence, label_accuracy = _median(variant, "mean_confidence")[0], _median(variant, "label_accuracy")[0]
    confidence_cell = "—" if confidence is None else f"{confidence:.2f}"
    if label_accuracy is not None:
        confidence_cell += f"; label accuracy {label_accuracy:.2f}"
    class_kl = _median(variant, "class_kl")[0]
    return [variant.get("label", variant["name"]), *_rate_cells(rate(variant)), _with_iqr(variant, "fld", _one_decimal),
            _with_iqr(variant, "class_coverage", _short), "—" if class_kl is None else f"{class_kl:.3f}",
            confidence_cell, variant.get("wall_time", "—")]


def conditions_line(study: dict[str, Any]) -> str:
    c = study["conditions"]
    archive = " Archive: recorded before results/ existed, not re-measured since." if study.get("archive") else ""
    return (f"*{study['title']}.* Machine: {c['machine']}. Kernels: `{c['kernels']}`. Budget: {c['budget']}. "
            f"Commit: {c['commit']}. Date: {c['date']}. Reproduce: `{c['command']}`.{archive} "
            f"Rendered by `ganpipe tables` from {study['file']}.")


def render_rates(study: dict[str, Any]) -> str:
    rows = [RATE_HEADER, ["---"] * len(RATE_HEADER), *(rate_row(v) for v in study["variants"])]
    table = "\n".join("| " + " | ".join(row) + " |" for row in rows)
    return f"{table}\n\n{conditions_line(study)}\n"


def render_verdicts(study: dict[str, Any]) -> str:
    lines = []
    for variant in study["variants"]:
        if "verdicts" in variant:
            kinds = " ".join(f"{i}:{kind}" for i, kind in enumerate(variant["verdicts"]))
        else:
            kinds = "(recorded as counts only: " + "{collapsed}/{evaluated} collapsed".format(**variant["counts"]) + ")"
        lines.append(f"- **{variant['name']}**: {kinds}")
    return "\n".join(lines) + f"\n\nFrom {study['file']} (`ganpipe tables`).\n"


def load(root: Path, file: str) -> dict[str, Any]:
    path = root / file
    try:
        study = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise GanpipeError(f"{file} cannot be read as a recorded study ({exc}). Write it with "
                           "`ganpipe compare --record FILE` (or, for a Stacked MNIST study, benchmarks/stacked_mnist.py "
                           "--report ... --record FILE), or fix the marker that names it.") from exc
    return {**study, "file": file}


def render_page(root: Path, text: str) -> str:
    """The page with every marked table rendered from its study."""
    def replace(match: re.Match) -> str:
        study, kind = load(root, match["file"]), match["kind"]
        if kind in stacked_study.KINDS:
            body = stacked_study.render(study, kind)
        elif kind == "verdicts":
            body = render_verdicts(study)
        elif kind:
            raise GanpipeError(f"a page asks for a table of kind {kind!r} from {match['file']}: the kinds are "
                               f"verdicts, {', '.join(stacked_study.KINDS)}, or none (the rate table).")
        else:
            body = render_rates(study)
        return match.group(1) + body + match.group(5)

    return MARKERS.sub(replace, text)


def pages(root: Path) -> list[Path]:
    return sorted({p for pattern in PAGES for p in root.glob(pattern)})


def stale_pages(root: Path) -> dict[Path, str]:
    """The pages whose marked tables differ from what their studies render, with the rendered text."""
    out = {}
    for page in pages(root):
        text = page.read_text()
        rendered = render_page(root, text)
        if rendered != text:
            out[page] = rendered
    return out


def _conditions_of(runs: list[RunData], command: str, machine: str) -> dict[str, str]:
    def joined(key: str) -> str:
        return ", ".join(sorted({run.conditions.get(key, "not recorded") for run in runs}))

    budgets = sorted({run.budget.describe() for run in runs})
    return {"command": command, "machine": machine, "kernels": joined("kernels"), "commit": joined("commit"),
            "date": joined("date"), "budget": "; ".join(budgets)}


def record(runs: list[RunData], title: str, command: str, machine: str) -> dict[str, Any]:
    """A study of these trainings (one variant each), as `ganpipe compare --record` writes it."""
    variants = []
    for run in runs:
        variants.append({
            "name": run.model,
            "verdicts": [replica.collapse for replica in run.replicas],
            "replicas": [{key: replica.metrics.get(key) for key in
                          ("fld", "class_coverage", "class_kl", "mean_confidence", "label_accuracy")}
                         for replica in run.replicas],
            "wall_time": run.conditions.get("wall_time", "—"),
            "run_id": run.run_id,
        })
    return {"title": title, "archive": False, "conditions": _conditions_of(runs, command, machine), "variants": variants}

"""What each difference from PacGAN's released code did to the Table 3 count, from two recorded studies.

    python benchmarks/table3_ablation.py results/table3-issue23.json results/table3-issue32.json

The first study is the run before issue 32 (counted with the evaluator on running statistics); the second the
re-run with the presets as the released code trains and counts them, with its re-count of the saved generators
every way. Prints, per preset: the training changes together (the second study's generators counted the first
study's way, against the first study's counts); the sampling (batch against running statistics, per generator);
the counter (their CNN against the evaluator, per generator); the two counters' agreement on the samples; and
the later preset against the first under each way of counting. Differences are Welch 95% intervals with the
exact Mann-Whitney p (pipeline/reports/stacked_study.py); paired figures are ranges over the seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.reports.stacked_study import WAYS, difference, mean_and_se, plus_minus  # noqa: E402

EARLIER_WAY = "evaluator_running-stats"  # how issue 23's run counted


def _final_rows(study: dict) -> list[dict]:
    """A study's re-count rows at each preset's last re-counted step, where its final counts are taken (a
    study may also re-count earlier steps for a curve)."""
    rows = [row for document in study["recounts"] for row in document["recount"]]
    last: dict[str, int] = {}
    for row in rows:
        last[row["preset"]] = max(last.get(row["preset"], row["step"]), row["step"])
    return [row for row in rows if row["step"] == last[row["preset"]]]


def _by_way(final_rows: list[dict]) -> dict[tuple[str, str], dict[int, int]]:
    """(preset, way) -> {seed: modes} from a study's final re-count rows."""
    found: dict[tuple[str, str], dict[int, int]] = {}
    for row in final_rows:
        for way in WAYS:
            found.setdefault((row["preset"], way), {})[row["seed"]] = row["ways"][way]["modes_captured"]
    return found


def _interval(d: dict) -> str:
    return f"{d['difference']:+.1f} [{d['welch'][0]:+.1f}, {d['welch'][1]:+.1f}], U = {d['u']:g}, p = {d['p']:.3f}"


def _paired(a: dict[int, int], b: dict[int, int]) -> str:
    diffs = [a[seed] - b[seed] for seed in sorted(a)]
    return f"{min(diffs):+d} to {max(diffs):+d} (per seed {diffs})"


def report(earlier: dict, later: dict) -> list[str]:
    final = _final_rows(later)
    ways = _by_way(final)
    lines = []
    presets = [r["preset"] for r in later["results"]]
    for preset in presets:
        old = next((r["modes_captured"] for r in earlier["results"] if r["preset"] == preset), None)
        now = ways.get((preset, EARLIER_WAY))
        if not now:
            lines.append(f"{preset}: no re-count in the later study")
            continue
        lines.append(f"{preset}:")
        if old:
            lines.append(f"  training changes (counted {EARLIER_WAY}): {plus_minus(*mean_and_se(list(now.values())), 1)} "
                         f"against {plus_minus(*mean_and_se(old), 1)}: {_interval(difference(list(now.values()), old))}")
        for counter in ("evaluator", "released-cnn"):
            lines.append(f"  sampling, {counter}: batch - running statistics "
                         + _paired(ways[(preset, f'{counter}_batch-stats')], ways[(preset, f'{counter}_running-stats')]))
        for sampling in ("running-stats", "batch-stats"):
            lines.append(f"  counter, {sampling}: evaluator - released-cnn "
                         + _paired(ways[(preset, f'evaluator_{sampling}')], ways[(preset, f'released-cnn_{sampling}')]))
        agreement = [r["agreement"]["batch-stats"] for r in final if r["preset"] == preset]
        if agreement:
            lines.append(f"  same triple (batch statistics): {plus_minus(*mean_and_se(agreement), 4)}, "
                         f"at most {max(agreement):.3f}")
    for preset in presets[1:]:
        for way in WAYS:
            a, b = ways.get((preset, way)), ways.get((presets[0], way))
            if a and b:
                lines.append(f"{preset} - {presets[0]}, {way}: {_interval(difference(list(a.values()), list(b.values())))}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("earlier", type=Path, help="the study before the change (results/table3-issue23.json)")
    parser.add_argument("later", type=Path, help="the study after it, with re-counts (results/table3-issue32.json)")
    args = parser.parse_args()
    print("\n".join(report(json.loads(args.earlier.read_text()), json.loads(args.later.read_text()))))


if __name__ == "__main__":
    main()

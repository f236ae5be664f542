"""The table `ganpipe grid` ends with: one row per point."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from pipeline.common import atomic
from pipeline.common.console import stderr
from pipeline.grid import board


def _rate(row: dict) -> str:
    rate, ci = row.get("collapse_rate"), row.get("collapse_rate_ci")
    if rate is None:
        return ""
    return f"{rate:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{rate:.2f}"


def show(plan, results: dict[str, dict], failures: dict[str, str], note: list[str]) -> None:
    table = Table(title=f"grid {plan.grid}", title_justify="left")
    for column in ("experiment", "status", "collapse rate [95% CI]", "median FLD", "node", "device", "wall s"):
        table.add_column(column)
    for point in plan.points:
        row = results.get(point.name, {})
        if point.name in failures:
            status = "failed"
        elif row:  # a task's "present" too: an attempt Ray reran after it had pushed is this grid's work
            status = "done"
        else:
            status = "done before" if point.name in plan.present else "not run"
        fld = row.get("fld")
        table.add_row(
            point.name, status, _rate(row), f"{fld:.1f}" if fld is not None else "",
            (row.get("node") or "")[:8], row.get("device", ""), f"{row['wall_s']:.0f}" if row.get("wall_s") else "",
        )
    from rich.console import Console

    Console(width=max(stderr.width, 140) if not stderr.is_terminal else None).print(table)
    for line in note:
        print(line)
    done = [p.name for p in plan.points if p.name in results or p.name in plan.present]
    if done:
        print(f"`dvc exp show` lists them; `ganpipe compare --grid {plan.grid}` compares exactly these {len(done)} point(s).")
    if failures:
        print(f"{len(failures)} point(s) failed (their log tails are above); run the same command again to run only those.")


def write_json(path: Path, plan, shared: dict | None, results: dict[str, dict], failures: dict[str, str]) -> None:
    rows = []
    for point in plan.points:
        status = "failed" if point.name in failures else results.get(point.name, {}).get("status")
        status = status or ("present" if point.name in plan.present else "not run")
        rows.append({"name": point.name, "overrides": list(point.overrides), **results.get(point.name, {}),
                     "status": status, "error": failures.get(point.name), "attempts": len(plan.starts.get(point.name, []))})
    data = {
        "grid": plan.grid, "commit": plan.job.commit, "ray_address": plan.ray_address, "shared": shared, "points": rows,
        "lost_nodes": sorted(plan.watch.lost), "note": board.closing_note(plan.watch, plan.starts),
    }
    atomic.write_text(path, json.dumps(data, indent=2) + "\n")

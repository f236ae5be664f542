"""What `ganpipe grid` buys and costs on loopback (one machine, everything real), with points of real length.

A 4-point grid (`-S seed=0,1,2,3`, vanilla, one replica, 20,000 iterations: over two minutes of training
each, with the default training settings) on a Ray cluster of two 1-CPU nodes, end to end (shared stages
once, the points two at a time, the experiments pulled back), against the same four points run one
after another with `dvc exp run` in a fresh repository (the first of them computing the shared stages).
Target: the grid at most 0.6x the sequential wall time (0.5x is ideal on two nodes). Also reported: the
per-point overhead, a grid point's task time (clone, fetch, `dvc exp run`, push) minus the mean of the
sequential points that restored the shared stages.

The instrument keeps the test suite's small budgets (tests/conftest.py: the evaluator on 3,000 images for
one epoch, 400 evaluation samples), so the shared stages take about a minute; at the default budget they
add the same few minutes to both sides. Threads are 1 everywhere, so a point fits a 1-CPU node.

The stack: a bare git repository as the git remote, a folder as the DVC remote, the repository's own
sqlite MLflow store, two `ray start` nodes with their own temporary folder. On a 2-core machine the grid
takes about 10 minutes and the four points one after another about 15, so the two parts can run apart
(on a shared machine, each under its CPU lock, with nothing else heavy running); each part adds its
figures to the results file, and once both are there the comparison is printed as one JSON object.

    python benchmarks/grid_overhead.py                                     # both parts
    python benchmarks/grid_overhead.py --part grid --results bench.json    # then, later:
    python benchmarks/grid_overhead.py --part sequential --results bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import dvc_env, make_dvc_repo, repo_params  # noqa: E402
from tests.grid_support import RayCluster, grid_command, grid_env, grid_params, make_team_repo  # noqa: E402

SEEDS = (0, 1, 2, 3)
ITERATIONS = 20_000  # the presets' real budget; one replica of vanilla on 1 thread is over two minutes


def bench_params() -> dict:
    params = grid_params()
    params["train"] = {**repo_params()["train"], "threads": 1}  # the real logging and collapse-check cadence
    params["variants"]["vanilla"]["iterations"] = ITERATIONS
    return params


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    start = time.monotonic()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return time.monotonic() - start


def run_grid(base: Path) -> dict:
    ray_dir = Path(tempfile.mkdtemp(prefix="rb", dir="/tmp"))  # Ray's socket paths must stay short
    cluster = RayCluster(base, ray_dir)
    try:
        cluster.start()
        repo = make_team_repo(base / "grid", bench_params())
        out = base / "grid.json"
        args = ["-S", f"seed={','.join(map(str, SEEDS))}", "--address", cluster.address, "--json", str(out)]
        wall = timed(grid_command(*args), repo, grid_env(repo, **cluster.env))
    finally:
        cluster.stop()
        shutil.rmtree(ray_dir, ignore_errors=True)
    grid = json.loads(out.read_text())
    return {
        "grid_two_nodes_s": round(wall, 1), "grid_shared_stages_s": grid["shared"]["wall_s"],
        "grid_point_task_s": [p["wall_s"] for p in grid["points"]], "grid_nodes": len({p["node"] for p in grid["points"]}),
    }


def run_sequential(base: Path) -> dict:
    repo = make_dvc_repo(base / "sequential" / "repo", bench_params())
    env = dvc_env(repo)
    each = [timed(["dvc", "exp", "run", "-S", f"seed={seed}"], repo, env) for seed in SEEDS]
    return {"sequential_s": round(sum(each), 1), "sequential_each_s": [round(s, 1) for s in each]}


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def conditions() -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"date": date.today().isoformat(), "commit": commit, "cpu": cpu_name(), "machine_cpus": os.cpu_count(),
            "load_average_at_start": round(os.getloadavg()[0], 2)}


def compare(parts: dict) -> dict:
    """The comparison, once both parts are in: the ratio and the per-point overhead (a grid task against the
    mean of the sequential points that restored the shared stages; the first one computed them)."""
    grid, sequential = parts["grid"], parts["sequential"]
    tasks, restored = grid["grid_point_task_s"], sequential["sequential_each_s"][1:]
    return {
        "points": len(SEEDS), "iterations": ITERATIONS, **parts,
        "ratio": round(grid["grid_two_nodes_s"] / sequential["sequential_s"], 2), "ratio_target": 0.6,
        "point_overhead_s": round(sum(tasks) / len(tasks) - sum(restored) / len(restored), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("grid", "sequential", "both"), default="both")
    parser.add_argument("--results", type=Path, help="JSON file each part adds its figures to (default: none, run both)")
    args = parser.parse_args()
    parts = json.loads(args.results.read_text()) if args.results and args.results.exists() else {}
    base = Path(tempfile.mkdtemp(prefix="ganpipe-grid-bench-"))
    try:
        for part, run in (("grid", run_grid), ("sequential", run_sequential)):
            if args.part in (part, "both"):
                parts[part] = {**conditions(), **run(base)}
                if args.results:
                    args.results.write_text(json.dumps(parts, indent=2) + "\n")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(compare(parts) if {"grid", "sequential"} <= set(parts) else parts, indent=2))


if __name__ == "__main__":
    main()

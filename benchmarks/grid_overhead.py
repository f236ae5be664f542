"""What `ganpipe grid` costs beyond the trainings, on loopback (one machine, everything real).

Two figures, each against the same work done locally by `dvc exp run`:

- per-point overhead: one grid point's task wall time (fresh clone, `dvc exp run --pull` restoring the
  shared stages from the DVC remote, `dvc exp push --run-cache`) minus the same point run as a local
  `dvc exp run` in a repository whose shared stages are already in the workspace (target <= 15 s);
- a 4-point grid on a Ray cluster of two 1-CPU nodes (shared stages once, then the points two at a time,
  then `dvc exp pull`) against the same four points run one after another with `dvc exp run` in a fresh
  repository (the first of them computes the shared stages); target ratio <= 0.6 (ideal 0.5).

The stack: a bare git repository as the git remote, a folder as the DVC remote, `mlflow server` on an
sqlite file (a server, as a cluster needs), two `ray start` nodes with their own temp folder. Budgets are
the test suite's tiny ones (tests/conftest.py), so the trainings are short and the overhead shows.
Run it on a quiet machine (on a shared one, under its CPU lock); prints one JSON object.

    python benchmarks/grid_overhead.py
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import dvc_env, git, make_dvc_repo  # noqa: E402
from tests.test_grid import grid_params  # noqa: E402  (the tests' tiny budgets, one replica)
from tests.test_team_setup import free_port  # noqa: E402

POINTS = ["-S", "model=vanilla,wgan", "-S", "seed=0,1"]
LOCAL_POINTS = [("vanilla", 0), ("vanilla", 1), ("wgan", 0), ("wgan", 1)]
SINGLE = ("vanilla", 2)  # the overhead point: trained by neither of the above


def wait_for(check, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not come up in {timeout:.0f} s")
        time.sleep(0.5)


class Stack:
    """Remotes, an MLflow server and a two-node Ray cluster in one temp folder; stop() ends every process."""

    def __init__(self, base: Path):
        self.base, self.procs = base, []
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="rb", dir="/tmp"))  # Ray's socket paths must stay short
        self.ray_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "PYTHONPATH": str(ROOT)}

    def start(self, *cmd: str, env: dict | None = None) -> subprocess.Popen:
        log = open(self.base / f"proc{len(self.procs)}.log", "w")
        proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def up(self) -> None:
        port = free_port()
        self.mlflow = f"http://127.0.0.1:{port}"
        self.start(sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                   "--backend-store-uri", f"sqlite:///{self.base}/mlflow.db", "--serve-artifacts",
                   "--artifacts-destination", str(self.base / "artifacts"))
        wait_for(lambda: _healthy(self.mlflow), "mlflow server", 180)
        ray_port = free_port()
        self.address = f"127.0.0.1:{ray_port}"
        common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--disable-usage-stats", "--block"]
        for args in (["--head", "--port", str(ray_port), "--include-dashboard=false", "--temp-dir", str(self.ray_tmp)],
                     ["--address", self.address]):
            proc = self.start("ray", "start", *args, *common, env=self.ray_env)
            log = self.base / f"proc{len(self.procs) - 1}.log"
            wait_for(lambda: "Ray runtime started" in log.read_text() or proc.poll() is not None, "ray node")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


def _healthy(url: str) -> bool:
    try:
        urllib.request.urlopen(url + "/health", timeout=2).read()
        return True
    except OSError:
        return False


def team_repo(base: Path) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    git("init", "-q", "--bare", "-b", "main", str(base / "origin.git"), cwd=base)
    repo = make_dvc_repo(base / "repo", grid_params())
    subprocess.run(["dvc", "remote", "add", "-q", "-d", "shared", str(base / "dvc-remote")], cwd=repo, check=True)
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "shared DVC remote", cwd=repo)
    git("remote", "add", "origin", str(base / "origin.git"), cwd=repo)
    git("push", "-q", "origin", "main", cwd=repo)
    return repo


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    start = time.monotonic()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return time.monotonic() - start


def grid(repo: Path, stack: Stack, args: list[str], out: Path) -> tuple[float, dict]:
    env = {**dvc_env(repo, MLFLOW_TRACKING_URI=stack.mlflow), **stack.ray_env}
    wall = timed([sys.executable, "-m", "pipeline.cli", "grid", *args, "--address", stack.address, "--json", str(out)], repo, env)
    return wall, json.loads(out.read_text())


def local_run(repo: Path, model: str, seed: int, env: dict) -> float:
    return timed(["dvc", "exp", "run", "-S", f"model={model}", "-S", f"seed={seed}"], repo, env)


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="ganpipe-grid-bench-"))
    stack = Stack(base)
    try:
        stack.up()
        repo = team_repo(base / "grid")
        grid4_wall, grid4 = grid(repo, stack, POINTS, base / "grid4.json")
        single_wall, single = grid(repo, stack, ["-S", f"model={SINGLE[0]}", "-S", f"seed={SINGLE[1]}"], base / "one.json")
        sequential_repo = make_dvc_repo(base / "sequential" / "repo", grid_params())
        env = dvc_env(sequential_repo, MLFLOW_TRACKING_URI=stack.mlflow)
        sequential = [local_run(sequential_repo, m, s, env) for m, s in LOCAL_POINTS]
        local_single = local_run(sequential_repo, *SINGLE, env)
    finally:
        stack.stop()
    point = single["points"][0]
    result = {
        "machine_cpus": os.cpu_count(),
        "grid_point_task_s": point["wall_s"],
        "local_point_s": round(local_single, 1),
        "point_overhead_s": round(point["wall_s"] - local_single, 1),
        "point_overhead_target_s": 15,
        "single_point_grid_command_s": round(single_wall, 1),
        "grid4_two_nodes_s": round(grid4_wall, 1),
        "grid4_shared_stages_s": grid4["shared"]["wall_s"],
        "grid4_point_task_s": [p["wall_s"] for p in grid4["points"]],
        "grid4_nodes": len({p["node"] for p in grid4["points"]}),
        "sequential4_s": round(sum(sequential), 1),
        "sequential4_each_s": [round(s, 1) for s in sequential],
        "ratio": round(grid4_wall / sum(sequential), 2),
        "ratio_target": 0.6,
    }
    print(json.dumps(result, indent=2))
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

"""What `ganpipe grid` refuses before it submits anything, each in one paragraph naming the fix.

Workers see only what the git remote and the DVC remote hold, and report only to a tracking store they
can reach, so each of these would otherwise surface minutes later as a point that ran the wrong code,
could not restore its inputs, or logged into a file on another machine.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from pipeline.common import mlflow_store
from pipeline.common.errors import GanpipeError


@dataclass(frozen=True)
class Remotes:
    git_name: str  # the git remote's name, e.g. origin
    git_url: str  # as a worker clones it (a local path made absolute)
    dvc_name: str  # the DVC default remote's name
    dvc_url: str  # its URL, a local path made absolute


def git(root: Path, *args: str, check: bool = True) -> str:
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise GanpipeError(f"`git {' '.join(args)}` failed in {root}: {done.stderr.strip()}")
    return done.stdout.strip()


def clean_workspace(root: Path) -> None:
    changed = git(root, "status", "--porcelain").splitlines()
    if changed:
        shown = ", ".join(line[3:] for line in changed[:5]) + (", ..." if len(changed) > 5 else "")
        raise GanpipeError(
            f"the workspace has {len(changed)} uncommitted change(s) ({shown}). Each grid point runs in a fresh "
            "clone of the git remote on its node, so these changes would not reach it. Commit and push them "
            "(`git add -A && git commit && git push`), or stash them (`git stash -u`), and run again. Nothing was submitted."
        )


def _absolute(url: str, base: Path) -> str:
    """A local path as every process on this machine reads it; URLs unchanged."""
    if "://" in url or (":" in url.split("/")[0] and not Path(url).exists()):  # scheme or scp-like host:path
        return url
    return str((base / url).resolve())


def git_remote(root: Path, name: str | None) -> tuple[str, str]:
    names = git(root, "remote").split()
    if name is None:
        name = "origin" if "origin" in names or not names else names[0]
    if name not in names:
        raise GanpipeError(
            f"this repository has no git remote named {name!r} (it has: {', '.join(names) or 'none'}). Every grid "
            "point clones the grid's commit from the git remote and pushes its experiment there. Add one "
            f"(`git remote add {name} <url>` and `git push {name} HEAD`), or pick one with --git-remote. Nothing was submitted."
        )
    return name, _absolute(git(root, "remote", "get-url", name), root)


def head_pushed(root: Path, name: str, url: str) -> str:
    """HEAD's commit, once it is known to be in the git remote (the workers clone it from there)."""
    head = git(root, "rev-parse", "HEAD")
    listing = subprocess.run(["git", "ls-remote", url], cwd=root, capture_output=True, text=True, timeout=60)
    if listing.returncode != 0:
        raise GanpipeError(
            f"the git remote {name} ({url}) cannot be read: {listing.stderr.strip()}. The grid's points clone from "
            "it; check the URL (`git remote -v`) and your access, and run again. Nothing was submitted."
        )
    for line in listing.stdout.splitlines():
        tip = line.split()[0]
        ancestor = ["git", "merge-base", "--is-ancestor", head, tip]  # 0: yes; 1: no; 128: tip not fetched here
        if tip == head or subprocess.run(ancestor, cwd=root, capture_output=True).returncode == 0:
            return head
    branch = git(root, "rev-parse", "--abbrev-ref", "HEAD")
    target = branch if branch != "HEAD" else f"HEAD:refs/heads/grid-{head[:7]}"
    raise GanpipeError(
        f"HEAD ({head[:7]}) is not in the git remote {name} ({url}), so the workers, which clone from there, "
        f"could not check it out. Push it first: `git push {name} {target}`, and run again. Nothing was submitted."
    )


def dvc_remote(root: Path) -> tuple[str, str]:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        config = repo.config
        name = config["core"].get("remote")
        if not name:
            raise GanpipeError(
                "no default DVC remote is configured. The grid's points exchange data through it: the shared "
                "stages are pushed there once and every point restores them from it, and pushes its own outputs. "
                "Add one, e.g. `dvc remote add -d shared s3://bucket/ganpipe` (a folder every node can read works "
                "too), commit .dvc/config, push, and run again. Nothing was submitted."
            )
        url = config["remote"][name]["url"]
    return name, _absolute(url, root / ".dvc") if "://" not in url else url


def tracking_for(root: Path, cluster: bool) -> str:
    """The MLflow tracking URI the points log to: the user's server on a cluster (a file on this machine
    is out of every other node's reach), the repository's store for a local Ray instance."""
    uri = mlflow_store.user_tracking_uri()
    if cluster:
        scheme = urlparse(uri or "").scheme.split("+")[0]
        if uri is None or scheme in ("", "file", "sqlite"):
            where = f"MLFLOW_TRACKING_URI={uri}" if uri else "the repository's own sqlite store (mlflow.db)"
            raise GanpipeError(
                f"MLflow would log to {where}, a file on this machine that the cluster's other nodes cannot reach, "
                "so their runs would be lost. Set MLFLOW_TRACKING_URI to a tracking server every node can reach "
                "(e.g. `mlflow server --host 0.0.0.0 --backend-store-uri postgresql://...` and "
                "MLFLOW_TRACKING_URI=http://<that host>:5000, as in the team set-up), or leave out --address to run "
                "the grid on this machine alone. Nothing was submitted."
            )
    uri = uri or mlflow_store.tracking_uri(root)
    mlflow_store.check_store(uri)
    return uri

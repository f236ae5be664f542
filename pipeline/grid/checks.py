"""What `ganpipe grid` refuses before it submits anything, each in one paragraph naming the fix.

Workers see only what the exchange points hold (the git and DVC remotes on a cluster, this repository
and its cache on one machine), and report only to a tracking store they can reach, so each of these
would otherwise surface minutes later as a point that ran the wrong code, could not restore its inputs,
or logged into a file on another machine.
"""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path
from urllib.parse import urlparse

from pipeline.common import mlflow_store
from pipeline.common.errors import GanpipeError

LS_REMOTE_TIMEOUT_S = 60


def git(root: Path, *args: str, check: bool = True, stdin: str | None = None) -> str:
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, input=stdin)
    if check and done.returncode != 0:
        raise GanpipeError(f"`git {' '.join(args)}` failed in {root}: {done.stderr.strip()}")
    return done.stdout.strip()


def clean_workspace(root: Path) -> None:
    changed = git(root, "status", "--porcelain").splitlines()
    if changed:
        shown = ", ".join(line[3:] for line in changed[:5]) + (", ..." if len(changed) > 5 else "")
        raise GanpipeError(
            f"the workspace has {len(changed)} uncommitted change(s) ({shown}). Each grid point runs in a fresh "
            "clone of the grid's commit, so these changes would not reach it. Commit them (`git add -A && git "
            "commit`), or stash them (`git stash -u`), and run again. Nothing was submitted."
        )


def is_local_path(url: str) -> bool:
    """A git or DVC location that names a folder on this machine (no scheme, no scp-like host:path)."""
    if "://" in url:
        return url.startswith("file://")
    head = url.split("/")[0]
    return ":" not in head or Path(url).exists()


def _absolute(url: str, base: Path) -> str:
    """A local path as every process on this machine reads it; URLs unchanged."""
    return str((base / url).resolve()) if is_local_path(url) and "://" not in url else url


def git_remote(root: Path, name: str | None) -> tuple[str, str] | None:
    """The git remote the points exchange through (its name and URL), or None when this repository has none
    and none was asked for."""
    names = git(root, "remote").split()
    if name is None:
        if not names:
            return None
        name = "origin" if "origin" in names else names[0]
    if name not in names:
        raise GanpipeError(
            f"this repository has no git remote named {name!r} (it has: {', '.join(names) or 'none'}). On a cluster "
            "every grid point clones the grid's commit from the git remote and pushes its experiment there. Add one "
            f"(`git remote add {name} <url>` and `git push {name} HEAD`), or pick one with --git-remote. Nothing was submitted."
        )
    return name, _absolute(git(root, "remote", "get-url", name), root)


def _branch_and_tag_tips(root: Path, name: str, url: str) -> set[str]:
    try:
        listing = subprocess.run(
            ["git", "ls-remote", "--heads", "--tags", url], cwd=root, capture_output=True, text=True,
            timeout=LS_REMOTE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        listing = subprocess.CompletedProcess([], 1, "", f"no answer in {LS_REMOTE_TIMEOUT_S} s")
    if listing.returncode != 0:
        raise GanpipeError(
            f"the git remote {name} ({url}) cannot be read: {listing.stderr.strip()}. The grid's points clone from "
            "it; check the URL (`git remote -v`) and your access, and run again. Nothing was submitted."
        )
    return {line.split()[0] for line in listing.stdout.splitlines() if line.strip()}


def head_pushed(root: Path, name: str, url: str) -> str:
    """HEAD's commit, once a branch or tag of the git remote holds it. Only those count: `git clone` fetches
    branches and tags, not refs/exps/* or refs/pull/*, so a commit held only there cannot be checked out."""
    head = git(root, "rev-parse", "HEAD")
    tips = _branch_and_tag_tips(root, name, url)
    if head in tips:
        return head
    # One process each for all the tips: which of them this repository has, then whether HEAD is reachable
    # from any of them (rev-list prints nothing when every commit of HEAD is excluded by a tip).
    known = git(root, "cat-file", "--batch-check=%(objectname) %(objecttype)", stdin="".join(f"{t}\n" for t in tips))
    present = [line.split()[0] for line in known.splitlines() if not line.endswith("missing")]
    if present and not git(root, "rev-list", "--stdin", "--max-count=1", stdin="".join(f"{r}\n" for r in [head, *(f"^{t}" for t in present)])):
        return head
    branch = git(root, "rev-parse", "--abbrev-ref", "HEAD")
    target = branch if branch != "HEAD" else f"HEAD:refs/heads/grid-{head[:7]}"
    raise GanpipeError(
        f"HEAD ({head[:7]}) is on no branch or tag of the git remote {name} ({url}), so the workers, which clone "
        f"from there, could not check it out. Push it first: `git push {name} {target}` (if it was pushed from "
        "elsewhere, `git fetch` first), and run again. Nothing was submitted."
    )


def dvc_remote(root: Path, required: bool) -> tuple[str, str] | None:
    """The default DVC remote (name, URL), or None when there is none and the grid can do without one."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        config = repo.config
        name = config["core"].get("remote")
        if not name:
            if not required:
                return None
            raise GanpipeError(
                "no default DVC remote is configured. On a cluster the grid's points exchange data through it: the "
                "shared stages are pushed there once and every point restores them from it, and pushes its own "
                "outputs. Add one, e.g. `dvc remote add -d shared s3://bucket/ganpipe`, commit .dvc/config, push, "
                "and run again (or leave out --address to run the grid on this machine alone, where this "
                "repository's cache serves). Nothing was submitted."
            )
        url = config["remote"][name]["url"]
    return name, _absolute(url, root / ".dvc") if "://" not in url else url


def tracking_uri(root: Path) -> str:
    """The MLflow tracking URI the points log to (the user's, or the repository's store), checked usable."""
    uri = mlflow_store.tracking_uri(root)
    mlflow_store.check_store(uri)
    return uri


def _loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def unreachable_from_other_machines(uri: str, git_url: str, dvc_url: str | None, shared_folders: bool = False) -> list[str]:
    """The exchange points that only this machine can reach: a tracking store in a file or on a loopback
    address, a git or DVC remote in a local folder (unless the user says the folders are mounted on every
    node at the same path: `--shared-folders`)."""
    found = []
    scheme = urlparse(uri).scheme.split("+")[0]
    if scheme in ("", "file", "sqlite") or _loopback(uri):
        found.append(f"the MLflow store {uri} (set MLFLOW_TRACKING_URI to a tracking server every node reaches, "
                     "e.g. http://<this machine's name>:5000)")
    if (is_local_path(git_url) and not shared_folders) or _loopback(git_url):
        found.append(f"the git remote {git_url} (a URL every node reaches, e.g. git@host:team/ganpipe.git)")
    if dvc_url and ((is_local_path(dvc_url) and not shared_folders) or _loopback(dvc_url)):
        found.append(f"the DVC remote {dvc_url} (e.g. s3://bucket/ganpipe)")
    return found


def refuse_local_exchange(uri: str, git_url: str, dvc_url: str | None, other_hosts: list[str], shared_folders: bool = False) -> None:
    """On a cluster with nodes on other machines, refuse what those nodes would write to their own disks."""
    if not other_hosts:
        return
    found = unreachable_from_other_machines(uri, git_url, dvc_url, shared_folders)
    if found:
        raise GanpipeError(
            f"the Ray cluster has nodes on other machines ({', '.join(sorted(other_hosts)[:3])}), but "
            f"{'; '.join(found)} can only be reached from this one: each of those nodes would write its results to its "
            "own disk, where nothing collects them. Use the shared locations named here (or, for folders mounted at the same "
            "path on every node, pass --shared-folders), or leave out --address to run the grid on this machine alone. "
            "Nothing was submitted."
        )

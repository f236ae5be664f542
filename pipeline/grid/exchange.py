"""Where a grid's points get the grid's commit and the shared outputs, and where they leave their
experiments: the exchange points.

On a cluster (--address) they are the git remote and the default DVC remote, which every node reaches.
On one machine with both configured, the same (today's path), with this repository's DVC cache as the
points' cache so that nothing is downloaded twice. On one machine without them, no set-up: the points
clone this repository itself, push their experiment refs back into it, and use its DVC cache as both
their cache and their remote, so their results land here as `dvc exp run --queue` would leave them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.grid import checks

LOCAL_REMOTE = "ganpipe-grid"  # the DVC remote's name in a point's clone when this repository's cache serves


@dataclass(frozen=True)
class Exchange:
    git_url: str  # what a point clones from and pushes its experiment ref to
    git_name: str | None  # that git remote's name here; None: this repository itself
    dvc_url: str  # where a point fetches the shared outputs from and pushes its own
    dvc_name: str  # that DVC remote's name (in a point's clone)
    cache: str | None  # the DVC cache of every point: this repository's on one machine; None: each node's own

    @property
    def this_repository(self) -> bool:
        return self.git_name is None


def repository_cache(root: Path) -> str:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return str(Path(repo.cache.local_cache_dir).resolve())


def decide(root: Path, address: str | None, git_remote: str | None) -> tuple[Exchange, str]:
    """The exchange points and the grid's commit, refusing (before anything is submitted) what cannot work."""
    cluster = address is not None
    remote = checks.git_remote(root, git_remote)
    if remote is None and cluster:
        checks.git_remote(root, "origin")  # this repository has no git remote: refuses, naming the fix
    dvc = checks.dvc_remote(root, required=cluster or git_remote is not None)
    cache = None if cluster else repository_cache(root)
    if remote and dvc:
        commit = checks.head_pushed(root, *remote)
        return Exchange(remote[1], remote[0], dvc[1], dvc[0], cache), commit
    commit = checks.git(root, "rev-parse", "HEAD")
    assert cache is not None  # a cluster without both remotes was refused above
    return Exchange(str(root.resolve()), None, cache, LOCAL_REMOTE, cache), commit

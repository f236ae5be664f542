"""The shared task's two DVC steps that DVC's commands do not do as the grid needs. Run as a script in
the task's clone (standard library and dvc only): `python shared_dvc.py prune|publish TARGET...`.

prune: drop from dvc.lock the shared stages whose outputs neither the DVC cache nor the remote holds
  (a dvc.lock committed on another CPU names other evaluator bytes). With the entry, `dvc repro` would
  compute the stage again; without it, DVC looks the stage up in the run cache first and restores what
  an earlier grid computed here, so each kind of CPU computes the shared stages once, not every grid.
publish: push the run-cache entries of the shared stages only, with the objects of their uncached outputs.
  `dvc push --run-cache` would send every entry of the local cache, which on a node is shared by every
  point that ran there, so each grid would upload (and the next one download) more than the last; and
  `dvc push` leaves out the objects of `cache: false` outputs although the entries name them (without
  them a later `dvc repro --pull` finds the entry, cannot restore "metrics/evaluator.json", and runs the
  stage again). The stages' cached outputs go with `dvc push` before it.
"""

from __future__ import annotations

import os
import sys

from dvc.repo import Repo
from dvc.stage.cache import _can_hash, _get_stage_hash  # the run-cache key DVC itself files an entry under
from dvc.utils.serialize import dump_yaml, load_yaml

LOCK = "dvc.lock"


def prune(repo: Repo, stages: list) -> list[str]:
    """Remove the lock entries of stages with an output in neither the cache nor the remote; their names."""
    gone = []
    for stage in stages:
        objs = {out.hash_info for out in stage.outs if out.use_cache and out.hash_info and out.hash_info.value}
        if objs and repo.cloud.status(objs).missing:
            gone.append(stage.name)
    if gone:
        lock = load_yaml(LOCK)
        for name in gone:
            lock["stages"].pop(name, None)
        dump_yaml(LOCK, lock)
    return gone


def run_cache_files(repo: Repo, stages: list) -> list[tuple[str, str]]:
    """(local path, path relative to the cache root) of each run-cache entry of these stages."""
    found = []
    for stage in stages:
        if not _can_hash(stage):
            continue
        folder = repo.stage_cache._get_cache_dir(_get_stage_hash(stage))
        for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            path = os.path.join(folder, entry)
            found.append((path, os.path.relpath(path, repo.cache.legacy.path)))
    return found


def publish(repo: Repo, stages: list) -> str:
    uncached = [
        out.hash_info for stage in stages for out in stage.outs
        if not out.use_cache and out.hash_info and out.hash_info.value and out.exists
    ]
    pushed = repo.cloud.push(uncached)
    remote = repo.cloud.get_remote_odb(None, "push --run-cache", hash_name="md5-dos2unix")
    sent = 0
    for local, relative in run_cache_files(repo, stages):
        target = remote.fs.join(remote.path, *relative.split(os.sep))
        if not remote.fs.exists(target):
            remote.fs.makedirs(remote.fs.parent(target))
            remote.fs.put_file(local, target)
            sent += 1
    return f"pushed {len(pushed.transferred)} uncached output object(s) and {sent} run-cache entr(y/ies) of {len(stages)} stage(s)"


def main(action: str, targets: list[str]) -> None:
    with Repo() as repo:
        stages = [stage for stage, _ in repo.index.collect_targets(targets, with_deps=True)]
        if action == "prune":
            gone = prune(repo, stages)
            print(f"dvc.lock: dropped {', '.join(gone)} (outputs nowhere; looked up in the run cache)" if gone else "dvc.lock: every shared output is available")
        else:
            print(publish(repo, stages))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])

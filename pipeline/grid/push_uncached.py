"""Push the objects of the workspace's uncached outputs (`cache: false` metrics) to the DVC remote.

`dvc push --run-cache` sends the run-cache entries but not the objects of a stage's uncached outputs,
although the entries name them; a clone that pulls the entry then cannot restore the stage
("Missing cache files: metrics/evaluator.json") and runs it again. DVC commits those objects to the
local cache when it saves a run-cache entry, so they are pushed from there. Run as a script in the
repository (standard library and dvc only): `python push_uncached.py`.
"""

from __future__ import annotations

from dvc.repo import Repo


def main() -> None:
    with Repo() as repo:
        objs = [
            out.hash_info
            for stage in repo.index.stages
            for out in stage.outs
            if not out.use_cache and out.hash_info and out.hash_info.value and out.exists
        ]
        pushed = repo.cloud.push(objs)
        print(f"pushed {len(pushed.transferred)} uncached output object(s) for the run cache")


if __name__ == "__main__":
    main()

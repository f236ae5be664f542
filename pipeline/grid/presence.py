"""Whether a grid point is done: its experiment ref is in the git exchange point under the grid's commit
as baseline, and every cached output that experiment names is in the DVC exchange point.

A ref alone proves nothing about the data (an upload can fail after the ref is pushed, or an older
ganpipe pushed the ref first), and a name alone proves nothing about the code (`--name` reused after a
commit names older experiments), so both are checked. Standard library and dvc only: a task runs it as
a script in its clone (`python presence.py REV REMOTE [URL]`, exit 0 when complete), the driver imports it.
"""

from __future__ import annotations

import subprocess
import sys

EXPS = "refs/exps"


def exp_ref(baseline: str, name: str) -> str:
    """The ref DVC gives experiment `name` of baseline commit `baseline` (dvc/repo/experiments/refs.py)."""
    return f"{EXPS}/{baseline[:2]}/{baseline[2:]}/{name}"


def remote_exp_refs(git_url: str, timeout: float = 120, env: dict | None = None) -> dict[str, str]:
    """Every experiment ref in the git exchange point, with the commit it names."""
    listing = subprocess.run(
        ["git", "ls-remote", git_url, f"{EXPS}/*"], capture_output=True, text=True, timeout=timeout, env=env
    )
    if listing.returncode != 0:
        raise RuntimeError(f"could not list the experiments in {git_url}: {listing.stderr.strip()}")
    refs = (line.split("\t") for line in listing.stdout.splitlines() if "\t" in line)
    return {ref: sha for sha, ref in refs}


def remote_config(name: str, url: str | None) -> dict | None:
    """DVC config naming `url` as the default remote `name` (None: the repository's own config serves)."""
    return {"core": {"remote": name}, "remote": {name: {"url": url}}} if url else None


def missing_outputs(root: str, rev: str, remote: str, url: str | None = None) -> list[str]:
    """The cached outputs of commit `rev` (an experiment) that the DVC remote does not hold."""
    import logging

    from dvc.repo import Repo

    logging.getLogger("dvc").setLevel(logging.ERROR)  # its notes on stages without outputs are not the grid's
    with Repo(root, config=remote_config(remote, url)) as repo:
        used: set = set()
        for _ in repo.brancher(revs=[rev], workspace=False):
            for odb, objs in repo.index.used_objs(remote=remote, force=True, push=True).items():
                if odb is None:  # outputs of imports live elsewhere
                    used.update(objs)
        status = repo.cloud.status(used, remote=remote)
        return sorted(h.obj_name or h.value for h in (*status.new, *status.missing))


if __name__ == "__main__":
    lacking = missing_outputs(".", sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
    print("\n".join(f"not in the DVC remote: {name}" for name in lacking) or "every output is in the DVC remote")
    sys.exit(1 if lacking else 0)

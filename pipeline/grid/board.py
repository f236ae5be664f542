"""Where each attempt of each task runs, as the driver follows the grid: a Ray actor the tasks report
to when they start, and the driver's reading of it against the cluster's nodes.

Ray reruns a task whose node was lost without telling its caller, so this is how the driver can say,
in one line each, which node was lost and which point was rerun where.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SHARED = "shared stages"  # the shared task's name on the board


class Board:
    """The actor (created with ray.remote(num_cpus=0) on the driver's node): task name -> [(node, host), ...]."""

    def __init__(self) -> None:
        self.starts: dict[str, list[tuple[str, str]]] = {}

    def started(self, name: str, node: str, host: str) -> None:
        self.starts.setdefault(name, []).append((node, host))

    def read(self) -> dict[str, list[tuple[str, str]]]:
        return self.starts


@dataclass
class Watch:
    """What the driver has already said: lost nodes and reruns, each once."""

    nodes: dict[str, str] = field(default_factory=dict)  # node id -> address, of every node seen alive
    lost: set[str] = field(default_factory=set)
    told: dict[str, int] = field(default_factory=dict)  # task name -> attempts already reported
    moved: dict[str, str] = field(default_factory=dict)  # task name -> the lost node it was said to leave


def short(node: str) -> str:
    return node[:8]


def lost_nodes(watch: Watch, alive: dict[str, str], starts: dict, unfinished: set[str]) -> list[str]:
    """One line per node that was alive before and is not now, naming the unfinished tasks it held."""
    lines = []
    watch.nodes.update(alive)
    for node, address in sorted(watch.nodes.items()):
        if node in alive or node in watch.lost:
            continue
        watch.lost.add(node)
        held = sorted(name for name, runs in starts.items() if name in unfinished and runs and runs[-1][0] == node)
        watch.moved.update(dict.fromkeys(held, node))
        what = f"Ray reruns {', '.join(held)} on the other nodes" if held else "no unfinished point was running there"
        lines.append(f"node {short(node)} ({address}) lost: {what}")
    return lines


def reruns(watch: Watch, starts: dict) -> list[str]:
    """One line per new attempt of a task that had started before."""
    lines = []
    for name, runs in sorted(starts.items()):
        for attempt in range(max(watch.told.get(name, 1), 1), len(runs)):
            node, host = runs[attempt]
            what = f"point {name}" if name != SHARED else name
            lines.append(f"{what} rerun on node {short(node)} ({host}), attempt {attempt + 1} (the last ran on node {short(runs[attempt - 1][0])})")
        watch.told[name] = max(watch.told.get(name, 1), len(runs))
    return lines


def finished_where_lost(watch: Watch, name: str, node: str | None) -> str | None:
    """The correction to a lost-node line: a task whose attempt on that node returned anyway (its worker
    outlived the raylet long enough to finish) is done there and Ray does not rerun it."""
    lost = watch.moved.pop(name, None)
    if lost is None or lost != node:
        return None
    return f"point {name} finished on node {short(lost)} before that node was lost: not rerun"


def closing_note(watch: Watch, starts: dict) -> list[str]:
    """Each rerun, where it ran and why (a lost node, else a failed transfer step), for the summary."""
    note = []
    for name, runs in sorted(starts.items()):
        for (before, _), (node, host) in zip(runs, runs[1:]):
            why = f"node {short(before)} ({watch.nodes.get(before, '?')}) was lost" if before in watch.lost else f"its attempt on node {short(before)} failed"
            note.append(f"{name} was rerun on node {short(node)} ({host}) after {why}")
    return note

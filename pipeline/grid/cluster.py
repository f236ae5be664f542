"""Connecting to Ray: a local instance without --address, else the cluster at the address, which is
checked for reachability first so a wrong address fails in seconds, naming it."""

from __future__ import annotations

import socket
import time

from pipeline.common.errors import GanpipeError

REACH_TIMEOUT_S = 10  # one TCP connect; Ray's own connect is given the rest of the 30 s the user waits at most
CLIENT_PORT = 10001  # ray:// addresses without a port: Ray Client's default
GCS_PORT = 6379  # HOST without a port: `ray start --head`'s default


def _host_port(address: str) -> tuple[str, int]:
    rest = address.removeprefix("ray://")
    host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    default = CLIENT_PORT if address.startswith("ray://") else GCS_PORT
    try:
        return host.strip("[]"), int(port) if port else default
    except ValueError:
        raise GanpipeError(
            f"--address {address!r} is not HOST:PORT or ray://HOST:PORT; `ray start --head` prints the address "
            "to use (e.g. 10.0.0.5:6379). Nothing was submitted."
        ) from None


def reachable(address: str) -> None:
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=REACH_TIMEOUT_S):
            return
    except OSError as exc:
        raise GanpipeError(
            f"the Ray cluster at {address} is unreachable ({exc.strerror or exc}). Start it with `ray start --head` on "
            f"that machine (it prints the address), check the host and port and that the firewall lets this machine "
            f"in, or leave out --address to run the grid on a local Ray instance. Nothing was submitted."
        ) from None


def connect(address: str | None, temp_dir: str | None = None) -> None:
    """ray.init on the cluster, or on a new local instance using this machine's cores."""
    import logging

    import ray

    if address:
        reachable(address)
    started = time.monotonic()
    try:
        ray.init(
            address=address, include_dashboard=False if not address else None, logging_level=logging.WARNING,
            log_to_driver=False, configure_logging=True, _temp_dir=temp_dir if not address else None,
        )
    except (ConnectionError, TimeoutError, RuntimeError) as exc:
        raise GanpipeError(
            f"could not join the Ray cluster at {address} after {time.monotonic() - started:.0f} s ({exc}). Check "
            "that it is a Ray head node's address (`ray status --address ...` on that machine) and that this machine "
            "runs the same Ray and Python versions as the cluster. Nothing was submitted."
        ) from None


def check_resources(cpus: float, gpus: float) -> None:
    """Refuse a point no node could ever run: Ray would otherwise keep it pending for ever."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if gpus > 0 and not any(n.get("GPU", 0) >= gpus for n in nodes):
        most = max((n.get("GPU", 0) for n in nodes), default=0)
        raise GanpipeError(
            f"--gpus-per-point {gpus:g} asks for a GPU, but no node of the Ray cluster has {'one' if not most else f'{gpus:g} GPUs'} "
            f"(the most on one node: {most:g}). Start the GPU machines' Ray with `ray start --address ...` (Ray "
            "detects their GPUs), or drop --gpus-per-point to train on CPUs. Nothing was submitted."
        )
    if not any(n.get("CPU", 0) >= cpus for n in nodes):
        most = max((n.get("CPU", 0) for n in nodes), default=0)
        raise GanpipeError(
            f"--cpus-per-point {cpus:g} is more than any node of the Ray cluster has (the most on one node: {most:g}), so "
            f"no point could start. Lower --cpus-per-point to {most:g} or less. Nothing was submitted."
        )


def slots(cpus: float, gpus: float) -> int:
    """How many points the cluster runs at once."""
    import ray

    total = 0
    for n in (n["Resources"] for n in ray.nodes() if n.get("Alive")):
        fits = int(n.get("CPU", 0) // cpus) if cpus > 0 else 10**6
        if gpus > 0:
            fits = min(fits, int(n.get("GPU", 0) // gpus))
        total += fits
    return max(total, 1)

"""Connecting to Ray: a local instance without --address, else the cluster at the address, which is
checked for reachability first so a wrong address fails in seconds, naming it."""

from __future__ import annotations

import ipaddress
import logging
import socket
import time

import psutil

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


def _quiet() -> None:
    """Keep Ray's own lines out of the grid's output: ganpipe says what happened to nodes and points itself
    (one line per lost node and per rerun point). log_to_driver=False stops the workers' output; what is
    left is the driver's error listener, which prints every node's death notice with 20 lines of its
    raylet's log ([state-dump] ...) and can only be silenced by the switch Ray's own debugger uses
    (ray.util.rpdb). Ray's logs on each node still hold everything."""
    import ray._private.worker as ray_worker

    if hasattr(ray_worker, "_worker_logs_enabled"):
        ray_worker._worker_logs_enabled = False


def connect(address: str | None, runtime_env: dict) -> None:
    """ray.init on the cluster at `address`, or on a new local instance using this machine's cores: never a
    cluster found through RAY_ADDRESS or a running `ray start` (the driver decided what is local from the
    address it was given)."""
    import ray

    if address:
        reachable(address)
    started = time.monotonic()
    try:
        ray.init(
            address=address or "local", include_dashboard=None if address else False, logging_level=logging.ERROR,
            log_to_driver=False, configure_logging=True, runtime_env=runtime_env,
        )
    except (ConnectionError, TimeoutError, RuntimeError) as exc:
        raise GanpipeError(
            f"could not join the Ray cluster at {address or 'a new local instance'} after {time.monotonic() - started:.0f} s "
            f"({exc}). Check that it is a Ray head node's address (`ray status --address ...` on that machine) and that "
            "this machine runs the same Ray and Python versions as the cluster. Nothing was submitted."
        ) from None
    _quiet()


def _alive() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def alive_nodes() -> dict[str, str]:
    """Node id -> address of every live node."""
    return {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in _alive()}


def head_node() -> str | None:
    """The id of the head node (the one holding Ray's control store), if it is alive."""
    return next((n["NodeID"] for n in _alive() if "node:__internal_head__" in n.get("Resources", {})), None)


def other_hosts() -> list[str]:
    """The addresses of live nodes that are not this machine."""
    mine = {a.address for addresses in psutil.net_if_addrs().values() for a in addresses}
    found = set()
    for node in _alive():
        address = node.get("NodeManagerAddress", "")
        try:
            loopback = ipaddress.ip_address(address).is_loopback
        except ValueError:
            loopback = False
        if address not in mine and not loopback:
            found.add(address)
    return sorted(found)


def check_resources(shared_cpus: float, point_cpus: dict[str, float], gpus: float) -> None:
    """Refuse a task no node could ever run: Ray would otherwise keep it pending for ever."""
    nodes = [n["Resources"] for n in _alive()]
    most = max((n.get("CPU", 0) for n in nodes), default=0)
    if gpus > 0 and not any(n.get("GPU", 0) >= gpus for n in nodes):
        gpu_most = max((n.get("GPU", 0) for n in nodes), default=0)
        raise GanpipeError(
            f"--gpus-per-point {gpus:g} asks for a GPU, but no node of the Ray cluster has {'one' if not gpu_most else f'{gpus:g} GPUs'} "
            f"(the most on one node: {gpu_most:g}). Start the GPU machines' Ray with `ray start --address ...` (Ray "
            "detects their GPUs), or drop --gpus-per-point to train on CPUs. Nothing was submitted."
        )
    if shared_cpus > most:
        raise GanpipeError(
            f"the shared stages train the evaluator and calibrate on evaluator.threads = {shared_cpus:g} threads, so their "
            f"task asks Ray for {shared_cpus:g} CPUs, but the most on one node is {most:g}. Thread counts are params because "
            "they change results, so the grid does not lower them: start nodes with more CPUs (`ray start --num-cpus "
            f"{shared_cpus:g} ...`), or set evaluator.threads to {most:g} in params.yaml and commit it (a different "
            "evaluator, so different metrics). Nothing was submitted."
        )
    name, cpus = max(point_cpus.items(), key=lambda item: item[1])
    if cpus > most:
        raise GanpipeError(
            f"grid point {name} asks Ray for {cpus:g} CPUs (the largest of its train.threads, its evaluator.threads and "
            f"--cpus-per-point), but the most on one node is {most:g}, so it could never start. Start nodes with more "
            f"CPUs (`ray start --num-cpus {cpus:g} ...`), or give the point fewer threads (-S train.threads=... or in "
            "params.yaml: a different training, so a different result) or a lower --cpus-per-point. Nothing was submitted."
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

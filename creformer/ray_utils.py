"""Connecting to Ray: a cluster named by RAY_ADDRESS / ray.address, else a local Ray on loopback."""

from __future__ import annotations

import atexit
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
import ray

from .config import RayConfig

# Ray's dashboard asks cloud metadata endpoints (169.254.169.254, metadata.google.internal) which
# cloud it runs on whenever it starts, usage stats on or off, and a `ray start` head also tells
# usage-stats.ray.io that usage stats are off (ray/_common/usage/usage_lib.py). Both are plain
# HTTP through `requests`, so a local Ray's own processes get a proxy that is a closed loopback
# port, loopback exempt, and a loopback report URL: those calls fail at once and nothing leaves
# the machine. Ray's gRPC ignores proxy variables (Ray sets grpc.enable_http_proxy=0) and the
# dashboard's aiohttp client does not read them; the tasks and actors of the run get the
# caller's own proxy settings back (``worker_proxy_env``).
CLOSED_LOOPBACK_URL = "http://127.0.0.1:9"  # the discard port: nothing listens there
PROXY_VARS = ("http_proxy", "HTTP_PROXY")
NO_PROXY = "localhost,127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.0/8,::1"


def offline_daemon_env() -> dict[str, str]:
    """The environment additions that keep a local Ray's own processes off the network."""
    return {**dict.fromkeys(PROXY_VARS, CLOSED_LOOPBACK_URL), "no_proxy": NO_PROXY, "NO_PROXY": NO_PROXY,
            "RAY_USAGE_STATS_REPORT_URL": f"{CLOSED_LOOPBACK_URL}/"}


def worker_proxy_env() -> dict[str, str]:
    """The caller's own proxy settings (empty: none), for the tasks and actors of a local Ray,
    which otherwise inherit ``offline_daemon_env`` from the raylet."""
    return {k: os.environ.get(k, "") for k in (*PROXY_VARS, "no_proxy", "NO_PROXY")}


@contextmanager
def _environ(updates: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``updates`` inside the block, as it was after it."""
    saved = {k: os.environ.get(k) for k in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def runtime_env(cfg: RayConfig) -> dict:
    # gloo picks the interface by hostname otherwise, which may resolve off loopback.
    return {"env_vars": {"GLOO_SOCKET_IFNAME": cfg.gloo_socket_ifname, "DS_ACCELERATOR": cfg.ds_accelerator,
                         "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": str(cfg.train_poll_s)}}


def ensure_ray(cfg: RayConfig) -> None:
    """Initialize Ray once: the configured or environment address, else a local node on ``cfg.node_ip``.

    Ray rewrites 127.0.0.1 to the machine's network address, so local runs use another loopback
    address (127.0.0.2 by default) to keep every connection on loopback.
    """
    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS", "")
    # Under `ray job submit` the job's runtime_env is already in this process's environment, and
    # Ray refuses to merge a second definition of the same variables: set only what is missing.
    env = {k: v for k, v in runtime_env(cfg)["env_vars"].items() if os.environ.get(k) != v}
    kwargs = {"log_to_driver": True, "logging_level": "warning"}
    if address:
        ray.init(address=address, runtime_env={"env_vars": env} if env else None, **kwargs)
        return
    # The dashboard serves Ray's State API, which Ray Train's placement-group cleaner polls every
    # second: without it each poll logs a warning, and with Ray's address auto-detection the
    # cleaner would query whichever cluster `ray start` last recorded on this machine (a stale or
    # another user's head). So: a dashboard on loopback at a port picked here, named to every
    # process of this Ray through RAY_API_SERVER_ADDRESS.
    port = free_loopback_port()
    env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    env.update(worker_proxy_env())
    # Ray's processes start inside ray.init and keep the environment they started with; this
    # driver's own environment is restored afterwards.
    with _environ(offline_daemon_env()):
        # One logical CPU beyond the cores: training workers hold one each, and Ray Data's read
        # tasks must still be schedulable beside them or the stream stalls.
        ray.init(address="local", _node_ip_address=cfg.node_ip,  # "local": never attach to a stray `ray start` head
                 include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port, runtime_env={"env_vars": env},
                 num_cpus=cfg.num_cpus or (os.cpu_count() or 1) + 1, **kwargs)

    atexit.register(shutdown_ray)  # runs before Ray's own exit hook (registered at import)


def _started_processes() -> list:
    """The processes this driver's Ray started (its daemons) and all their descendants, as
    psutil.Process; empty for a driver that joined a running cluster."""
    node = getattr(ray._private.worker.global_worker, "node", None)
    roots = [info.process.pid for infos in (getattr(node, "all_processes", None) or {}).values() for info in infos]
    out = []
    for pid in roots:
        try:
            root = psutil.Process(pid)
            out += [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
    return out


def shutdown_ray(grace_s: float = 10.0) -> int:
    """``ray.shutdown()``, then kill whatever of the local Ray this driver started outlives it by
    ``grace_s``; returns how many were killed. Why: a worker whose actor has ended can stay alive
    when a thread keeps its interpreter from exiting; once its raylet is gone nothing reaps it
    (seen once: a ``ray::TrainController`` still running after the test run that started it). The
    processes are listed before the shutdown, while they are still the daemons' descendants. A
    cluster this driver only joined is only disconnected from."""
    if not ray.is_initialized():
        return 0
    procs = _started_processes()
    ray.shutdown()
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)
    return len(alive)


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

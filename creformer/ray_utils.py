"""Connecting to Ray: a cluster named by RAY_ADDRESS / ray.address, else a local Ray on loopback."""

from __future__ import annotations

import os

from .config import RayConfig


def runtime_env(cfg: RayConfig) -> dict:
    # gloo picks the interface by hostname otherwise, which may resolve off loopback.
    return {"env_vars": {"GLOO_SOCKET_IFNAME": cfg.gloo_socket_ifname, "DS_ACCELERATOR": cfg.ds_accelerator}}


def ensure_ray(cfg: RayConfig) -> None:
    """Initialize Ray once: the configured or environment address, else a local node on ``cfg.node_ip``.

    Ray rewrites 127.0.0.1 to the machine's network address, so local runs use another loopback
    address (127.0.0.2 by default) to keep every connection on loopback.
    """
    import ray

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
    # One logical CPU beyond the cores: training workers hold one each, and Ray Data's read
    # tasks must still be schedulable beside them or the stream stalls.
    ray.init(address="local", _node_ip_address=cfg.node_ip,  # "local": never attach to a stray `ray start` head
             include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port, runtime_env={"env_vars": env},
             num_cpus=cfg.num_cpus or (os.cpu_count() or 1) + 1, **kwargs)


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

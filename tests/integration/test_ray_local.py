"""The local Ray of `ensure_ray`: Ray's State API, as Ray's own actors call it, reaches this Ray."""

import os

import ray


def test_state_api_reaches_this_ray(ray_local):
    # Ray Train's placement-group cleaner asks the State API whether its controller lives. Without
    # a dashboard that call fails every second, and by address auto-detection it would ask
    # whichever head `ray start` recorded last on this machine (then, finding no controller
    # there, remove the run's placement group).
    @ray.remote(num_cpus=0)
    class Probe:
        def ask(self):
            from ray.util.state import list_actors

            names = [a.class_name for a in list_actors(filters=[("state", "=", "ALIVE")])]
            return os.environ.get("RAY_API_SERVER_ADDRESS"), names

    probe = Probe.remote()
    try:
        url, names = ray.get(probe.ask.remote(), timeout=120)
    finally:
        ray.kill(probe)
    webui = ray._private.worker.global_worker.node.address_info["webui_url"]
    assert url == f"http://{webui}" and webui.startswith("127.0.0.1:")  # the dashboard of this Ray, on loopback
    assert any(n.endswith("Probe") for n in names), names

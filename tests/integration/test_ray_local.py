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


STUCK_ACTOR = """
import os, threading, time
import ray
from creformer.config import RayConfig
from creformer.ray_utils import ensure_ray

ensure_ray(RayConfig(num_cpus=1, node_ip="127.0.0.2"))

@ray.remote(num_cpus=0)
class Stuck:
    def start(self):
        threading.Thread(target=time.sleep, args=(3600,)).start()  # not a daemon: the interpreter waits for it
        return os.getpid()

actor = Stuck.remote()
print(ray.get(actor.start.remote()), flush=True)
del actor  # the actor ends as Ray Train's controller does at the end of a run: no reference left
time.sleep(3)
"""  # then the driver exits without a word about Ray: ensure_ray's exit hook must clean up


def _running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_driver_exit_leaves_no_ray_process(tmp_path):
    """An actor whose process a non-daemon thread keeps alive after the actor ended (a plain
    ray.shutdown() leaves it running, orphaned) is gone once a driver of ensure_ray exits."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", STUCK_ACTOR], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    pid = int(run.stdout.split()[0])
    try:
        assert not _running(pid), f"the stuck actor's process {pid} outlived its driver"
    finally:
        if _running(pid):
            os.kill(pid, 9)

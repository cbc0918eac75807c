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


def test_motif_scan_stage_equals_the_driver_scan(ray_local):
    """atlas_grn's motif scan as a Ray Data stage over blocks of peaks: the same counts as one scan."""
    import numpy as np

    from creformer.analysis.motif_scan import scan, scan_fimo
    from creformer.analysis.motif_stage import scan_peaks
    from creformer.engine.io.motifs import Motif
    from creformer.engine.tokenize import dna_tokens

    rng = np.random.default_rng(3)
    site = "TTGACGTCAA"
    seqs = ["".join("ACGT"[i] for i in rng.integers(0, 4, 400)) for _ in range(23)]
    seqs = [s[:100] + site + s[110:] if k % 3 == 0 else s for k, s in enumerate(seqs)]  # planted in every third peak
    tokens = np.stack([dna_tokens(s.encode()) for s in seqs])
    pwm = np.full((len(site), 4), 0.02)
    for i, b in enumerate(site):
        pwm[i, "ACGT".index(b)] = 0.94
    motifs = [Motif("M1", "TFA", pwm), Motif("M2", "TFB", rng.dirichlet(np.ones(4), 8))]
    from creformer.analysis.motif_scan import decode_dna

    bases = decode_dna(tokens)
    staged = scan_peaks(tokens, motifs, 1e-4, 0.85, workers=2, peaks_per_block=5)  # 5 blocks over 2 actors
    assert np.array_equal(staged.counts, scan_fimo(bases, motifs, 1e-4).counts)
    assert staged.counts[::3, 0].min() >= 1
    by_threshold = scan_peaks(tokens, motifs, 0.0, 0.85, workers=2, peaks_per_block=7)
    assert np.array_equal(by_threshold.counts, scan(bases, motifs, 0.85).counts)

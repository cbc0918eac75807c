"""Ray's own processes stay on loopback: every connect() a local Ray makes while it starts, traced
with strace, goes to a loopback address (ray_utils.offline_daemon_env says what went out before:
the dashboard's cloud-metadata probes, and the "usage stats disabled" report of a `ray start` head)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from creformer.ray_utils import free_loopback_port

from .conftest import SCRIPT, Cluster, cluster_env

STRACE = shutil.which("strace")


def _strace_works() -> bool:
    if STRACE is None:
        return False
    return subprocess.run([STRACE, "-f", "-qq", "-e", "trace=connect", "-o", "/dev/null", "true"],
                          capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(not _strace_works(), reason="needs strace, allowed to trace child processes (ptrace)")

# connect(FD<PROTO:[...]>, {sa_family=AF_INET, sin_port=htons(P), sin_addr=inet_addr("A")}, ...) as `strace -yy` prints it
CONNECT = re.compile(r'connect\(\d+<(?P<proto>[A-Z0-9]+)[^>]*>, \{sa_family=AF_INET6?, sin6?_port=htons\((?P<port>\d+)\),'
                     r'.*?(?:inet_addr\("(?P<v4>[^"]+)"\)|inet_pton\(AF_INET6, "(?P<v6>[^"]+)")')
# A UDP connect() sends nothing: Ray finds the interface that routes outward by connecting a UDP
# socket to 8.8.8.8:53 and reading the socket's own address.
ROUTE_LOOKUP = ("UDP", "8.8.8.8", 53)


def _loopback(addr: str) -> bool:
    addr = addr.removeprefix("::ffff:")
    return addr.startswith("127.") or addr == "::1"


def off_loopback(trace: Path) -> tuple[list[str], int]:
    """The connect() lines of an ``strace -f -yy`` log that reach off loopback (bar the UDP
    route lookup), and how many connects went to loopback (to tell a trace that saw nothing)."""
    bad, local = [], 0
    for line in trace.read_text(errors="replace").splitlines():
        m = CONNECT.search(line)
        if not m:
            continue
        addr = m["v4"] or m["v6"]
        if _loopback(addr):
            local += 1
        elif (m["proto"], addr, int(m["port"])) != ROUTE_LOOKUP:
            bad.append(line.strip())
    return bad, local


def _wait_usage_module(logs: Path, timeout: float = 90) -> None:
    """Until the dashboard's usage-stats module has run (its cloud probe comes first, and the
    disabled report of a `ray start` head right after), plus a margin for that report."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any("Usage reporting is" in f.read_text(errors="replace") for f in logs.glob("dashboard*.log")):
            time.sleep(5)
            return
        time.sleep(0.5)
    raise AssertionError(f"the dashboard in {logs} never logged its usage-stats module")


LOCAL_RAY = """
import sys
import ray
from creformer.config import RayConfig
from creformer.ray_utils import ensure_ray, shutdown_ray
ensure_ray(RayConfig(num_cpus=1, node_ip="127.0.0.2"))
print(ray._private.worker.global_worker.node.get_session_dir_path(), flush=True)
sys.stdin.readline()  # the test has seen the usage-stats module run
shutdown_ray()  # every traced process ends, so strace exits
"""


def test_local_ray_stays_on_loopback(tmp_path):
    trace = tmp_path / "strace.log"
    run = subprocess.Popen([STRACE, "-f", "-qq", "-yy", "-e", "trace=connect", "-o", str(trace), sys.executable, "-c", LOCAL_RAY],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        session = run.stdout.readline().strip()
        assert session, run.stderr.read()[-3000:] if run.poll() is not None else "no session folder printed"
        _wait_usage_module(Path(session) / "logs")
        _, err = run.communicate("\n", timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, err[-3000:]
    bad, local = off_loopback(trace)
    assert local > 0, "the trace saw no connection at all: strace did not follow Ray's processes"
    assert bad == [], "\n".join(bad)


def test_script_head_stays_on_loopback(tmp_path):
    env = cluster_env(tmp_path / "session", 1)
    trace = tmp_path / "strace.log"
    port, dash, client, agent = (free_loopback_port() for _ in range(4))
    # strace follows the head's daemons after `start` returns, until `stop` ends them
    tracer = subprocess.Popen([STRACE, "-f", "-qq", "-yy", "-e", "trace=connect", "-o", str(trace),
                               str(SCRIPT), "start", *map(str, (port, dash, client, agent))], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        recorded = tmp_path / "session"
        while not (recorded.exists() and recorded.read_text().strip()) and tracer.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert recorded.exists() and recorded.read_text().strip(), \
            f"`start` recorded no session folder: {tracer.stderr.read()[-2000:] if tracer.poll() is not None else 'timed out'}"
        session = Path(recorded.read_text().strip())
        _wait_usage_module(session / "logs")
    finally:
        stopped = Cluster(env, dash).script("stop", timeout=120)
        try:
            tracer.wait(timeout=120)
        except subprocess.TimeoutExpired:
            tracer.kill()
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    bad, local = off_loopback(trace)
    assert local > 0, "the trace saw no connection at all: strace did not follow Ray's processes"
    assert bad == [], "\n".join(bad)

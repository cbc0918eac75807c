"""A real local Ray cluster (loopback only) shared by the tests that submit jobs to it."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from creformer.ray_utils import free_loopback_port as free_port

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "infra" / "local_cluster.sh"


@dataclass
class Cluster:
    env: dict
    dashboard: int

    def script(self, *args, timeout: int = 900) -> subprocess.CompletedProcess:
        return subprocess.run([str(SCRIPT), *map(str, args)], env=self.env, capture_output=True, text=True, timeout=timeout)

    def submit(self, *cmd, timeout: int = 900) -> subprocess.CompletedProcess:
        """`ray job submit --working-dir <repo> -- CMD` against this cluster's head."""
        return self.script("submit", self.dashboard, "--", *cmd, timeout=timeout)


def cluster_env(session_file: Path, cpus: int) -> dict:
    """The environment of `infra/local_cluster.sh` for one cluster: this venv first on PATH, its
    own session record, ``cpus`` CPUs per node."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "CREFORMER_SESSION_FILE": str(session_file), "RAY_NUM_CPUS": str(cpus)}


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """A head on 127.0.0.2 plus a second node on 127.0.0.3 (2 CPUs each), stopped at the end."""
    port, dash, client = free_port(), free_port(), free_port()
    c = Cluster(cluster_env(tmp_path_factory.mktemp("session") / "session", 2), dash)
    # free agent ports too: a Ray that just exited on 127.0.0.2 may still hold the default 52365
    started = c.script("start", port, dash, client, free_port())
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        node = c.script("add-node", port, "127.0.0.3", free_port())
        assert node.returncode == 0, node.stderr[-2000:]
        yield c
    finally:
        c.script("stop")

"""`ray job submit` against a real local head (loopback only), and a two-node cluster on this machine:
one training worker per node, checkpoints on a shared path, a rerun that resumes."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "infra" / "local_cluster.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*args, env, timeout=600):
    return subprocess.run([str(SCRIPT), *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "CREFORMER_SESSION_FILE": str(tmp_path_factory.mktemp("session") / "session"), "RAY_NUM_CPUS": "2"}
    port, dash, client = free_port(), free_port(), free_port()
    started = run("start", port, dash, client, env=env)
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        node = run("add-node", port, "127.0.0.3", env=env)
        assert node.returncode == 0, node.stderr[-2000:]
        yield env, dash
    finally:
        run("stop", env=env)


def test_job_submit_two_nodes_and_resume(cluster, tiny_shards, tmp_path):
    env, dash = cluster
    args = ["train_elementary", "--config", "tiny", f"data.shards={tiny_shards.parent}", f"train.storage_path={tmp_path}",
            "data.crop_length=128", "train.checkpoint_every=3", "train.log_every=3", "train.placement_strategy=STRICT_SPREAD"]
    first = run("submit", dash, "--", *args, "train.max_steps=6", env=env)
    out = first.stdout + first.stderr
    assert first.returncode == 0 and "succeeded" in out, out[-3000:]
    assert "ip=127.0.0.2" in out and "ip=127.0.0.3" in out  # one worker on each node
    run_dir = tmp_path / "elementary"
    assert (run_dir / "export" / "model.safetensors").exists()
    second = run("submit", dash, "--", *args, "train.max_steps=9", env=env)
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [3, 6, 9]  # the rerun resumed after step 6
    assert json.loads((run_dir / "export" / "meta.json").read_text())["step"] == 9

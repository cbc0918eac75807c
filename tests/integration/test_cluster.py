"""`ray job submit` against a real local head (loopback only), and a two-node cluster on this machine:
one training worker per node, checkpoints on a shared path, a rerun that resumes."""

import json


def test_job_submit_two_nodes_and_resume(cluster, tiny_shards, tmp_path):
    args = ["train_elementary", "--config", "tiny", f"data.shards={tiny_shards.parent}", f"train.storage_path={tmp_path}",
            "data.crop_length=128", "train.elementary.checkpoint_every=3", "train.log_every=3", "train.placement_strategy=STRICT_SPREAD"]
    first = cluster.submit(*args, "train.elementary.max_steps=6")
    out = first.stdout + first.stderr
    assert first.returncode == 0 and "succeeded" in out, out[-3000:]
    assert "ip=127.0.0.2" in out and "ip=127.0.0.3" in out  # one worker on each node
    run_dir = tmp_path / "elementary"
    assert (run_dir / "export" / "model.safetensors").exists()
    second = cluster.submit(*args, "train.elementary.max_steps=9")
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [3, 6, 9]  # the rerun resumed after step 6
    assert json.loads((run_dir / "export" / "meta.json").read_text())["step"] == 9


def test_stop_forgets_the_head(tmp_path):
    """`ray start` records the head as the machine's current cluster; `stop` removes that record,
    or Ray's address auto-detection (the State API in Ray Train's placement-group cleaner) keeps
    trying the dead head."""
    from pathlib import Path

    from tests.integration.conftest import Cluster, cluster_env, free_port

    port, dash = free_port(), free_port()
    c = Cluster(cluster_env(tmp_path / "session", 1), dash)
    started = c.script("start", port, dash, free_port(), free_port(), timeout=300)
    record = Path("/tmp/ray/ray_current_cluster")
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        assert record.read_text().strip() == f"127.0.0.2:{port}"
    finally:
        stopped = c.script("stop", timeout=300)
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    assert not record.exists() or record.read_text().strip() != f"127.0.0.2:{port}"

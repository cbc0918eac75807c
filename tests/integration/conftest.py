"""A real local Ray cluster (loopback only) shared by the tests that submit jobs to it."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from creformer.config import Config
from creformer.ray_utils import free_loopback_port as free_port

from ..conftest import tiny_config

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


@dataclass
class TinyModels:
    """One Elementary and one Regulatory model trained on the tiny atlas, shared by the training
    and atlas_grn tests (a 10-step training run of the tiny preset takes ~35 s, nearly all of it
    shard building and Ray Train / DeepSpeed start-up)."""
    root: Path  # shards/ (elementary), reg/ (regulatory shards), train/<stage> (the runs)
    elementary: Path  # export/model.safetensors of each stage
    regulatory: Path
    regulatory_cfg: Config  # the config train_regulatory ran with


@pytest.fixture(scope="session")
def tiny_models(sim_tiny, tmp_path_factory, ray_local) -> TinyModels:
    """train_elementary (100 steps, 1,024-bp crops, the planted-motif evaluation) then
    train_regulatory (250 steps) on its export: enough training for the loss and held-out checks
    in test_training, and real weights for atlas_grn."""
    from creformer.trainer.jobs import train_elementary, train_regulatory

    root = tmp_path_factory.mktemp("tiny_models")
    common = [f"data.genome={sim_tiny / 'genome.fa'}", f"train.storage_path={root / 'train'}", "train.log_every=5"]
    el = train_elementary(tiny_config(
        *common, f"data.samples={sim_tiny / 'samples.tsv'}", f"data.shards={root / 'shards'}", "data.crop_length=1024",
        "train.elementary.max_steps=100", "train.elementary.checkpoint_every=50", "train.elementary.lr=3e-3",
        "train.elementary.warmup_steps=10", f"train.elementary.eval_motifs={sim_tiny / 'truth' / 'motif_instances.tsv'}")).weights
    cfg = tiny_config(
        *common, f"data.regulatory.multiome={sim_tiny / 'multiome'}", f"data.regulatory.annotation={sim_tiny / 'genes.gtf'}",
        f"data.regulatory.shards={root / 'reg'}", f"train.regulatory.elementary_weights={el}",
        "train.regulatory.max_steps=250", "train.regulatory.checkpoint_every=125", "train.regulatory.micro_batch=16",
        "train.regulatory.lr=1e-3", "train.regulatory.warmup_steps=5")
    return TinyModels(root, el, train_regulatory(cfg).weights, cfg)

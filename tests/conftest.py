"""Shared fixtures: the tiny simulated world, its elementary shards, a loopback Ray, the real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
REPO = Path(__file__).resolve().parents[1]
ASSAYS = ["ATAC", "H3K4me1", "H3K4me3", "H3K27ac", "H3K27me3", "H3K36me3", "CTCF"]


@pytest.fixture(scope="session")
def sim_tiny(tmp_path_factory) -> Path:
    from creformer.engine.simulate import simulate

    return simulate(tmp_path_factory.mktemp("sim") / "tiny", preset="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_shards(sim_tiny, tmp_path_factory) -> Path:
    from creformer.engine.windows import prepare_elementary

    out = tmp_path_factory.mktemp("shards") / "elementary"
    res = prepare_elementary(sim_tiny / "samples.tsv", sim_tiny / "genome.fa", out, assays=ASSAYS,
                             shard_size_mb=1, executor="local")
    return res.manifest_path


@pytest.fixture(scope="session")
def ray_local():
    """One Ray for the whole session, on a loopback node IP (never the host's network address)."""
    import ray

    from creformer.config import RayConfig
    from creformer.ray_utils import ensure_ray, shutdown_ray

    ensure_ray(RayConfig(node_ip="127.0.0.2"))  # cores + 1 logical CPUs (see ensure_ray)
    yield ray
    shutdown_ray()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = Path(os.environ.get("CREFORMER_DATA", REPO.parent / "shared" / "data"))
    if not (root / "README.md").exists():
        pytest.skip(f"real data not found at {root}: set CREFORMER_DATA to the shared data folder to run this test")
    return root


@pytest.fixture(scope="session")
def shared_data_or_none() -> Path | None:
    root = Path(os.environ.get("CREFORMER_DATA", REPO.parent / "shared" / "data"))
    return root if (root / "README.md").exists() else None

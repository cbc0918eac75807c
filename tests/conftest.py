"""Shared fixtures: the tiny simulated world, its elementary shards, a loopback Ray, the real data."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import ray

from creformer.config import ASSAYS, Config, RayConfig, load_config  # noqa: F401  (ASSAYS: the tests' list)
from creformer.engine.elementary_shards import prepare_elementary
from creformer.engine.simulate import simulate
from creformer.ray_utils import ensure_ray, shutdown_ray

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
REPO = Path(__file__).resolve().parents[1]


def tiny_config(*overrides: str, **keys: Any) -> Config:
    """The tiny preset with dotted overrides, and keyword keys (``data__shards=...`` for
    data.shards; paths and lists welcome)."""
    extra = [f"{k.replace('__', '.')}={json.dumps(str(v) if isinstance(v, Path) else v)}" for k, v in keys.items()]
    return load_config("tiny", [*overrides, *extra])


def elementary_config(samples, genome, out, **data: Any) -> Config:
    """The tiny preset reading ``samples`` and ``genome`` into elementary shards at ``out``;
    keywords are data.* keys (``assays`` also sets model.n_tracks)."""
    model = {"model__n_tracks": len(data["assays"])} if "assays" in data else {}
    return tiny_config(data__samples=samples, data__genome=genome, data__shards=out, **model,
                       **{f"data__{k}": v for k, v in data.items()})


def regulatory_config(multiome, genome, annotation, out, *, executor: str = "local", **regulatory: Any) -> Config:
    """The tiny preset building regulatory shards at ``out``; keywords are data.regulatory.* keys."""
    return tiny_config(data__genome=genome, data__executor=executor, data__regulatory__multiome=multiome,
                       data__regulatory__annotation=annotation, data__regulatory__shards=out,
                       **{f"data__regulatory__{k}": v for k, v in regulatory.items()})


@pytest.fixture(scope="session")
def sim_tiny(tmp_path_factory) -> Path:
    return simulate(tmp_path_factory.mktemp("sim") / "tiny", preset="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_shards(sim_tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "elementary"
    res = prepare_elementary(elementary_config(sim_tiny / "samples.tsv", sim_tiny / "genome.fa", out, shard_size_mb=1, executor="local"))
    return res.manifest_path


@pytest.fixture(scope="session")
def ray_local():
    """One Ray for the whole session, on a loopback node IP (never the host's network address)."""
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


def pytest_collection_modifyitems(config, items):
    """Everything under tests/integration is `integration` (Ray, shards, training): `pytest -m "not
    integration"` (make test-fast) is the quick loop."""
    for item in items:
        if "integration" in Path(str(item.path)).parts:
            item.add_marker(pytest.mark.integration)

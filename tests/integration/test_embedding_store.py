"""`prepare embeddings` on the tiny atlas: a Ray Data job writes every (peak, signal) pair once,
the store's entries equal the online cache's, a cache reading the store runs no Elementary forward,
an interrupted store resumes, and the size budget picks the online cache with a reason."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from creformer.config import ConfigError
from creformer.engine.regulatory_shards import prepare_regulatory
from creformer.engine.regulatory_stream import iter_regulatory_batches
from creformer.engine.shards import Manifest
from creformer.trainer.embedding_store import decide, prepare_embeddings, verify_store
from creformer.trainer.model import Elementary
from creformer.trainer.model.cache import frozen_cache

from ..conftest import regulatory_config


@pytest.fixture(scope="module")
def setup(sim_tiny, tmp_path_factory, ray_local):
    tmp = tmp_path_factory.mktemp("store")
    cfg = regulatory_config(sim_tiny / "multiome", sim_tiny / "genome.fa", sim_tiny / "genes.gtf", tmp / "reg")
    prepare_regulatory(cfg)
    torch.manual_seed(0)  # the store is about exact reuse, not model quality: random weights do
    weights = tmp / "elementary.safetensors"
    save_file(Elementary(cfg.model).state_dict(), str(weights))
    return tmp, cfg, weights


def test_store_equals_online_cache_and_runs_no_forward(setup, capsys):
    tmp, cfg, weights = setup
    cfg.data.embeddings.workers = 2
    folder = prepare_embeddings(cfg, weights)
    assert "writing the store (it fits data.embeddings.budget_gb)" in capsys.readouterr().out
    man = json.loads((folder / "manifest.json").read_text())
    reg = Manifest(tmp / "reg" / "manifest.json")
    assert man["shards_input_hash"] == reg.data["input_hash"] and len(man["parts"]) >= 2  # both workers had parts
    # every non-empty (cell, peak) signal is in it, deduplicated, plus each peak's zero signal
    n_peaks, pairs = reg.data["tables"]["peaks"]["rows"], reg.data["counts"]["cell_peak_pairs"]
    assert n_peaks < man["pairs"] <= pairs + n_peaks
    assert verify_store(folder) == []

    batch = next(iter_regulatory_batches(reg, batch_size=48, shuffle_seed=0))
    args = (torch.from_numpy(batch["peak_ids"].astype(np.int64)), torch.from_numpy(batch["atac"].astype(np.int64)),
            torch.from_numpy(batch["mask"]))
    online = frozen_cache(cfg.model, weights, reg.root)
    stored = frozen_cache(cfg.model, weights, reg.root, store_dir=folder.parent)
    a, b = online.peak_bins(*args), stored.peak_bins(*args)
    assert online.forwards > 0 and stored.forwards == 0 and stored.store_entries == man["pairs"]
    assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())

    # a second call reuses the finished store
    assert prepare_embeddings(cfg, weights) == folder
    assert "is complete" in capsys.readouterr().out


def test_store_resumes_and_refuses_other_shards(setup):
    tmp, cfg, weights = setup
    folder = prepare_embeddings(cfg, weights)
    parts = sorted(folder.glob("part-store-*.arrow"))
    kept = {p.name: p.stat().st_mtime_ns for p in parts[1:]}
    parts[0].unlink()
    (folder / "done" / f"{parts[0].name[11:17]}.json").unlink()
    (folder / "manifest.json").unlink()  # as if the job died before its end
    assert prepare_embeddings(cfg, weights) == folder
    assert parts[0].exists() and verify_store(folder) == []
    assert {p.name: p.stat().st_mtime_ns for p in parts[1:]} == kept  # only the missing part was recomputed

    data = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**data, "shards_input_hash": "0" * 64}))
    try:
        with pytest.raises(ConfigError, match="holds a store of other Regulatory shards"):
            prepare_embeddings(cfg, weights)
    finally:
        (folder / "manifest.json").write_text(json.dumps(data))


def test_budget_keeps_the_online_cache(setup, capsys):
    tmp, cfg, weights = setup
    cfg.data.embeddings.budget_gb = 1e-6
    try:
        reg = Manifest(tmp / "reg" / "manifest.json")
        d = decide(cfg, reg)
        assert d.mode == "online" and "exceeds data.embeddings.budget_gb" in d.reason
        assert d.estimate.bytes > d.estimate.budget_bytes
        # a finished store (the tests above built it) is read whatever the budget: it costs nothing now
        assert prepare_embeddings(cfg, weights) is not None
        assert "using the finished store" in capsys.readouterr().out
        cfg.data.embeddings.store = str(tmp / "elsewhere")  # no store there: none is built
        assert prepare_embeddings(cfg, weights) is None
        assert "keeping the online cache (it exceeds data.embeddings.budget_gb" in capsys.readouterr().out
        assert not (tmp / "elsewhere").exists()
    finally:
        cfg.data.embeddings.budget_gb, cfg.data.embeddings.store = 16.0, ""

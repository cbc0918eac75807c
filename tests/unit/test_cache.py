"""Embedding cache: equal outputs, zero-signal sharing, LRU cap, disk store, invalidation."""

import numpy as np
import torch

from creformer.config import load_config
from creformer.engine.tokenize import DNA_OFFSET, DNA_VOCAB, SIG_OFFSET, SIG_PAD
from creformer.trainer.model import build_models
from creformer.trainer.model.cache import EmbeddingCache


def setup(seed=0, n_peaks=12, b=3, p=5):
    torch.manual_seed(seed)
    # the cache's own behaviour; the gene path is tested in test_models and test_analysis
    cfg = load_config("tiny", ["model.gene_embedding=false", "model.gene_peak_weights=false"]).model
    el, reg = build_models(cfg)
    reg.eval()
    rng = np.random.default_rng(seed)
    peak_dna = rng.integers(DNA_OFFSET, DNA_VOCAB, (n_peaks, 1024)).astype(np.uint16)
    ids = torch.from_numpy(rng.integers(0, n_peaks, (b, p)).astype(np.int64))
    mask = torch.ones(b, p, dtype=torch.bool)
    mask[2, 3:] = False
    atac = torch.full((b, p, 1024), SIG_OFFSET, dtype=torch.long)
    atac[0, 1, 100:106] = SIG_OFFSET + 9  # one cell x peak with insertions; the rest zero signal
    atac[~mask] = SIG_PAD
    rank = torch.arange(p).repeat(b, 1) - 1
    return el, reg, peak_dna, ids, atac, mask, rank


def uncached(reg, peak_dna, ids, atac, mask, rank):
    dna = torch.from_numpy(peak_dna[ids.numpy()].astype(np.int64))
    sig = torch.zeros(*ids.shape, 7, 1024, dtype=torch.long)
    sig[:, :, 0] = atac
    return reg(dna, sig, rank, mask)


def test_cached_equals_uncached_and_zero_signal_is_shared():
    el, reg, peak_dna, ids, atac, mask, rank = setup()
    cache = EmbeddingCache(el, peak_dna)
    with_cache = reg.forward_bins(cache.peak_bins(ids, atac, mask), rank, mask)
    assert torch.allclose(with_cache, uncached(reg, peak_dna, ids, atac, mask, rank), atol=1e-5)
    real_ids = {int(i) for i in ids[mask]}
    assert cache.stats()["entries"] == len(real_ids) + 1  # one zero-signal entry per peak + the one with insertions
    misses = cache.stats()["misses"]
    assert misses == int(mask.sum())  # first batch: every real slot missed (duplicates computed once)
    again = reg.forward_bins(cache.peak_bins(ids, atac, mask), rank, mask)
    assert torch.equal(again, with_cache)
    assert cache.stats()["misses"] == misses and cache.stats()["hits"] == int(mask.sum())


def test_lru_cap_and_disk_store(tmp_path):
    el, reg, peak_dna, ids, atac, mask, rank = setup()
    small = EmbeddingCache(el, peak_dna, capacity=2)
    bins = small.peak_bins(ids, atac, mask)
    assert small.stats()["entries"] == 2
    disk = EmbeddingCache(el, peak_dna, disk_dir=tmp_path)
    assert torch.allclose(disk.peak_bins(ids, atac, mask), bins, atol=1e-6)
    disk.flush()
    fresh = EmbeddingCache(el, peak_dna, disk_dir=tmp_path)  # another worker / a later run
    assert torch.allclose(fresh.peak_bins(ids, atac, mask), bins, atol=1e-6)
    assert fresh.stats()["misses"] == 0 and fresh.stats()["disk_hits"] > 0
    assert fresh.stats()["entries"] == 0  # disk rows are read in place, not duplicated in the LRU


def test_lru_entries_live_in_a_slab_whose_rows_are_reused():
    """Entries are copied into a few preallocated blocks and an eviction's row is reused, so the
    LRU's churn cannot scatter small live tensors across the heap (atlas_grn's actors grew with
    every partition that way). A batch with more distinct entries than the LRU holds reuses rows
    within itself: its hits must be read before that, and its output must not change."""
    el, reg, peak_dna, ids, atac, mask, rank = setup()
    want = EmbeddingCache(el, peak_dna).peak_bins(ids, atac, mask)
    small = EmbeddingCache(el, peak_dna, capacity=3)
    for _ in range(3):  # first all misses, then hits mixed with puts that evict them
        assert torch.allclose(small.peak_bins(ids, atac, mask), want, atol=1e-6)
    assert small.hits > 0
    assert len(small._blocks) == 1 and small._blocks[0].shape[0] == 3
    assert sorted(small._lru.values()) == [0, 1, 2]
    big = EmbeddingCache(el, peak_dna)
    big.peak_bins(ids, atac, mask)
    big.ensure([0, 1, 2, 3], np.full(1024, SIG_OFFSET + 5, np.uint8))  # a batch of four in one pass
    rows = big._blocks[0].shape[0]
    assert len(big._blocks) == 1 and rows == min(big.capacity, (32 << 20) // (8 * el.cfg.d_model * 4))
    assert sorted(big._lru.values()) == list(range(len(big._lru)))


def test_disk_store_flushes_itself_when_pending_grows(tmp_path):
    """Training never calls flush: new entries go to disk once they pass max_pending_bytes."""
    el, reg, peak_dna, ids, atac, mask, rank = setup()
    entry = 8 * el.cfg.d_model * 4  # one (8, d) float32 entry
    cache = EmbeddingCache(el, peak_dna, disk_dir=tmp_path, max_pending_bytes=3 * entry)
    bins = cache.peak_bins(ids, atac, mask)
    n_entries = cache.stats()["entries"]
    assert n_entries >= 6
    assert len(cache._pending) < 3
    parts = list((tmp_path / cache.weights).glob("part-*.arrow"))
    assert len(parts) == n_entries // 3
    fresh = EmbeddingCache(el, peak_dna, disk_dir=tmp_path)
    fresh.peak_bins(ids, atac, mask)
    # only the entries still pending (not flushed) are computed again; the rest are read from disk
    assert fresh.forwards == n_entries - 3 * len(parts) and fresh.stats()["disk_hits"] >= 3 * len(parts)
    assert torch.allclose(fresh.peak_bins(ids, atac, mask), bins, atol=1e-6)


def test_shared_entries_computed_once_reach_other_workers(tmp_path):
    """atlas_grn's shared pass: one worker ensures the zero and knock-in entries and flushes; a
    worker that started earlier picks them up with sync_disk and computes nothing itself."""
    from creformer.trainer.model.cache import signal_key

    el, reg, peak_dna, ids, atac, mask, rank = setup()
    other = EmbeddingCache(el, peak_dna, disk_dir=tmp_path)  # up before anything was written
    first = EmbeddingCache(el, peak_dna, disk_dir=tmp_path)
    zero = np.full(1024, SIG_OFFSET, np.uint8)
    ki = np.full(1024, SIG_OFFSET + 24, np.uint8)
    peaks = sorted(set(ids[mask].tolist()))
    assert first.ensure(peaks, zero) == len(peaks)
    assert first.ensure(peaks[:2], ki) == 2
    assert first.ensure(peaks, zero) == 0  # already there
    first.flush(tag="shared-")
    first.peak_bins(ids, atac, mask)  # a per-cell entry, flushed untagged: the other worker skips it
    first.flush()
    assert other.sync_disk("part-shared-*.arrow") == 1 and other.sync_disk("part-shared-*.arrow") == 0
    assert len(other._disk) == len(peaks) + 2
    # the same knock-in signal held as int64 (as batches hold it) finds the uint8-keyed entry
    assert signal_key(ki.astype(np.int64)) == signal_key(ki)
    ki_batch = torch.full((1, 2, 1024), SIG_OFFSET + 24, dtype=torch.long)
    got = other.peak_bins(torch.tensor([peaks[:2]]), ki_batch, torch.ones(1, 2, dtype=torch.bool))
    assert other.stats()["misses"] == 0 and other.disk_hits == 4  # 2 knock-in + 2 zero-signal entries
    want = EmbeddingCache(el, peak_dna).peak_bins(torch.tensor([peaks[:2]]), ki_batch, torch.ones(1, 2, dtype=torch.bool))
    assert torch.allclose(got, want, atol=1e-6)
    # a worker (or a resumed run) that starts now indexes the shared file only, not the per-cell one
    late = EmbeddingCache(el, peak_dna, disk_dir=tmp_path, index="part-shared-*.arrow")
    assert len(late._disk) == len(peaks) + 2 and len(late._disk_files) == 1
    assert len(EmbeddingCache(el, peak_dna, disk_dir=tmp_path)._disk) > len(peaks) + 2  # the default indexes both


def test_weight_change_invalidates():
    el, reg, peak_dna, ids, atac, mask, rank = setup()
    cache = EmbeddingCache(el, peak_dna)
    before = cache.peak_bins(ids, atac, mask)
    with torch.no_grad():
        el.dna_emb.weight.add_(0.5)
    stale = cache.peak_bins(ids, atac, mask)
    assert torch.equal(stale, before)  # without refresh the cache cannot know
    cache.refresh()
    after = cache.peak_bins(ids, atac, mask)
    assert not torch.allclose(after, before)
    assert torch.allclose(reg.forward_bins(after, rank, mask), uncached(reg, peak_dna, ids, atac, mask, rank), atol=1e-5)


def test_cell_signal_misses_rerun_only_the_changed_bins():
    """A (cell, peak) miss runs transformer-1 only on the bins its insertions reach, from the peak's
    held zero-signal outputs, and equals the full pass; a whole-peak change (a knock-in level)
    takes the full pass."""
    el, reg, peak_dna, ids, atac, mask, rank = setup()
    cache = EmbeddingCache(el, peak_dna)
    cache.peak_bins(ids, atac, mask)  # zero signal of every peak, and one miss with insertions
    rows = []
    hook = el.t1.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    pid = int(ids[0, 2])
    one = torch.full((1, 1, 1024), SIG_OFFSET, dtype=torch.long)
    one[0, 0, 700:706] = SIG_OFFSET + 5  # bin 5 only
    got = cache.peak_bins(torch.tensor([[pid]]), one, torch.ones(1, 1, dtype=torch.bool))
    assert rows == [1]  # one bin through transformer-1, not 8
    want = EmbeddingCache(el, peak_dna)._embed_full([pid], one[0].numpy())
    assert torch.allclose(got[0, 0, 0], want[0], atol=1e-5)
    rows.clear()
    ki = torch.full((1, 1, 1024), SIG_OFFSET + 20, dtype=torch.long)
    cache.peak_bins(torch.tensor([[pid]]), ki, torch.ones(1, 1, dtype=torch.bool))
    hook.remove()
    assert rows == [8]  # every bin changed: the full pass

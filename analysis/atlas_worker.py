"""The atlas_grn Ray Data actor: loads the models once, then scores whole partitions (one sample
shard x a block of analysed cells): per (cell, gene) the predicted expression, the attention
scores, ATAC mass and single-peak ablation of its peaks, and the predictions under every TF
knockout / knock-in. Each partition is written atomically as parquet with a done marker last."""

from __future__ import annotations

import ctypes
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from creformer.config import load_config
from creformer.engine.regulatory_batches import join_samples, load_signal, split_list
from creformer.engine.shards import atomic_write_json, verify_shard_file
from creformer.trainer.model.cache import EmbeddingCache

from . import inputs
from .attention import score_batch
from .perturb import bound_peaks, perturbed_predictions
from .shared_slices import SHARED_FILES, claim_slice, embed_shared, ensure_shared, memory_status, peak_rss_mb

SCORE_SCHEMA = {"cell_id": pl.Int32, "gene_id": pl.Int32, "expression": pl.Float32, "pred": pl.Float32,
                "peak_ids": pl.List(pl.Int32), "attention": pl.List(pl.Float32), "atac": pl.List(pl.Float32),
                "ablation": pl.List(pl.Float32)}
PERTURB_SCHEMA = {"cell_id": pl.Int32, "gene_id": pl.Int32, "condition": pl.Utf8, "mode": pl.Utf8, "pred": pl.Float32}

def _atomic_parquet(df: pl.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    df.write_parquet(tmp)
    os.replace(tmp, path)



class AtlasWorker:
    """Ray Data actor: loads the models once, then scores whole partitions."""

    def __init__(self, work: str):
        self.work = Path(work)
        plan = json.loads((self.work / "plan.json").read_text())
        self.plan = plan
        torch.set_num_threads(plan["threads"])
        pa.set_cpu_count(plan["threads"])  # polars' pool is sized by the actor's env (worker_env)
        cfg = load_config(plan["config"])
        self.tables = inputs.load_tables(plan["manifest"])
        self.models = inputs.load_models(plan["elementary_weights"], plan["regulatory_weights"], cfg, self.tables)
        self.values = inputs.level_values(self.tables.atac_cuts)
        self.ki_profile = np.asarray(plan["ki_profile"], np.uint8)
        self.bound = np.load(self.work / "perturb_bound.npy")  # the sites perturbations act on
        self.verified: set[Path] = set()
        self.slices = json.loads((self.work / "shared_slices.json").read_text())  # shared_items, peaks per slice
        self.shared_ready = False  # ensure_shared has run: once per actor, before its first partition
        self.signal: tuple[Path, Any] | None = None  # the last signal block (partitions come in cell order)
        self.cache = EmbeddingCache(self.models.elementary, self.tables.peak_dna, n_tracks=self.models.cfg.n_tracks,
                                    capacity=lru_entries(plan["cache_mb"], self.tables.peak_dna.shape[1], self.models.cfg)
                                    if plan["cache"] else 0,
                                    disk_dir=plan["cache_dir"] if plan["cache"] else None, index=SHARED_FILES,
                                    store_dir=plan.get("store_dir"))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        stats = []
        for raw in batch["item"]:
            item = json.loads(raw)
            inject_fault(self, item)
            stats.append(embed_shared(self, item) if item.get("kind") == "shared" else run_partition(self, item))
            release_freed_memory()  # the item's temporaries are freed now that it returned
        return {k: np.array([s[k] for s in stats]) for k in stats[0]}



def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        return None


_MALLOC_TRIM = _malloc_trim()


def release_freed_memory() -> None:
    """Return glibc's free heap pages to the OS after each item. A partition allocates ~1 GB of
    temporaries (Elementary passes, perturbations) that torch and numpy free into malloc's arenas,
    which keep them, fragmented: an actor then grew with the partitions it had scored (measured on
    the 25 k atlas: resident 1.2 GB untrimmed vs 0.56 GB trimmed after 4 partitions; trimmed, it
    grows only by the entries its LRU adds, up to ``analysis.cache_mb``)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def inject_fault(w: AtlasWorker, item: dict[str, Any]) -> None:
    """analysis.fail_at ("shared:I" or "partition:I"), for the fault tests: the first worker to start
    that item dies at once, as a lost node's would (no exception, no cleanup); Ray Data restarts
    the actor and retries the item."""
    target = w.plan.get("fail_at", "")
    here = f"shared:{item['slice']}" if item.get("kind") == "shared" else f"partition:{item['index']}"
    if target and here == target:
        try:  # once per run: the marker's exclusive create picks the one worker that dies
            os.close(os.open(w.work / f"fault-{target.replace(':', '-')}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        if item.get("kind") == "shared":
            claim_slice(w.work, item["slice"])  # die holding the claim, mid-slice
        print(f"[atlas_grn] fault injection: worker {os.getpid()} dies at {here}", flush=True)
        os._exit(1)


def run_partition(w: AtlasWorker, part: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    shared = 0  # entries of shared slices this partition computes, counted as its misses
    if not w.shared_ready:
        shared = ensure_shared(w)
        w.shared_ready = True
    w.cache.sync_disk()  # the shared entries (the cache's index) other workers have written since
    out = Path(w.plan["out"])
    root = w.tables.root
    shard, signal_entry = part["shard"], part["signal"]
    for path, entry in ((root / "shards" / shard["file"], shard), (root / signal_entry["file"], signal_entry)):
        if path not in w.verified:  # a checksum per file and actor, not per partition
            verify_shard_file(path, entry)
            w.verified.add(path)
    filters = [("cell_id", "in", part["cells"])] + ([("gene_id", "in", w.plan["genes"])] if w.plan["genes"] else [])
    table = pq.read_table(root / "shards" / shard["file"], filters=filters)
    table = table.sort_by([("cell_id", "ascending"), ("gene_id", "ascending")])
    sig_path = root / signal_entry["file"]
    if w.signal is None or w.signal[0] != sig_path:
        w.signal = (sig_path, load_signal(sig_path))
    signal = w.signal[1]
    conds = [(c["name"], c["mode"], bound_peaks(w.bound, tuple(c["motifs"]))) for c in w.plan["conditions"]]
    scores, perturbed = [], []
    hits0, miss0 = w.cache.hits, w.cache.misses
    observed = 0  # Elementary forwards of the cells' own signal (what training saw; 0 with a store)
    bs = w.plan["batch_size"]
    with torch.no_grad():
        for rb in table.to_batches(max_chunksize=bs):
            cols = {n: rb.column(n) for n in rb.schema.names}
            samples = {"cell_id": cols["cell_id"].to_numpy(), "gene_id": cols["gene_id"].to_numpy(),
                       "expression": cols["expression"].to_numpy(), "peak_ids": split_list(cols["peak_ids"]),
                       "tss_rank": split_list(cols["tss_rank"])}
            joined = join_samples(samples, None, signal, w.tables.peak_m)
            f0 = w.cache.forwards
            res = score_batch(w.models.head, w.cache, joined, w.values)
            observed += w.cache.forwards - f0
            p = res["width"]
            n_real = joined["mask"].sum(1)
            scores.append(pl.DataFrame({
                "cell_id": joined["cell_id"], "gene_id": joined["gene_id"], "expression": joined["expression"],
                "pred": res["pred"],
                "peak_ids": [r[:k].tolist() for r, k in zip(joined["peak_ids"][:, :p], n_real)],
                "attention": [r[:k].tolist() for r, k in zip(res["attention"], n_real)],
                "atac": [r[:k].tolist() for r, k in zip(res["atac"], n_real)],
                "ablation": [r[:k].tolist() for r, k in zip(res["ablation"], n_real)]}, schema=SCORE_SCHEMA))
            ids, mask = joined["peak_ids"][:, :p], joined["mask"][:, :p]
            for name, mode, peaks in conds:
                touched = mask & peaks[np.maximum(ids, 0)]
                rows, pred = perturbed_predictions(w.models.head, w.cache, res["bins"], ids, mask, res["rank"], touched,
                                                   mode, w.ki_profile, joined["atac"].shape[-1], inputs=res["inputs"],
                                                   gene=res["gene"])
                if rows.size:
                    perturbed.append(pl.DataFrame({"cell_id": joined["cell_id"][rows], "gene_id": joined["gene_id"][rows],
                                                   "condition": name, "mode": mode, "pred": pred}, schema=PERTURB_SCHEMA))
    w.cache.flush()
    idx = part["index"]
    sc = pl.concat(scores) if scores else pl.DataFrame(schema=SCORE_SCHEMA)
    pt = pl.concat(perturbed) if perturbed else pl.DataFrame(schema=PERTURB_SCHEMA)
    _atomic_parquet(sc, out / "partitions" / "scores" / f"part-{idx:05d}.parquet")
    _atomic_parquet(pt, out / "partitions" / "perturb" / f"part-{idx:05d}.parquet")
    secs = time.perf_counter() - t0
    done = {"fingerprint": w.plan["fingerprint"], "samples": sc.height, "perturbed": pt.height, "seconds": secs,
            "cache_hits": w.cache.hits - hits0, "cache_misses": w.cache.misses - miss0 + shared, "observed_forwards": observed,
            "max_rss_mb": peak_rss_mb(), "memory": memory_status(), "lru_entries": w.cache.stats()["entries"],
            "threads": {"torch": torch.get_num_threads(), "polars": pl.thread_pool_size(), "arrow": pa.cpu_count()}}
    marker = out / "partitions" / "done" / f"part-{idx:05d}.json"
    atomic_write_json(marker, done)  # written last: the partition counts as finished only now
    return {"index": idx, **{k: v for k, v in done.items() if k not in ("fingerprint", "threads", "memory", "lru_entries")}}



def lru_entries(cache_mb: int, peak_len: int, cfg) -> int:
    """LRU entries within ``cache_mb``: an entry is one peak's (n_bins, d) float32 bins."""
    return max(1, (cache_mb << 20) // ((peak_len // cfg.bin_size) * cfg.d_model * 4))


def worker_env(threads: int) -> dict[str, str]:
    """Environment of the atlas_grn actors: every thread pool as wide as the CPUs Ray reserved.
    Polars sizes its pool from the core count when it is imported (before ``__init__`` runs), so
    W actors on W cores would run W x cores threads; measured on 2 cores, 2 actors: 8 % more
    wall time per partition with polars' default pool."""
    return {"POLARS_MAX_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}



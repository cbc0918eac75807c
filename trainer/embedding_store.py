"""`prepare embeddings`: the frozen Elementary's output for every (peak, cell signal) pair of a
Regulatory shard set, computed once per Elementary weights by a Ray Data batch job, and read by
train_regulatory (every epoch) and atlas_grn (docs/design.md §5).

Layout of ``STORE/<weights hash>/``: ``part-store-NNNNNN.arrow`` (Arrow IPC: peak_id int32,
signal binary (``cache.signal_key``), bins fixed-size list of n_bins × d float32: the same
entries as the embedding cache's disk parts, so ``EmbeddingCache(store_dir=...)`` reads them),
``pairs/part-NNNNNN.parquet`` (the work list: peak, pos, tok, signal per pair), ``done/NNNNNN.json``
(sha256 and rows of each finished part: a rerun resumes) and ``manifest.json``, written last,
which names the Elementary weights, the shard set's input hash and every part with its checksum.

A store holds one entry per distinct non-empty (cell, peak) signal plus each peak's zero signal,
so its size is known before anything is computed: at the paper's scale (d 2,048, ~1 B pairs) it
is petabytes. ``data.embeddings.mode=auto`` writes it only within ``budget_gb`` and otherwise keeps
the online cache; the choice and its reason are printed.

It lives in trainer/ because it is made from trained weights (engine/ stays model-free).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from creformer.config import Config, ConfigError, config_from_dict
from creformer.engine.regulatory_batches import load_peak_dna
from creformer.engine.shards import Manifest, atomic_write_json, sha256_file
from creformer.engine.tokenize import SIG_OFFSET

from .heap import keep_freed_in_heap
from .model.cache import ZERO_SIGNAL, EmbeddingCache, frozen_elementary, signal_key, weights_hash

STORE_PART = "part-store-{:06d}.arrow"


@dataclass
class Estimate:
    pairs: int  # upper bound: non-empty (cell, peak) signals + one zero signal per peak
    bytes: int
    budget_bytes: int

    def describe(self) -> str:
        return (f"≤ {self.pairs:,} (peak, signal) pairs × {self.bytes // max(self.pairs, 1):,} B = "
                f"{self.bytes / 1e9:.2f} GB (budget {self.budget_bytes / 1e9:.2f} GB)")


@dataclass
class Decision:
    mode: str  # "store" or "online"
    reason: str
    estimate: Estimate


def store_root(cfg: Config) -> Path:
    return Path(cfg.data.embeddings.store or Path(cfg.data.regulatory.shards) / "embeddings")


def estimate(cfg: Config, man: Manifest) -> Estimate:
    """The store's size from the shard set's non-empty (cell, peak) signal rows (Parquet footers
    only): each entry is n_bins × d float32 plus its key."""
    rows = sum(pq.ParquetFile(man.root / e["file"]).metadata.num_rows for e in man.data["tables"]["signal"])
    pairs = rows + man.data["tables"]["peaks"]["rows"]
    n_bins = man.data["peak"]["tokens"] // cfg.model.bin_size
    per = n_bins * cfg.model.d_model * 4 + 4 + 12
    return Estimate(pairs, pairs * per, int(cfg.data.embeddings.budget_gb * 1e9))


def decide(cfg: Config, man: Manifest) -> Decision:
    e = cfg.data.embeddings  # its mode is checked by config.validate
    est = estimate(cfg, man)
    if e.mode == "online":
        return Decision("online", "data.embeddings.mode=online", est)
    if e.mode == "store":
        return Decision("store", "data.embeddings.mode=store", est)
    if est.bytes <= est.budget_bytes:
        return Decision("store", "it fits data.embeddings.budget_gb", est)
    return Decision("online", "it exceeds data.embeddings.budget_gb (raise it, or set data.embeddings.mode=store)", est)


def store_parts(folder: Path) -> list[Path]:
    """The part files of a finished store folder (its manifest written), else none."""
    manifest = folder / "manifest.json"
    if not manifest.exists():
        return []
    data = json.loads(manifest.read_text())
    return [folder / p["file"] for p in data["parts"]]


def _store_of(folder: Path, man: Manifest) -> Path | None:
    """``folder`` when it holds a finished store of this shard set; ConfigError when it holds
    another shard set's; else None."""
    manifest = folder / "manifest.json"
    if not manifest.exists():
        return None
    found = json.loads(manifest.read_text())["shards_input_hash"]
    if found != man.data["input_hash"]:
        raise ConfigError(f"{folder} holds a store of other Regulatory shards (input hash {found[:12]} "
                          f"≠ {man.data['input_hash'][:12]}); set data.embeddings.store to another folder or delete it")
    return folder


def find_store(cfg: Config, man: Manifest, weights: str | Path) -> Path | None:
    """The finished store folder for these weights and this shard set, if there is one."""
    try:
        return _store_of(store_root(cfg) / weights_hash(frozen_elementary(cfg.model, weights)), man)
    except ConfigError:
        return None


# -- the work list ------------------------------------------------------------------------------
def _dense(pos: np.ndarray, tok: np.ndarray) -> np.ndarray:
    row = np.full(1024, SIG_OFFSET, np.uint8)
    row[pos] = tok
    return row


def write_pairs(man: Manifest, folder: Path, per_part: int) -> int:
    """The distinct (peak, signal) pairs of the shard set, sorted by peak, in parts of
    ``per_part`` (each peak's zero signal included); returns how many parts."""
    pairs_dir = folder / "pairs"
    done = pairs_dir / "_SUCCESS.json"
    if done.exists():
        return json.loads(done.read_text())["parts"]
    pairs_dir.mkdir(parents=True, exist_ok=True)
    n_peaks = man.data["tables"]["peaks"]["rows"]
    seen: set[tuple[int, bytes]] = set()
    peak, pos, tok, key = [], [], [], []
    for p in range(n_peaks):
        peak.append(p), pos.append(np.zeros(0, np.uint16)), tok.append(np.zeros(0, np.uint8)), key.append(ZERO_SIGNAL)
    for entry in man.data["tables"]["signal"]:
        t = pq.read_table(man.root / entry["file"], columns=["peak", "pos", "tok"])
        pc, tc = t.column("pos").combine_chunks(), t.column("tok").combine_chunks()
        offsets, pv, tv = pc.offsets.to_numpy(), pc.values.to_numpy(), tc.values.to_numpy()
        for i, p in enumerate(t.column("peak").to_numpy()):
            a, b = offsets[i], offsets[i + 1]
            k = signal_key(_dense(pv[a:b], tv[a:b]))
            if (int(p), k) not in seen:
                seen.add((int(p), k))
                peak.append(int(p)), pos.append(pv[a:b]), tok.append(tv[a:b]), key.append(k)
    order = np.argsort(np.asarray(peak), kind="stable")  # a part's peaks share their zero-signal parts
    n_parts = max(1, -(-len(order) // per_part))
    for i in range(n_parts):
        sel = order[i * per_part:(i + 1) * per_part]
        table = pa.table({"peak": pa.array([peak[j] for j in sel], pa.int32()),
                          "pos": pa.array([pos[j] for j in sel], pa.list_(pa.uint16())),
                          "tok": pa.array([tok[j] for j in sel], pa.list_(pa.uint8())),
                          "signal": pa.array([key[j] for j in sel], pa.binary())})
        tmp = pairs_dir / f".tmp-part-{i:06d}.parquet"
        pq.write_table(table, tmp)
        os.replace(tmp, pairs_dir / f"part-{i:06d}.parquet")
    atomic_write_json(done, {"parts": n_parts, "pairs": len(order)})
    return n_parts


# -- the Ray Data stage -------------------------------------------------------------------------
class StoreWorker:
    """Ray Data actor: loads the frozen Elementary once, then embeds whole parts."""

    def __init__(self, config: dict[str, Any], weights: str, regulatory_root: str, folder: str, threads: int):
        torch.set_num_threads(threads)
        cfg = config_from_dict(config)
        keep_freed_in_heap(cfg.train.malloc_heap_mb)  # a part's bins are ~34 MB, made again per part
        self.folder = Path(folder)
        self.cache = EmbeddingCache(frozen_elementary(cfg.model, weights), load_peak_dna(regulatory_root), capacity=0,
                                    n_tracks=cfg.model.n_tracks)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = [self.embed_part(int(i)) for i in batch["index"]]
        return {k: np.array([o[k] for o in out]) for k in out[0]}

    def embed_part(self, index: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        pairs = pq.read_table(self.folder / "pairs" / f"part-{index:06d}.parquet")
        peaks = pairs.column("peak").to_numpy().astype(np.int64)
        pc, tc = pairs.column("pos").combine_chunks(), pairs.column("tok").combine_chunks()
        offsets, pv, tv = pc.offsets.to_numpy(), pc.values.to_numpy(), tc.values.to_numpy()
        atac = np.stack([_dense(pv[offsets[i]:offsets[i + 1]], tv[offsets[i]:offsets[i + 1]]) for i in range(len(peaks))])
        with torch.no_grad():
            bins = self.cache._embed(peaks.tolist(), atac).numpy().astype(np.float32)
        table = pa.table({"peak_id": pa.array(peaks, pa.int32()), "signal": pairs.column("signal"),
                          "bins": pa.FixedSizeListArray.from_arrays(pa.array(bins.reshape(-1)), bins[0].size)})
        final = self.folder / STORE_PART.format(index)
        tmp = final.with_name(".tmp-" + final.name)
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        os.replace(tmp, final)
        done = {"file": final.name, "rows": len(peaks), "bytes": final.stat().st_size, "sha256": sha256_file(final)}
        atomic_write_json(self.folder / "done" / f"{index:06d}.json", done)  # last: the part counts as finished
        return {"index": index, "rows": len(peaks), "seconds": time.perf_counter() - t0}


def _finished(folder: Path, index: int) -> dict[str, Any] | None:
    marker = folder / "done" / f"{index:06d}.json"
    if not marker.exists():
        return None
    done = json.loads(marker.read_text())
    part = folder / done["file"]
    if not part.exists() or part.stat().st_size != done["bytes"]:
        return None
    return done


def prepare_embeddings(cfg: Config, weights: str | Path, *, force: bool = False) -> Path | None:
    """Write the embedding store for ``weights`` when ``data.embeddings`` says so (``force``: write
    it whatever the mode and budget); returns its folder, or None for the online cache. A finished
    store is reused; an interrupted one resumes from its finished parts."""
    import ray

    from creformer.ray_utils import ensure_ray

    from .jobs import ensure_regulatory_shards

    man = Manifest(ensure_regulatory_shards(cfg))
    d = decide(cfg, man)
    mode = "store" if force else d.mode
    w_hash = weights_hash(frozen_elementary(cfg.model, weights))
    folder = store_root(cfg) / w_hash
    try:
        existing = _store_of(folder, man)
    except ConfigError:
        if mode == "store":
            raise
        existing = None  # the online cache does not read it, so it stands in nobody's way
    if mode == "online":
        if existing is not None:  # built before (e.g. `prepare embeddings --force`): reading it costs nothing
            print(f"[embeddings] using the finished store {existing} ({d.reason} only stops a new one)", flush=True)
            return existing
    print(f"[embeddings] estimated store {d.estimate.describe()}: "
          f"{'writing the store' if mode == 'store' else 'keeping the online cache'} ({'forced' if force else d.reason})",
          flush=True)
    if mode == "online":
        return None
    if existing is not None:
        pairs = json.loads((folder / "manifest.json").read_text())["pairs"]
        print(f"[embeddings] store {folder} is complete ({pairs:,} pairs); reusing it", flush=True)
        return folder
    (folder / "done").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # parts small enough that every worker gets several (the estimate bounds the distinct pairs)
    per_part = max(256, min(cfg.data.embeddings.pairs_per_part, -(-d.estimate.pairs // (4 * cfg.data.embeddings.workers))))
    n_parts = write_pairs(man, folder, per_part)
    todo = [i for i in range(n_parts) if _finished(folder, i) is None]
    if todo:
        ensure_ray(cfg.ray)
        ray.data.DataContext.get_current().enable_progress_bars = False  # our own bar counts pairs
        workers = min(cfg.data.embeddings.workers, len(todo))
        ds = ray.data.from_items([{"index": i} for i in todo], override_num_blocks=len(todo)).map_batches(
            StoreWorker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1,
            fn_constructor_kwargs={"config": cfg.to_dict(), "weights": str(Path(weights).resolve()),
                                   "regulatory_root": str(man.root.resolve()), "folder": str(folder.resolve()), "threads": 1})
        total = json.loads((folder / "pairs" / "_SUCCESS.json").read_text())["pairs"]
        with tqdm(total=total, desc="prepare embeddings", unit="pair", file=sys.stdout) as bar:
            bar.update(total - sum(pq.ParquetFile(folder / "pairs" / f"part-{i:06d}.parquet").metadata.num_rows for i in todo))
            for row in ds.iter_rows():
                bar.update(int(row["rows"]))
    parts = []
    for i in range(n_parts):
        done = _finished(folder, i)
        if done is None:
            raise RuntimeError(f"[embeddings] part {i} of {folder} was not written; rerun `creformer prepare embeddings`")
        parts.append(done)
    manifest = {"kind": "embeddings", "schema_version": 1, "weights": str(Path(weights).resolve()), "weights_hash": w_hash,
                "shards_input_hash": man.data["input_hash"], "d_model": cfg.model.d_model,
                "n_bins": man.data["peak"]["tokens"] // cfg.model.bin_size, "pairs": sum(p["rows"] for p in parts),
                "bytes": sum(p["bytes"] for p in parts), "seconds": round(time.perf_counter() - t0, 1), "parts": parts,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_json(folder / "manifest.json", manifest)  # written last: the store counts as finished
    print(f"[embeddings] wrote {manifest['pairs']:,} pairs ({manifest['bytes'] / 1e9:.2f} GB) to {folder} "
          f"in {manifest['seconds']:.0f} s", flush=True)
    return folder


def verify_store(folder: Path) -> list[str]:
    """The parts of a finished store whose checksum or row count disagrees with its manifest."""
    data = json.loads((folder / "manifest.json").read_text())
    bad = []
    for part in data["parts"]:
        path = folder / part["file"]
        if not path.exists() or sha256_file(path) != part["sha256"]:
            bad.append(part["file"])
    return bad

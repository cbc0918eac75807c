"""The frozen-Elementary embedding cache (docs/design.md §5).

The frozen Elementary output of a peak depends only on (peak DNA, the cell's signal tokens over
it). In single cells most (cell, peak) pairs carry no insertion, so their signal is the same
all-zero-level sequence: one entry per peak serves every such cell. Keys are
``(weights hash, peak_id, signal hash)``; the weights hash changes whenever the Elementary
weights do, which invalidates every older entry. An in-memory LRU (capped in entries) sits in
front of an optional on-disk Arrow cache that workers and later runs share, and of an optional
read-only embedding store (``trainer.embedding_store``: every pair of the atlas, computed once).
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from safetensors.torch import load_file

from creformer.config import ModelConfig
from creformer.engine.regulatory_batches import load_peak_dna
from creformer.engine.tokenize import SIG_OFFSET

from .elementary import Elementary

ZERO_SIGNAL = b"zero"


def weights_hash(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def signal_key(tokens: np.ndarray) -> bytes:
    """A short digest of one peak's signal tokens; all-zero-level signal shares ``ZERO_SIGNAL``."""
    if not (tokens != SIG_OFFSET).any():
        return ZERO_SIGNAL
    return signal_digest(tokens)


def signal_digest(tokens: np.ndarray) -> bytes:
    """``signal_key`` of signal tokens known not to be all zero-level."""
    # Signal tokens are < 38, so uint8 holds them exactly; hashing them as uint8 gives one key
    # whatever integer dtype the caller holds them in.
    return hashlib.blake2b(np.ascontiguousarray(tokens, dtype=np.uint8).tobytes(), digest_size=12).digest()


# Peaks per Elementary pass. Measured on 2 CPU cores (benchmarks/README.md, worker memory): 256
# held ~1.2 GB of activations at once and fragmented atlas_grn actors' heaps; 32 is also faster
# there. Not measured on a GPU, where larger passes would likely pay.
EMBED_CHUNK = 32


class EmbeddingCache:
    """Peak bins (8, d) of the frozen Elementary, cached by (weights, peak, signal)."""

    def __init__(self, elementary: Elementary, peak_dna: np.ndarray, *, capacity: int = 200_000,
                 disk_dir: str | Path | None = None, n_tracks: int = 7, atac_track: int = 0,
                 max_pending_bytes: int = 256 << 20, index: str = "part-*.arrow", store_dir: str | Path | None = None):
        """``max_pending_bytes``: with a disk store, new entries are written out once they hold this
        much (a training run never calls ``flush`` itself, and would otherwise keep every entry
        it ever computed in memory until it ends). ``index``: the store's part files indexed
        when the cache starts (or the weights change); every indexed entry costs memory, so a
        job whose older entries will not be hit again (atlas_grn's per-cell ones) names only
        the files it needs. ``store_dir``: an embedding store (``prepare embeddings``), read only;
        its folder for these weights is indexed whole when it is complete."""
        self.elementary = elementary
        self.max_pending_bytes = max_pending_bytes
        self.peak_dna = peak_dna  # (n_peaks, 1024) DNA tokens of every peak
        self.capacity = capacity
        self.n_tracks, self.atac_track = n_tracks, atac_track
        self.disk_dir = Path(disk_dir) if disk_dir else None
        self.index = index
        self.store_dir = Path(store_dir) if store_dir else None
        self.hits = self.misses = self.disk_hits = 0
        self.forwards = 0  # (peak, signal) pairs run through the Elementary
        self.store_entries = 0
        # key -> row of the slab: entries live in a few large preallocated blocks rather than as one
        # small tensor each, so that the LRU's churn does not scatter live entries across the
        # heap (atlas_grn's actors grew ~3 MB a partition past a full LRU, from fragmentation)
        self._lru: OrderedDict[tuple[int, bytes], int] = OrderedDict()
        self._blocks: list[torch.Tensor] = []  # (rows, n_bins, d) float32 each, allocated as rows are needed
        self._block_rows = 0
        # key -> (part, row): part indexes ``_disk_arrays``, each part's bins as an (n, n_bins, d)
        # array over its memory-mapped file; ``_zero_at`` holds each peak's zero-signal (part, row)
        # (-1: not on disk) so that the most common lookups take one vectorized gather (``peak_bins``)
        self._disk: dict[tuple[int, bytes], tuple[int, int]] = {}
        self._disk_arrays: list[np.ndarray] = []
        self._zero_at = np.full((peak_dna.shape[0], 2), -1, np.int64)
        self._disk_files: set[str] = set()  # part files already indexed in ``_disk``
        self._pending: list[tuple[int, bytes, np.ndarray]] = []
        # zero-signal transformer-1 outputs per peak (``_zero_parts``), capped at ~256 MB
        n_bins = peak_dna.shape[1] // elementary.cfg.bin_size
        self._parts: OrderedDict[int, torch.Tensor] = OrderedDict()
        self.parts_capacity = max(1, (256 << 20) // (n_bins * 2 * elementary.cfg.d_model * 4))
        self.refresh()

    def refresh(self) -> None:
        """Recompute the weights hash; if the weights changed, every cached entry is dropped."""
        new = weights_hash(self.elementary)
        if getattr(self, "weights", None) != new:
            self.weights = new
            self._lru.clear()
            self._blocks.clear()
            self._disk.clear()
            self._disk_arrays.clear()
            self._zero_at.fill(-1)
            self._disk_files.clear()
            self._pending.clear()
            self._parts.clear()
            self.store_entries = self._index_store()
            self.sync_disk()

    def _index_store(self) -> int:
        """Index the embedding store's parts for the current weights (only a finished store: its
        manifest is written last); returns its entries."""
        if self.store_dir is None:
            return 0
        from creformer.trainer.embedding_store import store_parts  # the store module imports this one

        n = 0
        for path in store_parts(self.store_dir / self.weights):
            n += self._index_file(path)
        return n

    def _index_file(self, path: Path) -> int:
        table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
        bins = table.column("bins").combine_chunks()
        d = self.elementary.cfg.d_model
        # zero-copy over the memory map: a hit reads one row, the file stays in the page cache
        arr = bins.flatten().to_numpy(zero_copy_only=False).reshape(len(table), -1, d)
        part = len(self._disk_arrays)
        self._disk_arrays.append(arr)
        for row, (pid, key) in enumerate(zip(table.column("peak_id").to_pylist(), table.column("signal").to_pylist())):
            self._disk[(pid, key)] = (part, row)
            if key == ZERO_SIGNAL:
                self._zero_at[pid] = (part, row)
        return len(table)

    # -- disk store ---------------------------------------------------------------------------
    def _store(self) -> Path | None:
        return None if self.disk_dir is None else self.disk_dir / self.weights

    def sync_disk(self, pattern: str | None = None) -> int:
        """Index the store's part files matching ``pattern`` (default: the cache's ``index``) not
        seen yet (other workers' flushes, or this one's own, whose entries the LRU may have evicted
        since); returns how many files were new. Every indexed entry costs memory, so workers that
        run alongside each other sync only the entries they all need (``flush(tag=...)``), not
        each other's per-cell ones."""
        store = self._store()
        if store is None or not store.exists():
            return 0
        new = [p for p in sorted(store.glob(pattern or self.index)) if p.name not in self._disk_files]
        for path in new:
            self._disk_files.add(path.name)
            self._index_file(path)
        return len(new)

    def flush(self, tag: str = "") -> None:
        """Write entries computed since the last flush to the shared on-disk store (atomically), as
        ``part-{tag}{pid}-{n}.arrow``."""
        store = self._store()
        if store is None or not self._pending:
            return
        store.mkdir(parents=True, exist_ok=True)
        pids, keys, vals = zip(*self._pending)
        flat = np.stack(vals).astype(np.float32)
        table = pa.table({"peak_id": pa.array(pids, pa.int32()), "signal": pa.array(keys, pa.binary()),
                          "bins": pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat[0].size)})
        final = store / f"part-{tag}{os.getpid()}-{len(list(store.glob('part-*.arrow'))):06d}.arrow"
        tmp = final.with_name(".tmp-" + final.name)
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        os.replace(tmp, final)
        self._pending.clear()

    # -- lookups ------------------------------------------------------------------------------
    def _row(self, slot: int) -> torch.Tensor:
        return self._blocks[slot // self._block_rows][slot % self._block_rows]

    def _get(self, key: tuple[int, bytes]) -> torch.Tensor | None:
        """The entry, or None. An LRU hit is a view of its slab row: valid until the next ``_put``,
        which may reuse the row (callers copy what they need first)."""
        if key in self._lru:
            self._lru.move_to_end(key)
            return self._row(self._lru[key])
        if key in self._disk:
            part, row = self._disk[key]
            self.disk_hits += 1
            # a row of a memory-mapped part reads as fast as the LRU: not copied into it (with a
            # store of the whole atlas the LRU would otherwise hold up to `capacity` duplicates)
            return torch.from_numpy(np.array(self._disk_arrays[part][row], np.float32))
        return None

    def _put(self, key: tuple[int, bytes], value: torch.Tensor, persist: bool = True) -> None:
        """Copy ``value`` into the LRU (evicting the oldest entry when full; its row is reused)."""
        if self.capacity > 0:
            if key in self._lru:
                slot = self._lru[key]
                self._lru.move_to_end(key)
            elif len(self._lru) < self.capacity:
                slot = len(self._lru)  # rows 0..len-1 are in use: entries leave only by eviction
            else:
                slot = self._lru.popitem(last=False)[1]
            if not self._blocks or slot // self._block_rows >= len(self._blocks):
                if not self._block_rows:  # ~32 MB blocks, none larger than the whole LRU
                    self._block_rows = max(1, min(self.capacity, (32 << 20) // (value.numel() * 4)))
                self._blocks.append(torch.empty(self._block_rows, *value.shape, dtype=torch.float32))
            self._row(slot).copy_(value)
            self._lru[key] = slot
        if persist and self.disk_dir is not None:
            self._pending.append((key[0], key[1], value.numpy()))
            if len(self._pending) * value.numel() * 4 >= self.max_pending_bytes:  # every entry is one (8, d) float32
                self.flush()

    @torch.no_grad()
    def ensure(self, peak_ids: list[int], tokens: np.ndarray) -> int:
        """Compute the entries of ``peak_ids`` that all carry the same signal ``tokens`` (one row of
        1,024, e.g. zero signal or a knock-in level) and are not cached yet; returns how many.

        atlas_grn splits this shared work across its workers before scoring, so that W workers
        do not each compute every peak's zero-signal embedding."""
        key = signal_key(tokens)
        todo = [pid for pid in peak_ids if (pid, key) not in self._lru and (pid, key) not in self._disk]
        if todo:  # _embed batches the forward passes itself
            for pid, value in zip(todo, self._embed(todo, np.broadcast_to(tokens, (len(todo), tokens.size)))):
                self._put((pid, key), value)
        return len(todo)

    @torch.no_grad()
    def peak_bins(self, peak_ids: torch.Tensor, atac: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, P, 2, 8, d) Elementary bins for real peaks (zeros for padding): [the cell's signal,
        zero signal], the Regulatory model's input pair. Computes only misses.

        ``atac`` (B, P, 1024) are the cells' scATAC signal tokens, of any integer dtype (the
        stream's uint8 is 8x less memory to scan than int64); the other tracks are [PAD].
        Hit/miss counts are of the (cell, peak) signal lookups; the zero-signal reference of each
        peak is one more entry, computed once."""
        b, p = mask.shape
        d = self.elementary.cfg.d_model
        n_bins = self.peak_dna.shape[1] // self.elementary.cfg.bin_size
        out = torch.zeros(b, p, 2, n_bins, d)
        ids = peak_ids.cpu().numpy()
        sig = atac.cpu().numpy()
        m = mask.cpu().numpy()
        real = np.argwhere(m)
        # one vectorized test for the zero-signal pairs (most of them); a digest, once, only for the rest
        rows = sig[real[:, 0], real[:, 1]]
        has_signal = (rows != SIG_OFFSET).any(-1)
        with_signal = np.flatnonzero(has_signal)
        digests = {int(j): signal_digest(row) for j, row in zip(with_signal, np.ascontiguousarray(rows[with_signal], np.uint8))}
        on_disk, zero_on_disk = self._from_disk(out.numpy(), real, ids, digests)
        hit_at: list[int] = []
        hits: list[torch.Tensor] = []
        missing: dict[tuple[int, bytes], list[int]] = {}
        for j in np.flatnonzero(~on_disk):
            bi, pi = real[j]
            key = (int(ids[bi, pi]), digests.get(int(j), ZERO_SIGNAL))
            hit = self._get(key)
            if hit is None:
                missing.setdefault(key, []).append(j)
            else:
                hit_at.append(j)
                hits.append(hit)
        self.hits += len(hits)
        if hits:  # copied out before any _put below can reuse a hit's slab row
            at = real[hit_at]
            out[torch.from_numpy(at[:, 0]), torch.from_numpy(at[:, 1]), 0] = torch.stack(hits)
        if missing:
            self.misses += sum(len(v) for v in missing.values())
            keys = list(missing)
            first = [real[missing[k][0]] for k in keys]
            miss_at: list[int] = []
            values: list[torch.Tensor] = []
            for k, value in zip(keys, self._embed([k[0] for k in keys], np.stack([sig[bi, pi] for bi, pi in first]))):
                self._put(k, value)
                miss_at += missing[k]
                values += [value] * len(missing[k])
            at = real[miss_at]
            out[torch.from_numpy(at[:, 0]), torch.from_numpy(at[:, 1]), 0] = torch.stack(values)
        peaks = np.unique(ids[real[~zero_on_disk, 0], real[~zero_on_disk, 1]]).tolist()
        zero: dict[int, torch.Tensor | None] = {}
        for pid in peaks:
            hit = self._get((pid, ZERO_SIGNAL))
            zero[pid] = None if hit is None else hit.clone()  # a copy: the puts below may reuse its row
        todo = [pid for pid, v in zero.items() if v is None]
        if todo:
            length = self.peak_dna.shape[1]
            for pid, value in zip(todo, self._embed(todo, np.full((len(todo), length), SIG_OFFSET, np.uint8))):
                self._put((pid, ZERO_SIGNAL), value)
                zero[pid] = value
        rest = real[~zero_on_disk]
        if len(rest):
            bi, pi = torch.from_numpy(rest[:, 0]), torch.from_numpy(rest[:, 1])
            out[bi, pi, 1] = torch.stack([zero[int(pid)] for pid in ids[rest[:, 0], rest[:, 1]]])
        return out

    def _from_disk(self, out: np.ndarray, real: np.ndarray, ids: np.ndarray, digests: dict[int, bytes]
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Fill ``out`` (B, P, 2, n_bins, d) from the disk index where it can: both halves of the
        zero-signal pairs and every pair's zero reference by peak id, the cell half of the others by
        signal digest (``digests``: pair index → digest, for the pairs with signal), one gather per
        part file. Returns which real pairs got their cell half and which their zero half. With a
        complete store this is every pair, and the step's lookups cost ~the copies alone (one
        dictionary lookup and tensor per pair before)."""
        done = np.zeros(len(real), bool)
        if not self._disk or not len(real):
            return done, done.copy()
        pids = ids[real[:, 0], real[:, 1]].astype(np.int64)
        zero = self._zero_at[pids]  # (n, 2) part, row of each pair's zero reference
        cell = zero.copy()
        for j, digest in digests.items():
            cell[j] = self._disk.get((int(pids[j]), digest), (-1, -1))
        done, zero_done = cell[:, 0] >= 0, zero[:, 0] >= 0
        for half, loc, sel in ((0, cell, done), (1, zero, zero_done)):
            at, loc = real[sel], loc[sel]
            for part in np.unique(loc[:, 0]):
                pick = loc[:, 0] == part
                out[at[pick, 0], at[pick, 1], half] = self._disk_arrays[part][loc[pick, 1]]
        n = int(done.sum())
        self.hits += n
        self.disk_hits += n + int(np.unique(pids[zero_done]).size)  # zero references: once per peak, as ``_get`` counts
        return done, zero_done

    def _tracks(self, atac: np.ndarray) -> torch.Tensor:
        """(n, tracks, 1024) signal input: the ATAC tokens on their track, every other track [PAD]."""
        tracks = torch.zeros(atac.shape[0], self.n_tracks, atac.shape[1], dtype=torch.long)
        tracks[:, self.atac_track] = torch.from_numpy(atac.astype(np.int64))
        return tracks

    @torch.no_grad()
    def _zero_parts(self, peak_ids: list[int]) -> torch.Tensor:
        """transformer-1 bin outputs (n, 8, 2, d) of the peaks under zero signal (``Elementary.bin_parts``),
        kept per peak: the reference every cell's embedding of that peak starts from."""
        todo = list(dict.fromkeys(pid for pid in peak_ids if pid not in self._parts))
        for i in range(0, len(todo), EMBED_CHUNK):
            chunk = todo[i:i + EMBED_CHUNK]
            dna = torch.from_numpy(self.peak_dna[chunk].astype(np.int64))
            parts = self.elementary.bin_parts(dna, self._tracks(np.full(dna.shape, SIG_OFFSET, np.uint8)))
            for pid, value in zip(chunk, parts):
                self._parts[pid] = value
        out = torch.stack([self._parts[pid] for pid in peak_ids])
        for pid in peak_ids:
            self._parts.move_to_end(pid)
        while len(self._parts) > self.parts_capacity:
            self._parts.popitem(last=False)
        return out

    @torch.no_grad()
    def _embed(self, peak_ids: list[int], atac: np.ndarray) -> torch.Tensor:
        """Frozen Elementary bins (n, 8, d) of peaks with the given ATAC tokens (n, 1024).

        Exact shortcut (``Elementary.embed_changed``): starting from the peak's zero-signal
        transformer-1 outputs, only the bins the cell's insertions reach are recomputed, ~5x faster
        for single-cell ATAC (benchmarks/model_cache.py: a (cell, peak) pair changes 27-31 % of
        its bins). Batches where most bins change (a knock-in level over whole peaks) take the
        plain full pass."""
        was = self.elementary.training
        self.elementary.eval()
        self.forwards += len(peak_ids)
        out = []
        for i in range(0, len(peak_ids), EMBED_CHUNK):
            ids = peak_ids[i:i + EMBED_CHUNK]
            dna = torch.from_numpy(self.peak_dna[ids].astype(np.int64))
            tracks = self._tracks(atac[i:i + EMBED_CHUNK])
            zero = self._tracks(np.full(dna.shape, SIG_OFFSET, np.uint8))
            changed = self.elementary.changed_bins(tracks, zero)
            if float(changed.float().mean()) > 0.5:
                out.append(self.elementary.embed(dna, tracks))
            else:
                out.append(self.elementary.embed_changed(dna, tracks, self._zero_parts(ids), changed))
        self.elementary.train(was)
        return torch.cat(out)

    @torch.no_grad()
    def _embed_full(self, peak_ids: list[int], atac: np.ndarray) -> torch.Tensor:
        """``_embed`` by the full Elementary pass alone (the reference the shortcut is checked against)."""
        dna = torch.from_numpy(self.peak_dna[peak_ids].astype(np.int64))
        return self.elementary.embed(dna, self._tracks(atac))

    def stats(self) -> dict[str, float]:
        total = self.hits + self.misses
        return {"hits": self.hits, "misses": self.misses, "disk_hits": self.disk_hits,
                "hit_rate": self.hits / total if total else 0.0, "entries": len(self._lru),
                "forwards": self.forwards, "store_entries": self.store_entries}


def frozen_cache(cfg: ModelConfig, weights: str | Path, regulatory_root: str | Path, *,
                 disk_dir: str | Path | None = None, store_dir: str | Path | None = None) -> EmbeddingCache:
    """The exported Elementary at ``weights``, frozen (eval, no gradients), behind a cache over the
    peak DNA of the Regulatory shards at ``regulatory_root``: what training, its driver-side
    measurements and the held-out evaluation all read peaks through."""
    return EmbeddingCache(frozen_elementary(cfg, weights), load_peak_dna(regulatory_root), disk_dir=disk_dir,
                          store_dir=store_dir)


def frozen_elementary(cfg: ModelConfig, weights: str | Path) -> Elementary:
    """The exported Elementary at ``weights`` in eval mode, without gradients."""
    elementary = Elementary(cfg)
    elementary.load_state_dict(load_file(str(weights)))
    elementary.eval()
    for p in elementary.parameters():
        p.requires_grad_(False)
    return elementary

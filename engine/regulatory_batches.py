"""Regulatory model inputs from sample rows: the join of (cell, gene) samples with their peaks'
DNA and the cell's sparse ATAC signal, the packed layout training streams, and its unpacking.
Plain numpy, no Ray: the training stream, the evaluation and atlas_grn all use it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from .shards import Manifest
from .tokenize import PEAK_TOKENS, SIG_OFFSET, SIG_PAD


def load_signal(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A signal block as sorted (cell, peak) keys with flat positions/tokens and their offsets."""
    t = pq.read_table(path)
    if t.num_rows == 0:
        z = np.zeros(0, np.int64)
        return z, z, np.zeros(1, np.int64), np.zeros(0, np.uint16), np.zeros(0, np.uint8)
    keys = t.column("cell").to_numpy().astype(np.int64) * (1 << 32) + t.column("peak").to_numpy()
    pos = t.column("pos").combine_chunks()
    tok = t.column("tok").combine_chunks()
    offsets = pos.offsets.to_numpy().astype(np.int64)
    order = np.argsort(keys, kind="stable")
    return keys[order], order, offsets, pos.values.to_numpy(), tok.values.to_numpy()



# A packed signal token (``pack_samples``): slot << 18 | position << 8 | token, as uint32.
_POS_SHIFT, _SLOT_SHIFT = 8, 18


def _peak_slots(samples: dict, peak_m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """peak_ids (-1 = padding), tss_rank and mask, each [B, peak_m], from the samples' peak lists."""
    b = len(samples["cell_id"])
    ids = np.full((b, peak_m), -1, np.int32)
    rank = np.zeros((b, peak_m), np.int16)
    for i, (p, r) in enumerate(zip(samples["peak_ids"], samples["tss_rank"])):
        ids[i, : len(p)] = p
        rank[i, : len(r)] = r
    return ids, rank, ids >= 0


def _signal_tokens(cell_id: np.ndarray, ids: np.ndarray, mask: np.ndarray, signal) -> tuple[np.ndarray, ...]:
    """(sample, slot, position, token) of every non-zero signal token on the batch's real peaks,
    sorted by sample: the join of the samples with a cell block's sparse signal (``load_signal``)."""
    keys, order, offsets, pos, tok = signal
    if not keys.size:
        z = np.zeros(0, np.int64)
        return z, z, z, np.zeros(0, np.uint8)
    want = cell_id.astype(np.int64)[:, None] * (1 << 32) + np.maximum(ids, 0)
    at = np.clip(np.searchsorted(keys, want), 0, keys.size - 1)
    bi, pi = np.nonzero(mask & (keys[at] == want))
    rows = order[at[bi, pi]]
    starts, n = offsets[rows], offsets[rows + 1] - offsets[rows]
    flat = np.repeat(starts - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))  # each row's [start, end) in turn
    return np.repeat(bi, n), np.repeat(pi, n), pos[flat].astype(np.int64), tok[flat]


def join_samples(samples: dict[str, np.ndarray], peak_dna: np.ndarray | None, signal, peak_m: int) -> dict[str, np.ndarray]:
    """Dense model inputs for a batch of samples (the streaming join, also usable directly).

    Returns peak_ids / tss_rank / mask [B, peak_m], atac [B, peak_m, 1024] (uint8 signal ids: the
    zero level for real peaks without insertions, [PAD] for padding), dna [B, peak_m, 1024] when
    ``peak_dna`` is given, expression [B], cell_id and gene_id [B].
    """
    ids, rank, mask = _peak_slots(samples, peak_m)
    atac = np.full((len(ids), peak_m, PEAK_TOKENS), SIG_PAD, np.uint8)
    atac[mask] = SIG_OFFSET
    sb, sp, spos, stok = _signal_tokens(samples["cell_id"], ids, mask, signal)
    atac[sb, sp, spos] = stok
    out = {"cell_id": samples["cell_id"].astype(np.int32), "gene_id": samples["gene_id"].astype(np.int32),
           "expression": samples["expression"].astype(np.float32), "peak_ids": ids, "tss_rank": rank, "mask": mask,
           "atac": atac}
    if peak_dna is not None:
        dna = peak_dna[np.maximum(ids, 0)].astype(np.int32)
        dna[~mask] = 0
        out["dna"] = dna
    return out


def pack_samples(samples: dict[str, np.ndarray], signal, peak_m: int) -> dict[str, np.ndarray]:
    """``join_samples`` without the dense signal: ``atac_packed`` holds, per sample, its non-zero
    signal tokens as packed uint32 bytes (slot, position, token): 27 KB per 32 demo samples against
    4.9 MB for the dense [peak_m, 1024] array. ``unpack_samples`` rebuilds the dense batch.
    Training streams this layout: the bytes Ray Data moves per batch, not the model, had bounded
    its throughput (the dense layout kept the split coordinator busy on a core of its own)."""
    if peak_m >= 1 << (32 - _SLOT_SHIFT):
        raise ValueError(f"peak_m={peak_m} exceeds the packed layout's {1 << (32 - _SLOT_SHIFT)} peak slots")
    ids, rank, mask = _peak_slots(samples, peak_m)
    sb, sp, spos, stok = _signal_tokens(samples["cell_id"], ids, mask, signal)
    packed = ((sp.astype(np.uint32) << _SLOT_SHIFT) | (spos.astype(np.uint32) << _POS_SHIFT) | stok.astype(np.uint32))
    ends = np.cumsum(np.bincount(sb, minlength=len(ids)))
    blobs = np.empty(len(ids), dtype=object)
    blobs[:] = [chunk.tobytes() for chunk in np.split(packed, ends[:-1])] if len(ids) else []
    return {"cell_id": samples["cell_id"].astype(np.int32), "gene_id": samples["gene_id"].astype(np.int32),
            "expression": samples["expression"].astype(np.float32), "peak_ids": ids, "tss_rank": rank, "mask": mask,
            "atac_packed": blobs}


def unpack_samples(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The dense batch of ``join_samples`` (without dna) from a ``pack_samples`` batch, its peak
    columns cut to the widest sample's real peaks (``trim_peak_columns``)."""
    out = trim_peak_columns({k: v for k, v in batch.items() if k != "atac_packed"})
    mask = out["mask"]
    chunks = [np.frombuffer(b, np.uint32) for b in batch["atac_packed"]]
    packed = np.concatenate(chunks) if chunks else np.zeros(0, np.uint32)
    sample = np.repeat(np.arange(len(chunks)), [c.size for c in chunks])
    atac = np.full(mask.shape + (PEAK_TOKENS,), SIG_PAD, np.uint8)
    atac[mask] = SIG_OFFSET
    atac[sample, packed >> _SLOT_SHIFT, (packed >> _POS_SHIFT) & (PEAK_TOKENS - 1)] = (packed & 0xFF).astype(np.uint8)
    out["atac"] = atac
    return out


PEAK_COLUMNS = ("peak_ids", "tss_rank", "mask", "atac", "dna")


def trim_peak_columns(batch: dict) -> dict:
    """The joined batch (numpy or torch) with its per-peak columns cut to the widest sample's real
    peaks. A sample's real peaks come first and the Regulatory head zero-pads to peak_m itself, so
    predictions are unchanged, while the model no longer runs on up to peak_m padded slots (genes
    have far fewer peaks: ~35 of 150 in the simulated atlas)."""
    width = max(1, int(batch["mask"].sum(1).max()))
    return {k: v[:, :width] if k in PEAK_COLUMNS else v for k, v in batch.items()}


def load_peak_dna(root: str | Path) -> np.ndarray:
    """DNA tokens of every peak of a regulatory shard set, (peaks, tokens per peak)."""
    col = pq.read_table(Path(root) / "tables" / "peaks.parquet", columns=["dna"]).column("dna").combine_chunks()
    return col.values.to_numpy().reshape(-1, col.type.list_size)


def expression_mean(root: str | Path, max_rows: int = 1_000_000) -> float:
    """Mean expression over the first ``max_rows`` samples of a regulatory shard set (an estimate
    for starting a model's output at the data's level; shards are cell blocks, so this reads the
    first cells' every gene)."""
    man = Manifest(Path(root) / "manifest.json")
    total, n = 0.0, 0
    for entry in man.shards:
        for rb in pq.ParquetFile(man.root / "shards" / entry["file"]).iter_batches(batch_size=65536, columns=["expression"]):
            col = rb.column(0).to_numpy()
            total, n = total + float(col.sum(dtype=np.float64)), n + col.size
            if n >= max_rows:
                return total / n
    return total / n if n else 0.0



def split_list(arr) -> list[np.ndarray]:
    """An Arrow list column as one numpy array per row (views of its values)."""
    offsets = arr.offsets.to_numpy()
    values = arr.values.to_numpy()
    return [values[a:b] for a, b in zip(offsets[:-1], offsets[1:])]


def is_holdout(cell_id: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Stable held-out split of cells: the same cells in every process and run, for a seed."""
    if fraction <= 0:
        return np.zeros(np.shape(cell_id), dtype=bool)
    h = (np.asarray(cell_id, np.uint64) + np.uint64(seed)) * np.uint64(0x9E3779B97F4A7C15)
    return ((h >> np.uint64(40)) % np.uint64(1 << 20)).astype(np.float64) < fraction * (1 << 20)

"""Per-cell ATAC signal of a multiome atlas: two streaming passes over the fragments file (library
sizes, then Tn5 insertions in every peak window), tokenized and written sparse per cell block.

Library size = the cell's fragment count in the fragments file; ATAC value per base = Tn5
insertions (both fragment ends) x 10,000 / library size, then the signal binning of docs/design.md §2.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from .io.chroms import canonical
from .io.fragments import iter_fragments
from .io.multiome import Multiome
from .tokenize import PEAK_SPAN, SIG_OFFSET, signal_tokens_2d

FRAGMENT_BLOCK_BYTES = 16 << 20  # bytes of fragments text parsed per streaming batch
SIGNAL_BUFFER_ROWS = 1 << 20  # (cell, peak) signal rows held before they are written


def fragment_library(path: Path, barcodes: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Fragments per matrix cell (pass 1), and fragments / distinct barcodes not in the matrix."""
    value_set = pa.array(list(barcodes), pa.string())
    counts = np.zeros(len(barcodes), np.int64)
    other = 0
    other_bcs: set[str] = set()
    for batch in iter_fragments(path):
        idx = pc.index_in(batch.barcode, value_set=value_set).fill_null(-1).to_numpy(zero_copy_only=False)
        known = idx >= 0
        counts += np.bincount(idx[known], minlength=len(barcodes))
        if (~known).any():
            other += int((~known).sum())
            if len(other_bcs) < 1_000_000:
                other_bcs.update(pc.unique(batch.barcode.filter(pa.array(~known))).to_pylist())
    return counts, other, len(other_bcs)


def _tokenize_pairs(cell: np.ndarray, peak: np.ndarray, offset: np.ndarray, scale: np.ndarray, cuts: np.ndarray):
    """Insertion triples → per (cell, peak): non-zero-level token positions and ids, as flat arrays
    with offsets (vectorized; no per-pair Python objects)."""
    key = cell.astype(np.int64) * (1 << 32) + peak
    pairs, inverse = np.unique(key, return_inverse=True)
    out_cell = (pairs >> 32).astype(np.int32)
    out_peak = (pairs & 0xFFFFFFFF).astype(np.int32)
    pos_parts, tok_parts, lengths = [], [], []
    chunk = 2048
    order = np.argsort(inverse, kind="stable")
    inv_sorted = inverse[order]
    for a in range(0, len(pairs), chunk):
        b = min(a + chunk, len(pairs))
        lo, hi = np.searchsorted(inv_sorted, [a, b])
        sel = order[lo:hi]
        dense = np.zeros((b - a, PEAK_SPAN), np.float32)
        np.add.at(dense, (inverse[sel] - a, offset[sel]), 1.0)
        dense *= scale[out_cell[a:b]][:, None]
        toks = signal_tokens_2d(dense, [cuts] * (b - a))
        nz = toks != SIG_OFFSET
        lengths.append(nz.sum(1))
        pos_parts.append(np.nonzero(nz)[1].astype(np.uint16))
        tok_parts.append(toks[nz])
    offsets = np.concatenate(([0], np.cumsum(np.concatenate(lengths)))).astype(np.int32)
    return out_cell, out_peak, offsets, np.concatenate(pos_parts), np.concatenate(tok_parts)


def build_signal(path: Path, mo: Multiome, keep_cells: np.ndarray, library: np.ndarray, peaks: dict[str, Any],
                 cells_per_block: int, out: Path, cuts: np.ndarray) -> dict[str, int]:
    """Pass 2: per-cell Tn5 insertion coverage over every peak window, tokenized, written sparse per
    cell block. Memory is bounded by one chromosome's insertions inside peaks."""
    cell_index = np.full(len(mo.barcodes), -1, np.int64)
    cell_index[keep_cells] = np.arange(len(keep_cells))
    scale = (1e4 / np.maximum(library[keep_cells], 1)).astype(np.float32)
    value_set = pa.array(list(mo.barcodes), pa.string())
    n_blocks = max(1, -(-len(keep_cells) // cells_per_block))
    schema = pa.schema([("cell", pa.int32()), ("peak", pa.int32()), ("pos", pa.list_(pa.uint16())), ("tok", pa.list_(pa.uint8()))])
    out.mkdir(parents=True, exist_ok=True)
    tmp = [out / f".tmp-{os.getpid()}-block-{b:06d}.parquet" for b in range(n_blocks)]
    writers = [pq.ParquetWriter(t, schema, compression="zstd") for t in tmp]
    buffers: list[list[pa.Table]] = [[] for _ in range(n_blocks)]
    buffered = np.zeros(n_blocks, np.int64)
    # Peak windows by file chromosome: sorted starts, and how deep windows overlap.
    by_chrom: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for c in set(mo.peak_chrom):
        sel = np.flatnonzero(mo.peak_chrom == c)
        order = sel[np.argsort(peaks["wstart"][sel], kind="stable")]
        by_chrom[canonical(c)] = (peaks["wstart"][order], order)
    counts = {"insertions_in_peaks": 0, "cell_peak_pairs": 0, "nonzero_tokens": 0}
    window_end = np.asarray(peaks["wstart"]) + PEAK_SPAN

    def flush(cell: np.ndarray, peak: np.ndarray, off: np.ndarray) -> None:
        if cell.size == 0:
            return
        counts["insertions_in_peaks"] += int(cell.size)
        oc, op, offs, pos, tok = _tokenize_pairs(cell, peak, off, scale, cuts)
        counts["cell_peak_pairs"] += int(oc.size)
        counts["nonzero_tokens"] += int(tok.size)
        block = oc // cells_per_block
        for b in np.unique(block):
            s = np.flatnonzero(block == b)
            lens = offs[s + 1] - offs[s]
            sub = np.concatenate(([0], np.cumsum(lens))).astype(np.int32)
            take = np.repeat(offs[s] - sub[:-1], lens) + np.arange(sub[-1])  # the rows' token ranges, flattened
            buffers[b].append(pa.table({
                "cell": pa.array(oc[s]), "peak": pa.array(op[s]),
                "pos": pa.ListArray.from_arrays(pa.array(sub), pa.array(pos[take])),
                "tok": pa.ListArray.from_arrays(pa.array(sub), pa.array(tok[take])),
            }, schema=schema))
            buffered[b] += len(s)
        # Rows wait per block and leave together: few, large row groups (one per block per
        # fragments batch made 14,700 tiny ones at 100 k cells), memory bounded by
        # SIGNAL_BUFFER_ROWS in all, however many cell blocks.
        if buffered.sum() > SIGNAL_BUFFER_ROWS:
            for b in np.flatnonzero(buffered):
                write_block(int(b))

    def write_block(b: int) -> None:
        writers[b].write_table(pa.concat_tables(buffers[b]))
        buffers[b], buffered[b] = [], 0

    # Pending insertions; a peak window is complete once the stream's starts pass its end (the
    # file is sorted by start and every cut site lies at or after its fragment's start), so memory
    # holds only the windows the stream is inside, whatever the number of cells.
    pending: list[np.ndarray] = [np.zeros(0, np.int64)] * 3
    current = None
    for batch in tqdm(iter_fragments(path, FRAGMENT_BLOCK_BYTES), desc="ATAC signal", unit="batch", leave=False):
        if batch.chrom != current:
            flush(*pending)
            pending, current = [np.zeros(0, np.int64)] * 3, batch.chrom
        win = by_chrom.get(canonical(batch.chrom))
        if win is None:
            continue
        idx = pc.index_in(batch.barcode, value_set=value_set).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        cell = np.where(idx >= 0, cell_index[np.maximum(idx, 0)], -1)
        keep = cell >= 0
        ws, pid = win
        new = [[x] for x in pending]
        for site in (batch.start[keep], batch.end[keep] - 1):  # Tn5 cuts at both fragment ends
            c = cell[keep]
            j = np.searchsorted(ws, site, side="right") - 1
            # windows may overlap: walk back while an earlier window still covers the site
            while True:
                hit = (j >= 0) & (site < ws[np.maximum(j, 0)] + PEAK_SPAN)
                if not hit.any():
                    break
                new[0].append(c[hit])
                new[1].append(pid[j[hit]])
                new[2].append((site[hit] - ws[j[hit]]).astype(np.int64))
                j = np.where(hit, j - 1, -1)
        cell_all, peak_all, off_all = (np.concatenate(x) for x in new)
        done = window_end[peak_all] <= batch.start[-1]
        flush(cell_all[done], peak_all[done], off_all[done])
        pending = [cell_all[~done], peak_all[~done], off_all[~done]]
    flush(*pending)
    for b in np.flatnonzero(buffered):
        write_block(int(b))
    for w in writers:
        w.close()
    for b, t in enumerate(tmp):
        os.replace(t, out / f"block-{b:06d}.parquet")
    return counts

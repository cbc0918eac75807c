"""Regulatory data engine: a 10x Multiome atlas → peaks, genes, cells, sparse per-cell ATAC signal
and cell×gene sample shards (DESIGN §3, §5), with the shard machinery of ``engine.shards``.

Layout of ``OUT/``: ``tables/peaks.parquet`` (1,024 DNA tokens per peak), ``tables/genes.parquet``,
``tables/cells.parquet``, ``signal/block-NNNNNN.parquet`` (per cell block: only the non-zero ATAC
tokens of each cell × peak), ``shards/samples-NNNNNN.parquet`` (one row per cell × gene, built by
Ray tasks per cell block) and ``manifest.json``. A sample never copies sequence or signal: the
stream joins them per cell block (``engine.dataset.regulatory_dataset``), so memory stays flat
as cells grow.

Choices (documented because they change numbers):
- Library size = the cell's fragment count in the fragments file (first streaming pass); ATAC
  value per base = Tn5 insertions (both fragment ends) x 10,000 / library size, then the signal
  binning of DESIGN §2.
- Expression = log1p(counts x 10,000 / the cell's RNA total).
- Peak window = 1,024 tokens (1,029 bases) centred on the peak midpoint.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from .errors import InputError, ShardError
from .io.annotation import GeneTSS, read_annotation
from .io.chroms import canonical
from .io.fasta import Genome
from .io.fragments import iter_fragments
from .io.multiome import Multiome, read_multiome
from .shards import (BuildResult, HashingWriter, ShardTask, damaged_shards, atomic_write_json, build_shard_set,
                     content_hash, fingerprint, sha256_file, write_shard_file)
from .tokenize import DNA_N, K, SIG_OFFSET, dna_tokens, signal_tokens_2d, tokenizer_spec

PEAK_TOKENS = 1024
PEAK_SPAN = PEAK_TOKENS + K - 1
ATAC_ASSAY = "ATAC"
FRAGMENT_BLOCK_BYTES = 16 << 20  # bytes of fragments text parsed per streaming batch
CELL_READ_BLOCK = 4096  # cells of the RNA matrix read at a time
SIGNAL_BUFFER_ROWS = 1 << 20  # (cell, peak) signal rows held before they are written
# Sample shards are cell-major; training shuffles by reading row groups in random order, so they
# are kept small enough (~15 MB decoded) to hold a few at once.
SAMPLE_ROW_GROUP = 16 * 1024


@dataclass
class RegulatoryOptions:
    genes: str = "expressed"  # "expressed", "hvg" or a path to a file of gene ids/names (one per line)
    n_hvg: int = 2000
    min_cells_per_gene: int = 3  # "expressed": counts > 0 in at least this many cells
    min_counts: int = 1  # cells with fewer RNA counts are skipped (counted)
    cells: str = ""  # optional file of barcodes to keep
    window_bp: int = 150_000  # peaks within +-window_bp of the TSS
    peak_m: int = 150  # at most this many peaks per gene (the nearest)
    keep_genes_without_peaks: bool = True
    allow_missing_sequence: bool = False
    rows_per_shard: int = 1_000_000
    seed: int = 0


# ---------------------------------------------------------------------------------------------
# Peaks and genes
# ---------------------------------------------------------------------------------------------

def _chrom_lookup(names, genome: Genome) -> dict[str, str | None]:
    by_key = {canonical(c): c for c in genome.chroms}
    return {n: (n if n in genome.lengths else by_key.get(canonical(n))) for n in set(names)}


def peak_windows(mo: Multiome, genome: Genome) -> dict[str, Any]:
    """Window start (1,029 bp centred on each peak) and whether the genome covers it."""
    lookup = _chrom_lookup(mo.peak_chrom, genome)
    center = (mo.peak_start + mo.peak_end) // 2
    wstart = center - PEAK_TOKENS // 2
    gchrom = np.array([lookup[c] for c in mo.peak_chrom], dtype=object)
    ok = np.array([g is not None and s >= 0 and s + PEAK_SPAN <= genome.lengths[g] for g, s in zip(gchrom, wstart)], bool)
    return {"genome_chrom": gchrom, "wstart": wstart, "has_sequence": ok}


def tss_ranks(peak_start: np.ndarray, peak_end: np.ndarray, tss: int, strand: str) -> np.ndarray:
    """Signed TSS rank per peak: 0 for peaks overlapping the TSS, then +1, +2 ... downstream and
    -1, -2 ... upstream (in the gene's direction), by distance to the TSS."""
    overlap = (peak_start <= tss) & (tss < peak_end)
    mid = (peak_start + peak_end) / 2.0
    rel = (mid - tss) * (1 if strand == "+" else -1)  # > 0: downstream
    ranks = np.zeros(len(peak_start), dtype=np.int16)
    for side, sign in ((rel > 0, 1), (rel <= 0, -1)):
        idx = np.flatnonzero(side & ~overlap)
        order = idx[np.argsort(np.abs(rel[idx]), kind="stable")]
        ranks[order] = sign * np.arange(1, len(order) + 1)
    return ranks


def gene_peaks(tss: GeneTSS, chrom: np.ndarray, start: np.ndarray, end: np.ndarray, window_bp: int, peak_m: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Peak indices within +-window_bp of the TSS (by peak midpoint), at most ``peak_m`` nearest,
    ordered by signed rank, and their ranks."""
    mid = (start + end) // 2
    cand = np.flatnonzero((chrom == tss.chrom) & (np.abs(mid - tss.tss) <= window_bp))
    if cand.size > peak_m:
        dist = np.minimum(np.abs(start[cand] - tss.tss), np.abs(end[cand] - 1 - tss.tss))
        dist[(start[cand] <= tss.tss) & (tss.tss < end[cand])] = 0
        cand = np.sort(cand[np.argsort(dist, kind="stable")[:peak_m]])
    ranks = tss_ranks(start[cand], end[cand], tss.tss, tss.strand)
    order = np.argsort(ranks, kind="stable")
    return cand[order].astype(np.int32), ranks[order]


def _select_genes(mo: Multiome, cells: np.ndarray, opts: RegulatoryOptions) -> np.ndarray:
    """Gene columns to model, from statistics accumulated over blocks of ``cells``."""
    if opts.genes in ("expressed", "hvg"):
        n_genes = mo.rna.n_genes
        expressed = np.zeros(n_genes, np.int64)
        s1, s2 = np.zeros(n_genes), np.zeros(n_genes)
        for _, x in tqdm(mo.rna.blocks(cells, CELL_READ_BLOCK), desc="gene statistics", unit="block",
                         total=-(-cells.size // CELL_READ_BLOCK), leave=False):
            if opts.genes == "expressed":
                expressed += np.asarray((x > 0).sum(0)).ravel()
                continue
            lib = np.asarray(x.sum(1)).ravel()
            norm = x.multiply(1e4 / np.maximum(lib, 1)[:, None]).tocsr()
            norm.data = np.log1p(norm.data)
            s1 += np.asarray(norm.sum(0)).ravel()
            s2 += np.asarray(norm.multiply(norm).sum(0)).ravel()
        if opts.genes == "expressed":
            return np.flatnonzero(expressed >= opts.min_cells_per_gene)
        mean = s1 / max(1, cells.size)
        var = s2 / max(1, cells.size) - mean**2
        return np.sort(np.argsort(-var, kind="stable")[: opts.n_hvg])
    wanted = [line.strip() for line in Path(opts.genes).read_text().splitlines() if line.strip()]
    idx = {g: i for i, g in enumerate(mo.gene_ids)} | {g: i for i, g in enumerate(mo.gene_names)}
    missing = [g for g in wanted if g not in idx]
    if missing:
        raise InputError(f"{opts.genes}: {len(missing)} gene(s) are not in {mo.source} (e.g. {', '.join(missing[:5])})")
    return np.array(sorted({idx[g] for g in wanted}), dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# ATAC signal: two streaming passes over the fragments
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Sample shards (Ray tasks, one per cell block)
# ---------------------------------------------------------------------------------------------

SAMPLE_SCHEMA = pa.schema([("cell_id", pa.int32()), ("gene_id", pa.int32()), ("expression", pa.float32()),
                           ("peak_ids", pa.list_(pa.int32())), ("tss_rank", pa.list_(pa.int16()))])


def expression_file(c0: int) -> str:
    """Work file of the expression block starting at kept cell ``c0`` (one per sample shard)."""
    return f"expr-{c0:010d}.npz"


def build_sample_shard(task: ShardTask, context: dict[str, Any], shard_dir: Path) -> dict[str, Any]:
    """Rows (cell, gene) for a block of cells x every selected gene, vectorized."""
    work = Path(context["work"])
    c0, c1 = task.payload["cells"]
    expr = np.load(work / expression_file(c0))
    indptr, indices, data = expr["indptr"], expr["indices"], expr["data"]
    n_genes = context["n_genes"]
    nc = c1 - c0
    if indptr.size != nc + 1:
        raise ShardError(f"{work / expression_file(c0)} holds {indptr.size - 1} cells, the task {nc}: "
                         "a stale work folder; delete it and rerun")
    dense = np.zeros((nc, n_genes), np.float32)
    rows = np.repeat(np.arange(nc), np.diff(indptr))
    dense[rows, indices] = data
    gflat = np.load(work / "gene_peaks.npy")
    granks = np.load(work / "gene_ranks.npy")
    goff = np.load(work / "gene_offsets.npy")
    total = int(goff[-1])
    offsets = (np.tile(goff[:-1], nc) + np.repeat(np.arange(nc, dtype=np.int64) * total, n_genes))
    offsets = np.append(offsets, nc * total).astype(np.int32)
    table = pa.table({
        "cell_id": pa.array(np.repeat(np.arange(c0, c1, dtype=np.int32), n_genes)),
        "gene_id": pa.array(np.tile(np.arange(n_genes, dtype=np.int32), nc)),
        "expression": pa.array(dense.ravel()),
        "peak_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.tile(gflat, nc))),
        "tss_rank": pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.tile(granks, nc))),
    }, schema=SAMPLE_SCHEMA)

    def write(out: HashingWriter) -> dict[str, Any]:
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf, compression="zstd", row_group_size=SAMPLE_ROW_GROUP)
        out.write(memoryview(buf.getvalue()))
        return {"records": table.num_rows, "cells": [c0, c1]}

    return write_shard_file(shard_dir / task.file, write)


# ---------------------------------------------------------------------------------------------
# Orchestration
# ---------------------------------------------------------------------------------------------

def _write_table(path: Path, table: pa.Table) -> dict[str, Any]:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)
    return {"file": str(path.relative_to(path.parent.parent)), "rows": table.num_rows, "bytes": path.stat().st_size,
            "sha256": sha256_file(path)}


def prepare_regulatory(
    multiome: str | Path, genome_path: str | Path, annotation: str | Path, out: str | Path, *,
    fragments: str | Path | None = None, options: RegulatoryOptions | None = None,
    executor: str = "ray", overwrite: bool = False,
) -> BuildResult:
    """10x Multiome (Cell Ranger ARC folder/h5 or .h5mu + fragments) → regulatory tables and shards."""
    opts = options or RegulatoryOptions()
    out = Path(out)
    mo = read_multiome(multiome, fragments)
    genome = Genome(genome_path)
    genes_ann = read_annotation(annotation)
    cuts = np.asarray(tokenizer_spec([ATAC_ASSAY])["signal"]["cutpoints"][ATAC_ASSAY])
    inputs = [{"role": "multiome", **fingerprint(mo.source)}, {"role": "fragments", **fingerprint(mo.fragments)},
              {"role": "genome", **fingerprint(genome_path)}, {"role": "annotation", **fingerprint(annotation)}]
    input_hash = content_hash({"kind": "regulatory", "options": asdict(opts), "cuts": cuts.tolist(),
                               "inputs": [{k: v for k, v in i.items() if k != "path"} for i in inputs]})
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if old.get("input_hash") == input_hash and not damaged_shards(out, old):
            return BuildResult(manifest_path, reused=True, built=0, resumed=0)
    counts: dict[str, Any] = {}

    # --- peaks: chromosome names must meet the genome; missing sequence is never silent
    pw = peak_windows(mo, genome)
    if not any(g is not None for g in pw["genome_chrom"]):
        raise InputError(f"no peak chromosome of {mo.source} ({', '.join(sorted(set(mo.peak_chrom))[:5])}) is in genome "
                         f"{genome_path} ({', '.join(genome.chroms[:5])}); check that both use the same assembly")
    missing = np.flatnonzero(~pw["has_sequence"])
    gene_tss = _match_genes(mo, genes_ann, counts)
    if missing.size:
        miss_genes = sum(1 for t in gene_tss.values() if t is not None and np.any(
            (mo.peak_chrom[missing] == t.chrom) & (np.abs((mo.peak_start[missing] + mo.peak_end[missing]) // 2 - t.tss) <= opts.window_bp)))
        msg = (f"{missing.size} of {len(mo.peak_chrom)} peaks lack sequence in {genome_path} (chromosome absent or window "
               f"past its end), affecting the TSS windows of {miss_genes} gene(s)")
        if not opts.allow_missing_sequence:
            raise InputError(msg + "; pass --allow-missing-sequence to keep them with unknown-base [N] DNA tokens "
                             "(their ATAC signal is kept), or use a genome that covers them")
        print(f"warning: {msg}; keeping them with [N] DNA tokens (--allow-missing-sequence), flagged has_sequence=false")
    counts["peaks_missing_sequence"] = int(missing.size)

    # --- cells: library sizes from the fragments (pass 1), then filters, all counted
    library, frag_other, bc_other = fragment_library(mo.fragments, mo.barcodes)
    counts["fragments_barcode_not_in_matrix"] = frag_other
    counts["barcodes_in_fragments_not_in_matrix"] = bc_other
    no_frag = library == 0
    counts["matrix_cells_without_fragments"] = int(no_frag.sum())
    if no_frag.all():
        raise InputError(f"none of the {len(mo.barcodes)} matrix barcodes of {mo.source} (e.g. {mo.barcodes[0]}) occurs in "
                         f"{mo.fragments}; check the barcode suffixes (-1) and that both files come from one run")
    rna_total = mo.rna.row_sums(CELL_READ_BLOCK)
    empty = rna_total < opts.min_counts
    counts["cells_below_min_counts"] = int(empty.sum())
    keep = ~empty & ~no_frag
    if opts.cells:
        wanted = set(Path(opts.cells).read_text().split())
        keep &= np.isin(mo.barcodes, list(wanted))
    keep_cells = np.flatnonzero(keep)
    if keep_cells.size == 0:
        raise InputError(f"no cell of {mo.source} passes the filters (min_counts={opts.min_counts}, with fragments"
                         f"{', listed in ' + opts.cells if opts.cells else ''}); every cell is empty")
    counts["cells"] = int(keep_cells.size)

    # --- genes: selection, TSS, peak windows
    sel = _select_genes(mo, keep_cells, opts)
    with_tss = [g for g in sel if gene_tss.get(g) is not None]
    counts["genes_selected"] = int(len(sel))
    counts["genes_without_tss"] = int(len(sel) - len(with_tss))
    if not with_tss:
        raise InputError(f"none of the {len(sel)} selected genes of {mo.source} has a TSS in {annotation} "
                         "(matched by gene id, then name); check that the annotation is for the same genome")
    peak_chrom = np.array([canonical(c) for c in mo.peak_chrom], dtype=object)
    genes_rows, flat, ranks, offsets = [], [], [], [0]
    no_peaks = 0
    for g in with_tss:
        t = gene_tss[g]
        t_can = GeneTSS(t.gene_id, t.name, canonical(t.chrom), t.tss, t.strand)
        pids, rk = gene_peaks(t_can, peak_chrom, mo.peak_start, mo.peak_end, opts.window_bp, opts.peak_m)
        if pids.size == 0:
            no_peaks += 1
            if not opts.keep_genes_without_peaks:
                continue
        genes_rows.append((g, t))
        flat.append(pids)
        ranks.append(rk)
        offsets.append(offsets[-1] + pids.size)
    counts["genes_without_peaks"] = no_peaks
    counts["genes_without_peaks_policy"] = "kept with zero peaks" if opts.keep_genes_without_peaks else "skipped"
    counts["genes"] = len(genes_rows)
    if not genes_rows:
        raise InputError("no gene has a peak within its TSS window; pass --keep-genes-without-peaks or check the inputs")

    # --- tables
    (out / "tables").mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir(exist_ok=True)
    tables: dict[str, Any] = {}
    n_peaks = len(mo.peak_chrom)
    dna = np.full((n_peaks, PEAK_TOKENS), DNA_N, np.uint16)  # unknown bases where the genome lacks the peak
    for i in np.flatnonzero(pw["has_sequence"]):
        dna[i] = dna_tokens(genome.fetch(pw["genome_chrom"][i], int(pw["wstart"][i]), int(pw["wstart"][i]) + PEAK_SPAN))
    tables["peaks"] = _write_table(out / "tables" / "peaks.parquet", pa.table({
        "peak_id": pa.array(np.arange(n_peaks, dtype=np.int32)),
        "chrom": pa.array(list(mo.peak_chrom), pa.string()),
        "start": pa.array(mo.peak_start), "end": pa.array(mo.peak_end),
        "window_start": pa.array(pw["wstart"]),
        "has_sequence": pa.array(pw["has_sequence"]),
        "dna": pa.FixedSizeListArray.from_arrays(pa.array(dna.ravel()), PEAK_TOKENS),
    }))
    tables["genes"] = _write_table(out / "tables" / "genes.parquet", pa.table({
        "gene_id": pa.array(np.arange(len(genes_rows), dtype=np.int32)),
        "gene": pa.array([str(mo.gene_ids[g]) for g, _ in genes_rows]),
        "name": pa.array([str(mo.gene_names[g]) for g, _ in genes_rows]),
        "chrom": pa.array([t.chrom for _, t in genes_rows]),
        "tss": pa.array([t.tss for _, t in genes_rows], pa.int64()),
        "strand": pa.array([t.strand for _, t in genes_rows]),
        "n_peaks": pa.array([len(f) for f in flat], pa.int32()),
    }))
    labels = mo.labels[keep_cells] if mo.labels is not None else [None] * keep_cells.size
    tables["cells"] = _write_table(out / "tables" / "cells.parquet", pa.table({
        "cell_id": pa.array(np.arange(keep_cells.size, dtype=np.int32)),
        "barcode": pa.array([str(b) for b in mo.barcodes[keep_cells]]),
        "sample": pa.array([mo.source.stem] * keep_cells.size),
        "library_size": pa.array(library[keep_cells]),
        "rna_counts": pa.array(rna_total[keep_cells].astype(np.int64)),
        "label": pa.array([None if x is None else str(x) for x in labels], pa.string()),
    }))
    # expression (log1p CP10k) of kept cells x kept genes, one CSR file per sample-shard cell block
    n_genes = len(genes_rows)
    cells_per_block = max(1, opts.rows_per_shard // max(1, n_genes))
    gsel = np.array([g for g, _ in genes_rows])
    for c0 in tqdm(range(0, keep_cells.size, cells_per_block), desc="expression", unit="block", leave=False):
        block = keep_cells[c0 : c0 + cells_per_block]
        x = mo.rna.read(block)[:, gsel].tocsr()
        x = x.multiply(1e4 / np.maximum(rna_total[block], 1)[:, None]).tocsr().astype(np.float32)
        x.data = np.log1p(x.data)
        np.savez(work / expression_file(c0), data=x.data.astype(np.float32), indices=x.indices.astype(np.int32),
                 indptr=x.indptr.astype(np.int64))
    for name, arr in (("gene_peaks", np.concatenate(flat).astype(np.int32)),
                      ("gene_ranks", np.concatenate(ranks).astype(np.int16)), ("gene_offsets", np.asarray(offsets, np.int64))):
        np.save(work / f"{name}.npy", arr)

    # --- signal (streaming pass 2), per cell block matching the sample shards
    sig_dir = out / "signal"
    done_marker = sig_dir / "_SUCCESS.json"
    if not (done_marker.exists() and json.loads(done_marker.read_text()).get("input_hash") == input_hash):
        sig_counts = build_signal(mo.fragments, mo, keep_cells, library, pw, cells_per_block, sig_dir, cuts)
        atomic_write_json(done_marker, {"input_hash": input_hash, "counts": sig_counts})
    counts.update(json.loads(done_marker.read_text())["counts"])
    signal_files = sorted(sig_dir.glob("block-*.parquet"))
    tables["signal"] = [{"file": f"signal/{p.name}", "bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in signal_files]

    tasks = [ShardTask(i, f"samples-{i:06d}.parquet", {"cells": [c0, min(c0 + cells_per_block, keep_cells.size)]})
             for i, c0 in enumerate(range(0, keep_cells.size, cells_per_block))]
    extra = {
        "tokenizer": tokenizer_spec([ATAC_ASSAY]),
        "options": asdict(opts),
        "inputs": inputs,
        "tables": tables,
        "peak": {"tokens": PEAK_TOKENS, "span_bp": PEAK_SPAN},
        "cells_per_shard": cells_per_block,
        "counts": counts,
    }
    return build_shard_set(out, kind="regulatory", input_hash=input_hash, tasks=tasks,
                           context={"work": str(work.resolve()), "n_genes": n_genes}, build=build_sample_shard,
                           manifest_extra=extra, executor=executor, overwrite=overwrite)


def _match_genes(mo: Multiome, genes: list[GeneTSS], counts: dict[str, Any]) -> dict[int, GeneTSS | None]:
    by_id = {g.gene_id: g for g in genes}
    by_id.update({g.gene_id.split(".")[0]: g for g in genes})  # Ensembl version suffixes
    by_name = {g.name: g for g in genes}
    out: dict[int, GeneTSS | None] = {}
    for i, (gid, name) in enumerate(zip(mo.gene_ids, mo.gene_names)):
        out[i] = by_id.get(str(gid)) or by_id.get(str(gid).split(".")[0]) or by_name.get(str(name))
    counts["matrix_genes_without_tss"] = sum(v is None for v in out.values())
    return out

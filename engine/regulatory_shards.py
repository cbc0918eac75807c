"""`prepare regulatory`: a 10x Multiome atlas → peaks, genes, cells, sparse per-cell ATAC signal and
cell×gene sample shards (docs/design.md §3, §5), with the shard machinery of ``engine.shards``.

Layout of ``OUT/``: ``tables/peaks.parquet`` (1,024 DNA tokens per peak), ``tables/genes.parquet``,
``tables/cells.parquet``, ``signal/block-NNNNNN.parquet`` (per cell block: only the non-zero ATAC
tokens of each cell × peak; engine/atac_signal.py), ``shards/samples-NNNNNN.parquet`` (one row
per cell × gene, built by Ray tasks per cell block; engine/sample_shards.py) and
``manifest.json``. The stream joins samples with sequence and signal per cell block
(engine/regulatory_stream.py), so memory stays flat as cells grow.

Choices (documented because they change numbers):
- Expression = log1p(counts x 10,000 / the cell's RNA total).
- Peak window = 1,024 tokens (1,029 bases) centred on the peak midpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from creformer.config import Config

from .atac_signal import build_signal, fragment_library
from .errors import InputError
from .genes import CELL_READ_BLOCK, gene_peaks, match_genes, peak_windows, select_genes
from .io.annotation import GeneTSS, read_annotation
from .io.chroms import canonical
from .io.fasta import Genome
from .io.multiome import read_multiome
from .sample_shards import build_sample_shard, expression_file
from .shards import (
    BuildResult,
    ShardTask,
    atomic_write_json,
    build_shard_set,
    content_hash,
    damaged_shards,
    fingerprint,
    sha256_file,
)
from .tokenize import DNA_N, PEAK_SPAN, PEAK_TOKENS, dna_tokens, tokenizer_spec

ATAC_ASSAY = "ATAC"


def _write_table(path: Path, table: pa.Table) -> dict[str, Any]:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)
    return {"file": str(path.relative_to(path.parent.parent)), "rows": table.num_rows, "bytes": path.stat().st_size,
            "sha256": sha256_file(path)}


def prepare_regulatory(cfg: Config, *, overwrite: bool = False) -> BuildResult:
    """10x Multiome (Cell Ranger ARC folder/h5, .h5mu, or RNA .h5ad + fragments + peaks) → regulatory tables and shards,
    as ``cfg.data.regulatory`` and ``cfg.data.genome`` say."""
    opts = cfg.data.regulatory
    if not (opts.multiome and cfg.data.genome and opts.annotation):
        raise InputError("prepare regulatory needs data.regulatory.multiome, data.genome and data.regulatory.annotation "
                         "(config keys, or --multiome / --genome / --annotation)")
    genome_path, annotation, out = cfg.data.genome, opts.annotation, Path(opts.shards)
    mo = read_multiome(opts.multiome, opts.fragments or None, opts.peaks or None)
    genome = Genome(genome_path)
    genes_ann = read_annotation(annotation)
    cuts = np.asarray(tokenizer_spec([ATAC_ASSAY])["signal"]["cutpoints"][ATAC_ASSAY])
    inputs = [{"role": "multiome", **fingerprint(mo.source)}, {"role": "fragments", **fingerprint(mo.fragments)},
              {"role": "genome", **fingerprint(genome_path)}, {"role": "annotation", **fingerprint(annotation)}]
    if opts.peaks:
        inputs.append({"role": "peaks", **fingerprint(opts.peaks)})
    input_hash = content_hash({"kind": "regulatory", "options": opts.options(), "cuts": cuts.tolist(),
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
    # the genome's length of each peak chromosome, in the peaks' own spelling (bigWig headers downstream)
    chrom_sizes = {str(c): int(genome.lengths[g]) for c, g in dict(zip(mo.peak_chrom, pw["genome_chrom"])).items() if g is not None}
    gene_tss = match_genes(mo, genes_ann, counts)
    if missing.size:
        miss_genes = sum(1 for t in gene_tss.values() if t is not None and np.any(
            (mo.peak_chrom[missing] == t.chrom) & (np.abs((mo.peak_start[missing] + mo.peak_end[missing]) // 2 - t.tss) <= opts.tss_window_bp)))
        msg = (f"{missing.size} of {len(mo.peak_chrom)} peaks lack sequence in {genome_path} (chromosome absent or window "
               f"past its end), affecting the TSS windows of {miss_genes} gene(s)")
        if not opts.allow_missing_sequence:
            raise InputError(msg + "; set data.regulatory.allow_missing_sequence (--allow-missing-sequence) to keep them with unknown-base [N] DNA tokens "
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
    sel = select_genes(mo, keep_cells, opts)
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
        pids, rk = gene_peaks(t_can, peak_chrom, mo.peak_start, mo.peak_end, opts.tss_window_bp, opts.peak_m)
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
        raise InputError("no gene has a peak within its TSS window; set data.regulatory.keep_genes_without_peaks or check the inputs")

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
        "options": opts.options(),
        "inputs": inputs,
        "tables": tables,
        "peak": {"tokens": PEAK_TOKENS, "span_bp": PEAK_SPAN},
        "cells_per_shard": cells_per_block,
        "chrom_sizes": chrom_sizes,
        "counts": counts,
    }
    return build_shard_set(out, kind="regulatory", input_hash=input_hash, tasks=tasks,
                           context={"work": str(work.resolve()), "n_genes": n_genes}, build=build_sample_shard,
                           manifest_extra=extra, executor=cfg.data.executor, overwrite=overwrite, ray_config=cfg.ray)

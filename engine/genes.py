"""Genes of a regulatory shard set: which genes, where their TSS is, and which peaks (and in which
signed TSS rank) each gene's Regulatory input holds (docs/design.md §3, §5)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from creformer.config import RegulatoryDataConfig

from .errors import InputError
from .io.annotation import GeneTSS
from .io.chroms import canonical
from .io.fasta import Genome
from .io.multiome import Multiome
from .tokenize import PEAK_SPAN, PEAK_TOKENS

CELL_READ_BLOCK = 4096  # cells of the RNA matrix read at a time


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


def gene_peaks(tss: GeneTSS, chrom: np.ndarray, start: np.ndarray, end: np.ndarray, tss_window_bp: int, peak_m: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Peak indices within +-tss_window_bp of the TSS (by peak midpoint), at most ``peak_m`` nearest,
    ordered by signed rank, and their ranks."""
    mid = (start + end) // 2
    cand = np.flatnonzero((chrom == tss.chrom) & (np.abs(mid - tss.tss) <= tss_window_bp))
    if cand.size > peak_m:
        dist = np.minimum(np.abs(start[cand] - tss.tss), np.abs(end[cand] - 1 - tss.tss))
        dist[(start[cand] <= tss.tss) & (tss.tss < end[cand])] = 0
        cand = np.sort(cand[np.argsort(dist, kind="stable")[:peak_m]])
    ranks = tss_ranks(start[cand], end[cand], tss.tss, tss.strand)
    order = np.argsort(ranks, kind="stable")
    return cand[order].astype(np.int32), ranks[order]


def select_genes(mo: Multiome, cells: np.ndarray, opts: RegulatoryDataConfig) -> np.ndarray:
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



def match_genes(mo: Multiome, genes: list[GeneTSS], counts: dict[str, Any]) -> dict[int, GeneTSS | None]:
    by_id = {g.gene_id: g for g in genes}
    by_id.update({g.gene_id.split(".")[0]: g for g in genes})  # Ensembl version suffixes
    by_name = {g.name: g for g in genes}
    out: dict[int, GeneTSS | None] = {}
    for i, (gid, name) in enumerate(zip(mo.gene_ids, mo.gene_names)):
        out[i] = by_id.get(str(gid)) or by_id.get(str(gid).split(".")[0]) or by_name.get(str(name))
    counts["matrix_genes_without_tss"] = sum(v is None for v in out.values())
    return out


def gene_digest(genes) -> str:
    """Identity of a shard set's gene list: sha256 of its gene ids (the ``gene`` column) in gene_id
    order. A model with ``model.gene_embedding`` records it at export and is only run on shards
    whose genes have the same digest (its gene table is indexed by gene_id)."""
    order = np.argsort(np.asarray(genes["gene_id"]), kind="stable")
    names = np.asarray(genes["gene"], dtype=object)
    return hashlib.sha256("\n".join(str(names[i]) for i in order).encode()).hexdigest()

"""Simulator part 2: a single-cell multiome atlas from the same rulebook as the bulk tracks.

Writes a Cell Ranger ARC layout under ``DIR/multiome/``: ``filtered_feature_bc_matrix.h5``
(Gene Expression + Peaks), ``atac_fragments.tsv.gz`` (bgzip + tabix) and ``atac_peaks.bed``, so
the real readers are exercised. Per cell: TF activity = its type's activity with cell-level noise;
the rulebook's openness is each allele's probability of being open, and every element's state in
a cell (0, 1/2 or 1: two alleles) is drawn independently; the cell's expression follows its own
element states and its fragments fall in its open elements (plus background), so most cell x peak
pairs have none; RNA counts are Poisson around that expression. Fragments are
generated one chromosome at a time (streaming), so the large preset never holds them all.
Truth added to ``DIR/truth/``: cells, TF→target edges and knockout / knock-in effects computed by
re-running the generative model with the TF's activity forced to 0 / 1.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pysam
from scipy import sparse

from .io.files import write_tsv
from .rulebook import OPEN_MAX, Rulebook, gap_of

# In-peak fragments per cell per peak: real multiome cells have ~0.2-0.4, so most cell x peak pairs
# are empty; the large preset (benchmarks, 100 k cells) is sparser still to keep its file small.
FRAGMENTS_PER_PEAK = {"tiny": 0.3, "small": 0.3, "large": 0.05}
# An allele of a fully active element is open in OPEN_MAX of cells (rulebook.py). Why states are drawn per cell:
# with openness shared by every element of a TF, a gene's causal and inert elements of one TF open
# together in every cell, and an observational estimator can hardly tell them apart (measured on
# the small atlas, 2,000 cells: within-cell-type correlation of a distal element's fragment count
# with the gene's RNA ranks causal elements at chance, AUPRC 0.05 vs prevalence 0.049; with
# per-cell states 0.90). Real single-cell accessibility is per-cell stochastic.


def _barcodes(n: int, rng: np.random.Generator) -> list[str]:
    seen: set[str] = set()
    out = []
    while len(out) < n:
        bc = "".join("ACGT"[i] for i in rng.integers(0, 4, 16)) + "-1"
        if bc not in seen:
            seen.add(bc)
            out.append(bc)
    return out


def cell_states(book: Rulebook, n_cells: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Cell types (n,) and per-cell TF activity (n, TFs): the type's steady-state activity (the
    network's fixed point, ``Rulebook.steady_activity``) with cell-level noise."""
    k = book.activity.shape[0]
    weights = rng.dirichlet(np.full(k, 5.0))
    types = np.sort(rng.choice(k, size=n_cells, p=weights))
    act = book.activity[types] * rng.lognormal(0.0, 0.2, (n_cells, book.activity.shape[1]))
    return types, np.clip(act, 0.0, 1.0)


def mean_element_states(book: Rulebook, act: np.ndarray) -> np.ndarray:
    """Each element's mean state (= an allele's probability of being open) for TF activity ``act``:
    ``OPEN_MAX`` x the rulebook's openness."""
    return OPEN_MAX * book.element_activity(act)


def element_states(book: Rulebook, act: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each cell's element states (cells, elements) in {0, 1/2, 1}: two alleles, each open with
    the probability ``mean_element_states`` gives for the cell's TF activity ``act``."""
    return rng.binomial(2, mean_element_states(book, act)) / 2.0


def peak_set(book: Rulebook, rng: np.random.Generator) -> list[tuple[str, int, int, str]]:
    """Peaks as a caller would find them on pseudobulk: open elements (any cell type) and CTCF sites."""
    openness = book.element_activity(book.activity).max(0)
    peaks = []
    for j, e in enumerate(book.elements):
        if e.kind == "ctcf" or openness[j] > 0.05:
            pad = int(rng.integers(50, 200))
            peaks.append((e.chrom, e.start - pad, e.end + pad, e.element_id))
    return peaks


def write_10x_h5(path: Path, barcodes: list[str], genes: list[tuple[str, str, str]], peaks: list[tuple[str, int, int]],
                 rna: np.ndarray, atac: np.ndarray) -> None:
    """Cell Ranger ARC ``filtered_feature_bc_matrix.h5``: features x barcodes, CSC by barcode.
    ``genes``: (gene_id, name, interval); ``peaks``: (chrom, start, end); counts are cells x features."""
    def as_sparse(m):
        return sparse.csr_matrix(m) if sparse.issparse(m) else sparse.csr_matrix(np.asarray(m))

    mat = sparse.vstack([as_sparse(rna).T, as_sparse(atac).T]).tocsc()
    peak_names = [f"{c}:{s}-{e}" for c, s, e in peaks]
    feat_ids = [g[0] for g in genes] + peak_names
    names = [g[1] for g in genes] + peak_names
    types = ["Gene Expression"] * len(genes) + ["Peaks"] * len(peaks)
    intervals = [g[2] for g in genes] + peak_names
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m.create_dataset("barcodes", data=np.array(barcodes, dtype="S"))
        m.create_dataset("data", data=mat.data.astype(np.int32), compression="gzip")
        m.create_dataset("indices", data=mat.indices.astype(np.int64), compression="gzip")
        m.create_dataset("indptr", data=mat.indptr.astype(np.int64))
        m.create_dataset("shape", data=np.array(mat.shape, dtype=np.int32))
        ft = m.create_group("features")
        ft.create_dataset("id", data=np.array(feat_ids, dtype="S"))
        ft.create_dataset("name", data=np.array(names, dtype="S"))
        ft.create_dataset("feature_type", data=np.array(types, dtype="S"))
        ft.create_dataset("genome", data=np.array(["creformer-sim"] * len(types), dtype="S"))
        ft.create_dataset("interval", data=np.array(intervals, dtype="S"))
        ft.create_dataset("_all_tag_keys", data=np.array(["genome", "interval"], dtype="S"))


def simulate_cells(out: Path, book: Rulebook, preset: str, seed: int, n_cells: int | None = None, chunk: int = 4096) -> Path:
    rng = np.random.default_rng(seed + 3)
    n = n_cells or book.preset.n_cells
    mdir = out / "multiome"
    mdir.mkdir(parents=True, exist_ok=True)
    types, act = cell_states(book, n, rng)
    barcodes = _barcodes(n, rng)
    peaks = peak_set(book, rng)
    elem_index = {e.element_id: j for j, e in enumerate(book.elements)}
    chroms = list(book.chroms)
    chrom_len = np.array([book.chroms[c] for c in chroms])
    in_peak_mean = FRAGMENTS_PER_PEAK.get(preset, 0.3) * len(peaks)
    in_peaks = np.maximum(5, rng.lognormal(np.log(in_peak_mean), 0.4, n)).astype(np.int64)
    background = rng.binomial(2 * in_peaks, 0.5)  # FRiP ~ 0.5
    bg_counts = np.stack([rng.multinomial(background[c], chrom_len / chrom_len.sum()) for c in range(n)])
    decoys = [j for j, e in enumerate(book.elements) if e.kind == "decoy"]
    # Cells in chunks (the large preset has 100 k): RNA counts and fragments per (cell, element), sparse.
    rna_parts, frag_parts = [], []
    for c0 in range(0, n, chunk):
        c1 = min(n, c0 + chunk)
        state = element_states(book, act[c0:c1], rng)  # (chunk, elements)
        expr = book.expression(state)  # counts-per-10k scale
        depth = rng.lognormal(0.0, 0.3, c1 - c0)
        rna_parts.append(sparse.csr_matrix(rng.poisson(expr * depth[:, None]).astype(np.int32)))
        weight = state + 0.01  # closed elements keep a tiny floor; decoys stay (almost) closed
        weight[:, decoys] = 0.002
        weight /= weight.sum(1, keepdims=True)
        frag_parts.append(sparse.csr_matrix(np.stack([rng.multinomial(in_peaks[c0 + i], weight[i]) for i in range(c1 - c0)])))
    rna = sparse.vstack(rna_parts).tocsr()
    per_elem = sparse.vstack(frag_parts).tocsc()
    elem_chrom = np.array([chroms.index(e.chrom) for e in book.elements])
    elem_center = np.array([e.center for e in book.elements])
    frag_path = mdir / "atac_fragments.tsv"
    peak_arr = {c: np.array([(s, e) for ch, s, e, _ in peaks if ch == c], dtype=np.int64).reshape(-1, 2) for c in chroms}
    peak_offset = {c: sum(1 for p in peaks if chroms.index(p[0]) < chroms.index(c)) for c in chroms}
    atac_cells, atac_peaks = [], []
    bcs_all = np.asarray(barcodes)
    with frag_path.open("w") as fh:
        for ci, chrom in enumerate(chroms):
            # in-element fragments of this chromosome for all cells, then background
            sub = per_elem[:, np.flatnonzero(elem_chrom == ci)].tocoo()
            cell_idx = np.repeat(sub.row.astype(np.int64), sub.data)
            centers = np.repeat(elem_center[np.flatnonzero(elem_chrom == ci)][sub.col], sub.data)
            starts = centers + rng.normal(0, 80, centers.size).astype(np.int64)
            bg_cells = np.repeat(np.arange(n, dtype=np.int64), bg_counts[:, ci])
            bg_starts = rng.integers(1_000, gap_of(book.chroms[chrom])[0] - 1_000, bg_cells.size)  # no reads in the N gap
            cell_idx = np.concatenate([cell_idx, bg_cells])
            starts = np.concatenate([starts, bg_starts])
            lengths = 40 + rng.gamma(2.0, 60.0, starts.size).astype(np.int64)
            starts = np.clip(starts - lengths // 2, 0, book.chroms[chrom] - 1_000)
            ends = starts + lengths
            order = np.lexsort((ends, starts))
            starts, ends, cell_idx = starts[order], ends[order], cell_idx[order]
            dup = rng.integers(1, 4, starts.size)
            # Peak-matrix counts: fragments with either end inside a peak (Cell Ranger counts cut sites).
            pk = peak_arr[chrom]
            for site in (starts, ends - 1):
                j = np.searchsorted(pk[:, 0], site, side="right") - 1
                ok = (j >= 0) & (site < pk[np.maximum(j, 0), 1])
                atac_cells.append(cell_idx[ok])
                atac_peaks.append(peak_offset[chrom] + j[ok])
            for a in range(0, starts.size, 1 << 20):
                sl = slice(a, a + (1 << 20))
                fh.writelines(f"{chrom}\t{s}\t{e}\t{b}\t{d}\n" for s, e, b, d in
                              zip(starts[sl].tolist(), ends[sl].tolist(), bcs_all[cell_idx[sl]].tolist(), dup[sl].tolist()))
    pysam.tabix_index(str(frag_path), preset="bed", force=True, keep_original=False)
    with (mdir / "atac_peaks.bed").open("w") as fh:
        for c, s, e, _ in peaks:
            fh.write(f"{c}\t{s}\t{e}\n")
    ac, ap = np.concatenate(atac_cells), np.concatenate(atac_peaks)
    atac = sparse.coo_matrix((np.ones(ac.size, np.int32), (ac, ap)), shape=(n, len(peaks))).tocsr()
    genes = [(g.gene_id, g.name, f"{g.chrom}:{min(g.body)}-{max(g.body)}") for g in book.genes]
    write_10x_h5(mdir / "filtered_feature_bc_matrix.h5", barcodes, genes, [p[:3] for p in peaks], rna, atac)
    _write_truth_cells(out, book, barcodes, types, peaks, elem_index)
    return mdir


def _write_truth_cells(out: Path, book: Rulebook, barcodes, types, peaks, elem_index) -> None:
    truth = out / "truth"
    ct = book.cell_types
    write_tsv(truth / "cells.tsv", ["barcode", "cell_type"], [(b, ct[t]) for b, t in zip(barcodes, types)])
    write_tsv(truth / "peaks.tsv", ["chrom", "start", "end", "element_id"], peaks)
    # TF -> target: the TF's motif sits in a causal element (primary or partner) of the gene, signed.
    direct = book.direct_edges()
    write_tsv(truth / "tf_targets.tsv", ["tf", "gene_id", "weight", "sign"],
              [(book.tfs[t], book.genes[g].gene_id, f"{abs(w):.4f}", 1 if w > 0 else -1)
               for (t, g), w in sorted(direct.items()) if w != 0])
    # Perturbations from the generative network itself: the TF's activity held at 0 (KO) or 1 (KI)
    # and every other TF's activity solved again (cascades), at each cell type's mean element
    # states. `direct`: the TF binds a causal element of the gene; the rest are indirect effects.
    base = book.mean_expression(book.activity)
    rows = []
    for ti, tf in enumerate(book.tfs):
        for mode, level in (("KO", 0.0), ("KI", 1.0)):
            pert = book.mean_expression(book.steady_activity(book.inputs, {ti: level}))
            lfc = np.log2((pert + 0.1) / (base + 0.1))
            for c in range(len(ct)):
                for gi, g in enumerate(book.genes):
                    if abs(lfc[c, gi]) > 1e-6:
                        rows.append((ct[c], tf, mode, g.gene_id, f"{lfc[c, gi]:.5f}", str((ti, gi) in direct).lower()))
    write_tsv(truth / "perturbations.tsv", ["cell_type", "tf", "mode", "gene_id", "log2fc", "direct"], rows)

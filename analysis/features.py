"""Attention features per (gene, cell) (docs/design.md §7) beside plain gene activity; computed for
every analysed cell by reduce.second_pass (``cells/``), written as AnnData by cell_files.py.

feature(g, c) = cos(score(g, c), score(g, c_max)) × Σ scATAC(g, c)
- score(g, c): the attention scores of g's peaks in cell c (a fixed peak list per gene);
- c_max: the cell with the highest *measured* expression of g among the analysed cells (ties: the
  lowest cell id), so the reference is data, not the model;
- Σ scATAC(g, c): the cell's library-scaled ATAC mass summed over g's peaks within
  ``region_bp`` of the TSS (decoded from the signal tokens); analysis.tss_region_bp defaults to a
  promoter-proximal 2 kb, as gene scores (Signac, ArchR) use: a wide region sums in the
  enhancers and promoters of neighbouring genes (50 kb on the demo: master-TF top-3 0.5 for both
  methods, 1.0 at 1-5 kb).
Gene activity (the baseline) is that same ATAC sum without the attention term.
"""

from __future__ import annotations

import numpy as np
import polars as pl


def peak_distance(genes: pl.DataFrame, peaks: pl.DataFrame, gene_ids: np.ndarray, peak_ids: np.ndarray) -> np.ndarray:
    """|peak midpoint − TSS| in bp for aligned (gene, peak) arrays."""
    tss = dict(zip(genes["gene_id"].to_list(), genes["tss"].to_list()))
    mid = dict(zip(peaks["peak_id"].to_list(), ((peaks["start"] + peaks["end"]) // 2).to_list()))
    return np.array([abs(mid[p] - tss[g]) for g, p in zip(gene_ids.tolist(), peak_ids.tolist())], np.int64)


def sample_matrices(rows: pl.DataFrame, sample: pl.DataFrame, gene_ids: list[int]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(column -> (sampled cells, len(gene_ids)) matrix, the cells' groups) from the per-cell
    outputs (reduce.second_pass: expression, pred, activity, attention_feature) of the driver's
    sample; a gene id may repeat (two motifs of one TF), a missing sample is 0."""
    cells = sample.sort("cell_id")
    ri = {int(c): i for i, c in enumerate(cells["cell_id"].to_list())}
    out = {c: np.zeros((cells.height, len(gene_ids)), np.float32) for c in ("expression", "pred", "activity", "attention_feature")}
    sub = rows.filter(pl.col("gene_id").is_in([int(g) for g in gene_ids]))
    r = np.array([ri[int(c)] for c in sub["cell_id"].to_list()], np.int64)
    g = sub["gene_id"].to_numpy()
    for j, gid in enumerate(gene_ids):
        sel = g == gid
        for c in out:
            out[c][r[sel], j] = sub[c].to_numpy()[sel]
    return out, cells["group"].to_numpy()


def knockout_matrix(ko_shift: pl.DataFrame, sample: pl.DataFrame, tf_names: list[str]) -> np.ndarray:
    """(sampled cells, TFs) size of each cell's predicted change under the TF's knockout, ||Δ
    expression|| over the analysed genes (``reduce.SecondPass.ko_shift``); 0 for a cell the
    knockout left untouched. Rows in ``sample_matrices``' order (by cell id)."""
    ids = sample.sort("cell_id")["cell_id"].to_numpy()
    out = np.zeros((ids.size, len(tf_names)), np.float32)
    sub = ko_shift.filter(pl.col("condition").is_in(tf_names) & pl.col("cell_id").is_in(ids.tolist()))
    r = np.searchsorted(ids, sub["cell_id"].to_numpy())
    for j, name in enumerate(tf_names):  # a TF named twice (two motifs) fills both columns
        sel = (sub["condition"] == name).to_numpy()
        out[r[sel], j] = sub["shift_norm"].to_numpy()[sel]
    return out

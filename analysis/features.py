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

"""Accessibility-supported binding: which peaks a TF perturbation closes (knockout) or opens (knock-in).

The scan at FIMO's p ≤ 1e-4 misses weak sites, and a knockout that never touches a gene's causal
peak can only be read through peaks that co-vary with it (docs/design.md §8). A looser p-value alone
admits far more decoys than sites (at 1e-3 on the small simulated atlas: 4.9× the sites per TF at
precision 0.20). Here a peak with a site at the looser ``support_pvalue`` also counts as bound when
its accessibility follows the TF's motif accessibility across the atlas's cells (Pearson r ≥
``min_r`` with the chromVAR-style deviation of the motif's scan-bound peaks, as
baselines.motif_deviations computes it): the motif says the TF can bind there, the cells say the
peak opens where the TF is active. The scan's own sites always stay bound.

Two streaming passes over the signal blocks (the atlas's (cell, peak, mass) rows), so memory is
one block plus (peaks, motifs) sums, never (cells, peaks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import scipy.sparse as sp

from .baselines import deviations, signal_masses
from .inputs import AtlasTables


def _blocks(tables: AtlasTables) -> Iterator[sp.csr_matrix]:
    """(cells, peaks) CSR of ATAC mass per signal block of the shard set (its cells only)."""
    for cell, peak, mass in signal_masses(tables):
        cells, rows = np.unique(cell, return_inverse=True)
        yield sp.csr_matrix((mass.astype(np.float64), (rows, peak)), shape=(cells.size, tables.peaks.height))


def supported_sites(tables: AtlasTables, bound: np.ndarray, loose: np.ndarray, min_r: float) -> np.ndarray:
    """``bound`` (peaks, motifs) plus the ``loose`` sites whose peak's accessibility correlates with the
    motif's deviation across every cell of the atlas at r ≥ ``min_r``."""
    return support(lambda: _blocks(tables), tables.cells.height, bound, loose, min_r)


def support(blocks: Callable[[], Iterable[sp.csr_matrix]], n_cells: int, bound: np.ndarray, loose: np.ndarray,
            min_r: float) -> np.ndarray:
    """``supported_sites`` over ``blocks()`` (a fresh iterator of (cells, peaks) ATAC-mass blocks per
    call; cells in no block count at zero accessibility and zero deviation, as in
    baselines.motif_deviations). Memory: one block plus three (peaks, motifs) float64 arrays."""
    if bound.shape != loose.shape:
        raise ValueError(f"bound {bound.shape} and loose {loose.shape} sites must cover the same peaks and motifs")
    b = bound.astype(np.float64)
    # pass 1: each peak's mass and squared mass over cells (and the share chromVAR's expectation uses)
    s1 = np.zeros(bound.shape[0])
    s2 = np.zeros(bound.shape[0])
    for acc in blocks():
        s1 += np.asarray(acc.sum(0)).ravel()
        s2 += np.asarray(acc.multiply(acc).sum(0)).ravel()
    expected_share = (s1 / max(float(s1.sum()), 1e-12)) @ b  # (motifs,)
    # pass 2: each cell's deviations, their sums, and Σ over cells of mass × deviation per (peak, motif)
    d1 = np.zeros(bound.shape[1])
    d2 = np.zeros(bound.shape[1])
    cross = np.zeros(bound.shape)
    for acc in blocks():
        dev = deviations(acc, b, expected_share)
        d1 += dev.sum(0)
        d2 += (dev**2).sum(0)
        cross += np.asarray(acc.T @ dev)
    mean_a, mean_d = s1 / n_cells, d1 / n_cells
    sd_a = np.sqrt(np.maximum(s2 / n_cells - mean_a**2, 0.0))
    sd_d = np.sqrt(np.maximum(d2 / n_cells - mean_d**2, 0.0))
    den = sd_a[:, None] * sd_d[None]
    r = np.where(den > 0, (cross / n_cells - mean_a[:, None] * mean_d[None]) / np.where(den > 0, den, 1.0), 0.0)
    return bound | (loose & ~bound & (r >= min_r))

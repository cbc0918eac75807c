"""Vectorized PWM scanning of peak sequences (both strands), from the DNA tokens in the peaks table.

Peaks are stored as overlapping 6-mer tokens (docs/design.md §2); bases are decoded back exactly (token i
holds bases i..i+5), so scanning needs no FASTA. Scores are log-odds against a uniform background.
Two hit rules:
- ``pvalue`` (FIMO's and MOODS' rule; FIMO's default 1e-4): a site is a hit when a random uniform
  sequence reaches its score with at most that chance. atlas_grn scans with memelite's FIMO
  (``scan_fimo``: numba, maintained by the tangermeme authors). ``scan`` keeps an exact NumPy
  version (the score distribution of the matrix discretized to 1/100 bit, by dynamic programming
  over positions) as the reference the tests hold memelite to: on the demo atlas both find the
  same (peak, motif) pairs (recall 0.812, precision 0.788 at the planted sites), memelite in 0.04 s
  against 0.45 s after a one-off 1.9 s numba compilation (benchmarks/motif_scan.py). The cut
  adapts to motif length: a 12-bp motif admits two mismatches from its consensus at 1e-4, an
  8-bp one none.
- ``threshold``: the score reaches that fraction of the way from the motif's minimum to its maximum
  (MOODS' and Biopython's relative score). One fraction for every motif lets a short motif hit far
  more often than a long one (measured on the demo atlas at 0.85: an 8-bp motif in 64 % of peaks at
  17 % precision against its planted sites).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from creformer.engine.io.motifs import Motif
from creformer.engine.tokenize import DNA_OFFSET

N_BASE = 4  # code for any non-ACGT base


def decode_dna(tokens: np.ndarray) -> np.ndarray:
    """(n, L) 6-mer tokens → (n, L + 5) base codes 0..3 (A C G T), 4 for N / padding."""
    tokens = np.asarray(tokens).astype(np.int64)
    n, length = tokens.shape
    idx = tokens - DNA_OFFSET
    valid = idx >= 0
    bases = np.full((n, length + 5), N_BASE, np.uint8)
    # the first base of every k-mer, then the last k-mer's remaining 5 bases
    bases[:, :length] = np.where(valid, idx // 4**5, N_BASE)
    for k in range(1, 6):
        bases[:, length - 1 + k] = np.where(valid[:, -1], (idx[:, -1] // 4 ** (5 - k)) % 4, N_BASE)
    # bases read only by [N] tokens stay N: the scanner never matches them
    return bases


SCORE_STEP = 0.01  # bits per integer score unit in the p-value rule


def log_odds(pwm: np.ndarray, pseudo: float = 0.01) -> np.ndarray:
    p = (pwm + pseudo) / (pwm + pseudo).sum(1, keepdims=True)
    lo = np.log2(p / 0.25)
    return np.concatenate([lo, np.full((len(lo), 1), lo.min() - 10.0)], 1)  # N never scores


def integer_scores(lo: np.ndarray) -> np.ndarray:
    """``log_odds`` in integer units of ``SCORE_STEP`` (the N column stays far below any site)."""
    out = np.round(lo / SCORE_STEP).astype(np.int64)
    out[:, 4] = out[:, :4].min() * len(lo) - 1  # one N anywhere puts a site below the lowest real score
    return out


def pvalue_cut(ilo: np.ndarray, pvalue: float) -> int:
    """The lowest integer score whose chance under a uniform background is at most ``pvalue``
    (the score distribution by dynamic programming over the positions of ``ilo`` (w, 4 + N));
    a score above the maximum when even the best site is likelier than ``pvalue``."""
    lo4 = ilo[:, :4]
    mins = lo4.min(1)
    dist = np.ones(1)
    for k in range(len(lo4)):
        shift = lo4[k] - mins[k]
        new = np.zeros(len(dist) + int(shift.max()))
        for b in range(4):
            new[shift[b]:shift[b] + len(dist)] += 0.25 * dist
        dist = new
    tail = np.cumsum(dist[::-1])[::-1]  # tail[i] = P(score >= i + sum(mins))
    ok = np.flatnonzero(tail <= pvalue * (1 + 1e-9))
    return int(ok[0] if ok.size else len(dist)) + int(mins.sum())


@dataclass
class MotifHits:
    motifs: list[Motif]
    counts: np.ndarray  # (n_peaks, n_motifs) sites per peak, both strands

    @property
    def bound(self) -> np.ndarray:
        return self.counts > 0

    def index(self, name: str) -> int:
        for i, m in enumerate(self.motifs):
            if m.name.upper() == name.upper() or m.id == name:
                return i
        raise KeyError(name)


def scan(bases: np.ndarray, motifs: list[Motif], threshold: float = 0.85, chunk: int = 512,
         pvalue: float | None = None) -> MotifHits:
    """Count sites per (peak, motif) on both strands: hits by ``pvalue`` when given, else by the
    relative ``threshold`` (module docstring)."""
    if pvalue is not None and not 0.0 < pvalue < 1.0:
        raise ValueError(f"motif p-value {pvalue} must be in (0, 1)")
    if pvalue is None and not 0.0 < threshold <= 1.0:
        raise ValueError(f"motif threshold {threshold} must be in (0, 1]")
    n, length = bases.shape
    counts = np.zeros((n, len(motifs)), np.int32)
    for mi, m in enumerate(motifs):
        w = len(m.pwm)
        if w > length:
            continue
        lo = log_odds(m.pwm)
        if pvalue is None:
            best, worst = lo[:, :4].max(1).sum(), lo[:, :4].min(1).sum()
            cut = worst + threshold * (best - worst) - 1e-9
        else:  # integer scores: the cut is exact for the discretized matrix
            lo = integer_scores(lo)
            cut = pvalue_cut(lo, pvalue)
        # the reverse complement (positions reversed, A<->T, C<->G, N kept) has the same scores
        # permuted, so one cut serves both strands
        for strand in (lo, lo[::-1][:, [3, 2, 1, 0, 4]]):
            for a in range(0, n, chunk):
                b = bases[a:a + chunk]
                score = np.zeros((b.shape[0], length - w + 1), strand.dtype)
                for k in range(w):
                    score += strand[k][b[:, k:length - w + 1 + k]]
                counts[a:a + chunk, mi] += (score >= cut).sum(1).astype(np.int32)
    return MotifHits(motifs, counts)


def one_hot(bases: np.ndarray) -> np.ndarray:
    """(n, L) base codes → (n, 4, L) float32 one-hot; N (4) is all zero."""
    x = np.zeros((bases.shape[0], 4, bases.shape[1]), np.float32)
    for b in range(4):
        x[:, b, :] = bases == b
    return x


def scan_fimo(bases: np.ndarray, motifs: list[Motif], pvalue: float = 1e-4, chunk: int = 20_000) -> MotifHits:
    """Sites per (peak, motif), both strands, at FIMO's p-value rule, with memelite's FIMO over
    blocks of ``chunk`` peaks (a one-hot block of 20,000 1-kb peaks is 330 MB)."""
    from memelite import fimo  # here: importing it compiles nothing, but pulls numba in only where scans run

    if not 0.0 < pvalue < 1.0:
        raise ValueError(f"motif p-value {pvalue} must be in (0, 1)")
    pwms = {f"{i}": m.pwm.T.astype(np.float64) for i, m in enumerate(motifs)}
    counts = np.zeros((bases.shape[0], len(motifs)), np.int32)
    for a in range(0, bases.shape[0], chunk):
        tables = fimo(pwms, one_hot(bases[a:a + chunk]), threshold=pvalue)  # one table per motif, in order
        for j, t in enumerate(tables):
            if len(t):
                np.add.at(counts[:, j], a + t["sequence_name"].to_numpy().astype(np.int64), 1)
    return MotifHits(motifs, counts)

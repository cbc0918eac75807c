"""Vectorized PWM scanning of peak sequences (both strands), from the DNA tokens in the peaks table.

Peaks are stored as overlapping 6-mer tokens (DESIGN §2); bases are decoded back exactly (token i
holds bases i..i+5), so scanning needs no FASTA. Scores are log-odds against a uniform background;
a site is a hit when its score reaches ``threshold`` of the way from the motif's minimum to its
maximum score (MOODS/FIMO-like relative threshold; 0.85 by default).
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


def log_odds(pwm: np.ndarray, pseudo: float = 0.01) -> np.ndarray:
    p = (pwm + pseudo) / (pwm + pseudo).sum(1, keepdims=True)
    lo = np.log2(p / 0.25)
    return np.concatenate([lo, np.full((len(lo), 1), lo.min() - 10.0)], 1)  # N never scores


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


def scan(bases: np.ndarray, motifs: list[Motif], threshold: float = 0.85, chunk: int = 512) -> MotifHits:
    """Count sites per (peak, motif) on both strands."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"motif threshold {threshold} must be in (0, 1]")
    n, length = bases.shape
    counts = np.zeros((n, len(motifs)), np.int32)
    for mi, m in enumerate(motifs):
        for pwm in (m.pwm, m.pwm[::-1, ::-1]):  # forward, reverse complement
            lo = log_odds(pwm)
            w = len(lo)
            if w > length:
                continue
            best, worst = lo[:, :4].max(1).sum(), lo[:, :4].min(1).sum()
            cut = worst + threshold * (best - worst)
            for a in range(0, n, chunk):
                b = bases[a:a + chunk]
                score = np.zeros((b.shape[0], length - w + 1))
                for k in range(w):
                    score += lo[k][b[:, k:length - w + 1 + k]]
                counts[a:a + chunk, mi] += (score >= cut - 1e-9).sum(1).astype(np.int32)
    return MotifHits(motifs, counts)

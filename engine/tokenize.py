"""DNA 6-mer and signal tokenizers (DESIGN §2), vectorized with numpy.

DNA: token i is the 6-mer starting at base i; ids 0 PAD, 1 CLS, 2 MASK, 3 N, 4 + base-4 index.
Signal: the per-base value averaged over token i's 6 bases, binned into 36 levels by fixed
increasing cut-points; ids 0 PAD, 1 MASK, 2 + level. Level 0 means exactly zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

K = 6
DNA_PAD, DNA_CLS, DNA_MASK, DNA_N = 0, 1, 2, 3
DNA_OFFSET = 4
DNA_VOCAB = DNA_OFFSET + 4**K  # 4,100
SIG_PAD, SIG_MASK = 0, 1
SIG_OFFSET = 2
N_LEVELS = 36
SIG_VOCAB = SIG_OFFSET + N_LEVELS  # 38
CUTPOINTS_VERSION = "geom-0.05-500-v1"

_LUT = np.full(256, 4, dtype=np.uint8)
for _i, _b in enumerate(b"ACGT"):
    _LUT[_b] = _i
    _LUT[_b + 32] = _i  # lower case (soft-masked) counts as upper case


def default_cutpoints() -> np.ndarray:
    """34 increasing cut-points: a positive mean below cut 0 is level 1, at/above cut 33 level 35."""
    return np.geomspace(0.05, 500.0, N_LEVELS - 2)


def dna_tokens(seq: bytes | np.ndarray) -> np.ndarray:
    """Tokens of ``seq`` (len L + 5 → L tokens), uint16."""
    raw = np.frombuffer(seq, dtype=np.uint8) if isinstance(seq, (bytes, bytearray)) else np.asarray(seq, np.uint8)
    n = raw.size - K + 1
    if n <= 0:
        return np.zeros(0, dtype=np.uint16)
    codes = np.take(_LUT, raw)
    base = (codes & 3).astype(np.uint16)
    idx = base[:n].copy()
    for j in range(1, K):
        idx <<= 2
        idx |= base[j : j + n]
    idx += DNA_OFFSET
    is_bad = codes == 4
    if is_bad.any():
        bad = np.concatenate(([0], np.cumsum(is_bad, dtype=np.int32)))
        idx[(bad[K:] - bad[:-K]) > 0] = DNA_N
    return idx


@dataclass
class SignalStats:
    """Counts of values that were not plain non-negative numbers (all treated as zero)."""

    nan: int = 0
    negative: int = 0

    def add(self, other: "SignalStats") -> None:
        self.nan += other.nan
        self.negative += other.negative


def _levels_from_dense(dense: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Token ids from per-base non-negative values (length L + 5)."""
    n = dense.size - K + 1
    cs = np.empty(dense.size + 1, dtype=np.float64)
    cs[0] = 0.0
    np.cumsum(dense, out=cs[1:])
    mean = (cs[K:] - cs[:-K]) / K
    # Positivity from an integer count, so level 0 is exact even where float sums lose tiny values.
    pos = np.empty(dense.size + 1, dtype=np.int32)
    pos[0] = 0
    np.cumsum(dense > 0, out=pos[1:])
    positive = (pos[K:] - pos[:-K]) > 0
    out = np.full(n, SIG_OFFSET, dtype=np.uint8)
    if positive.any():
        where = np.flatnonzero(positive)
        out[where] = SIG_OFFSET + 1 + np.searchsorted(cuts, mean[where], side="right").astype(np.uint8)
    return out


def signal_tokens(values: np.ndarray, cuts: np.ndarray, stats: SignalStats | None = None) -> np.ndarray:
    """Token ids (uint8) of per-base values of length L + 5; NaN/inf and negatives count as zero."""
    dense = np.asarray(values, dtype=np.float64)
    bad = ~np.isfinite(dense)
    neg = dense < 0
    if stats is not None:
        stats.nan += int(bad.sum())
        stats.negative += int(neg.sum())
    if bad.any() or neg.any():
        dense = np.where(bad | neg, 0.0, dense)
    return _levels_from_dense(dense, cuts)


def signal_tokens_from_runs(
    starts: np.ndarray, ends: np.ndarray, vals: np.ndarray, length: int, cuts: np.ndarray,
    stats: SignalStats | None = None,
) -> np.ndarray:
    """Token ids for a region of ``length`` bases given as bigWig runs (relative, sorted, non-overlapping).

    Bases outside every run have no data: zero, and counted as missing in ``stats.nan``.
    bigWig tracks are runs of constant value, so the work is per run: a token whose 6 bases lie in
    one run takes that run's level; only the <= 5 tokens before each run boundary need an exact mean.
    """
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    vals = np.asarray(vals, dtype=np.float64)
    n = length - K + 1
    bad = ~np.isfinite(vals)
    neg = vals < 0
    if stats is not None:
        widths = ends - starts
        stats.nan += int(length - widths.sum() + widths[bad].sum())
        stats.negative += int(widths[neg].sum())
    if n <= 0:
        return np.zeros(0, dtype=np.uint8)
    vals = np.where(bad | neg, 0.0, vals)
    keep = (ends > starts) & (vals > 0)
    starts, ends, vals = starts[keep], ends[keep], vals[keep]
    if starts.size == 0:
        return np.full(n, SIG_OFFSET, dtype=np.uint8)
    # Segments tiling [0, length): the positive runs and the zero gaps between them.
    seg_start = np.concatenate(([0], np.stack([starts, ends], 1).ravel()))
    seg_val = np.concatenate(([0.0], np.stack([vals, np.zeros_like(vals)], 1).ravel()))
    seg_end = np.append(seg_start[1:], length)
    nonempty = seg_end > seg_start
    seg_start, seg_end, seg_val = seg_start[nonempty], seg_end[nonempty], seg_val[nonempty]
    seg_level = np.where(seg_val > 0, SIG_OFFSET + 1 + np.searchsorted(cuts, seg_val, side="right"), SIG_OFFSET)
    out = np.repeat(seg_level.astype(np.uint8), seg_end - seg_start)[:n]
    # Tokens whose window crosses a boundary: exact mean from the piecewise-linear integral.
    bounds = seg_start[1:]
    cross = (bounds[:, None] - np.arange(1, K)[None, :]).ravel()
    cross = np.unique(cross[(cross >= 0) & (cross < n)])
    if cross.size:
        seg_sum = np.concatenate(([0.0], np.cumsum(seg_val * (seg_end - seg_start))))
        seg_pos = np.concatenate(([0], np.cumsum((seg_val > 0) * (seg_end - seg_start))))

        def integral(x: np.ndarray, cum: np.ndarray, per_base: np.ndarray) -> np.ndarray:
            s = np.searchsorted(seg_start, x, side="right") - 1
            return cum[s] + per_base[s] * (x - seg_start[s])

        total = integral(cross + K, seg_sum, seg_val) - integral(cross, seg_sum, seg_val)
        npos = integral(cross + K, seg_pos, (seg_val > 0).astype(np.int64)) - integral(cross, seg_pos, (seg_val > 0).astype(np.int64))
        lev = np.where(npos > 0, SIG_OFFSET + 1 + np.searchsorted(cuts, total / K, side="right"), SIG_OFFSET)
        out[cross] = lev
    return out


def tokenizer_spec(assays: list[str], cuts: dict[str, np.ndarray] | None = None) -> dict:
    """The tokenizer description stored in every manifest (and hashed into the input hash)."""
    cuts = cuts or {a: default_cutpoints() for a in assays}
    return {
        "dna": {"k": K, "vocab": DNA_VOCAB, "pad": DNA_PAD, "cls": DNA_CLS, "mask": DNA_MASK, "n": DNA_N,
                "offset": DNA_OFFSET, "order": "ACGT, first base most significant"},
        "signal": {"vocab": SIG_VOCAB, "levels": N_LEVELS, "pad": SIG_PAD, "mask": SIG_MASK, "offset": SIG_OFFSET,
                   "cutpoints_version": CUTPOINTS_VERSION, "window": K,
                   "cutpoints": {a: [float(x) for x in cuts[a]] for a in assays}},
        "assays": list(assays),
    }

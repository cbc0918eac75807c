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


def _window_sums(d: np.ndarray, n: int) -> np.ndarray:
    """float32 sums of 6 consecutive values, in the fixed order ((v0+v1)+(v2+v3))+(v4+v5)."""
    pair = d[:, :-1] + d[:, 1:]
    total = pair[:, :n] + pair[:, 2 : n + 2]
    total += pair[:, 4 : n + 4]
    return total


_LUT_CACHE: dict[bytes, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _levels_exact(total: np.ndarray, cuts32: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        mean = total / np.float32(K)
        lev = SIG_OFFSET + 1 + np.searchsorted(cuts32, mean, side="right")
    return np.where(total > 0, lev, SIG_OFFSET).astype(np.uint8)


def _level_lut(cuts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Levels by the top 16 bits of a float32 window sum: exact wherever a 2^16-wide bucket of
    floats maps to one level (all but <= 35 buckets); ``flag`` marks the buckets to compute exactly.
    The map sum -> level is monotone, so a bucket's two ends decide."""
    cuts32 = np.asarray(cuts, dtype=np.float32)
    key = cuts32.tobytes()
    if key not in _LUT_CACHE:
        buckets = np.arange(1 << 16, dtype=np.uint32)
        lo = _levels_exact((buckets << 16).view(np.float32), cuts32)
        hi = _levels_exact(((buckets << 16) | 0xFFFF).view(np.float32), cuts32)
        _LUT_CACHE[key] = (lo, lo != hi, cuts32)
    return _LUT_CACHE[key]


def signal_tokens_2d(values: np.ndarray, cuts: list[np.ndarray], stats: list[SignalStats] | None = None) -> np.ndarray:
    """Token ids (uint8, (A, L)) of A tracks of per-base values (A, L + 5), each with its cut-points.

    The window mean is the float32 sum of the 6 values, added as ((v0+v1)+(v2+v3))+(v4+v5), divided
    by 6 and compared with the float32 cut-points (``side="right"``: a mean equal to a cut takes the
    higher level). Level 0 is exact: a sum of non-negative numbers is zero only when every term is.
    NaN/inf (no data) and negative values count as zero and are counted in ``stats``.
    bigWig signal is runs of constant value, so window sums are piecewise constant: levels are
    found once per run of equal sums (through a 64 K-entry lookup table on the float's top bits,
    exact fallback near cut-points) and repeated over the run.
    """
    v = np.asarray(values, dtype=np.float32)
    if v.ndim != 2:
        raise ValueError(f"expected (tracks, bases) values, got shape {v.shape}")
    a, width = v.shape
    n = width - K + 1
    if n <= 0:
        return np.zeros((a, 0), dtype=np.uint8)
    nan = np.isnan(v)  # isnan, not isfinite: the latter is ~10x slower on NaN-rich tracks
    negative = np.fmin.reduce(v, axis=None) < 0
    if stats is not None:
        for st, row_nan, row in zip(stats, nan, v):
            st.nan += int(np.count_nonzero(row_nan))
            if negative:
                st.negative += int(np.count_nonzero(row < 0))
    d = np.fmax(v, np.float32(0.0))  # NaN -> 0, negative -> 0
    total = _window_sums(d, n)
    if np.isinf(total.max()):  # +inf in the input: counted as missing, then zero
        inf = np.isinf(d)
        if stats is not None:
            for st, row in zip(stats, inf):
                st.nan += int(np.count_nonzero(row))
        d[inf] = 0.0
        total = _window_sums(d, n)
    flat = total.ravel()
    change = np.empty(flat.size, dtype=bool)
    change[0] = True
    np.not_equal(flat[1:], flat[:-1], out=change[1:])
    change[::n] = True  # every track starts a new run
    starts = np.flatnonzero(change)
    reps = flat[starts]
    row_of = starts // n
    levels = np.empty(starts.size, dtype=np.uint8)
    for r in range(a):
        lut, flag, cuts32 = _level_lut(cuts[r])
        sel = slice(np.searchsorted(row_of, r), np.searchsorted(row_of, r + 1))
        bits = (reps[sel].view(np.uint32) >> 16).astype(np.intp)
        lev = np.take(lut, bits)
        odd = np.flatnonzero(np.take(flag, bits))
        if odd.size:
            lev[odd] = _levels_exact(reps[sel][odd], cuts32)
        levels[sel] = lev
    return np.repeat(levels, np.diff(np.append(starts, flat.size))).reshape(a, n)


def signal_tokens(values: np.ndarray, cuts: np.ndarray, stats: SignalStats | None = None) -> np.ndarray:
    """Token ids (uint8, L) of one track's per-base values (L + 5); see ``signal_tokens_2d``."""
    return signal_tokens_2d(np.asarray(values)[None, :], [cuts], None if stats is None else [stats])[0]


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

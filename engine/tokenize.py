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


def signal_tokens_2d(values: np.ndarray, cuts: list[np.ndarray], stats: list[SignalStats] | None = None) -> np.ndarray:
    """Token ids (uint8, (A, L)) of A tracks of per-base values (A, L + 5), each with its cut-points.

    The window mean is the float32 sum of the 6 values (left to right) divided by 6, compared with
    the float32 cut-points (``side="right"``: a mean equal to a cut takes the higher level). Level 0
    is exact: a sum of non-negative numbers is zero only when every term is. NaN/inf (no data) and
    negative values count as zero and are counted in ``stats``. bigWig signal is runs of constant
    value, so window sums are piecewise constant: levels are looked up once per run of equal sums
    and repeated, and all tracks go through each numpy call together.
    """
    v = np.asarray(values, dtype=np.float32)
    if v.ndim != 2:
        raise ValueError(f"expected (tracks, bases) values, got shape {v.shape}")
    a, width = v.shape
    n = width - K + 1
    if n <= 0:
        return np.zeros((a, 0), dtype=np.uint8)
    bad = ~np.isfinite(v)
    any_bad = bool(bad.any())
    if stats is not None:
        neg = v < 0
        # Per-row counts only when something is there to count (the common case is clean data).
        bad_rows = np.count_nonzero(bad, axis=1) if any_bad else np.zeros(a, int)
        neg_rows = np.count_nonzero(neg, axis=1) if neg.any() else np.zeros(a, int)
        for st, nb, ng in zip(stats, bad_rows, neg_rows):
            st.nan += int(nb)
            st.negative += int(ng)
    d = np.fmax(v, np.float32(0.0))  # NaN -> 0, negative -> 0
    if any_bad:
        d[bad] = 0.0
    total = d[:, :n] + d[:, 1 : n + 1]
    for j in range(2, K):
        total += d[:, j : j + n]
    flat = total.ravel()
    change = np.empty(flat.size, dtype=bool)
    change[0] = True
    np.not_equal(flat[1:], flat[:-1], out=change[1:])
    change[::n] = True  # every track starts a new run
    starts = np.flatnonzero(change)
    reps = flat[starts]
    levels = np.full(starts.size, SIG_OFFSET, dtype=np.uint8)
    pos = reps > 0
    row_of = starts // n
    same_cuts = all(np.array_equal(cuts[0], c) for c in cuts[1:])
    if same_cuts:
        levels[pos] = SIG_OFFSET + 1 + np.searchsorted(np.asarray(cuts[0], np.float32), reps[pos] / np.float32(K), side="right")
    else:
        for r in range(a):
            sel = pos & (row_of == r)
            levels[sel] = SIG_OFFSET + 1 + np.searchsorted(np.asarray(cuts[r], np.float32), reps[sel] / np.float32(K), side="right")
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

"""DNA 6-mer and signal tokenizers (docs/design.md §2), vectorized with numpy.

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
PEAK_TOKENS = 1024  # DNA / signal tokens per Regulatory peak window (docs/design.md §3)
PEAK_SPAN = PEAK_TOKENS + K - 1  # the bases those tokens read

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


def _sum6(v0, v1, v2, v3, v4, v5):
    """float32 sum of 6 values in the fixed order ((v0+v1)+(v2+v3))+(v4+v5)."""
    return ((v0 + v1) + (v2 + v3)) + (v4 + v5)


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


def _levels(total: np.ndarray, row: np.ndarray, cuts: list[np.ndarray]) -> np.ndarray:
    """Levels of float32 window sums ``total``, each compared with the cut-points of its ``row``."""
    out = np.empty(total.size, dtype=np.uint8)
    groups: dict[bytes, list[int]] = {}
    for r, c in enumerate(cuts):  # rows sharing cut-points are looked up together
        groups.setdefault(np.asarray(c, dtype=np.float32).tobytes(), []).append(r)
    for rows in groups.values():
        lut, flag, cuts32 = _level_lut(cuts[rows[0]])
        sel = slice(None) if len(rows) == len(cuts) else np.flatnonzero(np.isin(row, rows))
        part = total[sel]
        bits = (part.view(np.uint32) >> 16).astype(np.intp)
        lev = np.take(lut, bits)
        odd = np.flatnonzero(np.take(flag, bits))
        if odd.size:
            lev[odd] = _levels_exact(part[odd], cuts32)
        out[sel] = lev
    return out


@dataclass
class Runs:
    """Maximal runs of bit-identical values in each row of a (rows, width) float32 array (bigWig
    signal is runs of constant value). Comparing bits keeps a NaN gap one run."""

    starts: np.ndarray  # flat index (row * width + column) where each run begins; every row starts one
    values: np.ndarray  # the run's value
    lengths: np.ndarray  # the run's length (a run never crosses a row's end)
    rows: int
    width: int

    @classmethod
    def of(cls, v: np.ndarray) -> "Runs":
        a, width = v.shape
        flat = v.reshape(-1)
        if flat.size == 0:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64), a, width)
        bits = flat.view(np.uint32)
        change = np.empty(flat.size, dtype=bool)
        change[0] = True
        np.not_equal(bits[1:], bits[:-1], out=change[1:])
        change[::width] = True
        starts = np.flatnonzero(change)
        return cls(starts, flat[starts], np.diff(np.append(starts, flat.size)), a, width)

    def count(self, run_mask: np.ndarray, rows: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Bases in columns [lo, hi) of ``rows`` whose run has ``run_mask`` set (vectorized over queries)."""
        if self.starts.size == 0:
            return np.zeros(np.shape(rows), np.int64)
        cum = np.concatenate(([0], np.cumsum(np.where(run_mask, self.lengths, 0))))

        def upto(x: np.ndarray) -> np.ndarray:  # masked bases before flat index x
            i = np.searchsorted(self.starts, x, side="right") - 1
            return cum[i] + np.where(run_mask[i], x - self.starts[i], 0)

        base = np.asarray(rows, np.int64) * self.width
        return upto(base + hi) - upto(base + lo)

    def missing(self) -> np.ndarray:
        """Runs without data: NaN, and +inf (treated the same)."""
        return np.isnan(self.values) | np.isposinf(self.values)


def _clean(x: np.ndarray) -> np.ndarray:
    """NaN, +inf (no data) and negative values count as zero."""
    d = np.fmax(x, np.float32(0.0))
    d[np.isposinf(d)] = 0.0
    return d


def signal_tokens_2d(values: np.ndarray, cuts: list[np.ndarray], stats: list[SignalStats] | None = None) -> np.ndarray:
    """Token ids (uint8, (A, L)) of A tracks of per-base values (A, L + 5), each with its cut-points.

    The window mean is the float32 sum of the 6 values, added as ((v0+v1)+(v2+v3))+(v4+v5), divided
    by 6 and compared with the float32 cut-points (``side="right"``: a mean equal to a cut takes the
    higher level). Level 0 is exact: a sum of non-negative numbers is zero only when every term is.
    NaN/+inf (no data) and negative values count as zero and are counted in ``stats``.
    """
    tokens, runs = signal_tokens_runs(values, cuts)
    if stats is not None:
        a = runs.rows
        rows, zero, full = np.arange(a), np.zeros(a, np.int64), np.full(a, runs.width, np.int64)
        missing = runs.count(runs.missing(), rows, zero, full)
        negative = runs.count(runs.values < 0, rows, zero, full)
        for st, x, y in zip(stats, missing, negative):
            st.nan += int(x)
            st.negative += int(y)
    return tokens


def signal_tokens_runs(values: np.ndarray, cuts: list[np.ndarray]) -> tuple[np.ndarray, Runs]:
    """``signal_tokens_2d`` without the counts, plus the runs (to count bad values per region).

    Work is per run of equal values, not per base: a token whose 6 bases lie in one run has the
    run's level (one lookup per run, through a 64 K-entry table on the sum's top bits with an exact
    fallback near cut-points); the <= 5 tokens straddling each run boundary are summed from the two
    runs' values, or from their own bases where a run is shorter than 5. Per base there is one
    comparison pass and the output fill.
    """
    v = np.ascontiguousarray(values, dtype=np.float32)
    if v.ndim != 2:
        raise ValueError(f"expected (tracks, bases) values, got shape {v.shape}")
    a, width = v.shape
    n = width - K + 1
    runs = Runs.of(v)
    if n <= 0:
        return np.zeros((a, 0), dtype=np.uint8), runs
    row_of = runs.starts // width
    d = _clean(runs.values)
    levels = _levels(_sum6(d, d, d, d, d, d), row_of, cuts)
    lengths = runs.lengths
    full = np.repeat(levels, lengths)  # pure tokens: the level of their run; fixed below near boundaries
    # Tokens b-5 .. b-1 straddle the boundary b between two runs. Where both runs are >= 5 bases
    # long, those tokens see only the two values: token b-k holds k copies of the left value then
    # 6-k of the right one, so their sums come from the run values, with no per-base gather.
    col = runs.starts % width
    inner = np.flatnonzero(col > 0)
    simple = inner[(lengths[inner - 1] >= K - 1) & (lengths[inner] >= K - 1)]
    if simple.size:
        left, right, at = d[simple - 1], d[simple], runs.starts[simple]
        sub_rows = row_of[simple]
        for k in range(1, K):
            parts = [left if i < k else right for i in range(K)]
            full[at - k] = _levels(_sum6(*parts), sub_rows, cuts)
    out = full.reshape(a, width)[:, :n]
    # Other boundaries (runs shorter than 5 bases, e.g. single-base insertions in scATAC):
    # each straddling token summed from its own 6 bases.
    other = np.setdiff1d(inner, simple, assume_unique=True)
    if other.size:
        tok_row = np.repeat(row_of[other], K - 1)
        tok_col = (col[other][:, None] - np.arange(1, K)).ravel()
        keep = (tok_col >= 0) & (tok_col < n)
        mixed = np.unique(tok_row[keep] * n + tok_col[keep])
        m_row, m_col = mixed // n, mixed % n
        base = m_row * width + m_col
        flat = v.reshape(-1)
        g = [_clean(flat[base + k]) for k in range(K)]
        out[m_row, m_col] = _levels(_sum6(*g), m_row, cuts)
    return out, runs


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

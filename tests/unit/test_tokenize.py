import numpy as np
import pytest

from creformer.engine.tokenize import (
    DNA_N,
    DNA_VOCAB,
    SIG_OFFSET,
    SIG_VOCAB,
    SignalStats,
    default_cutpoints,
    dna_tokens,
    signal_tokens,
    signal_tokens_2d,
    tokenizer_spec,
)


def kmer_id(kmer: str) -> int:
    """Reference implementation, one k-mer at a time: 4 + base-4 index, first base most significant."""
    if any(c not in "ACGT" for c in kmer.upper()):
        return 3
    return 4 + sum("ACGT".index(c) * 4 ** (5 - i) for i, c in enumerate(kmer.upper()))


def test_hand_computed_ids():
    assert DNA_VOCAB == 4100 and SIG_VOCAB == 38
    assert dna_tokens(b"AAAAAA").tolist() == [4]
    assert dna_tokens(b"AAAAAC").tolist() == [5]
    assert dna_tokens(b"TTTTTT").tolist() == [4099]
    assert dna_tokens(b"CAAAAA").tolist() == [4 + 1024]
    # L + 5 bases give L tokens; token i is the k-mer at base i
    assert dna_tokens(b"AAAAAACG").tolist() == [4, 5, 4 + 4 + 2]


def test_lower_case_and_n():
    assert dna_tokens(b"acgtac").tolist() == dna_tokens(b"ACGTAC").tolist() == [kmer_id("ACGTAC")]
    toks = dna_tokens(b"ACGTANACGTACG")
    # every k-mer covering the N (base 5) is [N] = 3: tokens 0..5; tokens 6 and 7 are clean
    expected = [kmer_id(b"ACGTANACGTACG"[i:i + 6].decode()) for i in range(8)]
    assert toks.tolist() == expected
    assert expected[:6] == [DNA_N] * 6 and expected[6] == kmer_id("ACGTAC") == 4 + 0b000110110001
    assert dna_tokens(b"ACGTR C".replace(b" ", b"A")).tolist() == [DNA_N, DNA_N]  # IUPAC codes are N


def test_random_sequences_match_reference():
    rng = np.random.default_rng(1)
    seq = bytes(rng.choice(list(b"ACGTacgtN"), 500))
    assert dna_tokens(seq).tolist() == [kmer_id(seq[i:i + 6].decode()) for i in range(len(seq) - 5)]


def test_signal_levels_by_hand():
    cuts = np.array([1.0, 2.0, 4.0])
    vals = np.array([0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0, 12, 12, 12, 12, 12, 12], dtype=float)
    toks = signal_tokens(vals, cuts)
    # window 0: all zero -> level 0; window 1: mean 1.0 -> 1 + searchsorted(right)=1+1 -> level 2
    # window 12: mean 12 -> level 4 (above every cut)
    assert toks[0] == SIG_OFFSET + 0
    assert toks[1] == SIG_OFFSET + 2
    assert toks[7] == SIG_OFFSET + 1 + 2  # mean (12)/6 = 2.0 sits on a cut: right side
    assert toks[12] == SIG_OFFSET + 4
    assert toks.dtype == np.uint8 and len(toks) == len(vals) - 5


def test_signal_tiny_positive_is_not_zero_and_nan_counted():
    cuts = default_cutpoints()
    vals = np.zeros(20)
    vals[10] = 1e-12
    vals[3] = np.nan
    vals[4] = -5
    vals[15] = np.inf
    stats = SignalStats()
    toks = signal_tokens(vals, cuts, stats)
    assert toks[10] == SIG_OFFSET + 1 and toks[5] == SIG_OFFSET + 1 and toks[4] == SIG_OFFSET
    assert stats.nan == 2 and stats.negative == 1


def test_monotone_levels():
    cuts = default_cutpoints()
    means = np.sort(np.random.default_rng(0).exponential(20, 2000))
    vals = np.repeat(means, 6)
    toks = signal_tokens(vals, cuts)[::6]
    assert np.all(np.diff(toks.astype(int)) >= 0)
    assert toks.min() >= SIG_OFFSET + 1 and toks.max() <= SIG_VOCAB - 1


def reference_signal(values, cuts, stats):
    """One window at a time, in plain Python: the definition the vectorized tokenizer must match.
    Missing (NaN/inf) and negative values are zero; the six are added as ((v0+v1)+(v2+v3))+(v4+v5)
    in float32; the mean is that sum / 6 in float32."""
    f32 = np.float32
    clean = [f32(x) if np.isfinite(x) and x > 0 else f32(0.0) for x in values]
    out = []
    for i in range(len(values) - 5):
        c = clean[i:i + 6]
        total = f32(f32(f32(c[0] + c[1]) + f32(c[2] + c[3])) + f32(c[4] + c[5]))
        if total == 0:
            out.append(SIG_OFFSET)
        else:
            mean = f32(total / f32(6))
            out.append(SIG_OFFSET + 1 + int(np.searchsorted(np.asarray(cuts, f32), mean, side="right")))
    stats.nan += int(np.sum(~np.isfinite(values)))
    stats.negative += int(np.sum(np.asarray(values) < 0))
    return np.array(out, dtype=np.uint8)


@pytest.mark.parametrize("seed", range(20))
def test_vectorized_equals_reference(seed):
    """Piecewise-constant tracks (runs, gaps of NaN, negatives, zeros) against the per-window loop."""
    rng = np.random.default_rng(seed)
    cuts = default_cutpoints()
    n = int(rng.integers(6, 1500))
    k = int(rng.integers(0, min(60, n // 2) + 1))
    pts = np.sort(rng.choice(n + 1, 2 * k, replace=False))
    vals = rng.exponential(3, k).astype(np.float32)
    vals[rng.random(k) < 0.15] = np.nan
    vals[rng.random(k) < 0.1] = -1.0
    vals[rng.random(k) < 0.1] = 0.0
    dense = np.full(n, np.nan, dtype=np.float32)
    for s, e, v in zip(pts[0::2], pts[1::2], vals):
        dense[s:e] = v
    if seed % 3 == 0:  # exact cut values and their sums sit on boundaries
        dense[: n // 2] = np.float32(cuts[seed % 34])
    if seed % 4 == 1:
        dense[n // 3] = np.inf
    a_stats, b_stats = SignalStats(), SignalStats()
    a = signal_tokens(dense, cuts, a_stats)
    b = reference_signal(dense, cuts, b_stats)
    assert np.array_equal(a, b)
    assert (a_stats.nan, a_stats.negative) == (b_stats.nan, b_stats.negative)


def test_spec_records_cutpoints():
    spec = tokenizer_spec(["ATAC", "CTCF"])
    assert spec["assays"] == ["ATAC", "CTCF"]
    cuts = spec["signal"]["cutpoints"]["ATAC"]
    assert len(cuts) == 34 and all(b > a for a, b in zip(cuts, cuts[1:]))


def test_lookup_table_is_exact_at_every_cut_point():
    """Window sums just below, at and above 6 x each cut (where the lookup table defers to the exact
    comparison) and over a wide range of magnitudes agree with the reference definition."""
    cuts = default_cutpoints()
    c32 = cuts.astype(np.float32)
    probes = np.concatenate([c32, np.nextafter(c32, np.float32(0)), np.nextafter(c32, np.float32(np.inf)),
                             np.array([1e-40], np.float32), np.geomspace(1e-6, 1e6, 300).astype(np.float32)])
    values = np.repeat(probes, 6).astype(np.float32)  # each probe fills one whole window
    a = signal_tokens(values, cuts)
    b = reference_signal(values, cuts, SignalStats())
    assert np.array_equal(a, b)
    assert a[0::6].min() >= SIG_OFFSET + 1  # every positive probe, however small, is level >= 1


@pytest.mark.parametrize("seed", range(6))
def test_short_and_long_runs_equal_reference(seed):
    """Runs of 1 to 8 bases (boundaries closer than a token, and the two-run shortcut at exactly 5),
    per-base noise and long flat stretches, several tracks at once, against the per-window loop."""
    rng = np.random.default_rng(100 + seed)
    cuts = default_cutpoints()
    rows = []
    for _ in range(3):
        lengths = rng.integers(1, 9, 400)
        vals = rng.exponential(2, lengths.size).astype(np.float32)
        vals[rng.random(lengths.size) < 0.2] = np.nan
        vals[rng.random(lengths.size) < 0.1] = -2.0
        row = np.repeat(vals, lengths)[:1200]
        row[600:700] = rng.exponential(2, 100)  # per-base noise
        row[800:1000] = np.float32(cuts[seed])  # a long run on a cut-point
        rows.append(row)
    values = np.stack(rows)
    stats = [SignalStats() for _ in rows]
    got = signal_tokens_2d(values, [cuts] * 3, stats)
    for row, st, toks in zip(values, stats, got):
        ref_stats = SignalStats()
        assert np.array_equal(toks, reference_signal(row, cuts, ref_stats))
        assert (st.nan, st.negative) == (ref_stats.nan, ref_stats.negative)

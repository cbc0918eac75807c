"""Regulatory engine pieces by hand: TSS ranks, peak windows and the 150 cap."""

import numpy as np

from creformer.engine.cells import gene_peaks, tss_ranks
from creformer.engine.io.annotation import GeneTSS


def test_tss_ranks_plus_strand_by_hand():
    # TSS at 1000 (+ strand): peaks left of it are upstream (negative), right downstream (positive)
    start = np.array([100, 600, 950, 1500, 3000])
    end = np.array([200, 700, 1050, 1600, 3100])
    assert tss_ranks(start, end, 1000, "+").tolist() == [-2, -1, 0, 1, 2]


def test_tss_ranks_minus_strand_by_hand():
    # same peaks, - strand: transcription runs leftwards, so left peaks are downstream (positive)
    start = np.array([100, 600, 950, 1500, 3000])
    end = np.array([200, 700, 1050, 1600, 3100])
    assert tss_ranks(start, end, 1000, "-").tolist() == [2, 1, 0, -1, -2]
    # no peak overlapping the TSS: the nearest on each side is +-1
    assert tss_ranks(np.array([10, 1200]), np.array([20, 1300]), 1000, "-").tolist() == [1, -1]


def test_peak_window_selection_and_cap():
    tss = GeneTSS("g", "G", "chr1", 500_000, "+")
    starts = np.arange(300_000, 700_000, 1_000)  # 400 peaks, every kb
    ends = starts + 200
    chrom = np.array(["chr1"] * len(starts) + ["chr2"], dtype=object)
    starts = np.append(starts, 500_000)
    ends = np.append(ends, 500_200)
    ids, ranks = gene_peaks(tss, chrom, starts, ends, window_bp=150_000, peak_m=150)
    assert len(ids) == 150 and len(starts) - 1 not in ids  # the cap, and chr2 is never in chr1's window
    mids = (starts[ids] + ends[ids]) // 2
    assert np.all(np.abs(mids - 500_000) <= 75_000 + 1_000)  # the 150 nearest of 301 candidates
    assert sorted(ranks.tolist()) == ranks.tolist() and 0 in ranks.tolist()
    ids2, _ = gene_peaks(tss, chrom, starts, ends, window_bp=2_000, peak_m=150)
    assert sorted(((starts[ids2] + ends[ids2]) // 2).tolist()) == [498_100, 499_100, 500_100, 501_100]  # |mid - tss| <= 2 kb

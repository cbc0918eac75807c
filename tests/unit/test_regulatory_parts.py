"""Regulatory engine pieces by hand: TSS ranks, peak windows and the 150 cap, the sample join and
its packed stream layout."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from creformer.engine.genes import gene_peaks, tss_ranks
from creformer.engine.io.annotation import GeneTSS
from creformer.engine.regulatory_batches import join_samples, load_signal, pack_samples, unpack_samples
from creformer.engine.tokenize import SIG_OFFSET, SIG_PAD


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
    ids, ranks = gene_peaks(tss, chrom, starts, ends, tss_window_bp=150_000, peak_m=150)
    assert len(ids) == 150 and len(starts) - 1 not in ids  # the cap, and chr2 is never in chr1's window
    mids = (starts[ids] + ends[ids]) // 2
    assert np.all(np.abs(mids - 500_000) <= 75_000 + 1_000)  # the 150 nearest of 301 candidates
    assert sorted(ranks.tolist()) == ranks.tolist() and 0 in ranks.tolist()
    ids2, _ = gene_peaks(tss, chrom, starts, ends, tss_window_bp=2_000, peak_m=150)
    assert sorted(((starts[ids2] + ends[ids2]) // 2).tolist()) == [498_100, 499_100, 500_100, 501_100]  # |mid - tss| <= 2 kb


def _hand_signal(tmp_path):
    """A cell block's sparse signal (cell, peak, non-zero positions and tokens), rows unsorted."""
    path = tmp_path / "block.parquet"
    pq.write_table(pa.table({"cell": pa.array([6, 5, 5], pa.int32()), "peak": pa.array([3, 9, 3], pa.int32()),
                             "pos": pa.array([[1], [100], [0, 7, 1023]], pa.list_(pa.int16())),
                             "tok": pa.array([[5], [3], [10, 20, 37]], pa.list_(pa.uint8()))}), path)
    return load_signal(path)


def _hand_samples():
    return {"cell_id": np.array([5, 6, 7]), "gene_id": np.array([0, 1, 2]), "expression": np.array([1.0, 2.0, 3.0]),
            "peak_ids": [np.array([9, 3, 4]), np.array([3]), np.array([3, 9])],
            "tss_rank": [np.array([-1, 0, 1]), np.array([0]), np.array([2, 3])]}


def test_join_places_each_cells_tokens_in_its_peak_slots(tmp_path):
    joined = join_samples(_hand_samples(), None, _hand_signal(tmp_path), peak_m=4)
    atac = joined["atac"]
    assert atac.shape == (3, 4, 1024) and joined["mask"].sum(1).tolist() == [3, 1, 2]
    expected = np.full((3, 4, 1024), SIG_PAD, np.uint8)
    expected[0, :3] = expected[1, :1] = expected[2, :2] = SIG_OFFSET  # real peaks: the zero level
    expected[0, 0, 100] = 3  # cell 5, peak 9 (slot 0)
    expected[0, 1, [0, 7, 1023]] = [10, 20, 37]  # cell 5, peak 3 (slot 1); peak 4 has no signal
    expected[1, 0, 1] = 5  # cell 6, peak 3; cell 7 has no signal at all
    assert np.array_equal(atac, expected)
    assert joined["peak_ids"][2].tolist() == [3, 9, -1, -1] and joined["tss_rank"][0].tolist() == [-1, 0, 1, 0]


def test_packed_layout_unpacks_to_the_trimmed_join(tmp_path):
    signal = _hand_signal(tmp_path)
    packed = pack_samples(_hand_samples(), signal, peak_m=4)
    assert "atac" not in packed
    # 4 bytes per non-zero token: 4 tokens in sample 0, 1 in sample 1, none in sample 2
    assert [len(b) for b in packed["atac_packed"]] == [16, 4, 0]
    dense = join_samples(_hand_samples(), None, signal, peak_m=4)
    out = unpack_samples(packed)
    assert set(out) == set(dense)
    for k, v in dense.items():  # the widest sample has 3 real peaks: every peak column is cut to 3
        want = v[:, :3] if k in ("peak_ids", "tss_rank", "mask", "atac") else v
        assert np.array_equal(out[k], want), k
    with pytest.raises(ValueError, match="peak_m=20000"):
        pack_samples(_hand_samples(), signal, peak_m=20_000)

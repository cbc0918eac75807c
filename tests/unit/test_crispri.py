"""CRISPRi scoring the published way: the trapezoid AUPRC of CRISPR_comparison (hand-computed),
weights, ABC with power-law contact, plain EPCrisprBenchmark files, predictions files, bad input;
and the published K562 figures on the real table when ../shared/data is present."""

import gzip
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from creformer.analysis.crispri import abc_contact, read_crispri, score_crispri
from creformer.analysis.metrics import auprc, auprc_trapezoid
from creformer.engine.errors import InputError

DATA = Path(__file__).resolve().parents[1] / "data"
FIXTURE = DATA / "crispri_k562_40rows.tsv.gz"
K562 = "crispri/EPCrisprBenchmark_combined_data.training_K562.GRCh38.tsv.gz"


def test_trapezoid_auprc_by_hand():
    # thresholds 4, 3, 2, 1 give (recall, precision) (.5, 1), (.5, .5), (1, 2/3), (1, .5); the last
    # (recall 1) point is dropped, and the trapezoids are 0 and .5 x (.5 + 2/3) / 2
    s, y = np.array([4.0, 3.0, 2.0, 1.0]), np.array([1, 0, 1, 0], bool)
    assert auprc_trapezoid(s, y) == pytest.approx(7 / 24)
    assert auprc(s, y) == pytest.approx(0.5 + 0.5 * 2 / 3)  # the step estimator, beside it
    # a perfect ranking: (.5, 1), (1, 1), then the dropped (1, 2/3) and (1, .5): area .5
    assert auprc_trapezoid(np.array([4.0, 3.0, 2.0, 1.0]), np.array([1, 1, 0, 0], bool)) == pytest.approx(0.5)
    # ties enter together: scores 2, 2, 1 with labels 1, 0, 1 give (.5, .5) and the dropped (1, 2/3)
    assert auprc_trapezoid(np.array([2.0, 2.0, 1.0]), np.array([1, 0, 1], bool)) == 0.0


def test_weighted_trapezoid_auprc_by_hand():
    # the first negative counts 3 times: (.5, 1), (.5, 1/4), (1, 2/5), dropped (1, 1/3)
    s, y = np.array([4.0, 3.0, 2.0, 1.0]), np.array([1, 0, 1, 0], bool)
    assert auprc_trapezoid(s, y, np.array([1.0, 3.0, 1.0, 1.0])) == pytest.approx(0.5 * (0.25 + 0.4) / 2)
    assert auprc_trapezoid(s, y, np.ones(4)) == pytest.approx(auprc_trapezoid(s, y))
    with pytest.raises(ValueError, match="no positive"):
        auprc_trapezoid(s, y, np.array([0.0, 1.0, 0.0, 1.0]))


def test_abc_contact_is_the_power_law_floored_at_5_kb():
    assert abc_contact(np.array([0.0, 5_000.0, 50_000.0])) == pytest.approx([5_001 ** -0.87, 5_001 ** -0.87, 50_001 ** -0.87])


def _write(path, header, rows):
    with gzip.open(path, "wt") as fh:
        fh.write("\t".join(header) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    return path


def test_plain_table_distance_from_tss_and_no_abc(tmp_path):
    """A plain EPCrisprBenchmark file (no distanceToTSS, no activity columns): distance from the
    element midpoint to the TSS; ABC is not scored, and the result says so; invalid pairs dropped."""
    header = ["chrom", "chromStart", "chromEnd", "chrTSS", "startTSS", "endTSS", "measuredGeneSymbol", "ValidConnection", "Regulated"]
    rows = [["chr1", 900, 1100, "chr1", 2000, 2001, "G", "TRUE", "TRUE"],      # 1,000.5 bp
            ["chr1", 9900, 10100, "chr1", 2000, 2001, "G", "TRUE", "FALSE"],   # 7,999.5 bp
            ["chr1", 4900, 5100, "chr1", 2000, 2001, "G", "TRUE", "TRUE"],     # 2,999.5 bp
            ["chr1", 1900, 2100, "chr1", 2000, 2001, "G", "PromoterElement", "FALSE"]]
    res = score_crispri(_write(tmp_path / "plain.tsv.gz", header, rows))
    assert read_crispri(tmp_path / "plain.tsv.gz")["distance"].to_list() == pytest.approx([1000.5, 7999.5, 2999.5, 0.5])
    assert res["counts"] == {"pairs": 4, "valid_pairs": 3, "positives": 2, "prevalence": pytest.approx(2 / 3),
                             "invalid_pairs_dropped": 1}
    assert set(res["scores"]) == {"distance"} and any("ABC is not scored" in n for n in res["notes"])
    # distance ranks both positives first: (.5, 1), (1, 1), dropped (1, 2/3) → .5
    assert res["scores"]["distance"]["auprc"] == pytest.approx(0.5)


def test_predictions_file_matched_by_overlap_and_gene(tmp_path):
    table = read_crispri(FIXTURE).filter(pl.col("valid"))
    # a predictor that knows the answer for half the pairs (by overlap and symbol), nothing for the rest
    rows = [[r["chrom"], r["chromStart"] + 10, r["chromEnd"] - 10, r["measuredGeneSymbol"], 1.0 + i / 100 if r["Regulated"] else 0.5]
            for i, r in enumerate(table.head(20).iter_rows(named=True))]
    rows.append(["chr1", 1, 2, "NOT_A_GENE", 9.0])
    preds = tmp_path / "preds.tsv"
    preds.write_text("chrom\tstart\tend\tgene\tscore\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    res = score_crispri(FIXTURE, predictions=preds)
    assert res["coverage"]["predictions"] == {"covered_pairs": 20, "pairs": 40}
    # the 10 positives first, one by one: recall .1 ... 1 at precision 1; ROCR's curve starts at the
    # first threshold, so the published area is .9, not 1
    assert res["scores"]["predictions"]["auprc"] == pytest.approx(0.9)
    # no overlap at all: coverage 0 is reported, every pair ties at the bottom, nothing crashes
    none = tmp_path / "none.tsv"
    none.write_text("chrom\tstart\tend\tgene\tscore\nchrZ\t1\t2\tX\t1.0\n")
    res = score_crispri(FIXTURE, predictions=none)
    assert res["coverage"]["predictions"]["covered_pairs"] == 0 and res["scores"]["predictions"]["auprc"] == 0.0


def test_bad_inputs_are_named(tmp_path):
    bad = _write(tmp_path / "bad.tsv.gz", ["chrom", "chromStart", "Regulated"], [["chr1", 1, "TRUE"]])
    with pytest.raises(InputError, match=r"missing columns \['chromEnd', 'measuredGeneSymbol', 'chrTSS'"):
        score_crispri(bad)
    header = ["chrom", "chromStart", "chromEnd", "measuredGeneSymbol", "distanceToTSS", "Regulated", "w"]
    weighted = _write(tmp_path / "w.tsv.gz", header, [["chr1", 1, 2, "G", 10, "TRUE", 1.0], ["chr1", 5, 6, "G", 20, "FALSE", "NaN"],
                                                       ["chr1", 7, 8, "G", 30, "FALSE", 2.0]])
    with pytest.raises(InputError, match=r"'w' has 1 missing, NaN or negative weight\(s\) at line\(s\) \[3\]"):
        score_crispri(weighted, weight_column="w")
    with pytest.raises(InputError, match=r"missing columns \['nope'\]"):
        score_crispri(weighted, weight_column="nope")
    preds = tmp_path / "p.tsv"
    preds.write_text("chrom\tstart\tend\tscore\nchr1\t1\t2\t1\n")
    with pytest.raises(InputError, match=r"missing \['gene'\]"):
        score_crispri(FIXTURE, predictions=preds)
    with pytest.raises(InputError, match="does not exist"):
        score_crispri(tmp_path / "missing.tsv")


def test_weights_change_the_score(tmp_path):
    header = ["chrom", "chromStart", "chromEnd", "measuredGeneSymbol", "distanceToTSS", "Regulated", "w"]
    rows = [["chr1", 1, 2, "G", 10, "TRUE", 1], ["chr1", 3, 4, "G", 20, "FALSE", 3], ["chr1", 5, 6, "G", 30, "TRUE", 1],
            ["chr1", 7, 8, "G", 40, "FALSE", 1]]
    path = _write(tmp_path / "w.tsv.gz", header, rows)
    assert score_crispri(path)["scores"]["distance"]["auprc"] == pytest.approx(7 / 24)
    assert score_crispri(path, weight_column="w")["scores"]["distance"]["auprc"] == pytest.approx(0.1625)


def test_real_k562_table_gives_the_published_figures(shared_data):
    """EngreitzLab's estimator on the K562 training table: distance 0.4359 (the published figure)
    and ABC (power-law contact, not normalized) at least 0.48."""
    res = score_crispri(shared_data / K562)
    assert res["counts"]["valid_pairs"] == 10356 and res["counts"]["positives"] == 471
    assert res["scores"]["distance"]["auprc"] == pytest.approx(0.436, abs=0.005)
    assert res["scores"]["abc"]["auprc"] >= 0.48

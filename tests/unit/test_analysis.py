"""Each zero-shot analysis on hand-made inputs with hand-computed answers."""

import math
import socket
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
import torch

from creformer.analysis import enhancers, grn, master_tf, metrics, motif_scan, perturb, transitions
from creformer.analysis.inputs import TF, level_values, resolve_tfs, row_masses
from creformer.engine.errors import InputError
from creformer.engine.io.motifs import Motif
from creformer.engine.tokenize import SIG_OFFSET, SIG_PAD, default_cutpoints, dna_tokens


# --- metrics --------------------------------------------------------------------------------
def test_auprc_by_hand_and_against_sklearn():
    from sklearn.metrics import average_precision_score

    s, y = np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0])
    assert metrics.auprc(s, y) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)  # P=1 at R=.5, P=2/3 at R=1
    assert metrics.precision_at_recall(s, y, 0.7) == pytest.approx(2 / 3)
    tied, yt = np.array([1.0, 1.0, 0.0]), np.array([1, 0, 1])
    assert metrics.auprc(tied, yt) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)  # ties enter together
    rng = np.random.default_rng(0)
    for _ in range(5):
        s, y = rng.random(50).round(1), rng.random(50) < 0.3
        assert metrics.auprc(s, y) == pytest.approx(average_precision_score(y, s))
    with pytest.raises(ValueError, match="no positive"):
        metrics.auprc(s, np.zeros(50, bool))


def test_top_k_precision_counts_possible_hits():
    assert metrics.top_k_precision(["a", "b", "c"], {"a", "x"}, 3) == 0.5
    assert metrics.top_k_precision(["a", "x", "c"], {"a", "x"}, 3) == 1.0


def test_r_precision_leaves_no_slot_for_a_decoy():
    assert metrics.top_k_precision(["a", "p", "x"], {"a", "x"}, 3) == 1.0
    assert metrics.r_precision(["a", "p", "x"], {"a", "x"}) == 0.5
    assert metrics.r_precision(["x", "a", "p"], {"a", "x"}) == 1.0


# --- motif scanning ---------------------------------------------------------------------------
def test_decode_dna_roundtrip_and_scan_both_strands():
    rng = np.random.default_rng(1)
    seq = "".join("ACGT"[i] for i in rng.integers(0, 4, 300))
    seq = seq[:50] + "GGCCAAAA" + seq[58:200] + "TTTTGGCC" + seq[208:]  # site, then its reverse complement
    tokens = dna_tokens(seq.encode())[None]
    bases = motif_scan.decode_dna(tokens)
    assert "".join("ACGTN"[b] for b in bases[0]) == seq
    pwm = np.full((8, 4), 0.01)
    for i, b in enumerate("GGCCAAAA"):
        pwm[i, "ACGT".index(b)] = 0.97
    hits = motif_scan.scan(bases, [Motif("M1", "TFX", pwm)], threshold=0.99)
    assert hits.counts[0, 0] == 2 and hits.index("tfx") == 0


def test_pvalue_cut_is_exact_on_every_sequence():
    import itertools

    pwm = np.array([[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25], [0.1, 0.1, 0.1, 0.7],
                    [0.4, 0.4, 0.1, 0.1], [0.1, 0.1, 0.8, 0.0]])
    ilo = motif_scan.integer_scores(motif_scan.log_odds(pwm))
    every = np.array(list(itertools.product(range(4), repeat=5)))  # all 1,024 5-mers
    scores = ilo[np.arange(5), every].sum(1)
    for p in (1 / 1024, 1e-2, 0.1, 0.5):
        cut = motif_scan.pvalue_cut(ilo, p)
        assert (scores >= cut).mean() <= p < (scores >= cut - 1).mean()
    assert motif_scan.pvalue_cut(ilo, 1e-6) > scores.max()  # rarer than any 5-mer: no site can hit


@pytest.mark.parametrize("scanner", ["numpy", "memelite"])
def test_scan_pvalue_admits_mismatches_by_motif_length(scanner):
    # consensus probability 0.88 per position: each mismatch costs the same score, so at p 1e-4 an
    # 8-mer needs its consensus (4^-8 = 1.5e-5; one mismatch 24 x 4^-8 more) and a 12-mer may
    # carry two mismatches (sum over j <= 2 of C(12, j) 3^j 4^-12 = 3.6e-5; three: 3.9e-4)
    def motif(cons):
        pwm = np.full((len(cons), 4), 0.04)
        pwm[np.arange(len(cons)), ["ACGT".index(b) for b in cons]] = 0.88
        return Motif(f"M{len(cons)}", f"TF{len(cons)}", pwm)

    def mutate(cons, k):
        return "".join(("C" if b != "C" else "G") if i < k else b for i, b in enumerate(cons))

    short, long = "AGGTCAGT", "TTGACGTCATGA"
    spacer = "A" * 30
    for cons, allowed in ((short, 0), (long, 2)):
        for k in range(4):
            seq = spacer + mutate(cons, k) + spacer
            bases = motif_scan.decode_dna(dna_tokens(seq.encode())[None])
            hits = (motif_scan.scan(bases, [motif(cons)], pvalue=1e-4) if scanner == "numpy"
                    else motif_scan.scan_fimo(bases, [motif(cons)], 1e-4))
            assert (hits.counts[0, 0] > 0) == (k <= allowed), (cons, k)
            rc = spacer + mutate(cons, k)[::-1].translate(str.maketrans("ACGT", "TGCA")) + spacer  # the other strand
            rc_bases = motif_scan.decode_dna(dna_tokens(rc.encode())[None])
            if scanner == "memelite":
                assert (motif_scan.scan_fimo(rc_bases, [motif(cons)], 1e-4).counts[0, 0] > 0) == (k <= allowed)
    with pytest.raises(ValueError, match="p-value"):
        motif_scan.scan(bases, [motif(short)], pvalue=1.5)
    with pytest.raises(ValueError, match="p-value"):
        motif_scan.scan_fimo(bases, [motif(short)], 1.5)


def test_fimo_hit_rate_on_random_sequence_is_the_p_value():
    """Under a uniform background a site hits with chance <= p (FIMO's rule; discrete scores make it
    somewhat less): over 2 x 300 x 1,000 random sites at p = 1e-3, the count sits near 600."""
    rng = np.random.default_rng(0)
    bases = rng.integers(0, 4, (300, 1_011)).astype(np.uint8)
    pwm = rng.dirichlet(np.ones(4) * 0.5, 12)
    n = int(motif_scan.scan_fimo(bases, [Motif("R", "R", pwm)], 1e-3).counts.sum())
    exact = int(motif_scan.scan(bases, [Motif("R", "R", pwm)], pvalue=1e-3).counts.sum())
    assert 0.5 * 600 <= n <= 1.1 * 600 and abs(n - exact) <= 0.1 * exact, (n, exact)


def test_level_values_follow_the_cut_points():
    cuts = default_cutpoints()
    v = level_values(cuts)
    assert v[SIG_PAD] == 0 and v[SIG_OFFSET] == 0
    assert np.all(np.diff(v[SIG_OFFSET + 1:]) > 0)  # a higher level decodes to a higher value
    assert cuts[0] < v[SIG_OFFSET + 2] < cuts[1]


def test_row_masses_sum_each_row_and_give_empty_rows_zero():
    import pyarrow as pa

    values = np.arange(10, dtype=np.float64)
    # empty rows first, in the middle and last (np.add.reduceat alone would give them a neighbour's value)
    tok = pa.array([[], [2, 3], [], [4], []], pa.list_(pa.uint8()))
    assert row_masses(tok, values).tolist() == [0, 5, 0, 4, 0]
    assert row_masses(tok.slice(1, 3), values).tolist() == [5, 0, 4]  # a slice keeps its own rows
    assert row_masses(pa.array([[], []], pa.list_(pa.uint8())), values).tolist() == [0, 0]


# --- attention scores -------------------------------------------------------------------------
def test_attention_scores_are_column_sums_over_real_queries():
    from creformer.config import load_config
    from creformer.trainer.model.regulatory import RegulatoryHead

    cfg = load_config("tiny").model
    torch.manual_seed(0)
    head = RegulatoryHead(cfg, n_genes=3).eval()
    bins = torch.randn(2, 5, 2, 8, cfg.d_model)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    rank = torch.tensor([[-2, -1, 0, 1, 2], [0, 1, 2, 0, 0]])
    gene = torch.tensor([2, 0])
    s = head.attention_scores(bins, rank, mask, gene=gene)
    assert s.sum(1).tolist() == pytest.approx([5.0, 3.0], abs=1e-5)  # each real query's row sums to 1
    assert s[1, 3:].abs().sum() == 0
    x = head._inputs(bins, rank, mask)
    a = head.t3.layers[0].attention_weights(x + head.gene_emb(gene)[:, None], key_padding=~mask).mean(1)
    assert s[1, :3].tolist() == pytest.approx(a[1, :3, :3].sum(0).tolist(), abs=1e-6)
    assert torch.equal(head.attention_scores(bins, rank, mask, inputs=x, gene=gene), s)  # shared inputs: the same scores


# --- master TFs -------------------------------------------------------------------------------
def test_master_tfs_rank_the_tf_marking_each_group_first():
    rng = np.random.default_rng(0)
    groups = np.array(["A"] * 30 + ["B"] * 30)
    x = rng.normal(0, 1, (60, 3))
    x[:30, 0] += 4  # TF0 marks A
    x[30:, 2] += 4  # TF2 marks B
    t = master_tf.master_tfs(x, groups, ["TF0", "TF1", "TF2"])
    assert master_tf.top_tfs(t, "A", 1) == ["TF0"] and master_tf.top_tfs(t, "B", 1) == ["TF2"]


def test_group_mean_difference_keeps_the_size_that_the_regression_standardizes_away():
    """A passenger-like TF whose knockout moves group A's cells a little, but only there, against a
    master whose knockout moves A's cells a lot and others' some: the regression on standardized
    features puts the passenger first, the mean difference the master (docs/design.md §7)."""
    rng = np.random.default_rng(0)
    groups = np.array(["A"] * 40 + ["B"] * 80)
    a = groups == "A"
    master = np.where(a, 2.0, 0.5) + rng.normal(0, 0.5, 120)
    passenger = np.where(a, 0.1, 0.0) + rng.normal(0, 0.002, 120)
    x = np.stack([master, passenger], 1)
    names = ["MASTER", "PASSENGER"]
    assert master_tf.top_tfs(master_tf.master_tfs(x, groups, names), "A", 1) == ["PASSENGER"]
    t = master_tf.group_mean_difference(x, groups, names)
    assert master_tf.top_tfs(t, "A", 1) == ["MASTER"] and master_tf.top_tfs(t, "B", 2) == ["PASSENGER", "MASTER"]
    coef = dict(zip(t.filter(pl.col("group") == "A")["tf"], t.filter(pl.col("group") == "A")["coef"]))
    assert coef["MASTER"] == pytest.approx(master[a].mean() - master.mean())
    with pytest.raises(ValueError, match="inside and outside the group"):
        master_tf.group_mean_difference(x, np.array(["A"] * 120), names)


# --- GRN enrichment ---------------------------------------------------------------------------
def test_enrichment_pvalue_by_hand():
    hits = np.array([[1], [1], [0], [0]], bool)  # 4 peaks, 2 with the motif, both among the 2 high ones
    p, k = grn.enrichment_pvalues(hits, np.array([True, True, False, False]))
    assert k[0] == 2 and p[0] == pytest.approx(1 / 6)  # C(2,2)C(2,0)/C(4,2)


def test_grn_edges_from_high_attention_peaks():
    gatt = pl.DataFrame({"group": ["g"] * 6, "gene_id": [0] * 6, "peak_id": list(range(6)),
                         "attention": [3.0, 2.0, 0.1, 0.1, 0.1, 0.1], "atac": [0.0] * 6,
                         "ablation": [0.0, 0.0, 0.0, 0.0, 0.5, 0.4]})
    bound = np.zeros((6, 3), bool)
    bound[[0, 1], 0] = True  # TF A's motif in both high-attention peaks
    bound[[4, 5], 1] = True  # TF B's motif only in low-attention peaks
    bound[[0, 2, 3, 4], 2] = True  # TF C's in one high peak and three low ones: not enriched
    tfs = [TF("A", 0, None), TF("B", 1, None), TF("C", 2, None)]
    edges = grn.grn_edges(gatt, bound, tfs, {0: "T"}, high_k=2, max_p=0.1)
    assert edges["tf"].to_list() == ["A"]
    assert edges["peaks"][0].to_list() == [0, 1] and edges["score"][0] == pytest.approx(-math.log10(1 / 15))
    # the all-pairs scores keep C's weak one (P(X >= 1) = 1 - C(2,2)/C(6,2)) and omit B (no high site)
    best = grn.pair_scores(gatt, bound, tfs, high_k=2)
    assert best.keys() == {("A", 0), ("C", 0)}
    assert best[("A", 0)] == pytest.approx(-math.log10(1 / 15)) and best[("C", 0)] == pytest.approx(-math.log10(14 / 15))
    # ranked by ablation, peaks 4 and 5 are the high ones: B enriched, A absent, C one of two sites
    by_abl = grn.pair_scores(gatt, bound, tfs, high_k=2, by="ablation")
    assert by_abl.keys() == {("B", 0), ("C", 0)} and by_abl[("B", 0)] == pytest.approx(-math.log10(1 / 15))
    # high_k=None: exactly the peaks flagged positive are high (the scorecard's causal-peak ceiling)
    exact = grn.pair_scores(gatt.with_columns(pl.Series("causal", [0.0, 0.0, 0.0, 0.0, 1.0, 1.0])), bound, tfs,
                            high_k=None, by="causal")
    assert exact == pytest.approx(by_abl)  # the same high set as the top 2 by ablation
    flags = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # one high peak holding A's and C's motifs
    one = grn.pair_scores(gatt.with_columns(pl.Series("causal", flags)), bound, tfs, high_k=None, by="causal")
    assert one == pytest.approx({("A", 0): -math.log10(2 / 6), ("C", 0): -math.log10(4 / 6)})
    assert grn.pair_scores(gatt.with_columns(pl.lit(0.0).alias("causal")), bound, tfs, high_k=None, by="causal") == {}
    table = grn.score_table(best, {0: np.arange(6)}, bound, tfs, {0: "T"}, np.zeros((1, 3)), np.array([0]),
                            variants={"model_ablation": by_abl})
    assert table["model_ablation"].to_list() == pytest.approx([0.0, -math.log10(1 / 15), by_abl[("C", 0)]])
    assert table["motif_only"].to_list() == [2.0, 2.0, 4.0]





def test_knockout_edges_take_the_largest_effect_size_over_groups():
    effects = pl.DataFrame({
        "group": ["g1", "g2", "g1", "g1", "g1", "g2"],
        "condition": ["A", "A", "B", "A", "A+B", "B"],
        "mode": ["KO", "KO", "KO", "KI", "KO", "KO"],
        "gene_id": [5, 5, 5, 6, 6, 6],
        "log2fc": [-0.2, -0.7, 0.3, 2.0, -5.0, 0.0]})
    got = grn.knockout_scores(effects, [TF("A", 0, 1), TF("B", 1, 2)])
    # A→5: max(|−0.2|, |−0.7|); B→5: a repressor's target goes up, its size counts; the knock-in
    # and the two-TF knockout are not single-TF knockouts; B→6 is there with no effect
    assert got == pytest.approx({("A", 5): 0.7, ("B", 5): 0.3, ("B", 6): 0.0})


# --- perturbations ----------------------------------------------------------------------------
def test_perturbation_changes_exactly_the_bound_real_peaks():
    rng = np.random.default_rng(0)
    atac = rng.integers(SIG_OFFSET, SIG_OFFSET + 10, (2, 3, 16)).astype(np.uint8)
    atac[1, 2] = SIG_PAD
    ids = np.array([[0, 1, 2], [2, 3, -1]])
    mask = ids >= 0
    bound = np.array([False, False, True, False])
    ko, touched = perturb.perturb_atac(atac, ids, mask, bound, "KO")
    assert touched.tolist() == [[False, False, True], [True, False, False]]
    assert (ko[touched] == SIG_OFFSET).all() and (ko[~touched] == atac[~touched]).all()
    profile = np.full(16, SIG_OFFSET, np.uint8)
    profile[[3, 4]] = SIG_OFFSET + 20
    ki, _ = perturb.perturb_atac(atac, ids, mask, bound, "KI", profile)
    assert (ki[touched] == profile).all() and (ki[~touched] == atac[~touched]).all()
    with pytest.raises(ValueError, match="KO or KI"):
        perturb.perturb_atac(atac, ids, mask, bound, "OE")
    with pytest.raises(ValueError, match="16 tokens"):
        perturb.perturb_atac(atac, ids, mask, bound, "KI")


def test_knock_in_profile_is_the_observed_signal_at_the_mass_quantile():
    import pyarrow as pa

    values = np.arange(SIG_OFFSET + 36, dtype=np.float64)  # token id t is worth t (zero level: 2)
    values[:SIG_OFFSET + 1] = 0.0
    rows_pos = [[0, 1], [], [5], [2, 3, 9], [7]]
    rows_tok = [[SIG_OFFSET + 10] * 2, [], [SIG_OFFSET + 20], [SIG_OFFSET + 30] * 3, [SIG_OFFSET + 1]]
    tok = pa.array(rows_tok, pa.list_(pa.uint8()))
    pos = pa.array(rows_pos, pa.list_(pa.uint16()))
    masses = [24.0, 22.0, 96.0, 3.0]  # the non-empty rows
    ki = perturb.knock_in_profile(tok, pos, values, 8, quantile=0.5)
    assert np.quantile(masses, 0.5) == 23.0 and ki.mass == 24.0 and ki.quantile == 0.5  # row 0 (first of the nearest)
    assert ki.tokens.tolist() == [SIG_OFFSET + 10] * 2 + [SIG_OFFSET] * 6
    top = perturb.knock_in_profile(tok, pos, values, 8, quantile=0.99)
    assert top.mass == 96.0 and top.tokens.tolist() == [SIG_OFFSET] * 2 + [SIG_OFFSET + 30] * 2 + [SIG_OFFSET] * 4  # position 9 cropped
    assert "mass 96" in top.describe() and "2 open tokens" in top.describe()
    assert top.record() == {"mass": 96.0, "quantile": 0.99, "length": 8, "open_positions": [2, 3], "open_tokens": [SIG_OFFSET + 30] * 2}
    with pytest.raises(ValueError, match="empty"):
        perturb.knock_in_profile(pa.array([[]], pa.list_(pa.uint8())), pa.array([[]], pa.list_(pa.uint16())), values, 8)


def test_conditions_and_unknown_multi_tf():
    tfs = [TF("A", 0, 1), TF("B", 1, 2)]
    c = perturb.conditions(tfs, ["a+b"])
    assert [(x.name, x.mode, x.motifs) for x in c[-2:]] == [("A+B", "KO", (0, 1)), ("A+B", "KI", (0, 1))]
    with pytest.raises(ValueError, match="unknown TF"):
        perturb.conditions(tfs, ["A+Z"])


def test_perturbed_tfs_default_to_those_the_atlas_expresses():
    tfs = [TF("A", 0, 1), TF("B", 1, None), TF("C", 2, 5)]  # B: a motif, no gene in the atlas
    keep, out = perturb.perturbed_tfs(tfs, "expressed", [])
    assert [t.name for t in keep] == ["A", "C"] and out == ["B"]
    assert perturb.perturbed_tfs(tfs, "all", [])[0] == tfs and perturb.perturbed_tfs(tfs, "expressed", ["B"]) == (tfs, [])
    c = perturb.conditions(keep, ["A+B"], known=tfs)  # a combination may name any motif's TF
    assert [x.name for x in c] == ["A", "A", "C", "C", "A+B", "A+B"]


def test_ko_mediators_are_the_touched_peaks_single_knockouts():
    gatt = pl.DataFrame({"group": ["g"] * 4, "gene_id": [5, 5, 5, 6], "peak_id": [0, 1, 2, 1],
                         "ablation_all_cells": [0.2, -0.1, 0.4, 0.3]})
    bound = np.array([[True, False], [False, True], [True, True]])  # peak x motif
    conds = perturb.conditions([TF("A", 0, 1), TF("B", 1, 2)], ["A+B"])
    med = perturb.ko_mediators(gatt, bound, conds)
    got = {(c, g, p): v for c, g, p, v in med.select("condition", "gene_id", "peak_id", "log2fc").iter_rows()}
    ln2 = math.log(2)
    # A touches peaks 0 and 2, B peaks 1 and 2, A+B all three; knock-ins are not knockouts
    assert got == pytest.approx({("A", 5, 0): -0.2 / ln2, ("A", 5, 2): -0.4 / ln2, ("B", 5, 1): 0.1 / ln2,
                                 ("B", 5, 2): -0.4 / ln2, ("B", 6, 1): -0.3 / ln2, ("A+B", 5, 0): -0.2 / ln2,
                                 ("A+B", 5, 1): 0.1 / ln2, ("A+B", 5, 2): -0.4 / ln2, ("A+B", 6, 1): -0.3 / ln2})
    assert perturb.ko_mediators(gatt, bound, [c for c in conds if c.mode == "KI"]).height == 0


def test_ko_decomposition_splits_causal_and_other_peaks():
    from creformer.analysis.validate import ko_decomposition

    scored = pl.DataFrame({"cell_type": ["g", "g", "g"], "tf": ["A", "A", "B"], "gene_id": [5, 6, 5],
                           "true_lfc": [-1.0, -0.5, -0.4], "model_lfc": [-0.3, 0.2, 0.1]})
    med = pl.DataFrame({"group": ["g"] * 5, "condition": ["A", "A", "A", "B", "B"], "gene_id": [5, 5, 6, 5, 5],
                        "peak_id": [0, 1, 3, 1, 2], "log2fc": [-0.4, 0.1, 0.3, 0.2, -0.05]})
    labels = pl.DataFrame({"gene_id": [5, 5, 5, 6], "peak_id": [0, 1, 2, 3], "label": [True, False, True, False]})
    d = ko_decomposition(scored, med, labels)
    # right: A→5 (causal −0.4 has the true sign, others +0.1 oppose it)
    assert d["right"] == pytest.approx({"effects": 1, "causal_peaks_with_true_sign": 1.0, "other_peaks_against_true_sign": 1.0,
                                        "no_causal_peak_touched": 0.0, "median_abs_causal_log2fc": 0.4, "median_abs_true_log2fc": 1.0})
    # wrong: A→6 touches no causal peak (others +0.3 oppose); B→5: causal −0.05 right sign, others +0.2 oppose
    w = d["wrong"]
    assert w["effects"] == 2 and w["no_causal_peak_touched"] == 0.5 and w["other_peaks_against_true_sign"] == 1.0
    assert w["causal_peaks_with_true_sign"] == 0.5 and w["median_abs_causal_log2fc"] == pytest.approx(0.025)


def test_top_mediators_name_the_peak_moving_the_gene_most_along_the_knockout():
    from creformer.analysis.report import top_mediators

    effects = pl.DataFrame({"group": ["g", "g", "g"], "condition": ["A", "A", "A+B"], "mode": ["KO", "KI", "KO"],
                            "gene_id": [5, 5, 5], "log2fc": [-0.8, 2.0, -3.0]})
    med = pl.DataFrame({"group": ["g", "g"], "condition": ["A", "A"], "gene_id": [5, 5], "peak_id": [0, 1], "log2fc": [0.2, -0.5]})
    peaks = pl.DataFrame({"peak_id": [0, 1], "chrom": ["c1", "c1"], "start": [100, 900], "end": [300, 1200]})
    t = top_mediators(effects, med, {5: "G5"}, peaks)
    # single-TF knockouts only; peak 1 pulls the gene down with the knockout, peak 0 against it
    assert t.rows() == [("g", "A", "G5", pytest.approx(-0.8), "c1:900-1200", pytest.approx(-0.5))]


# --- transitions ------------------------------------------------------------------------------
def test_transition_score_by_hand():
    src, tgt, pert = np.array([[0.0, 0.0], [0.0, 2.0]]), np.array([[2.0, 1.0]]), np.array([[1.0, 1.0]])
    assert transitions.transition_score(src, tgt, pert) == pytest.approx(0.5)
    emb = transitions.embed(np.random.default_rng(0).normal(size=(8, 5)), np.random.default_rng(1).normal(size=(8, 5)) + 3,
                            np.random.default_rng(2).normal(size=(8, 5)) + 1.5)
    assert emb.pca.shape == (24, 2) and emb.umap.shape == (24, 2)
    one_gene = transitions.embed(np.zeros((4, 1)), np.ones((4, 1)), np.full((4, 1), 0.5))  # a gene subset of one
    assert one_gene.pca.shape == (12, 2) and one_gene.umap is not None


# --- enhancer–gene and CRISPRi ---------------------------------------------------------------
def test_ablation_is_the_prediction_drop_when_one_peak_loses_its_signal():
    from creformer.analysis.attention import ablation
    from creformer.config import load_config
    from creformer.trainer.model import Elementary
    from creformer.trainer.model.cache import EmbeddingCache
    from creformer.trainer.model.regulatory import RegulatoryHead

    cfg = load_config("tiny").model
    torch.manual_seed(0)
    el, head = Elementary(cfg).eval(), RegulatoryHead(cfg, n_genes=4).eval()
    gene = torch.tensor([3, 1])
    rng = np.random.default_rng(1)
    cache = EmbeddingCache(el, rng.integers(4, 4100, (5, 1024)).astype(np.uint16))
    ids = np.array([[0, 1, 2], [3, 4, -1]])
    mask = ids >= 0
    atac = np.repeat(np.where(mask, SIG_OFFSET, SIG_PAD).astype(np.uint8)[..., None], 1024, -1)
    atac[0, 1, 500:506] = SIG_OFFSET + 7  # signal in two (cell, peak) pairs only
    atac[1, 0, 10:16] = SIG_OFFSET + 3
    rank = torch.from_numpy(np.where(mask, np.arange(3) - 1, 0))
    tmask = torch.from_numpy(mask)

    @torch.no_grad()
    def predict(tokens):
        bins = cache.peak_bins(torch.from_numpy(ids.clip(0)), torch.from_numpy(tokens.astype(np.int64)), tmask)
        return bins, head.forward_bins(bins, rank, tmask, gene)

    bins, pred = predict(atac)
    got = ablation(head, bins, rank, tmask, pred, chunk=1, gene=gene)
    want = np.zeros(ids.shape, np.float32)
    for b, j in ((0, 1), (1, 0)):
        cut = atac.copy()
        cut[b, j] = SIG_OFFSET  # that peak's tokens at zero signal, through the full embedding path
        want[b, j] = float(pred[b] - predict(cut)[1][b])
    assert np.count_nonzero(got) == 2 and got == pytest.approx(want, abs=1e-5)



def test_element_scores_abc_is_normalized_per_gene():
    genes = pl.DataFrame({"gene_id": [0], "tss": [10_000]})
    peaks = pl.DataFrame({"peak_id": [0, 1], "chrom": ["c", "c"], "start": [9_900, 29_900], "end": [10_100, 30_100]})
    gatt = pl.DataFrame({"group": ["a", "b", "a", "b"], "gene_id": [0] * 4, "peak_id": [0, 0, 1, 1],
                         "attention": [1.0, 2.0, 0.5, 0.2], "atac": [1.0, 3.0, 2.0, 2.0], "ablation": [0.1, -0.2, 0.0, 0.3]})
    t = enhancers.element_scores(gatt, genes, peaks)
    assert t["attention"].to_list() == [2.0, 0.5] and t["distance"].to_list() == [0, 20_000]
    assert t["ablation"].to_list() == pytest.approx([0.1, 0.3]) and t["ablation_abs"].to_list() == pytest.approx([0.2, 0.3])
    raw = np.array([2.0 * 5_001 ** -0.87, 2.0 * 20_001 ** -0.87])  # ABC's power-law contact, distance floored at 5 kb
    assert t["abc"].to_list() == pytest.approx((raw / raw.sum()).tolist())


# --- inputs ----------------------------------------------------------------------------------
def test_resolve_tfs_and_unknown_names():
    motifs = [Motif("M1", "TF01", np.full((4, 4), 0.25)), Motif("M2", "FOS::JUN", np.full((4, 4), 0.25)),
              Motif("M3", "NOGENE", np.full((4, 4), 0.25))]
    genes = pl.DataFrame({"gene_id": [7], "name": ["tf01"]})
    tfs = resolve_tfs(motifs, genes, [])
    assert [(t.name, t.gene_id) for t in tfs] == [("TF01", 7), ("NOGENE", None)]
    with pytest.raises(InputError, match="unknown TF"):
        resolve_tfs(motifs, genes, ["TF99"])


@pytest.mark.parametrize("mode", ["KO", "KI"])
def test_perturbation_shortcut_equals_the_full_token_path(mode):
    """Reusing unperturbed bins + one embedding per touched peak gives the same predictions as
    perturbing the tokens and embedding every peak again."""
    from creformer.config import load_config
    from creformer.trainer.model import Elementary
    from creformer.trainer.model.cache import EmbeddingCache
    from creformer.trainer.model.regulatory import RegulatoryHead

    cfg = load_config("tiny").model
    torch.manual_seed(0)
    el, head = Elementary(cfg).eval(), RegulatoryHead(cfg, n_genes=3).eval()
    gene = torch.tensor([1, 0, 2])
    rng = np.random.default_rng(0)
    dna = rng.integers(4, 4100, (6, 1024)).astype(np.uint16)
    cache = EmbeddingCache(el, dna)
    ids = np.array([[0, 1, 2, 3], [2, 4, 5, -1], [1, 3, -1, -1]])
    mask = ids >= 0
    atac = np.where(mask[..., None], rng.integers(SIG_OFFSET, SIG_OFFSET + 6, (3, 4, 1024)), SIG_PAD).astype(np.uint8)
    atac[..., :900] = np.where(mask[..., None], SIG_OFFSET, SIG_PAD)  # mostly empty, as in single cells
    rank = torch.from_numpy(np.where(mask, np.arange(4) - 1, 0))
    bound = np.array([False, True, True, False, False, True])
    with torch.no_grad():
        bins = cache.peak_bins(torch.from_numpy(ids.clip(0)), torch.from_numpy(atac.astype(np.int64)), torch.from_numpy(mask))
        profile = np.full(1024, SIG_OFFSET, np.uint8)
        profile[100:112] = SIG_OFFSET + 20
        new, touched = perturb.perturb_atac(atac, ids, mask, bound, mode, profile)
        full_bins = cache.peak_bins(torch.from_numpy(ids.clip(0)), torch.from_numpy(new.astype(np.int64)), torch.from_numpy(mask))
        full = head.forward_bins(full_bins, rank, torch.from_numpy(mask), gene).numpy()
        rows, fast = perturb.perturbed_predictions(head, cache, bins, ids, mask, rank, touched, mode, profile, 1024, gene=gene)
        # the batch's own per-peak inputs reused (atlas_grn's path): only the touched peaks' are recomputed
        inputs = head._inputs(bins, rank, torch.from_numpy(mask))
        rows2, reused = perturb.perturbed_predictions(head, cache, bins, ids, mask, rank, touched, mode, profile, 1024,
                                                      inputs=inputs, gene=gene)
    assert rows.tolist() == rows2.tolist() == [0, 1, 2]
    assert fast == pytest.approx(full[rows], abs=1e-5)
    assert reused == pytest.approx(full[rows], abs=1e-5)
    unperturbed = head.forward_bins(bins, rank, torch.from_numpy(mask), gene).detach().numpy()
    assert not np.allclose(full[rows], unperturbed[rows], atol=1e-5)


# --- atlas_grn work items -------------------------------------------------------------------
def test_shared_items_split_the_analysed_peaks_and_the_knock_in_ones():
    from types import SimpleNamespace

    from creformer.analysis.shared_slices import shared_items

    # 6 peaks on chr1 at 0, 10, ..., 50 kb (centres), 2 on chr2; one gene at chr1:20 kb, window ±15 kb
    peaks = pl.DataFrame({"peak_id": list(range(8)), "chrom": ["chr1"] * 6 + ["chr2"] * 2,
                          "start": [i * 10_000 - 100 for i in range(6)] + [0, 10_000],
                          "end": [i * 10_000 + 100 for i in range(6)] + [200, 10_200]})
    genes = pl.DataFrame({"gene_id": [0, 1], "chrom": ["chr1", "chr2"], "tss": [20_000, 5_000]})
    bound = np.zeros((8, 2), bool)
    bound[[1, 3, 6], 0] = True  # motif 0 (perturbed) at peaks 1, 3, 6; motif 1 (not perturbed) at 2
    bound[2, 1] = True
    # the knock-in peaks come from the perturbation sites, not the scan's (here none)
    p = SimpleNamespace(tables=SimpleNamespace(peaks=peaks, genes=genes,
                                               manifest=SimpleNamespace(data={"options": {"tss_window_bp": 15_000}})),
                        bound=np.zeros_like(bound), perturb_bound=bound, genes=[0], conditions=[perturb.Condition("TF1", "KO", (0,)), perturb.Condition("TF1", "KI", (0,))])
    items = shared_items(p, 2)
    assert [it["kind"] for it in items] == ["shared", "shared"] and [it["slice"] for it in items] == [0, 1]
    assert sorted(sum((it["peaks"] for it in items), [])) == [1, 2, 3]  # centres within 15 kb of 20 kb
    assert sorted(sum((it["ki_peaks"] for it in items), [])) == [1, 3]
    p.genes = []  # every gene: every peak, in slices of at most 3
    items = shared_items(p, 2, max_peaks=3)
    assert len(items) == 3 and max(len(it["peaks"]) for it in items) <= 3
    assert sorted(sum((it["peaks"] for it in items), [])) == list(range(8))
    assert sorted(sum((it["ki_peaks"] for it in items), [])) == [1, 3, 6]


def test_each_shared_slice_is_computed_once_and_a_first_partition_waits_for_all(tmp_path):
    """Before its first partition a worker computes the shared slices nobody has taken, waits for
    the ones another worker is computing, and a queued shared item of a taken slice does nothing
    (Ray Data may hand an actor a partition before the slice queued ahead of it)."""
    import threading
    from types import SimpleNamespace

    from creformer.analysis import shared_slices as atlas

    for sub in ("shared_claim", "shared_done"):
        (tmp_path / sub).mkdir()
    computed = []

    class Cache:
        def ensure(self, peaks, tokens):
            computed.append(list(peaks))
            return len(peaks)

        def flush(self, tag=""):
            assert tag == atlas.SHARED_TAG

    slices = [{"peaks": [0, 1], "ki_peaks": [1]}, {"peaks": [2], "ki_peaks": []}, {"peaks": [3], "ki_peaks": [3]}, {"peaks": [4], "ki_peaks": []}]
    w = SimpleNamespace(work=tmp_path, ki_profile=np.full(1024, SIG_OFFSET + 20, np.uint8), slices=slices, cache=Cache(),
                        tables=SimpleNamespace(peak_dna=np.zeros((5, 1024), np.uint16)))
    assert atlas.claim_slice(tmp_path, 0) and atlas.claim_slice(tmp_path, 1)  # another worker took 0 (done) and 1 (running)
    assert not atlas.claim_slice(tmp_path, 0)
    (tmp_path / "shared_done" / "slice-00000").touch()
    threading.Timer(0.3, (tmp_path / "shared_done" / "slice-00001").touch).start()
    assert atlas.ensure_shared(w) == 3  # entries computed
    assert computed == [[3], [3], [4], []]  # slices 2 and 3 only: zero signal, then knock-in
    assert len(list((tmp_path / "shared_done").iterdir())) == 4  # returned only once the other worker's slice 1 was done
    assert atlas.embed_shared(w, {"kind": "shared", "slice": 2})["cache_misses"] == 0 and len(computed) == 4
    w.slices = []  # cache off, or nothing left to run: nothing to compute or wait for
    assert atlas.ensure_shared(w) == 0 and len(computed) == 4


def test_a_dead_workers_shared_slice_claim_is_taken_over(tmp_path):
    from creformer.analysis.shared_slices import claim_slice, stale_claim

    for sub in ("shared_claim", "shared_done"):
        (tmp_path / sub).mkdir()
    assert claim_slice(tmp_path, 0) and not claim_slice(tmp_path, 0)  # ours, alive: one claimant
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    claim = tmp_path / "shared_claim" / "slice-00001"
    claim.write_text(f"{socket.gethostname()} {int(dead.stdout)}")  # a claimant that has exited
    assert stale_claim(claim) and claim_slice(tmp_path, 1) and not stale_claim(claim)
    (tmp_path / "shared_done" / "slice-00002").touch()
    (tmp_path / "shared_claim" / "slice-00002").write_text(f"{socket.gethostname()} {int(dead.stdout)}")
    assert not claim_slice(tmp_path, 2)  # finished before its claimant died: nothing to redo
    (tmp_path / "shared_claim" / "slice-00003").write_text(f"another-host {int(dead.stdout)}")
    assert not claim_slice(tmp_path, 3)  # other hosts' claims count as live

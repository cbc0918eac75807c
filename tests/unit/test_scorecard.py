"""Scorecard v2 on hand-made inputs with hand-computed answers: the task object (best baseline,
margin, met), direction accuracy / responder AUPRC / Spearman split direct and indirect, the
transition fraction, the driver's rank, the truth-version check and the ridge baselines."""

import numpy as np
import polars as pl
import pytest

from creformer.analysis.baselines import (
    CellData,
    accessibility_perturbation,
    celloracle_perturbation,
    enhancer_baselines,
    motif_deviations,
    ridge_cv,
)
from creformer.analysis.transitions import fraction_closer
from creformer.analysis.validate import (
    check_truth,
    enhancer_tasks,
    master_tf_task,
    perturbation_task,
    read_cells,
    spearman,
    task,
    therapeutic_task,
    transition_task,
)
from creformer.engine.errors import InputError


def test_task_picks_the_best_baseline_and_the_margin():
    t = task("AUPRC", 0.6, "ablation", {"distance": 0.5, "abc": 0.7, "missing": None}, {"attention": 0.3})
    assert t["best_baseline"] == {"name": "abc", "value": 0.7} and t["margin"] == pytest.approx(-0.1) and not t["met"]
    assert task("x", 0.8, "r", {"a": 0.7})["met"] and not task("x", 0.7, "r", {"a": 0.7})["met"]  # a tie is not a win


def test_enhancer_tasks_report_the_global_and_the_per_gene_auprc():
    """Gene 0's peaks are ranked right by the model but on a smaller scale than gene 1's, whose
    inert peak outscores gene 0's causal one: the per-gene AUPRC (1.0) shows the ranking, the global
    one (< 1) the scale. Gene 2 has no causal peak and is left out of the per-gene mean."""
    lab = pl.DataFrame({"gene_id": [0, 0, 0, 1, 1, 1, 2, 2], "peak_id": list(range(8)),
                        "ablation_abs": [0.2, 0.1, 0.0, 0.9, 0.5, 0.3, 0.4, 0.1],
                        "ablation": [0.2, 0.1, 0.0, 0.9, -0.5, 0.3, 0.4, 0.1],
                        "attention": [1.0] * 8, "distance": [100, 200, 300, 100, 200, 300, 100, 200], "abc": [0.5] * 8,
                        "peak_correlation": [0.1, 0.2, 0.3, 0.1, 0.2, 0.3, 0.1, 0.2],
                        "accessibility_regression": [0.3, 0.2, 0.1, 0.3, 0.2, 0.1, 0.0, 0.0],
                        "label": [True, False, False, True, False, False, False, False]})
    tasks, per_gene = enhancer_tasks(lab)
    t, per = tasks["enhancer_gene"], per_gene.filter(pl.col("task") == "enhancer_gene")
    assert per["gene_id"].to_list() == [0, 1] and per["positives"].to_list() == [1, 1]
    assert t["per_gene_genes"] == 2 and t["per_gene_auprc"]["ablation_abs"] == pytest.approx(1.0)
    assert t["model"] == pytest.approx((1 + 2 / 5) / 2)  # gene 1's causal peak first, gene 0's fifth
    assert t["per_gene_auprc"]["distance"] == pytest.approx(1.0) and t["per_gene_auprc"]["peak_correlation"] == pytest.approx(1 / 3)


def test_spearman_and_fraction_closer_by_hand():
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([10.0, 30.0, 20.0])) == pytest.approx(0.5)
    assert spearman(np.zeros(3), np.arange(3.0)) == 0.0
    src = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 3.0]])
    tgt = np.array([[1.0, 1.0], [1.0, -1.0]])  # centroid (1, 0)
    pert = np.array([[0.5, 0.0], [5.0, 0.0], [0.0, 1.0]])  # closer, farther, closer
    assert fraction_closer(src, tgt, pert) == pytest.approx(2 / 3)


def test_perturbation_task_by_hand():
    """Five triples: three responders (two direct, one indirect) and two below 0.1."""
    triples = pl.DataFrame({"cell_type": ["A"] * 5, "tf": ["T"] * 5, "gene_id": [0, 1, 2, 3, 4],
                            "true_lfc": [-1.0, 0.5, -0.3, 0.05, 0.0], "direct": [True, True, False, True, False]})
    keys = triples.select("cell_type", "tf", "gene_id")
    model = keys.with_columns(pl.Series("pred", [-0.8, -0.1, -0.2, 0.0, 0.01]))  # right, wrong, right
    motif = keys.with_columns(pl.Series("pred", [-1.0, -1.0, 0.0, -1.0, 0.0]))  # right, wrong, wrong (0)
    t = perturbation_task("KO", triples, {"model": model, "motif_sign": motif}, "predicted log2FC")
    assert t["model"] == pytest.approx(2 / 3) and t["baselines"]["motif_sign"] == pytest.approx(1 / 3)
    assert t["direct"]["model"] == pytest.approx(0.5) and t["indirect"]["model"] == pytest.approx(1.0)
    assert t["responders"] == 3 and t["direct_responders"] == 2 and t["met"]
    # |prediction| ranks 0.8 (resp), 0.2 (resp), 0.1 (resp), 0.01, 0: every responder first → AUPRC 1
    assert t["responder_auprc"]["model"] == pytest.approx(1.0)
    assert t["spearman"]["model"] == pytest.approx(spearman(np.array([-0.8, -0.1, -0.2, 0.0, 0.01]),
                                                            np.array([-1.0, 0.5, -0.3, 0.05, 0.0])))
    # a variant readout is scored alike and reported, and never becomes a baseline
    v = perturbation_task("KO", triples, {"model": model, "motif_sign": motif}, "predicted log2FC", {"model_one_step": motif})
    assert v["variants"] == {"model_one_step": pytest.approx(1 / 3)} and set(v["baselines"]) == {"motif_sign"}
    assert v["direct"]["variants"]["model_one_step"] == pytest.approx(0.5) and v["margin"] == t["margin"]
    assert "direct_by_scan" not in t
    # the direct responders split by whether the scan reaches a causal element: gene 0 (model right,
    # motif right) is reached, gene 1 (both wrong) is not; gene 3 is direct but no responder
    s = perturbation_task("KO", triples.with_columns(pl.Series("touched", [True, False, False, True, True])),
                          {"model": model, "motif_sign": motif}, "predicted log2FC")
    by = s["direct_by_scan"]
    assert by["touched_responders"] == 1 and by["touched"]["model"] == 1.0 and by["untouched"]["model"] == 0.0
    assert by["touched"]["baselines"]["motif_sign"] == 1.0 and by["untouched"]["baselines"]["motif_sign"] == 0.0
    assert s["model"] == t["model"] and s["direct"] == t["direct"]


def test_transition_and_therapeutic_tasks_need_the_planted_groups():
    disease = {"disease": "DIS", "normal": "CT0", "driver": "TF06"}
    trans = pl.DataFrame({"condition": ["TF06", "TF01", "TF02", "TF01+TF02"], "mode": ["KO"] * 4,
                          "transition_score": [0.9, 0.1, 0.3, 0.2], "fraction_closer": [0.8, 0.4, 0.2, 0.9]})
    t = transition_task(trans, disease, {"source": "DIS", "target": "CT0"}, 0.5)
    assert t["model"] == 0.8 and t["baselines"]["random_tf"] == pytest.approx(0.3) and t["best_baseline"]["name"] == "celloracle_like"
    assert transition_task(trans, disease, {"source": "CT1", "target": "CT0"}, 0.5) is None
    ranking = trans.select("condition", "transition_score").sort("transition_score", descending=True)
    th = therapeutic_task(ranking.with_row_index("rank", offset=1), disease, {"source": "DIS", "target": "CT0"}, de_rank=2)
    assert th["rank"] == 1 and th["hit_at_1"] and th["model"] == 1.0 and th["baselines"]["differential_expression"] == 0.5


def test_truth_of_another_simulator_version_is_refused(tmp_path):
    (tmp_path / "truth").mkdir()
    with pytest.raises(InputError, match="simulator v1; this scorecard needs simulator v4"):
        check_truth(tmp_path / "truth")
    (tmp_path / "truth" / "VERSION").write_text("3\n")
    with pytest.raises(InputError, match="simulator v3; this scorecard needs simulator v4"):
        check_truth(tmp_path / "truth")
    (tmp_path / "truth" / "VERSION").write_text("4\n")
    check_truth(tmp_path / "truth")
    with pytest.raises(InputError, match="does not exist"):
        check_truth(tmp_path / "nope")


def _cells(seed=0, n=400):
    """Gene 0 driven by peak 1 (not peak 0); gene 1 (a TF) drives gene 2."""
    rng = np.random.default_rng(seed)
    acc = rng.gamma(1.0, 1.0, (n, 3)).astype(np.float32)
    expr = np.zeros((n, 3), np.float32)
    expr[:, 0] = 2.0 * acc[:, 1] + rng.normal(0, 0.3, n)
    expr[:, 1] = rng.gamma(2.0, 1.0, n)
    expr[:, 2] = 1.5 * expr[:, 1] + rng.normal(0, 0.3, n)
    return CellData(np.arange(n), expr, acc)


def test_accessibility_ridge_ranks_the_driving_peak_and_predicts_its_knockout():
    data = _cells()
    pairs = enhancer_baselines(data, pl.DataFrame({"gene_id": [0, 0], "peak_id": [0, 1]}))
    assert pairs["accessibility_regression"][1] > 10 * pairs["accessibility_regression"][0]
    assert pairs["peak_correlation"][1] > 0.9
    ko = accessibility_perturbation(data, {0: np.array([0, 1])}, {"T": np.array([False, True, False])},
                                    {"A": np.arange(400)})
    # zeroing peak 1 removes about 2 x its mean accessibility (1.0) from gene 0's expression
    assert ko["log2fc"][0] == pytest.approx(-2.0 * data.accessibility[:, 1].mean() / np.log(2), rel=0.1)


def test_celloracle_like_propagates_a_tf_knockout_to_its_targets():
    data = _cells()
    ko = celloracle_perturbation(data, {"T1": 1}, {2: ["T1"]}, {"A": np.arange(400)})
    row = ko.filter(pl.col("gene_id") == 2)
    assert row.height == 1 and row["log2fc"][0] == pytest.approx(-1.5 * data.expression[:, 1].mean() / np.log(2), rel=0.1)


def test_motif_deviations_by_hand():
    # 2 cells x 3 peaks; TF A binds peaks 0 and 1, TF B peak 2
    acc = np.array([[2.0, 0.0, 2.0], [0.0, 1.0, 3.0]])
    dev = motif_deviations(CellData(np.arange(2), np.zeros((2, 1)), acc), {"A": np.array([1, 1, 0], bool), "B": np.array([0, 0, 1], bool)})
    share = acc.sum(0) / acc.sum()  # 0.25, 0.125, 0.625
    for c in range(2):
        total = acc[c].sum()
        assert dev[c, 0] == pytest.approx(acc[c, :2].sum() / (total * share[:2].sum()) - 1)
        assert dev[c, 1] == pytest.approx(acc[c, 2] / (total * share[2]) - 1)
    assert dev[0, 0] > 0 > dev[1, 0]  # cell 0 is richer in A's peaks than expected, cell 1 poorer


def test_master_tf_task_scores_the_model_beside_every_baseline(tmp_path):
    truth = tmp_path / "truth"
    truth.mkdir()
    pl.DataFrame({"cell_type": ["X", "Y"], "master_tfs": ["A,B", "C"], "passenger_tfs": ["P", None]}).write_csv(
        truth / "cell_types.tsv", separator="\t")

    def ranking(method, x, y):
        return pl.DataFrame({"group": ["X"] * 4 + ["Y"] * 4, "tf": x + y, "coef": [4.0, 3.0, 2.0, 1.0] * 2,
                             "rank": [1, 2, 3, 4] * 2, "method": [method] * 8})
    masters = pl.concat([ranking("model", list("ABPC"), list("CPAB")), ranking("attention_feature", list("CPAB"), list("BAPC")),
                         ranking("gene_activity", list("PCAB"), list("ACBP")), ranking("tf_expression", list("BACP"), list("ABCP")),
                         ranking("knockout_regression", list("APCB"), list("CABP")),
                         ranking("gene_activity_mean_difference", list("ABPC"), list("PCAB"))])
    extra = {"motif_accessibility": ranking("x", list("APBC"), list("CABP")).drop("method"),
             "motif_accessibility_mean_difference": ranking("x", list("PABC"), list("BCAP")).drop("method")}
    t = master_tf_task(masters, truth, k=3, extra=extra)
    # R-precision: X's top 2 against {A, B}, Y's top 1 against {C}; each baseline under both rankings
    assert t["model"] == 1.0 and t["variants"] == {"knockout_regression": 0.75, "attention_feature": 0.0}
    assert t["baselines"] == {"gene_activity": 0.0, "gene_activity_mean_difference": 0.5, "tf_expression": 0.5,
                              "motif_accessibility": 0.75, "motif_accessibility_mean_difference": 0.25}
    assert t["best_baseline"] == {"name": "motif_accessibility", "value": 0.75} and t["met"]
    # the top-3 precision beside it leaves a slot for X's passenger: motif accessibility's 1.0 ties the model
    assert t["top_k_precision"]["baselines"] == {"gene_activity": 0.75, "gene_activity_mean_difference": 1.0, "tf_expression": 1.0,
                                                 "motif_accessibility": 1.0, "motif_accessibility_mean_difference": 1.0}
    assert {k: t["top_k_precision"][k] for k in ("k", "model", "variants")} == {
        "k": 3, "model": 1.0, "variants": {"knockout_regression": 0.75, "attention_feature": 0.25}}
    assert t["passenger_in_top"]["model"] == 0.0 and t["passenger_in_top"]["variants"] == {"knockout_regression": 1.0, "attention_feature": 1.0}
    assert t["passenger_in_top"]["baselines"] == {"gene_activity": 1.0, "gene_activity_mean_difference": 0.0, "tf_expression": 0.0,
                                                  "motif_accessibility": 1.0, "motif_accessibility_mean_difference": 1.0}
    assert t["per_group"] == {"X": 1.0, "Y": 1.0}


@pytest.mark.parametrize("n,p", [(203, 12), (57, 80), (40, 1)])
def test_the_ridge_baselines_fit_what_sklearns_ridgecv_fits(n, p):
    from sklearn.linear_model import RidgeCV

    from creformer.trainer.cis_refit import RIDGE_ALPHAS

    rng = np.random.default_rng(n)
    for trial in range(20):  # rows not a multiple of 5, more columns than rows, a constant column
        x = rng.normal(size=(n, p)) * rng.exponential(1.0, p)
        x[:, -1] = 0.0 if p > 1 and trial % 2 else x[:, -1]
        y = x[:, :3].sum(1) * rng.normal() + rng.exponential(2.0) * rng.normal(size=n)
        ref, got = RidgeCV(alphas=RIDGE_ALPHAS, cv=5).fit(x, y), ridge_cv(x, y)
        assert got.alpha_ == ref.alpha_
        assert np.allclose(got.coef_, ref.coef_, rtol=1e-9, atol=1e-12) and got.intercept_ == pytest.approx(ref.intercept_, rel=1e-9, abs=1e-12)
        assert np.allclose(got.predict(x[:5]), ref.predict(x[:5]), rtol=1e-9, atol=1e-12)


def test_baselines_read_the_cells_atlas_grn_analysed():
    """read_cells: atlas_grn's own seeded sample (analysis/plan.py's call), every grouped cell at 0,
    and an error naming the mismatch when atlas.json counted other cells."""
    from creformer.analysis.inputs import sample_cells

    every = pl.DataFrame({"cell_id": np.arange(60), "barcode": [f"b{i}" for i in range(60)],
                          "group": ["A"] * 25 + ["B"] * 35})
    sampled = read_cells(every, 10, 3, 20)
    assert sampled.equals(sample_cells(every, 10, 3))
    assert sampled.group_by("group").len().sort("group")["len"].to_list() == [10, 10]
    assert read_cells(every, 0, 3, 60).height == 60  # 0: every grouped cell
    with pytest.raises(InputError, match="analysed 21 cells"):
        read_cells(every, 10, 3, 21)


def test_a_baselines_perturbation_read_is_propagated_as_the_models_is():
    """TF A's knockout halves B's gene (gene 1, log2FC -1) and B's knockout lowers gene 2 by 2: one
    step moves gene 2 under A's knockout by half of B's effect, a gene A's own read left out; a
    knock-in that doubles B's gene moves it the other way."""
    from creformer.analysis.validate import propagated_reads

    ko = pl.DataFrame({"group": ["G"] * 3, "tf": ["A", "A", "B"], "gene_id": [1, 3, 2], "log2fc": [-1.0, -0.5, -2.0]})
    ki = pl.DataFrame({"group": ["G"], "tf": ["A"], "gene_id": [1], "log2fc": [1.0]})
    out = propagated_reads({"KO": ko, "KI": ki}, {"A": 0, "B": 1}, n_genes=4, steps=1)
    at = lambda mode, tf, g: out[mode].filter((pl.col("tf") == tf) & (pl.col("gene_id") == g))["log2fc"].item()  # noqa: E731
    assert at("KO", "A", 2) == pytest.approx(-1.0) and at("KO", "A", 1) == -1.0 and at("KO", "A", 3) == -0.5
    assert at("KI", "A", 2) == pytest.approx(2.0) and at("KO", "B", 2) == -2.0
    assert {mode: out[mode].height for mode in out} == {"KO": 8, "KI": 4}  # every gene of every read (group, TF)
    assert propagated_reads({"KO": ko}, {"A": 0, "B": 1}, 4, steps=0) == {}


def test_accessibility_support_adds_only_loose_sites_that_follow_the_motif():
    """binding_support.support streams blocks of cells and equals the dense computation: a loose site
    counts when its peak's accessibility correlates with the motif's chromVAR-style deviation."""
    import scipy.sparse as sparse

    from creformer.analysis.baselines import correlation
    from creformer.analysis.binding_support import support

    rng = np.random.default_rng(0)
    n_cells, n_peaks = 40, 6
    activity = rng.random(n_cells)  # motif 0's TF activity per cell
    acc = np.zeros((n_cells, n_peaks))
    acc[:, 0] = acc[:, 1] = 5 * activity  # the scan's sites of motif 0 open with the TF
    acc[:, 2] = 3 * activity + 0.2 * rng.random(n_cells)  # a weak site that follows the TF
    acc[:, 3] = 3 * (1 - activity)  # a weak site that does not
    acc[:, 4] = 3 * activity  # follows it, but carries no site
    acc[:, 5] = 1 + rng.random(n_cells)
    acc[-3:] = 0  # cells without signal: in no block
    bound = np.zeros((n_peaks, 2), bool)
    bound[[0, 1], 0] = True
    bound[5, 1] = True
    loose = bound.copy()
    loose[[2, 3], 0] = True
    loose[2, 1] = True  # a loose site of motif 1, whose deviation peak 2 does not follow
    blocks = lambda: (sparse.csr_matrix(acc[a:b]) for a, b in ((0, 20), (20, n_cells - 3)))  # noqa: E731
    got = support(blocks, n_cells, bound, loose, 0.5)
    want = bound.copy()
    want[2, 0] = True
    assert (got == want).all()
    # the r it thresholds is the dense one: motif_deviations, then Pearson r over every cell
    dev = motif_deviations(CellData(np.arange(n_cells), np.zeros((n_cells, 1)), acc), {"A": bound[:, 0], "B": bound[:, 1]})
    r = np.stack([correlation(acc, dev[:, j]) for j in range(2)], 1)
    for thr in (-0.5, 0.0, 0.3, 0.9):
        assert (support(blocks, n_cells, bound, loose, thr) == (bound | (loose & (r >= thr)))).all()
    with pytest.raises(ValueError, match="same peaks and motifs"):
        support(blocks, n_cells, bound, loose[:3], 0.1)

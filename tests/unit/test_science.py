"""benchmarks/science.py's aggregation over seeds: mean ± spread per task, the best baseline by its
mean, the margin against each seed's own best baseline, the seeds won."""

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load(name: str, path: str):
    """A script of the repository (not a package module) loaded by its path."""
    spec = importlib.util.spec_from_file_location(name, REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


science = _load("science", "benchmarks/science.py")
mr = _load("make_results", "docs/make_results.py")


def card(model, baselines, variants=None):
    best = max(baselines, key=baselines.get)
    return {"metric": "AUPRC", "readout": "fixed", "model": model, "baselines": baselines, "variants": variants or {},
            "best_baseline": {"name": best, "value": baselines[best]}}


def test_aggregate_means_spreads_and_margins():
    cards = {0: {"grn": card(0.5, {"a": 0.4, "b": 0.45}, {"att": 0.2})},
             1: {"grn": card(0.3, {"a": 0.5, "b": 0.35}, {"att": 0.4})},
             2: {"grn": card(0.7, {"a": 0.3, "b": 0.6}, {"att": 0.3}), "master_tfs": {"not_scored": "no groups"}}}
    evals = {0: {"pearson_r": 0.5, "baseline_gene_mean_r": 0.4}, 1: {}, 2: {"pearson_r": 0.7, "baseline_gene_mean_r": 0.6}}
    out = science.aggregate(cards, evals)
    assert set(out["tasks"]) == {"grn"}  # a task no seed scored is left out
    g = out["tasks"]["grn"]
    assert g["model"]["mean"] == pytest.approx(0.5) and g["model"]["sd"] == pytest.approx(0.2)
    # best baseline by mean: a 0.4, b 0.4667 -> b
    assert g["best_baseline"]["name"] == "b" and g["best_baseline"]["mean"] == pytest.approx(1.4 / 3)
    # margins against each seed's own best: 0.5-0.45, 0.3-0.5, 0.7-0.6
    assert g["margin"]["mean"] == pytest.approx((0.05 - 0.2 + 0.1) / 3) and g["seeds_won"] == 2
    assert g["variants"]["att"]["mean"] == pytest.approx(0.3)
    assert out["heldout_expression"]["pearson_r"]["n"] == 2
    assert "grn" in science.table(out) and "0.500 ± 0.200" in science.table(out)


def test_one_seed_has_zero_spread():
    out = science.aggregate({0: {"grn": card(0.5, {"a": 0.4})}}, {0: {}})
    assert out["tasks"]["grn"]["model"]["sd"] == 0.0 and out["heldout_expression"] is None


def test_enhancer_per_gene_auprc_is_aggregated_and_printed():
    cards = {s: {"enhancer_gene": {**card(m, {"ridge": 0.7, "corr": 0.75}),
                                   "per_gene_auprc": {"ablation_abs": g, "ridge": 0.9, "corr": 0.8, "abc": None}}}
             for s, (m, g) in enumerate([(0.5, 0.6), (0.6, 0.8)])}
    out = science.aggregate(cards, {0: {}, 1: {}})
    pg = out["tasks"]["enhancer_gene"]["per_gene_auprc"]
    assert pg["ablation_abs"]["mean"] == pytest.approx(0.7) and pg["ridge"]["sd"] == 0.0 and "abc" not in pg
    # the per-gene line names the best baseline per gene (ridge), not the best global one (corr)
    assert science.best_per_gene(out["tasks"]["enhancer_gene"]) == "ridge" and out["tasks"]["enhancer_gene"]["best_baseline"]["name"] == "corr"
    assert "enhancer_gene per gene" in science.table(out) and "ridge 0.900 ± 0.000" in science.table(out)


def test_the_result_names_the_code_it_ran(tmp_path):
    from creformer.provenance import code_version

    version = code_version()
    if (REPO / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{7,}(\+dirty)?", version)
    assert code_version(tmp_path) is None  # not a git checkout


def test_the_results_page_keeps_its_science_table_when_no_science_json_is_at_hand(tmp_path, monkeypatch):
    # `make results` after a demo, on a checkout whose runs/ holds no science.json: the last table stays
    page = tmp_path / "results.md"
    table = ["Preset `science`, seeds [0, 1, 2], 73.4 min in all", "", "| task | model |", "|---|---|", "| knockout | 0.816 |", ""]
    page.write_text("\n".join(["# Results", "", mr.SCIENCE_HEADING, "", "From `runs/science/science.json`.", "", *table,
                               "## Demo scorecard", "", "old demo"]))
    for _ in range(2):  # twice: the note on where it came from is not repeated
        monkeypatch.setattr("sys.argv", ["make_results.py", "--demo", str(tmp_path / "no_demo"),
                                         "--science", str(tmp_path / "none.json"), "--out", str(page)])
        mr.main()
        text = page.read_text()
        assert text.count(mr.SCIENCE_HEADING) == 1 and text.count("Kept from the previous") == 1
        assert "| knockout | 0.816 |" in text and "73.4 min in all" in text and "old demo" not in text
        assert "\n\n\n" not in text
    assert mr.previous_section(tmp_path / "absent.md", mr.SCIENCE_HEADING) == []


def test_a_metric_with_a_bar_stays_in_its_table_cell():
    card = {"master_tfs": {"metric": "R-precision (top |masters| per cell type)", "model": 1.0, "variants": {},
                           "baselines": {"motif_accessibility": 0.9}, "best_baseline": {"name": "motif_accessibility", "value": 0.9},
                           "margin": 0.1, "met": True}}
    header, _, row = mr.scorecard_section(card)
    cells = re.split(r"(?<!\\)\|", row)  # markdown splits cells at bars that are not escaped
    assert len(cells) == len(header.split("|")) and cells[2].strip() == "R-precision (top \\|masters\\| per cell type)"


def test_rescore_scores_a_finished_runs_seeds_again_and_keeps_its_timings(tmp_path, monkeypatch):
    """A referee change is applied to a finished run without retraining: each seed's atlas outputs
    are scored again, its scorecard rewritten, and science.json keeps the run's own timings."""
    import json

    from creformer.analysis import validate

    run = {"preset": "science", "seeds": [3, 4], "commit": "abc1234", "seconds_per_seed": {"3": 1195.2, "4": 1187.4},
           "seconds_total": 2382.6, "cpu_cores": 2, "created": "then", "atlas_observed_forwards": {"3": 0, "4": 0},
           "tasks": {"grn": {"stale": True}}}
    (tmp_path / "science.json").write_text(json.dumps(run))
    for seed in (3, 4):
        (tmp_path / f"seed{seed}" / "train" / "regulatory").mkdir(parents=True)
        (tmp_path / f"seed{seed}" / "train" / "regulatory" / "eval.json").write_text(
            json.dumps({"pearson_r": 0.6, "baseline_gene_mean_r": 0.5}))
    scored = []

    def fake_scorecard(atlas, truth):
        scored.append((atlas.relative_to(tmp_path).as_posix(), truth.relative_to(tmp_path).as_posix()))
        return {"grn": card(0.6 if "seed3" in str(atlas) else 0.4, {"a": 0.5})}
    monkeypatch.setattr(validate, "scorecard", fake_scorecard)
    out = science.rescore(tmp_path)
    assert scored == [("seed3/atlas", "seed3/sim/truth"), ("seed4/atlas", "seed4/sim/truth")]
    assert out["seconds_per_seed"] == run["seconds_per_seed"] and out["commit"] == "abc1234" and out["created"] == "then"
    assert out["rescored"]["commit"] and out["tasks"]["grn"]["model"]["mean"] == pytest.approx(0.5)
    assert out["tasks"]["grn"]["seeds_won"] == 1 and out["heldout_expression"]["pearson_r"]["n"] == 2
    assert json.loads((tmp_path / "science.json").read_text()) == out
    assert json.loads((tmp_path / "seed4" / "scorecard.json").read_text())["grn"]["model"] == 0.4
    with pytest.raises(SystemExit, match="run the benchmark first"):
        science.rescore(tmp_path / "nowhere")
    # the results page says the run was scored again, and with which code
    page = "\n".join(mr.science_section(out))
    assert f"with commit {out['rescored']['commit']}'s referee" in page and "39.7 min in all" in page


def _finished_run(folder, seeds, models, preset="science", readout="fixed", created="2026-12-08T01:00:00+0000"):
    """A finished science run on disk: science.json and each seed's scorecard and held-out check."""
    import json

    run = {"preset": preset, "seeds": seeds, "overrides": [], "commit": "abc1234", "created": created, "cpu_cores": 2,
           "seconds_per_seed": {str(s): 1000.0 for s in seeds}, "seconds_total": 1000.0 * len(seeds),
           "atlas_observed_forwards": {str(s): 0 for s in seeds}}
    folder.mkdir(parents=True)
    (folder / "science.json").write_text(json.dumps(run))
    for seed, m in zip(seeds, models):
        (folder / f"seed{seed}" / "train" / "regulatory").mkdir(parents=True)
        (folder / f"seed{seed}" / "train" / "regulatory" / "eval.json").write_text(
            json.dumps({"pearson_r": 0.6, "baseline_gene_mean_r": 0.5}))
        (folder / f"seed{seed}" / "scorecard.json").write_text(json.dumps({"grn": {**card(m, {"a": 0.5}), "readout": readout}}))


def test_pool_aggregates_the_seeds_of_several_runs_as_one(tmp_path):
    import json

    _finished_run(tmp_path / "r1", [3, 4], [0.6, 0.4])
    _finished_run(tmp_path / "r2", [5], [0.8], created="2026-12-09T01:00:00+0000")
    out = science.pool([tmp_path / "r1", tmp_path / "r2"], tmp_path / "pooled")
    g = out["tasks"]["grn"]
    assert out["seeds"] == [3, 4, 5] and g["model"]["n"] == 3 and g["model"]["mean"] == pytest.approx(0.6)
    assert g["seeds_won"] == 2 and out["heldout_expression"]["pearson_r"]["n"] == 3
    assert out["seconds_total"] == 3000.0 and set(out["seconds_per_seed"]) == {"3", "4", "5"}
    assert [r["seeds"] for r in out["pooled_from"]] == [[3, 4], [5]] and out["created"] == "2026-12-09T01:00:00+0000"
    assert json.loads((tmp_path / "pooled" / "science.json").read_text()) == out
    assert science.pool([tmp_path / "r1", tmp_path / "r2"], tmp_path / "pooled")["seeds"] == [3, 4, 5]  # pooled again
    with pytest.raises(SystemExit, match="a run's own result"):  # --out left at a run's folder
        science.pool([tmp_path / "r1", tmp_path / "r2"], tmp_path / "r1")
    # the results page names each run, not one run's total time
    page = "\n".join(mr.science_section(out))
    assert "pooled from 2 runs" in page and "seeds [3, 4] in 33.3 min" in page and "seeds [5] in 16.7 min" in page
    assert "| grn | AUPRC | 0.600 ± 0.200 |" in page


@pytest.mark.parametrize("second, message", [
    (dict(seeds=[4], models=[0.5]), "seed 4 is in both"),
    (dict(seeds=[5], models=[0.5], readout="another"), "grn is scored by different readouts"),
    (dict(seeds=[5], models=[0.5], preset="demo"), "pool only runs of the same preset"),
])
def test_pool_refuses_seeds_that_were_not_scored_alike(tmp_path, second, message):
    _finished_run(tmp_path / "r1", [3, 4], [0.6, 0.4])
    _finished_run(tmp_path / "r2", **second)
    with pytest.raises(SystemExit, match=message):
        science.pool([tmp_path / "r1", tmp_path / "r2"], tmp_path / "pooled")
    with pytest.raises(SystemExit, match="finished science runs"):
        science.pool([tmp_path / "r1", tmp_path / "nowhere"], tmp_path / "pooled")


def test_the_results_page_gives_direct_responders_and_the_margins_standard_error():
    cards = {s: {"knockout": {**card(m, {"a": 0.8}), "direct": {"model": d}}}
             for s, (m, d) in enumerate([(0.82, 0.85), (0.84, 0.87), (0.79, 0.84), (0.83, 0.88)])}
    sci = {"preset": "science", "seeds": [0, 1, 2, 3], "seconds_total": 600.0, "cpu_cores": 2, "created": "now",
           "atlas_observed_forwards": {}, **science.aggregate(cards, {s: {} for s in cards})}
    page = "\n".join(mr.science_section(sci))
    assert "knockout 0.860 ± 0.018" in page
    # margins 0.02, 0.04, -0.01, 0.03: mean 0.02, s.d. 0.02160 -> 0.02 / (0.02160 / 2) = 1.85
    assert "knockout 1.9." in page
    sci3 = {**sci, "seeds": [0, 1, 2]}  # three seeds: no standard-error line
    assert "standard error" not in "\n".join(mr.science_section(sci3))

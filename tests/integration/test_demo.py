import importlib.util
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_science_smoke_runs_the_demo_path_end_to_end_on_tiny(tmp_path, ray_local, shared_data_or_none):
    """benchmarks/science.py on the tiny preset, one seed, few steps: the demo's whole path (report +
    scorecard, every plot present, the embedding store built and read) and science.json."""
    spec = importlib.util.spec_from_file_location("science", REPO / "benchmarks" / "science.py")
    science = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(science)

    result = science.run_science(tmp_path, "tiny", [0], ("data.shard_size_mb=2", "analysis.cells_per_group=8",
                                                         "analysis.min_cells_per_group=8", "train.elementary.max_steps=10",
                                                         "train.regulatory.max_steps=10"), data_dir=shared_data_or_none)
    sci = json.loads((tmp_path / "science.json").read_text())
    assert sci == json.loads(json.dumps(result)) and sci["seeds"] == [0] and "commit" in sci
    assert {"master_tfs", "grn", "enhancer_gene", "knockout", "knock_in"} <= set(sci["tasks"])
    for t in sci["tasks"].values():
        assert t["model"]["n"] == 1 and t["best_baseline"]["name"] in t["baselines"]
        assert t["margin"]["mean"] == pytest.approx(t["model"]["mean"] - t["per_seed"]["0"]["best_baseline"]["value"])
    assert sci["heldout_expression"]["pearson_r"]["n"] == 1
    # the tiny preset builds the store (mode auto, within budget): atlas_grn embeds no cell signal again
    assert sci["atlas_observed_forwards"] == {"0": 0}
    printed = science.table(sci)
    assert all(task in printed for task in sci["tasks"]) and "held-out expression r" in printed

    out = tmp_path / "seed0"
    report = out / "report.html"
    page = report.read_text()
    images = re.findall(r"<img src='([^']+)'", page)
    assert images and all((report.parent / img).exists() for img in images)
    assert "atlas_grn" in page and "not yet implemented" not in page
    assert "Training checks" in page and "held-out cells" in page and "planted motif" in page
    card = json.loads((out / "scorecard.json").read_text())
    assert {"master_tfs", "grn", "enhancer_gene", "knockout", "knock_in", "transition", "therapeutic_target"} <= set(card)
    assert all("best_baseline" in card[k] for k in ("master_tfs", "grn", "enhancer_gene", "knockout", "knock_in"))
    atlas_page = (out / "atlas" / "report.html").read_text()
    assert all((out / "atlas" / img).exists() for img in re.findall(r"<img src='([^']+)'", atlas_page))
    if shared_data_or_none is not None:  # the real CRISPRi table is scored (baselines) in the same run
        crispri = json.loads((out / "atlas" / "crispri.json").read_text())
        assert crispri["counts"]["valid_pairs"] == 10356 and crispri["scores"]["distance"]["auprc"] == pytest.approx(0.4359, abs=1e-3)

import json
import re

import pytest


def test_demo_runs_end_to_end_on_tiny(tmp_path, ray_local, shared_data_or_none):
    """The demo's whole path on the tiny preset (few steps): report + scorecard, every plot present."""
    from creformer.demo import run

    out = tmp_path / "demo"
    report = run(out, config="tiny", overrides=("data.shard_size_mb=2", "analysis.cells_per_group=8",
                                                "analysis.min_cells_per_group=8", "train.elementary.max_steps=10",
                                                "train.regulatory.max_steps=10"), data_dir=shared_data_or_none)
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

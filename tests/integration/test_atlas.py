"""atlas_grn end to end on the tiny simulated atlas: submitted with `ray job submit` to a real local
head, resumed per partition, scored by `creformer validate`; bad inputs fail before Ray work."""

import json
import re
import shutil

import anndata as ad
import polars as pl
import pyBigWig
import pytest

from creformer.analysis.atlas import atlas_grn
from creformer.cli import main as cli_main
from creformer.config import ConfigError
from creformer.engine.errors import InputError
from creformer.trainer.jobs import train_elementary, train_regulatory

from ..conftest import tiny_config


@pytest.fixture(scope="module")
def trained(sim_tiny, tmp_path_factory, ray_local):
    tmp = tmp_path_factory.mktemp("atlas_models")
    cfg = tiny_config(f"train.storage_path={tmp / 'train'}", "train.log_every=5", f"data.samples={sim_tiny / 'samples.tsv'}",
                      f"data.genome={sim_tiny / 'genome.fa'}", f"data.shards={tmp / 'shards'}", "data.crop_length=128",
                      f"data.regulatory.multiome={sim_tiny / 'multiome'}", f"data.regulatory.annotation={sim_tiny / 'genes.gtf'}",
                      f"data.regulatory.shards={tmp / 'reg'}",
                      *[f"train.{stage}.{key}" for stage in ("elementary", "regulatory")
                        for key in ("lr=1e-3", "warmup_steps=2", "max_steps=10", "checkpoint_every=10")],
                      "train.regulatory.micro_batch=16")
    el = train_elementary(cfg).weights
    rg = train_regulatory(cfg).weights
    return tmp, el, rg


def args(sim, tmp, el, rg, out, *extra):
    """The atlas_grn overrides of these tests (CLI words and ``tiny_config`` alike)."""
    return [f"data.regulatory.shards={tmp / 'reg'}", f"train.regulatory.elementary_weights={el}",
            f"analysis.regulatory_weights={rg}", f"analysis.out={out}", f"analysis.motifs={sim / 'motifs.meme'}",
            f"analysis.groups={sim / 'truth' / 'cells.tsv'}", f"analysis.truth={sim / 'truth'}", "analysis.cells_per_group=6",
            "analysis.min_cells_per_group=5", "analysis.cells_per_partition=6", "analysis.multi_tf=[TF01+TF02]", *extra]


def test_atlas_grn_job_submit_outputs_and_resume(cluster, trained, sim_tiny, tmp_path, ray_local):
    tmp, el, rg = trained
    out = tmp_path / "atlas"
    job = cluster.submit("atlas_grn", "--config", "tiny", *args(sim_tiny, tmp, el, rg, out))
    log = job.stdout + job.stderr
    assert job.returncode == 0 and "succeeded" in log, log[-3000:]
    # the report opens and every image it references exists
    page = (out / "report.html").read_text()
    images = re.findall(r"<img src='([^']+)'", page)
    assert len(images) >= 7 and all((out / img).exists() for img in images)
    # the scorecard: one entry per metric with the model, its baselines and the target
    card = json.loads((out / "scorecard.json").read_text())
    expected = {"master_tfs": {"gene_activity", "tf_expression"},
                "grn": {"motif_only", "correlation", "regression", "scenic_like"},
                "enhancer_gene": {"distance", "abc", "peak_correlation", "accessibility_regression"},
                "knockout": {"motif_sign", "signed_correlation", "accessibility_regression", "celloracle_like", "no_change"},
                "knock_in": {"motif_sign", "signed_correlation", "accessibility_regression", "celloracle_like", "no_change"},
                "transition": {"random_tf", "source_unchanged", "celloracle_like"},
                "therapeutic_target": {"differential_expression"}}
    for name, baselines in expected.items():
        t = card[name]
        assert set(t["baselines"]) == baselines and 0.0 <= t["model"] <= 1.0, (name, t)
        assert t["margin"] == pytest.approx(t["model"] - t["best_baseline"]["value"]) and t["met"] == (t["margin"] > 0)
        assert all(v is None or v < 1.0 for k, v in t["baselines"].items() if name != "therapeutic_target"), (name, t)
    assert {"attention", "attention_ablation"} <= set(card["grn"]["variants"]) and "causal_peaks" in card["grn"]["ceilings"]
    assert card["knockout"]["direct"]["model"] is not None and card["knockout"]["responders"] > 0
    # the tables each analysis writes
    adata = ad.read_h5ad(out / "features.h5ad")
    assert adata.n_obs == 24 and {"attention_feature", "expression", "predicted"} <= set(adata.layers)
    groups = sorted(adata.obs["group"].unique())
    bw = pyBigWig.open(str(out / "tracks" / f"attention.{groups[0]}.bw"))
    assert bw.header()["nBasesCovered"] > 0
    bw.close()
    edges = pl.read_parquet(out / "grn" / "edges.parquet")
    assert set(edges.columns) >= {"tf", "target", "group", "score", "n_peaks", "peaks"}
    for name in ("scenicplus_eregulons.tsv", "celloracle_links.tsv"):
        assert (out / "grn" / name).exists()
    eff = pl.read_parquet(out / "perturbation_effects.parquet")
    assert {"KO", "KI"} == set(eff["mode"].unique()) and "TF01+TF02" in set(eff["condition"].unique())
    med = pl.read_parquet(out / "ko_mediators.parquet")
    assert set(med["condition"].unique()) <= set(eff.filter(pl.col("mode") == "KO")["condition"].unique()) and med.height > 0
    assert {"right", "wrong"} <= set(card["knockout"]["decomposition"]) and "main_peak" in page
    # each actor's thread pools are as wide as the CPUs Ray reserved for it, not the machine's
    for marker in (out / "partitions" / "done").glob("part-*.json"):
        assert json.loads(marker.read_text())["threads"] == {"torch": 1, "polars": 1, "arrow": 1}
    # every shared-embedding slice was taken by one worker and is on disk
    work = out / "work"
    n_slices = len(json.loads((work / "shared_slices.json").read_text()))
    assert n_slices >= 1 and len(list((work / "shared_claim").iterdir())) == len(list((work / "shared_done").iterdir())) == n_slices
    # a rerun reuses every finished partition (in-process this time, same fingerprint)
    atlas_grn(tiny_config(*args(sim_tiny, tmp, el, rg, out)))
    meta = json.loads((out / "atlas.json").read_text())
    assert meta["stats"]["reused"] == meta["stats"]["partitions"] == 4
    # `creformer validate` rescoring the same tables gives the same scorecard
    assert cli_main(["validate", "--atlas", str(out), "--truth", str(sim_tiny / "truth")]) == 0
    assert json.loads((out / "scorecard.json").read_text())["grn"]["model"] == card["grn"]["model"]


def test_atlas_grn_bad_inputs_fail_before_ray_work(trained, sim_tiny, tmp_path):
    tmp, el, rg = trained
    base = args(sim_tiny, tmp, el, rg, tmp_path / "bad")
    with pytest.raises(InputError, match="fewer than analysis.min_cells_per_group=500"):
        atlas_grn(tiny_config(*base, "analysis.min_cells_per_group=500"))
    with pytest.raises(InputError, match="analysis.source_group='CT9' is not a cell group"):
        atlas_grn(tiny_config(*base, "analysis.source_group=CT9"))
    with pytest.raises(InputError, match="unknown TF name"):
        atlas_grn(tiny_config(*base, "analysis.tfs=[NOPE1]"))
    with pytest.raises(InputError, match="genes absent from the model's shards"):
        atlas_grn(tiny_config(*base, "analysis.genes=[NOGENE]"))
    bad_meme = tmp_path / "bad.meme"
    bad_meme.write_text("MEME version 4\n\nMOTIF M1 TF01\nletter-probability matrix: alength= 4 w= 2\n0.5 0.5\n")
    with pytest.raises(InputError, match="bad.meme, line 5"):
        atlas_grn(tiny_config(*base, f"analysis.motifs={bad_meme}"))
    with pytest.raises(ConfigError, match="does not fit the regulatory model"):
        atlas_grn(tiny_config(*base, f"analysis.regulatory_weights={el}"))  # an Elementary file is not a Regulatory head
    other = tmp_path / "export"
    shutil.copytree(rg.parent, other)
    (other / "config.yaml").write_text((other / "config.yaml").read_text().replace("peak_m: 150", "peak_m: 100"))
    with pytest.raises(ConfigError, match="trained with peak_m=100"):
        atlas_grn(tiny_config(*base, f"analysis.regulatory_weights={other / 'model.safetensors'}"))
    with pytest.raises(ConfigError, match="do not exist"):
        atlas_grn(tiny_config(*base, f"analysis.regulatory_weights={tmp_path / 'missing.safetensors'}"))
    assert not (tmp_path / "bad" / "partitions").exists()  # nothing ran

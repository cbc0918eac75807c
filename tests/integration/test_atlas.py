"""atlas_grn end to end on the tiny simulated atlas: submitted with `ray job submit` to a real local
head, resumed per partition, scored by `creformer validate`; bad inputs fail before Ray work."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import polars as pl
import pyBigWig
import pytest
from safetensors.torch import load_file, save_file

from creformer.analysis.atlas import atlas_grn
from creformer.cli import main as cli_main
from creformer.config import ConfigError
from creformer.engine.errors import InputError
from creformer.engine.io.peaks import read_peaks

from ..conftest import tiny_config


@pytest.fixture(scope="module")
def trained(tiny_models):
    """(folder holding reg/, the tiny atlas's regulatory shards; Elementary weights; Regulatory weights)."""
    return tiny_models.root, tiny_models.elementary, tiny_models.regulatory


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
    expected = {"master_tfs": {m + how for m in ("gene_activity", "tf_expression", "motif_accessibility")
                               for how in ("", "_mean_difference")},
                "grn": {"motif_only", "correlation", "regression", "scenic_like"},
                "enhancer_gene": {"distance", "abc", "peak_correlation", "accessibility_regression"},
                "knockout": {"motif_sign", "signed_correlation", "accessibility_regression", "accessibility_regression_propagated",
                             "celloracle_like", "no_change"},
                "knock_in": {"motif_sign", "signed_correlation", "accessibility_regression", "accessibility_regression_propagated",
                             "celloracle_like", "no_change"},
                "transition": {"random_tf", "source_unchanged", "celloracle_like"},
                "therapeutic_target": {"differential_expression"}}
    for name, baselines in expected.items():
        t = card[name]
        assert set(t["baselines"]) == baselines and 0.0 <= t["model"] <= 1.0, (name, t)
        assert t["margin"] == pytest.approx(t["model"] - t["best_baseline"]["value"]) and t["met"] == (t["margin"] > 0)
        # no baseline is trivial (simulator v4: passenger TFs keep motif accessibility from finding every
        # master, docs/design.md §8). Differential expression is exempt here only: on this tiny atlas (~75
        # cells per group, 9 TFs) it ranks the signal-activated driver by chance (seed 0 of v4: 0.87 against
        # TF04's 0.84, where the mean-level truth gives the driver 0.06 and TF04 0.48; tests/unit/test_simulate.py
        # holds the mean-level invariant that it is not first)
        exempt = {"differential_expression"} if name == "therapeutic_target" else set()
        assert all(v is None or v < 1.0 for b, v in t["baselines"].items() if b not in exempt), (name, t)
    assert set(card["master_tfs"]["variants"]) == {"knockout_regression", "attention_feature"}
    # R-precision is scored; the top-3 precision and where each method ranks the passengers sit beside it
    masters = card["master_tfs"]
    assert masters["top_k_precision"]["k"] == 3 and set(masters["passenger_in_top"]["baselines"]) == expected["master_tfs"]
    assert masters["top_k_precision"]["model"] >= masters["model"]  # a longer list finds at least as many
    per_gene = pl.read_parquet(out / "enhancer_per_gene.parquet")  # the gene-by-gene diagnostic and its plot
    assert per_gene.filter(pl.col("task") == "enhancer_gene").height == card["enhancer_gene"]["per_gene_genes"] > 0
    assert card["enhancer_gene"]["per_gene_auprc"]["ablation_abs"] == pytest.approx(
        per_gene.filter(pl.col("task") == "enhancer_gene")["ablation_abs"].mean())
    assert "figures/enhancer_per_gene.png" in page
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
    # the layouts other tools load (unit-tested in tests/unit/test_exports.py; here: written, consistent)
    base = pd.read_parquet(out / "grn" / "celloracle_base_grn.parquet")
    assert list(base.columns[:2]) == ["peak_id", "gene_short_name"] and base.shape[0] > 0
    assert set(base.columns[2:]) <= set(json.loads((out / "atlas.json").read_text())["tfs"])
    ereg = pl.read_csv(out / "grn" / "scenicplus_eregulons.tsv", separator="\t")
    assert ereg.height > 0 and set(ereg["regulation"].unique()) <= {-1, 1}
    assert ereg["eRegulon_name"].str.contains(r"^.+_direct_[+-]/[+-]$").all()
    mdata = md.read_h5mu(out / "atlas.h5mu")
    assert mdata.n_obs == adata.n_obs and set(mdata.mod) == {"rna", "peaks"} and "X_umap" in mdata.obsm
    sizes = json.loads((tmp / "reg" / "manifest.json").read_text())["chrom_sizes"]
    bw = pyBigWig.open(str(out / "tracks" / f"attention.{groups[0]}.bw"))
    assert all(bw.chroms()[c] == sizes[c] for c in bw.chroms())  # headers carry the genome's lengths
    bw.close()
    eff = pl.read_parquet(out / "perturbation_effects.parquet")
    assert {"KO", "KI"} == set(eff["mode"].unique()) and "TF01+TF02" in set(eff["condition"].unique())
    # the propagated read (analysis.ko_propagation): the scored readout of both, the one-step read their
    # variant (design §7)
    assert eff["log2fc_propagated"].is_finite().all() and eff["log2fc_propagated"].null_count() == 0
    assert "propagated" in card["knockout"]["readout"] and "propagated" in card["knock_in"]["readout"]
    for name, variant in (("knockout", "model_one_step"), ("knock_in", "model_one_step")):
        assert set(card[name]["variants"]) == {variant} and variant in card[name]["direct"]["variants"]
        by = card[name]["direct_by_scan"]  # the direct responders split by the scan's reach
        assert 0 <= by["touched_responders"] <= card[name]["direct_responders"] and variant in by["untouched"]["variants"]
        # 6 of each group's cells were analysed: the baselines read those, the strongest one also all of them
        assert 0 <= card[name]["all_cells_reference"]["accessibility_regression"] <= 1
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
    # perturbations acted on the scan's sites (analysis.perturb_support_pvalue is off by default)
    assert (np.load(work / "perturb_bound.npy") == np.load(work / "bound.npy")).all()
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
    # model.gene_embedding: a head trained on another gene list is refused (its gene table is by gene_id)
    state = load_file(str(rg))
    save_file(state, str(other / "model.safetensors"), metadata={"stage": "regulatory", "genes_sha256": "0" * 64})
    (other / "config.yaml").write_text((rg.parent / "config.yaml").read_text())
    with pytest.raises(ConfigError, match="another gene list"):
        atlas_grn(tiny_config(*base, f"analysis.regulatory_weights={other / 'model.safetensors'}"))
    with pytest.raises(ConfigError, match="do not exist"):
        atlas_grn(tiny_config(*base, f"analysis.regulatory_weights={tmp_path / 'missing.safetensors'}"))
    assert not (tmp_path / "bad" / "partitions").exists()  # nothing ran


@pytest.fixture(scope="module")
def h5ad_run(trained, sim_tiny, tmp_path_factory, ray_local):
    """`creformer run` on data as users often have it: RNA as .h5ad, fragments, a peak BED;
    pretrained Elementary weights (so train_elementary is skipped); the cis table refit after
    training (train.regulatory.cis_refit). Returns (exit code, run folder)."""
    from creformer.engine.io.multiome import read_10x_h5

    tmp, el, _ = trained
    tmp_path = tmp_path_factory.mktemp("h5ad_run")
    mo = read_10x_h5(sim_tiny / "multiome" / "filtered_feature_bc_matrix.h5")
    counts = mo.rna.read(np.arange(mo.rna.n_cells)).toarray()
    ad.AnnData(X=np.log1p(counts), obs=pd.DataFrame(index=list(mo.barcodes)),
               var=pd.DataFrame({"gene_ids": list(mo.gene_ids)}, index=list(mo.gene_names)),
               layers={"counts": counts}).write_h5ad(tmp_path / "rna.h5ad")
    (tmp_path / "peaks.bed").write_text("".join(f"{c}\t{s}\t{e}\n" for c, s, e in zip(mo.peak_chrom, mo.peak_start, mo.peak_end)))
    out = tmp_path / "run"
    cfg_args = [f"data.genome={sim_tiny / 'genome.fa'}", f"data.regulatory.multiome={tmp_path / 'rna.h5ad'}",
                f"data.regulatory.fragments={mo.fragments}", f"data.regulatory.peaks={tmp_path / 'peaks.bed'}",
                f"data.regulatory.annotation={sim_tiny / 'genes.gtf'}", f"data.regulatory.shards={out / 'reg'}",
                f"train.storage_path={out / 'train'}", f"train.regulatory.elementary_weights={el}",
                *[f"train.regulatory.{k}" for k in ("lr=1e-3", "warmup_steps=2", "max_steps=10", "checkpoint_every=10", "micro_batch=16",
                                                    "cis_refit=true")],
                f"analysis.out={out / 'atlas'}", f"analysis.motifs={sim_tiny / 'motifs.meme'}",
                f"analysis.groups={sim_tiny / 'truth' / 'cells.tsv'}", "analysis.cells_per_group=4", "analysis.min_cells_per_group=5",
                "analysis.cells_per_partition=8"]
    return cli_main(["run", "--config", "tiny", *cfg_args]), out


def test_creformer_run_on_h5ad_fragments_and_own_peaks(h5ad_run, trained):
    code, out = h5ad_run
    tmp = trained[0]
    assert code == 0
    assert not (out / "train" / "elementary").exists()  # pretrained weights given: no Elementary training
    assert (out / "train" / "regulatory" / "export" / "model.safetensors").exists()
    # train.regulatory.cis_refit=true refits the export in place before atlas_grn reads it (test_training checks the refit)
    refit = json.loads((out / "train" / "regulatory" / "export" / "meta.json").read_text())["cis_refit"]
    assert refit["genes_refit"] > 0 and refit["train_mse_after"] < refit["train_mse_before"]
    for name in ("report.html", "atlas.h5mu", "grn/celloracle_base_grn.parquet", "grn/scenicplus_eregulons.tsv"):
        assert (out / "atlas" / name).exists(), name
    # the same cells and genes as the ARC folder; the BED's overlapping peaks merged (bedtools merge)
    ref = json.loads((tmp / "reg" / "manifest.json").read_text())
    got = json.loads((out / "reg" / "manifest.json").read_text())
    assert (got["counts"]["cells"], got["counts"]["genes"]) == (ref["counts"]["cells"], ref["counts"]["genes"])
    merged = read_peaks(out.parent / "peaks.bed")
    assert got["tables"]["peaks"]["rows"] == merged.chrom.size == ref["tables"]["peaks"]["rows"] - merged.merged


def test_celloracle_loads_the_base_grn_and_simulates_a_knockout(h5ad_run):
    """With the real CellOracle (its own environment: it pins pandas <= 1.5.3 and matplotlib < 3.7,
    so it cannot share ours), load atlas.h5mu's RNA and grn/celloracle_base_grn.parquet, fit the
    GRN and simulate a knockout (tests/integration/celloracle_check.py)."""
    python = os.environ.get("CREFORMER_CELLORACLE_PYTHON")
    if not python:
        pytest.skip("set CREFORMER_CELLORACLE_PYTHON to a Python with celloracle installed "
                    "(python -m venv co && co/bin/pip install 'numpy<2' cython && co/bin/pip install --no-build-isolation "
                    "velocyto && co/bin/pip install celloracle 'pyarrow<15')")
    code, out = h5ad_run
    assert code == 0
    proc = subprocess.run([python, str(Path(__file__).with_name("celloracle_check.py")), str(out / "atlas"), "TF01"],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["base_grn_rows"] > 0 and got["tfs_in_base_grn"] > 0 and got["links_clusters"] and got["delta_abs_sum"] > 0


def test_atlas_grn_survives_a_worker_killed_mid_run(trained, sim_tiny, tmp_path, ray_local):
    """A worker process dies (os._exit, as with a lost node) when it starts partition 1, after the
    shared embeddings; Ray Data restarts it and retries the partition. Every partition is written
    once and the scores equal a clean run's."""
    from creformer.analysis.partitions import load_partitions

    tmp, el, rg = trained
    clean, faulty = tmp_path / "clean", tmp_path / "faulty"
    atlas_grn(tiny_config(*args(sim_tiny, tmp, el, rg, clean)))
    res = atlas_grn(tiny_config(*args(sim_tiny, tmp, el, rg, faulty, "analysis.fail_at=partition:1")))
    assert (faulty / "work" / "fault-partition-1").exists()  # the fault did happen
    n = res.stats["partitions"]
    for sub, suffix in (("done", ".json"), ("scores", ".parquet")):
        names = sorted(f.name for f in (faulty / "partitions" / sub).glob("part-*"))
        assert names == [f"part-{i:05d}{suffix}" for i in range(n)], (sub, names)
    (s0, p0), (s1, p1) = load_partitions(clean), load_partitions(faulty)
    assert s0.select("cell_id", "gene_id").equals(s1.select("cell_id", "gene_id"))
    assert np.allclose(s0["pred"].to_numpy(), s1["pred"].to_numpy(), atol=1e-5)
    key = ["cell_id", "gene_id", "condition", "mode"]
    assert np.allclose(p0.sort(key)["pred"].to_numpy(), p1.sort(key)["pred"].to_numpy(), atol=1e-5)
    assert json.loads((clean / "scorecard.json").read_text())["knockout"]["model"] == \
        pytest.approx(json.loads((faulty / "scorecard.json").read_text())["knockout"]["model"])

"""The ecosystem layouts on hand-made inputs: which (peak, gene) pairs are linked, CellOracle's base
GRN columns, SCENIC+'s eRegulon signs and names, and the MuData file (loaded back with mudata,
plotted with scanpy), from scored partitions through the streaming reductions."""

import matplotlib

matplotlib.use("Agg")

import mudata as md  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import pytest  # noqa: E402

from creformer.analysis import cell_files, exports, reduce  # noqa: E402
from creformer.analysis.atlas_worker import SCORE_SCHEMA  # noqa: E402
from creformer.analysis.features import peak_distance  # noqa: E402
from creformer.analysis.inputs import TF  # noqa: E402

GENES = pl.DataFrame({"gene_id": [0, 1], "gene": ["G0", "G1"], "name": ["TFA", "TGT"], "chrom": ["chr1", "chr1"],
                      "tss": [1000, 50_000], "strand": ["+", "+"]})
PEAKS = pl.DataFrame({"peak_id": [0, 1, 2, 3], "chrom": ["chr1"] * 4, "start": [900, 20_000, 49_900, 60_000],
                      "end": [1100, 20_200, 50_100, 60_200]})
# peak 0: TFA's promoter; peaks 1-3 in TGT's window (peak 2 its promoter)
ELEMS = pl.DataFrame({"gene_id": [0, 1, 1, 1], "peak_id": [0, 1, 2, 3], "ablation_abs": [0.1, 0.5, 0.0, 0.2]})
BOUND = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], bool)  # peaks x motifs
TFS = [TF("TFA", 0, 0), TF("TFB", 1, None)]  # TFB has no gene in the atlas


def test_links_keep_promoters_and_the_top_ablation_peaks():
    links = exports.regulatory_links(ELEMS, GENES, PEAKS, tss_region_bp=2000, top_k=1)
    assert links.select("gene_id", "peak_id", "promoter").rows() == [(0, 0, True), (1, 1, False), (1, 2, True)]
    assert links["importance_R2G"].to_list() == pytest.approx([0.1, 0.5, 0.0])


def test_celloracle_base_grn_layout():
    links = exports.regulatory_links(ELEMS, GENES, PEAKS, tss_region_bp=2000, top_k=1)
    base = exports.celloracle_base_grn(links, BOUND, TFS, GENES, PEAKS)
    assert list(base.columns) == ["peak_id", "gene_short_name", "TFA", "TFB"]  # as CellOracle's import_TF_data takes it
    assert base["peak_id"].tolist() == ["chr1_900_1100", "chr1_20000_20200", "chr1_49900_50100"]
    assert base["gene_short_name"].tolist() == ["TFA", "TGT", "TGT"]
    assert base[["TFA", "TFB"]].values.tolist() == [[0, 0], [1, 0], [1, 1]]


def _scored(tmp_path):
    """4 cells' scored partitions (two of them); TGT's window = peaks 1, 2, 3; TFA's window = peak 0."""
    expr_tfa = np.array([0.0, 1.0, 2.0, 3.0])
    expr_tgt = np.array([3.0, 2.0, 1.0, 0.5])  # falls as TFA rises: TFA represses TGT
    atac_tgt = np.array([[0.0, 1, 5], [1, 1, 4], [2, 1, 3], [3, 1, 1]], float)  # peak 1 rises as TGT falls
    rows = []
    for c in range(4):
        rows.append({"cell_id": c, "gene_id": 0, "expression": expr_tfa[c], "pred": expr_tfa[c] + 0.1, "peak_ids": [0],
                     "attention": [1.0], "atac": [float(c)], "ablation": [0.0]})
        rows.append({"cell_id": c, "gene_id": 1, "expression": expr_tgt[c], "pred": expr_tgt[c] + 0.1, "peak_ids": [1, 2, 3],
                     "attention": [0.5, 0.3, 0.2], "atac": atac_tgt[c].tolist(), "ablation": [0.0, 0.0, 0.0]})
    records = pl.DataFrame(rows, schema=SCORE_SCHEMA)
    for sub in ("scores", "perturb"):
        (tmp_path / "partitions" / sub).mkdir(parents=True)
    for k, ids in enumerate(([0, 1], [2, 3])):
        records.filter(pl.col("cell_id").is_in(ids)).write_parquet(tmp_path / "partitions" / "scores" / f"part-{k:05d}.parquet")
    cells = pl.DataFrame({"cell_id": [0, 1, 2, 3], "barcode": ["A-1", "B-1", "C-1", "D-1"], "group": ["x", "x", "y", "y"]})
    fp = reduce.first_pass(tmp_path, reduce.Universe.of(cells, 2, [0]))
    return cells, fp, atac_tgt, expr_tgt


def test_scenicplus_eregulons_signs_names_and_scores(tmp_path):
    _, fp, atac_tgt, expr_tgt = _scored(tmp_path)
    links = exports.regulatory_links(ELEMS, GENES, PEAKS, tss_region_bp=2000, top_k=1)
    effects = pl.DataFrame({"group": ["a", "b", "a"], "condition": ["TFA", "TFA", "TFA"], "mode": ["KO", "KO", "KI"],
                            "gene_id": [1, 1, 1], "log2fc": [0.2, 0.6, -0.9]})  # KO raises TGT: repressor
    t = exports.scenicplus_eregulons(links, BOUND, TFS, GENES, PEAKS, effects, fp.correlation([t.gene_id for t in TFS]),
                                     fp.genes, fp.region_correlation)
    assert t.columns == ["Region_signature_name", "Gene_signature_name", "TF", "is_extended", "Region", "Gene",
                         "importance_R2G", "rho_R2G", "importance_x_rho", "importance_TF2G", "regulation", "rho_TF2G",
                         "triplet_rank", "eRegulon_name"]
    # TFA's motif: peaks 1, 2 (linked to TGT); TFB has no gene; TFA's own promoter lacks its motif
    assert t["Region"].to_list() == ["chr1:20000-20200", "chr1:49900-50100"] and set(t["Gene"]) == {"TGT"}
    assert t["regulation"].to_list() == [-1, -1] and t["importance_TF2G"].to_list() == pytest.approx([0.6, 0.6])
    r1 = np.corrcoef(atac_tgt[:, 0], expr_tgt)[0, 1]
    assert t["rho_R2G"].to_list() == pytest.approx([r1, 0.0])  # peak 2 is constant
    assert t["rho_TF2G"].to_list() == pytest.approx([np.corrcoef([0, 1, 2, 3], expr_tgt)[0, 1]] * 2)
    assert t["eRegulon_name"].to_list() == ["TFA_direct_-/-", "TFA_direct_-/+"]
    assert t["Gene_signature_name"].to_list() == ["TFA_direct_-/-_(1g)", "TFA_direct_-/+_(1g)"]
    assert t["triplet_rank"].to_list() == [1, 2] and t["is_extended"].to_list() == [False, False]


def test_mudata_loads_and_scanpy_plots(tmp_path):
    sc = pytest.importorskip("scanpy", reason="scanpy is a test extra (pip install -e .[test])")
    cells, fp, _, _ = _scored(tmp_path)
    sample = reduce.sample_cells(cells, 10, 0)
    reduce.second_pass(tmp_path, reduce.Universe.of(cells, 2, [0]), fp, sample, "x", "y", ("TFA", "KO"), 2000,
                       lambda g, w: peak_distance(GENES, PEAKS, g, w), 0)
    _, path = cell_files.write_cell_files(tmp_path, fp, cells, GENES, PEAKS, sample)
    m = md.read_h5mu(path)
    assert set(m.mod) == {"rna", "peaks"} and m.n_obs == 4
    rna, peaks = m["rna"], m["peaks"]
    assert list(rna.var_names) == ["TFA", "TGT"] and {"predicted", "attention_feature", "gene_activity"} <= set(rna.layers)
    assert np.allclose(rna.X[:, 1], [3.0, 2.0, 1.0, 0.5]) and np.allclose(rna.layers["predicted"], rna.X + 0.1)
    assert list(peaks.var_names)[:2] == ["chr1:900-1100", "chr1:20000-20200"]
    dense = peaks.X.toarray()
    assert dense[:, 0].tolist() == [0, 1, 2, 3] and dense[3, 3] == 1.0
    assert peaks.layers["attention"].toarray()[0].tolist() == pytest.approx([1.0, 0.5, 0.3, 0.2])
    assert m.obsm["X_creformer"].shape[0] == 4 and rna.obsm["X_umap"].shape == (4, 2)
    assert list(rna.obs["group"]) == ["x", "x", "y", "y"]
    sc.pl.umap(rna, color="group", show=False)
    sc.pl.violin(rna, keys=["TGT"], groupby="group", layer="predicted", show=False)
    sc.pl.heatmap(rna, var_names=["TFA", "TGT"], groupby="group", show=False)

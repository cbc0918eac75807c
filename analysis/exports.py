"""atlas_grn's results in the layouts other tools load (docs/formats.md, "Outputs for other tools").

- ``regulatory_links``: which (peak, gene) pairs the model links, by a rule fixed here: every peak
  within ``tss_region_bp`` of the TSS (the promoter, as CellOracle's base GRN always has it) and the
  ``top_k`` peaks of the window by |in-silico ablation| (the enhancer–gene readout, docs/design.md §7).
- ``celloracle_base_grn``: CellOracle's base-GRN layout (peak_id ``chr_start_end``, gene_short_name,
  one 0/1 column per TF whose motif the peak carries), what ``Oracle.import_TF_data`` takes.
- ``scenicplus_eregulons``: SCENIC+'s eRegulon table, one row per (TF, region, gene) triplet of a
  linked, motif-bearing region; the TF-to-gene importance and sign come from the model's in-silico
  knockout (a knockout raising the gene marks a repressor, "-").
- ``write_mudata``: every analysed cell as MuData, RNA and peak modalities.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import polars as pl
from scipy import sparse
from sklearn.decomposition import PCA

from .baselines import correlation
from .features import GeneCellMatrices, peak_distance
from .grn import correlation_scores
from .inputs import TF, peak_regions
from .transitions import umap_2d


def regulatory_links(elements: pl.DataFrame, genes: pl.DataFrame, peaks: pl.DataFrame, tss_region_bp: int,
                     top_k: int) -> pl.DataFrame:
    """(gene_id, peak_id, importance_R2G, promoter) for the model's linked pairs; ``elements`` is
    ``enhancers.element_scores`` (importance = its |ablation|, the largest over groups)."""
    e = elements.with_columns(pl.Series("distance", peak_distance(genes, peaks, elements["gene_id"].to_numpy(),
                                                                   elements["peak_id"].to_numpy())))
    ranked = e.with_columns(pl.col("ablation_abs").rank("ordinal", descending=True).over("gene_id").alias("_rank"))
    keep = (pl.col("distance") <= tss_region_bp) | ((pl.col("_rank") <= top_k) & (pl.col("ablation_abs") > 0))
    return (ranked.filter(keep)
            .select("gene_id", "peak_id", pl.col("ablation_abs").cast(pl.Float64).alias("importance_R2G"),
                    (pl.col("distance") <= tss_region_bp).alias("promoter"))
            .sort("gene_id", "peak_id"))


def celloracle_base_grn(links: pl.DataFrame, bound: np.ndarray, tfs: list[TF], genes: pl.DataFrame,
                        peaks: pl.DataFrame) -> pd.DataFrame:
    """CellOracle's base GRN: one row per linked (peak, gene), ``peak_id`` as ``chr_start_end``,
    ``gene_short_name``, then a 0/1 column per TF (motif of the TF in the peak)."""
    t = (links.join(genes.select("gene_id", pl.col("name").alias("gene_short_name")), on="gene_id")
         .join(peaks.select("peak_id", pl.format("{}_{}_{}", "chrom", "start", "end").alias("peak")), on="peak_id"))
    pid = t["peak_id"].to_numpy()
    out = pd.DataFrame({"peak_id": t["peak"].to_list(), "gene_short_name": t["gene_short_name"].to_list()})
    names = list(dict.fromkeys(tf.name for tf in tfs))
    cols = {tf.name: bound[pid, tf.motif].astype(np.int64) for tf in tfs}
    return pd.concat([out, pd.DataFrame({n: cols[n] for n in names})], axis=1)


def region_gene_correlation(records: pl.DataFrame, pairs: pl.DataFrame) -> np.ndarray:
    """Pearson r over the analysed cells between a region's ATAC mass and the gene's measured
    expression, for each (gene_id, peak_id) of ``pairs`` (0 where either is constant)."""
    out = np.zeros(pairs.height)
    wanted = {}
    for i, (g, p) in enumerate(pairs.select("gene_id", "peak_id").iter_rows()):
        wanted.setdefault(int(g), []).append((i, int(p)))
    for (gid,), df in records.group_by("gene_id"):
        if int(gid) not in wanted:
            continue
        window = {int(p): j for j, p in enumerate(df["peak_ids"][0].to_list())}
        atac = np.stack(df["atac"].to_list()).astype(np.float64)
        y = df["expression"].to_numpy().astype(np.float64)
        rows, pids = zip(*wanted[int(gid)])
        out[list(rows)] = correlation(atac[:, [window[p] for p in pids]], y)
    return out


def scenicplus_eregulons(links: pl.DataFrame, bound: np.ndarray, tfs: list[TF], genes: pl.DataFrame, peaks: pl.DataFrame,
                         records: pl.DataFrame, effects: pl.DataFrame, mats: GeneCellMatrices) -> pl.DataFrame:
    """SCENIC+'s eRegulon table (its ``eRegulon_direct.tsv`` columns) for the TFs the atlas
    expresses and knocked out. importance_TF2G = the largest |predicted log2FC| of the gene over
    groups under the TF's knockout, regulation = −sign of that effect; rho_TF2G = TF–gene
    expression r; importance_R2G = |ablation|, rho_R2G = region–gene r; triplet_rank = rank of the
    mean of the TF2G and R2G importance ranks. eRegulon_name = ``TF_direct_{TF2G sign}/{R2G sign}``."""
    ko = (effects.filter(pl.col("mode") == "KO")
          .with_columns(pl.col("log2fc").abs().alias("_abs"))
          .sort("_abs", descending=True).group_by("condition", "gene_id").first()
          .select(pl.col("condition").alias("TF"), "gene_id", pl.col("log2fc").alias("_ko")))
    col = {int(g): j for j, g in enumerate(mats.genes.tolist())}
    tf_gene_r = correlation_scores(mats.expression, mats.genes, tfs)  # (genes, TFs)
    rows = []
    pid = links["peak_id"].to_numpy()
    for j, tf in enumerate(tfs):
        if tf.gene_id is None or tf.gene_id not in col:
            continue
        has = np.flatnonzero(bound[pid, tf.motif])
        if has.size == 0:
            continue
        sub = links[has.tolist()].with_columns(pl.lit(tf.name).alias("TF"))
        rho = [float(tf_gene_r[col[g], j]) if g in col else 0.0 for g in sub["gene_id"].to_list()]
        rows.append(sub.with_columns(pl.Series("rho_TF2G", rho, pl.Float64)))
    schema_cols = ["Region_signature_name", "Gene_signature_name", "TF", "is_extended", "Region", "Gene", "importance_R2G",
                   "rho_R2G", "importance_x_rho", "importance_TF2G", "regulation", "rho_TF2G", "triplet_rank", "eRegulon_name"]
    if not rows:
        return pl.DataFrame(schema={c: pl.Utf8 for c in schema_cols})
    t = pl.concat(rows).join(ko, on=["TF", "gene_id"], how="inner").filter(pl.col("_ko") != 0)
    t = t.with_columns(pl.Series("rho_R2G", region_gene_correlation(records, t), pl.Float64))
    t = (t.join(genes.select("gene_id", pl.col("name").alias("Gene")), on="gene_id")
         .join(peak_regions(peaks, "Region"), on="peak_id")
         .with_columns(pl.col("_ko").abs().alias("importance_TF2G"),
                       pl.when(pl.col("_ko") < 0).then(1).otherwise(-1).alias("regulation"),
                       (pl.col("importance_R2G") * pl.col("rho_R2G")).alias("importance_x_rho"),
                       pl.lit(False).alias("is_extended")))
    mean_rank = ((pl.col("importance_TF2G").rank(descending=True) + pl.col("importance_R2G").rank(descending=True)) / 2)
    t = t.with_columns(mean_rank.rank("ordinal").cast(pl.Int64).alias("triplet_rank"))
    sign = pl.format("{}_direct_{}/{}", "TF", pl.when(pl.col("regulation") > 0).then(pl.lit("+")).otherwise(pl.lit("-")),
                     pl.when(pl.col("rho_R2G") >= 0).then(pl.lit("+")).otherwise(pl.lit("-")))
    t = t.with_columns(sign.alias("eRegulon_name"))
    t = t.with_columns(pl.format("{}_({}g)", "eRegulon_name", pl.col("Gene").n_unique().over("eRegulon_name")).alias("Gene_signature_name"),
                       pl.format("{}_({}r)", "eRegulon_name", pl.col("Region").n_unique().over("eRegulon_name")).alias("Region_signature_name"))
    return t.select(schema_cols).sort("triplet_rank")


def _peak_matrices(records: pl.DataFrame, cells: np.ndarray, n_peaks: int) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
    """(cells x peaks) ATAC mass, and attention averaged over the genes whose window holds the peak;
    zero where the model read no such (cell, peak)."""
    ci = {int(c): i for i, c in enumerate(cells.tolist())}
    r, c, a, w = [], [], [], []
    for cid, pids, atac, att in records.select("cell_id", "peak_ids", "atac", "attention").iter_rows():
        if not pids:
            continue
        r.append(np.full(len(pids), ci[int(cid)])), c.append(np.asarray(pids)), a.append(np.asarray(atac)), w.append(np.asarray(att))
    if not r:
        empty = sparse.csr_matrix((len(cells), n_peaks), dtype=np.float32)
        return empty, empty
    rows, cols = np.concatenate(r), np.concatenate(c)
    shape = (len(cells), n_peaks)
    n = sparse.coo_matrix((np.ones(rows.size), (rows, cols)), shape=shape).tocsr()
    atac = sparse.coo_matrix((np.concatenate(a).astype(np.float64), (rows, cols)), shape=shape).tocsr()
    att = sparse.coo_matrix((np.concatenate(w).astype(np.float64), (rows, cols)), shape=shape).tocsr()
    inv = n.copy()
    inv.data = 1.0 / inv.data
    return atac.multiply(inv).tocsr().astype(np.float32), att.multiply(inv).tocsr().astype(np.float32)


def write_mudata(mats: GeneCellMatrices, records: pl.DataFrame, cells: pl.DataFrame, genes: pl.DataFrame,
                 peaks: pl.DataFrame, path: Path, seed: int = 0) -> Path:
    """``atlas.h5mu``: modality ``rna`` (X = measured log1p CP10k expression; layers predicted,
    attention_feature, gene_activity) and ``peaks`` (X = ATAC mass; layer attention), shared obs
    with the group and, when ``cells`` has it, ``rna_counts`` (each cell's RNA total, so
    expm1(X) x rna_counts / 1e4 gives counts back for tools that want them); obsm
    ``X_creformer`` (PCA of the model's predicted expression) and ``X_umap``."""
    keep = [c for c in ("cell_id", "barcode", "group", "rna_counts") if c in cells.columns]
    obs = (pl.DataFrame({"cell_id": mats.cells}).join(cells.select(keep), on="cell_id", how="left")
           .to_pandas().set_index("barcode"))
    obs.index = obs.index.astype(str)
    obs["group"] = obs["group"].astype("category")
    var = (pl.DataFrame({"gene_id": mats.genes}).join(genes.select("gene_id", "gene", "name", "chrom", "tss", "strand"),
                                                      on="gene_id", how="left").to_pandas())
    var.index = pd.Index(var["name"].astype(str), name="gene_name")
    var.index = pd.Index(ad.utils.make_index_unique(var.index))
    rna = ad.AnnData(X=mats.expression, obs=obs.copy(), var=var,
                     layers={"predicted": mats.predicted, "attention_feature": mats.attention_feature,
                             "gene_activity": mats.activity})
    atac, att = _peak_matrices(records, mats.cells, peaks.height)
    pvar = peaks.select("peak_id", "chrom", "start", "end").join(peak_regions(peaks), on="peak_id").to_pandas().set_index("region")
    atac_ad = ad.AnnData(X=atac, obs=obs.copy(), var=pvar, layers={"attention": att})
    # mudata 0.4's behaviour (obs set here, not pulled from the modalities), without its FutureWarning
    with md.set_options(pull_on_update=False):
        mdata = md.MuData({"rna": rna, "peaks": atac_ad})
        mdata.obs["group"] = obs["group"]
        n_comp = max(1, min(20, mats.predicted.shape[0] - 1, mats.predicted.shape[1]))
        z = PCA(n_components=n_comp, random_state=seed).fit_transform(mats.predicted.astype(np.float64))
        mdata.obsm["X_creformer"] = z
        rna.obsm["X_creformer"] = z
        um = umap_2d(z, seed)
        if um is None:  # too few cells for UMAP: the first two components stand in
            um = np.pad(z[:, :2], ((0, 0), (0, max(0, 2 - z.shape[1]))))
        mdata.obsm["X_umap"] = um
        rna.obsm["X_umap"] = um
        mdata.uns["creformer"] = {"rna.X": "measured expression, log1p(counts x 1e4 / rna_counts)",
                                  "X_creformer": "PCA of the model's predicted expression",
                                  "peaks.layers.attention": "per-cell attention, mean over the genes whose window holds the peak"}
        path.parent.mkdir(parents=True, exist_ok=True)
        mdata.write(path)
    return path


def write_exports(links: pl.DataFrame, bound: np.ndarray, tfs: list[TF], genes: pl.DataFrame, peaks: pl.DataFrame,
                  records: pl.DataFrame, effects: pl.DataFrame, mats: GeneCellMatrices, cells: pl.DataFrame, out: Path,
                  seed: int = 0) -> list[Path]:
    """Every ecosystem file: grn/celloracle_base_grn.parquet, grn/scenicplus_eregulons.tsv, atlas.h5mu."""
    (out / "grn").mkdir(parents=True, exist_ok=True)
    paths = [out / "grn" / "celloracle_base_grn.parquet", out / "grn" / "scenicplus_eregulons.tsv", out / "atlas.h5mu"]
    celloracle_base_grn(links, bound, tfs, genes, peaks).to_parquet(paths[0], index=False)
    scenicplus_eregulons(links, bound, tfs, genes, peaks, records, effects, mats).write_csv(paths[1], separator="\t")
    write_mudata(mats, records, cells, genes, peaks, paths[2], seed)
    return paths

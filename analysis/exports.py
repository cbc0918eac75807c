"""atlas_grn's results in the layouts other tools load (docs/formats.md, "Outputs for other tools").

- ``regulatory_links``: which (peak, gene) pairs the model links, by a rule fixed here: every peak
  within ``tss_region_bp`` of the TSS (the promoter, as CellOracle's base GRN always has it) and the
  ``top_k`` peaks of the window by |in-silico ablation| (the enhancer–gene readout, docs/design.md §7).
- ``celloracle_base_grn``: CellOracle's base-GRN layout (peak_id ``chr_start_end``, gene_short_name,
  one 0/1 column per TF whose motif the peak carries), what ``Oracle.import_TF_data`` takes.
- ``scenicplus_eregulons``: SCENIC+'s eRegulon table, one row per (TF, region, gene) triplet of a
  linked, motif-bearing region; the TF-to-gene importance and sign come from the model's in-silico
  knockout (a knockout raising the gene marks a repressor, "-").
- every analysed cell as AnnData / MuData: cell_files.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl

from .features import peak_distance
from .inputs import TF, peak_regions


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


def scenicplus_eregulons(links: pl.DataFrame, bound: np.ndarray, tfs: list[TF], genes: pl.DataFrame, peaks: pl.DataFrame,
                         effects: pl.DataFrame, tf_gene_r: np.ndarray, gene_order: np.ndarray,
                         region_r: Callable[[pl.DataFrame], np.ndarray]) -> pl.DataFrame:
    """SCENIC+'s eRegulon table (its ``eRegulon_direct.tsv`` columns) for the TFs the atlas
    expresses and knocked out. importance_TF2G = the largest |predicted log2FC| of the gene over
    groups under the TF's knockout, regulation = −sign of that effect; rho_TF2G = TF–gene
    expression r (``tf_gene_r``: genes in ``gene_order`` x TFs); importance_R2G = |ablation|,
    rho_R2G = region–gene r (``region_r`` of the (gene_id, peak_id) rows); triplet_rank = rank of the
    mean of the TF2G and R2G importance ranks. eRegulon_name = ``TF_direct_{TF2G sign}/{R2G sign}``."""
    ko = (effects.filter(pl.col("mode") == "KO")
          .with_columns(pl.col("log2fc").abs().alias("_abs"))
          .sort("_abs", descending=True).group_by("condition", "gene_id").first()
          .select(pl.col("condition").alias("TF"), "gene_id", pl.col("log2fc").alias("_ko")))
    col = {int(g): j for j, g in enumerate(gene_order.tolist())}
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
    t = t.with_columns(pl.Series("rho_R2G", region_r(t), pl.Float64))
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


def write_exports(links: pl.DataFrame, bound: np.ndarray, tfs: list[TF], genes: pl.DataFrame, peaks: pl.DataFrame,
                  effects: pl.DataFrame, tf_gene_r: np.ndarray, gene_order: np.ndarray,
                  region_r: Callable[[pl.DataFrame], np.ndarray], out: Path) -> list[Path]:
    """The GRN files for other tools: grn/celloracle_base_grn.parquet, grn/scenicplus_eregulons.tsv
    (the per-cell files, features.h5ad and atlas.h5mu, are cell_files.py's)."""
    (out / "grn").mkdir(parents=True, exist_ok=True)
    paths = [out / "grn" / "celloracle_base_grn.parquet", out / "grn" / "scenicplus_eregulons.tsv"]
    celloracle_base_grn(links, bound, tfs, genes, peaks).to_parquet(paths[0], index=False)
    scenicplus_eregulons(links, bound, tfs, genes, peaks, effects, tf_gene_r, gene_order, region_r).write_csv(paths[1], separator="\t")
    return paths

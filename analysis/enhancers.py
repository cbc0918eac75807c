"""Enhancer–gene links on the atlas: each gene's candidate peaks with the model's attention and
in-silico ablation, beside distance to the TSS and ABC (activity × power-law contact, normalized
over all the gene's candidate peaks, as ABC does when the candidates are known). CRISPRi tables
are scored in crispri.py."""

from __future__ import annotations

import polars as pl

from .crispri import abc_contact
from .features import peak_distance


def element_scores(group_att: pl.DataFrame, genes: pl.DataFrame, peaks: pl.DataFrame) -> pl.DataFrame:
    """(gene_id, peak_id, attention, ablation, ablation_abs, activity, distance, abc): attention and
    ablation = the highest group mean (an enhancer may act in one cell type only); ablation_abs =
    the largest |group mean ablation| (a repressive element's ablation is negative); activity = mean ATAC mass
    over groups; abc = activity × contact over the sum of that product over the gene's candidates."""
    t = (group_att.group_by("gene_id", "peak_id")
         .agg(pl.col("attention").max(), pl.col("ablation").max(), pl.col("ablation").abs().max().alias("ablation_abs"),
              pl.col("atac").mean().alias("activity"))
         .sort("gene_id", "peak_id"))
    dist = peak_distance(genes, peaks, t["gene_id"].to_numpy(), t["peak_id"].to_numpy())
    t = t.with_columns(pl.Series("distance", dist))
    raw = t["activity"].to_numpy() * abc_contact(dist)
    t = t.with_columns(pl.Series("abc_raw", raw))
    return t.with_columns((pl.col("abc_raw") / pl.col("abc_raw").sum().over("gene_id")).fill_nan(0.0).alias("abc")).drop("abc_raw")

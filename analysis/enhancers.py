"""Enhancer–gene links: a gene's candidate peaks ranked by attention, beside distance-to-TSS and an
ABC-like baseline (activity × 1/distance, normalized per gene as ABC does), all scored the same way.

Also reads the ENCODE-rE2G CRISPRi benchmark table (EPCrisprBenchmark format: chrom, chromStart,
chromEnd, measuredGeneSymbol, distanceToTSS, DHS.RPM, H3K27ac.RPM, Regulated) and scores it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from creformer.engine.errors import InputError
from creformer.engine.io.files import open_text

from .features import peak_distance
from .metrics import auprc, precision_at_recall

CONTACT_FLOOR_BP = 5_000  # ABC's contact saturates near the promoter; 1/d with a floor avoids 1/0


def element_scores(group_att: pl.DataFrame, genes: pl.DataFrame, peaks: pl.DataFrame) -> pl.DataFrame:
    """(gene_id, peak_id, attention, ablation, activity, distance, abc): attention and ablation =
    the highest group mean (an enhancer may act in one cell type only); activity = mean ATAC mass
    over groups."""
    t = (group_att.group_by("gene_id", "peak_id")
         .agg(pl.col("attention").max(), pl.col("ablation").max(), pl.col("atac").mean().alias("activity"))
         .sort("gene_id", "peak_id"))
    dist = peak_distance(genes, peaks, t["gene_id"].to_numpy(), t["peak_id"].to_numpy())
    t = t.with_columns(pl.Series("distance", dist))
    raw = t["activity"].to_numpy() / np.maximum(dist, CONTACT_FLOOR_BP)
    t = t.with_columns(pl.Series("abc_raw", raw))
    return t.with_columns((pl.col("abc_raw") / pl.col("abc_raw").sum().over("gene_id")).fill_nan(0.0).alias("abc")).drop("abc_raw")


def score(table: pl.DataFrame, label: str, methods: dict[str, str]) -> dict[str, dict[str, float]]:
    """AUPRC and precision at 70 % recall per method column ('-distance' ranks by closeness)."""
    y = table[label].to_numpy().astype(bool)
    out = {}
    for name, col in methods.items():
        s = -table[col[1:]].to_numpy().astype(np.float64) if col.startswith("-") else table[col].to_numpy().astype(np.float64)
        out[name] = {"auprc": auprc(s, y), "precision_at_70_recall": precision_at_recall(s, y, 0.7)}
    out["_counts"] = {"pairs": int(y.size), "positives": int(y.sum()), "prevalence": float(y.mean())}
    return out


CRISPRI_COLUMNS = ["chrom", "chromStart", "chromEnd", "measuredGeneSymbol", "distanceToTSS", "DHS.RPM", "H3K27ac.RPM", "Regulated"]


def read_crispri(path: str | Path) -> pl.DataFrame:
    path = Path(path)
    if not path.exists():
        raise InputError(f"CRISPRi table {path} does not exist")
    with open_text(path) as fh:
        header = fh.readline().rstrip("\n").split("\t")
    missing = [c for c in CRISPRI_COLUMNS if c not in header]
    if missing:
        raise InputError(f"{path}: not an EPCrisprBenchmark table, missing columns {missing} (line 1 has {header[:8]}...)")
    with open_text(path) as fh:
        df = pl.read_csv(fh.read().encode(), separator="\t", columns=CRISPRI_COLUMNS, infer_schema_length=0)
    df = df.with_columns(pl.col("chromStart", "chromEnd", "distanceToTSS").cast(pl.Int64),
                         pl.col("DHS.RPM", "H3K27ac.RPM").cast(pl.Float64),
                         pl.col("Regulated").str.to_uppercase().eq("TRUE").alias("Regulated"))
    return df


def crispri_baselines(df: pl.DataFrame) -> pl.DataFrame:
    """distance (closer = higher) and ABC-like: sqrt(DHS × H3K27ac) / max(|d|, floor), normalized
    over each gene's tested elements."""
    activity = (pl.col("DHS.RPM") * pl.col("H3K27ac.RPM")).sqrt()
    return (df.with_columns(pl.col("distanceToTSS").abs().alias("distance"),
                            (activity / pl.max_horizontal(pl.col("distanceToTSS").abs(), pl.lit(CONTACT_FLOOR_BP))).alias("abc_raw"))
              .with_columns((pl.col("abc_raw") / pl.col("abc_raw").sum().over("measuredGeneSymbol")).fill_nan(0.0).alias("abc"))
              .drop("abc_raw"))


def model_on_crispri(df: pl.DataFrame, elements: pl.DataFrame, genes: pl.DataFrame, peaks: pl.DataFrame) -> pl.DataFrame:
    """Attach the model's attention to CRISPRi pairs whose element overlaps a model peak of the same
    gene (by name); pairs outside the model's peaks get null."""
    pk = peaks.select("peak_id", pl.col("chrom").alias("pchrom"), pl.col("start").alias("pstart"), pl.col("end").alias("pend"))
    att = elements.join(genes.select("gene_id", pl.col("name").alias("measuredGeneSymbol")), on="gene_id").join(pk, on="peak_id")
    pairs = df.with_row_index("pair").join(att, on="measuredGeneSymbol", how="inner").filter(
        (pl.col("chrom") == pl.col("pchrom")) & (pl.col("chromStart") < pl.col("pend")) & (pl.col("chromEnd") > pl.col("pstart")))
    best = pairs.group_by("pair").agg(pl.col("attention").max().alias("model"))
    return df.with_row_index("pair").join(best, on="pair", how="left").drop("pair")


def score_crispri(path: str | Path, elements: pl.DataFrame | None = None, genes: pl.DataFrame | None = None,
                  peaks: pl.DataFrame | None = None) -> dict:
    """Baselines on every pair; the model on the pairs its peaks cover (said explicitly when none)."""
    df = crispri_baselines(read_crispri(path))
    result = {"table": str(path), "baselines": score(df, "Regulated", {"distance": "-distance", "abc": "abc"})}
    covered = 0
    if elements is not None and genes is not None and peaks is not None:
        withm = model_on_crispri(df, elements, genes, peaks)
        sub = withm.filter(pl.col("model").is_not_null())
        covered = sub.height
        if covered and sub["Regulated"].any():
            result["model_on_covered"] = score(sub, "Regulated", {"model": "model", "distance": "-distance", "abc": "abc"})
    result["model_coverage"] = {"covered_pairs": covered, "pairs": df.height,
                                "note": "" if covered else "no CRISPRi element overlaps a peak of the trained model's atlas "
                                "(the model was trained on other regions), so only the baselines are scored"}
    return result

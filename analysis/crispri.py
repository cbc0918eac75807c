"""`creformer crispri`: score enhancer–gene predictors on a CRISPRi table the published way
(EngreitzLab's CRISPR_comparison; docs/analyses.md).

- The table: an EPCrisprBenchmark file (chrom, chromStart, chromEnd, measuredGeneSymbol,
  Regulated, and either distanceToTSS or the TSS columns chrTSS/startTSS/endTSS). Only
  ValidConnection == TRUE pairs are scored, where the column exists (the others are counted).
- Estimators: AUPRC by the trapezoid rule over the precision–recall points
  (``metrics.auprc_trapezoid``, the published one) beside average precision (the step sum) and
  precision at 70 % recall. Pairs a predictor has no score for rank below every scored pair
  (CRISPR_comparison fills them at the predictor's minimum). Optional per-pair weights.
- Baselines: distance to the TSS (closer ranks higher) always; ABC only where the table has the
  activity columns (DHS.RPM, H3K27ac.RPM), said in the output otherwise. ABC as published: activity
  √(DHS × H3K27ac) × contact, contact a power law of distance (ABC's choice without Hi-C,
  ``abc_contact``). A CRISPRi table lists only the tested elements of a gene, not all its
  candidates, so the score is not normalized per gene here (on an atlas it is:
  ``enhancers.element_scores``).
- Predictions: a TSV with chrom, start, end, gene, score (any predictor, ours or a peer's),
  matched to pairs by overlap and gene symbol (the highest overlapping score per pair), with
  coverage reported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from creformer.engine.errors import InputError
from creformer.engine.io.files import open_text, require_file

from .metrics import auprc, auprc_trapezoid, precision_at_recall

# ABC's power-law contact when no Hi-C is given: contact ∝ (d + 1)^-γ, distances under 5 kb
# counted as 5 kb (the contact saturates near the promoter).
ABC_GAMMA = 0.87
ABC_MIN_DISTANCE_BP = 5_000
REQUIRED = ["chrom", "chromStart", "chromEnd", "measuredGeneSymbol", "Regulated"]
TSS_COLUMNS = ["chrTSS", "startTSS", "endTSS"]
ACTIVITY_COLUMNS = ["DHS.RPM", "H3K27ac.RPM"]
PREDICTION_COLUMNS = ["chrom", "start", "end", "gene", "score"]


def abc_contact(distance: np.ndarray | pl.Expr):
    """ABC's power-law contact (unscaled: the scale does not change a ranking or a per-gene share)."""
    if isinstance(distance, pl.Expr):
        return (pl.max_horizontal(distance, pl.lit(ABC_MIN_DISTANCE_BP)) + 1.0).pow(-ABC_GAMMA)
    return (np.maximum(np.asarray(distance, np.float64), ABC_MIN_DISTANCE_BP) + 1.0) ** -ABC_GAMMA


def _header(path: Path) -> list[str]:
    with open_text(path) as fh:
        return fh.readline().rstrip("\n").split("\t")


def read_crispri(path: str | Path, weight_column: str = "") -> pl.DataFrame:
    """The table's pairs with ``distance`` (bp, element midpoint to TSS when the table lacks
    distanceToTSS), ``Regulated`` as bool, ``valid`` and, with ``weight_column``, ``weight``."""
    path = Path(path)
    require_file(path, "CRISPRi table")
    header = _header(path)
    missing = [c for c in REQUIRED if c not in header]
    if "distanceToTSS" not in header:
        missing += [c for c in TSS_COLUMNS if c not in header]
    if weight_column and weight_column not in header:
        missing.append(weight_column)
    if missing:
        raise InputError(f"{path}: not an EPCrisprBenchmark table, missing columns {missing} (it has {header[:10]}"
                         f"{' ...' if len(header) > 10 else ''}); the distance needs distanceToTSS or {TSS_COLUMNS}")
    with open_text(path) as fh:
        df = pl.read_csv(fh.read().encode(), separator="\t", infer_schema_length=0, null_values=["NA", ""])
    df = df.with_columns(pl.col("chromStart", "chromEnd").cast(pl.Int64),
                         pl.col("Regulated").str.to_uppercase().eq("TRUE").alias("Regulated"),
                         (pl.col("ValidConnection").str.to_uppercase().eq("TRUE").fill_null(False)
                          if "ValidConnection" in header else pl.lit(True)).alias("valid"))
    if "distanceToTSS" in header:
        df = df.with_columns(pl.col("distanceToTSS").cast(pl.Float64).abs().alias("distance"))
    else:
        mid = (pl.col("chromStart") + pl.col("chromEnd")) / 2
        tss = (pl.col("startTSS").cast(pl.Float64) + pl.col("endTSS").cast(pl.Float64)) / 2
        df = df.with_columns((mid - tss).abs().alias("distance"))
    for c in ACTIVITY_COLUMNS:
        if c in header:
            df = df.with_columns(pl.col(c).cast(pl.Float64))
    if weight_column:
        df = df.with_columns(pl.col(weight_column).cast(pl.Float64, strict=False).alias("weight"))
        bad = df.with_row_index("row").filter(pl.col("weight").is_null() | pl.col("weight").is_nan() | (pl.col("weight") < 0))
        if bad.height:
            rows = (bad["row"] + 2).to_list()  # 1-based file lines (the header is line 1)
            raise InputError(f"{path}: column {weight_column!r} has {bad.height} missing, NaN or negative weight(s) "
                             f"at line(s) {rows[:10]}{' ...' if len(rows) > 10 else ''}; give every pair a weight >= 0")
    return df


def read_predictions(path: str | Path) -> pl.DataFrame:
    """A predictor's scores: a TSV with chrom, start, end, gene, score (a header line)."""
    path = Path(path)
    require_file(path, "predictions file")
    header = _header(path)
    missing = [c for c in PREDICTION_COLUMNS if c not in header]
    if missing:
        raise InputError(f"{path}: predictions need the columns {PREDICTION_COLUMNS}, missing {missing} (it has {header[:8]})")
    with open_text(path) as fh:
        df = pl.read_csv(fh.read().encode(), separator="\t", infer_schema_length=0, null_values=["NA", ""])
    df = df.select(pl.col("chrom"), pl.col("start", "end").cast(pl.Int64), pl.col("gene"), pl.col("score").cast(pl.Float64))
    if df["score"].is_nan().any() or df["score"].is_null().any():
        rows = (df.with_row_index("row").filter(pl.col("score").is_nan() | pl.col("score").is_null())["row"] + 2).to_list()
        raise InputError(f"{path}: score missing or NaN at line(s) {rows[:10]}; give every prediction a number")
    return df


def match_predictions(pairs: pl.DataFrame, preds: pl.DataFrame) -> pl.Series:
    """Each pair's predicted score: the highest score of a prediction for the same gene symbol
    whose element overlaps the pair's element (null when none)."""
    left = pairs.select(pl.int_range(pl.len()).alias("pair"), "chrom", "chromStart", "chromEnd", "measuredGeneSymbol")
    hits = (left.join(preds.rename({"chrom": "pchrom", "gene": "measuredGeneSymbol"}), on="measuredGeneSymbol", how="inner")
            .filter((pl.col("chrom") == pl.col("pchrom")) & (pl.col("chromStart") < pl.col("end"))
                    & (pl.col("chromEnd") > pl.col("start")))
            .group_by("pair").agg(pl.col("score").max()))
    return left.join(hits, on="pair", how="left").sort("pair")["score"]


def score_columns(y: np.ndarray, scores: dict[str, np.ndarray], weights: np.ndarray | None = None) -> dict[str, Any]:
    """Every estimator for every predictor on the same pairs; unscored pairs (NaN) rank last."""
    out: dict[str, Any] = {}
    for name, s in scores.items():
        s = np.asarray(s, np.float64)
        filled = np.where(np.isnan(s), np.nanmin(s) - 1.0 if np.isfinite(s).any() else 0.0, s)
        out[name] = {"auprc": auprc_trapezoid(filled, y, weights),
                     "average_precision": auprc(filled, y) if weights is None else None,
                     "precision_at_70_recall": precision_at_recall(filled, y, 0.7)}
    return out


def score_crispri(path: str | Path, *, predictions: str | Path | None = None, weight_column: str = "",
                  elements: pl.DataFrame | None = None, genes: pl.DataFrame | None = None,
                  peaks: pl.DataFrame | None = None) -> dict[str, Any]:
    """Baselines (and a predictions file, and the atlas model's elements where given) on the
    table's valid pairs; counts, coverage and what could not be scored said in the result."""
    df = read_crispri(path, weight_column)
    valid = df.filter(pl.col("valid"))
    y = valid["Regulated"].to_numpy()
    if not y.any():
        raise InputError(f"{path}: no valid pair (ValidConnection == TRUE) is Regulated: nothing to rank against")
    w = valid["weight"].to_numpy() if weight_column else None
    scores = {"distance": -valid["distance"].to_numpy()}
    notes = []
    has_activity = all(c in valid.columns for c in ACTIVITY_COLUMNS)
    if has_activity:
        act = np.sqrt(valid["DHS.RPM"].to_numpy() * valid["H3K27ac.RPM"].to_numpy())
        scores["abc"] = act * abc_contact(valid["distance"].to_numpy())
    else:
        notes.append(f"no activity columns {ACTIVITY_COLUMNS}: ABC is not scored")
    coverage: dict[str, Any] = {}
    if predictions is not None:
        matched = match_predictions(valid, read_predictions(predictions)).to_numpy().astype(np.float64)
        scores["predictions"] = matched
        coverage["predictions"] = {"covered_pairs": int(np.isfinite(matched).sum()), "pairs": int(y.size)}
    if elements is not None and genes is not None and peaks is not None:
        model = model_predictions(elements, genes, peaks)
        matched = match_predictions(valid, model).to_numpy().astype(np.float64)
        coverage["model"] = {"covered_pairs": int(np.isfinite(matched).sum()), "pairs": int(y.size)}
        if np.isfinite(matched).any():
            scores["model"] = matched
        else:
            notes.append("no CRISPRi element overlaps a peak of the model's atlas (trained on other regions): "
                         "the model is not scored")
    result = {"table": str(path), "scores": score_columns(y, scores, w),
              "counts": {"pairs": int(df.height), "valid_pairs": int(y.size), "positives": int(y.sum()),
                         "prevalence": float(y.mean()), "invalid_pairs_dropped": int(df.height - valid.height)},
              "coverage": coverage, "weights": weight_column or None, "notes": notes,
              "definitions": {"auprc": "trapezoid over ROCR's precision-recall points without the first and last "
                                       "(CRISPR_comparison)", "average_precision": "sum of precision x recall gained",
                              "abc": f"sqrt(DHS.RPM x H3K27ac.RPM) x (max(d, {ABC_MIN_DISTANCE_BP}) + 1)^-{ABC_GAMMA}, "
                                     "not normalized (a CRISPRi table lists tested elements only)",
                              "distance": "|element midpoint - TSS| (distanceToTSS when given), closer ranks higher"}}
    return result


def model_predictions(elements: pl.DataFrame, genes: pl.DataFrame, peaks: pl.DataFrame, column: str = "ablation_abs"
                      ) -> pl.DataFrame:
    """The atlas model's enhancer–gene scores as a predictions table (chrom, start, end, gene, score)."""
    return (elements.join(genes.select("gene_id", pl.col("name").alias("gene")), on="gene_id")
            .join(peaks.select("peak_id", "chrom", "start", "end"), on="peak_id")
            .select("chrom", pl.col("start").cast(pl.Int64), pl.col("end").cast(pl.Int64), "gene",
                    pl.col(column).cast(pl.Float64).alias("score")))

"""`creformer validate`: score the zero-shot analyses against the simulator's planted truth.

One scorecard entry per metric, each holding the model's value, every baseline that applies and
the target (with `met`):
- master_tf_top3_precision: per cell type, hits among the top 3 TFs over min(3, #master TFs);
  model = attention features, baseline gene_activity. Target 0.9.
- grn_auprc: all (TF, gene) pairs, positives = planted TF→target edges; model = the best motif
  enrichment −log10 p over groups among each window's high-attention peaks (no p cutoff: every
  pair ranked), model_ablation = the same with peaks ranked by ablation, model_knockout = the
  largest |predicted log2FC| of the target over groups under the TF's in-silico knockout;
  baselines motif_only and correlation. Target 2 × motif_only. ceiling_causal_peaks (not a
  model): the same scan and test with exactly each window's planted causal peaks as the high
  ones, the best a model could reach through this pipeline.
- enhancer_gene_auprc: all (gene, peak-in-window) pairs, positives = the gene's causal elements;
  model = attention score (docs/design.md §7; `met` is judged on it), model_ablation = the model's
  in-silico ablation effect (analysis.attention.ablation), shown beside it; baselines distance and
  abc. Target: above both baselines.
- ko_direction_accuracy: planted edges whose true knockout effect in a cell type is |log2FC| ≥ 0.1;
  the sign of the model's mean predicted log2FC in that group must match (0 counts as wrong).
  Baseline motif_only: "down wherever the TF's motif is in the window". Target 0.9.
  decomposition (not a score): for the right and the wrong ones apart, how often the touched
  planted causal peaks' summed single-peak knockout effect has the true sign, and how often the
  other touched peaks' sum opposes it (ko_mediators.parquet).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from creformer.engine.errors import InputError

from .grn import pair_scores
from .inputs import TF, load_tables
from .metrics import auprc, precision_at_recall, top_k_precision

MIN_KO_EFFECT = 0.1
BASELINES = ("gene_activity", "motif_only", "correlation", "distance", "abc")  # scorecard keys, in display order
MODEL_VARIANTS = ("model_ablation", "model_knockout")  # other model-derived rankings shown beside `model`
CEILINGS = ("ceiling_causal_peaks",)  # truth-derived upper references, neither model nor baseline


def _truth(truth: Path, name: str) -> pl.DataFrame:
    path = truth / name
    if not path.exists():
        raise InputError(f"{path} is missing: --truth must be the simulator's truth folder (creformer simulate --out DIR → DIR/truth)")
    return pl.read_csv(path, separator="\t", infer_schema_length=10000)


def master_tf_metric(masters: pl.DataFrame, truth: Path, k: int = 3) -> dict:
    ct = _truth(truth, "cell_types.tsv")
    true = {r[0]: set(str(r[1]).split(",")) for r in ct.iter_rows()}
    out = {}
    for method in ("model", "gene_activity"):
        tab = masters.filter(pl.col("method") == method)
        per = {g: top_k_precision(tab.filter(pl.col("group") == g).sort("rank")["tf"].to_list(), true[g], k)
               for g in tab["group"].unique().sort().to_list() if g in true}
        if not per:
            raise InputError(f"no analysed group matches a simulated cell type ({sorted(true)}); group cells by truth/cells.tsv")
        out[method] = float(np.mean(list(per.values())))
        out[f"{method}_per_group"] = per
    return {"model": out["model"], "gene_activity": out["gene_activity"], "target": 0.9, "met": out["model"] >= 0.9,
            "per_group": out["model_per_group"], "per_group_gene_activity": out["gene_activity_per_group"], "k": k}


def grn_metric(scores: pl.DataFrame, truth: Path) -> dict:
    edges = _truth(truth, "tf_targets.tsv").filter(pl.col("weight") > 0).select("tf", pl.col("gene_id").alias("gene"))
    lab = scores.join(edges.with_columns(pl.lit(True).alias("label")), on=["tf", "gene"], how="left").with_columns(
        pl.col("label").fill_null(False))
    y = lab["label"].to_numpy()
    vals = {m: auprc(lab[m].to_numpy(), y) for m in ("model", *MODEL_VARIANTS, "motif_only", "correlation", *CEILINGS)
            if m in lab.columns}
    target = 2 * vals["motif_only"]
    return {**vals, "target": target, "met": vals["model"] >= target, "pairs": int(y.size), "positives": int(y.sum()),
            "prevalence": float(y.mean())}


def grn_ceiling(scores: pl.DataFrame, out: Path, peaks: pl.DataFrame, genes: pl.DataFrame, tfs: list[TF],
                truth: Path) -> pl.DataFrame:
    """``scores`` with a ``ceiling_causal_peaks`` column: ``grn.pair_scores`` with each (group,
    gene) window's planted causal peaks (the enhancer–gene labels) as the high set, on atlas_grn's
    own attention windows and motif hits (``tfs``: analysis.inputs.TF of the run)."""
    windows = pl.read_parquet(out / "tables" / "attention_groups.parquet")
    lab = enhancer_labels(windows, peaks, genes, truth)
    best = pair_scores(lab.with_columns(pl.col("label").cast(pl.Float64)), np.load(out / "work" / "bound.npy"), tfs,
                       high_k=None, by="label")
    return scores.with_columns(pl.Series("ceiling_causal_peaks", [best.get((t, g), 0.0) for t, g in
                                                                  zip(scores["tf"], scores["gene_id"])], pl.Float64))


def enhancer_labels(elements: pl.DataFrame, peaks: pl.DataFrame, genes: pl.DataFrame, truth: Path) -> pl.DataFrame:
    tp = _truth(truth, "peaks.tsv")
    el = _truth(truth, "elements.tsv").filter((pl.col("weight") > 0) & pl.col("kind").is_in(["promoter", "enhancer"]))
    peak_el = peaks.select("peak_id", "chrom", "start", "end").join(tp, on=["chrom", "start", "end"], how="left")
    causal = el.select("element_id", pl.col("gene_id").alias("gene"), pl.lit(True).alias("label"))
    return (elements.join(genes.select("gene_id", "gene"), on="gene_id").join(peak_el.select("peak_id", "element_id"), on="peak_id")
            .join(causal, on=["element_id", "gene"], how="left").with_columns(pl.col("label").fill_null(False)))


def enhancer_metric(elements: pl.DataFrame, peaks: pl.DataFrame, genes: pl.DataFrame, truth: Path) -> dict:
    lab = enhancer_labels(elements, peaks, genes, truth)
    y = lab["label"].to_numpy()
    cols = {"model": lab["attention"].to_numpy(), "distance": -lab["distance"].to_numpy().astype(float), "abc": lab["abc"].to_numpy()}
    if "ablation" in lab.columns:  # atlases written before the ablation column have attention only
        cols["model_ablation"] = lab["ablation"].to_numpy()
    vals = {m: auprc(s, y) for m, s in cols.items()}
    p70 = {m: precision_at_recall(s, y, 0.7) for m, s in cols.items()}
    target = max(vals["distance"], vals["abc"])
    return {**vals, "target": target, "met": vals["model"] > target, "precision_at_70_recall": p70,
            "pairs": int(y.size), "positives": int(y.sum())}


def ko_decomposition(scored: pl.DataFrame, mediators: pl.DataFrame, labels: pl.DataFrame) -> dict:
    """Why knockouts get their sign, for the right and the wrong ones apart: each scored effect
    (cell_type, tf, gene_id, true_lfc, model_lfc) split into the single-peak knockout effects
    (``ko_mediators.parquet``) of the touched peaks that are the gene's planted causal elements
    and of the others (``labels``: gene_id, peak_id, label)."""
    parts = (mediators.join(labels.select("gene_id", "peak_id", "label"), on=["gene_id", "peak_id"], how="left")
             .with_columns(pl.col("label").fill_null(False))
             .group_by(pl.col("group").alias("cell_type"), pl.col("condition").alias("tf"), "gene_id")
             .agg(pl.col("log2fc").filter(pl.col("label")).sum().alias("causal"),
                  pl.col("log2fc").filter(~pl.col("label")).sum().alias("others"), pl.col("label").sum().alias("n_causal")))
    j = scored.join(parts, on=["cell_type", "tf", "gene_id"], how="left").with_columns(
        pl.col("causal", "others").fill_null(0.0), pl.col("n_causal").fill_null(0))
    t = np.sign(j["true_lfc"].to_numpy())
    right = np.sign(j["model_lfc"].to_numpy()) == t
    causal, others = j["causal"].to_numpy(), j["others"].to_numpy()
    out = {}
    for name, sel in (("right", right), ("wrong", ~right)):
        n = int(sel.sum())
        out[name] = {"effects": n} if n == 0 else {
            "effects": n,
            "causal_peaks_with_true_sign": float(np.mean(np.sign(causal[sel]) == t[sel])),
            "other_peaks_against_true_sign": float(np.mean(np.sign(others[sel]) == -t[sel])),
            "no_causal_peak_touched": float(np.mean(j["n_causal"].to_numpy()[sel] == 0)),
            "median_abs_causal_log2fc": float(np.median(np.abs(causal[sel]))),
            "median_abs_true_log2fc": float(np.median(np.abs(j["true_lfc"].to_numpy()[sel])))}
    out["note"] = ("per scored effect, the summed single-peak knockout log2FC of the touched peaks that are the gene's "
                   "planted causal elements ('causal') and of the other touched peaks ('other')")
    return out


def ko_metric(effects: pl.DataFrame, genes: pl.DataFrame, windows_bound: pl.DataFrame, truth: Path,
              mediators: pl.DataFrame | None = None, peaks: pl.DataFrame | None = None) -> dict:
    """``effects``: (group, condition, mode, gene_id, log2fc); ``windows_bound``: (tf, gene_id) pairs
    whose window holds a peak with the TF's motif (for the motif-only baseline). With
    ``mediators`` (``ko_mediators.parquet``) and the atlas's ``peaks``, also ``ko_decomposition``."""
    edges = _truth(truth, "tf_targets.tsv").filter(pl.col("weight") > 0).select("tf", pl.col("gene_id").alias("gene"))
    pert = _truth(truth, "perturbations.tsv").filter((pl.col("mode") == "KO") & (pl.col("log2fc").abs() >= MIN_KO_EFFECT))
    pert = pert.rename({"gene_id": "gene", "log2fc": "true_lfc"}).join(edges, on=["tf", "gene"])
    pert = pert.join(genes.select("gene_id", "gene"), on="gene")
    model = effects.filter(pl.col("mode") == "KO").select(pl.col("group").alias("cell_type"), pl.col("condition").alias("tf"),
                                                          "gene_id", pl.col("log2fc").alias("model_lfc"))
    j = pert.join(model, on=["cell_type", "tf", "gene_id"], how="inner")
    if j.height == 0:
        raise InputError("no planted knockout effect matches an analysed (group, TF, gene): check the groups are the simulated cell types")
    j = j.join(windows_bound.with_columns(pl.lit(-1.0).alias("motif_sign")), on=["tf", "gene_id"], how="left").with_columns(
        pl.col("motif_sign").fill_null(0.0))
    t = np.sign(j["true_lfc"].to_numpy())
    acc = float(np.mean(np.sign(j["model_lfc"].to_numpy()) == t))
    base = float(np.mean(j["motif_sign"].to_numpy() == t))
    out = {"model": acc, "motif_only": base, "target": 0.9, "met": acc >= 0.9, "effects": int(j.height),
           "min_true_abs_log2fc": MIN_KO_EFFECT,
           "model_zero": int((j["model_lfc"].to_numpy() == 0).sum())}
    if mediators is not None and peaks is not None:
        labels = enhancer_labels(mediators.select("gene_id", "peak_id").unique(), peaks, genes, truth)
        out["decomposition"] = ko_decomposition(j, mediators, labels)
    return out


def scorecard(out: Path, truth: Path, k: int = 3) -> dict:
    """Read atlas_grn's tables from ``out`` and score them; writes ``out/scorecard.json``."""
    need = ["master_tfs.parquet", "grn/scores.parquet", "enhancers.parquet", "perturbation_effects.parquet", "windows_bound.parquet"]
    missing = [n for n in need if not (out / n).exists()]
    if missing:
        raise InputError(f"{out} lacks {missing}: run atlas_grn first (analysis.out={out})")
    meta = json.loads((out / "atlas.json").read_text())
    tables = load_tables(meta["manifest"])
    scores = pl.read_parquet(out / "grn" / "scores.parquet")
    if "tf_motifs" in meta and (out / "work" / "bound.npy").exists():  # atlases from before the ceiling lack them
        tfs = [TF(n, m, None) for n, m in zip(meta["tfs"], meta["tf_motifs"])]
        scores = grn_ceiling(scores, out, tables.peaks, tables.genes, tfs, truth)
    med_path = out / "ko_mediators.parquet"  # atlases written before it have none: no decomposition
    mediators = pl.read_parquet(med_path) if med_path.exists() else None
    card = {
        "master_tf_top3_precision": master_tf_metric(pl.read_parquet(out / "master_tfs.parquet"), truth, k),
        "grn_auprc": grn_metric(scores, truth),
        "enhancer_gene_auprc": enhancer_metric(pl.read_parquet(out / "enhancers.parquet"), tables.peaks, tables.genes, truth),
        "ko_direction_accuracy": ko_metric(pl.read_parquet(out / "perturbation_effects.parquet"), tables.genes,
                                           pl.read_parquet(out / "windows_bound.parquet"), truth, mediators, tables.peaks),
    }
    card["_about"] = {"truth": str(truth), "atlas": str(out), "cells": meta.get("cells"), "groups": meta.get("groups"),
                      "definitions": __doc__.split("\n\n", 1)[1].strip()}
    (out / "scorecard.json").write_text(json.dumps(card, indent=1))
    return card

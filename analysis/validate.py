"""`creformer validate`: the referee. Scores atlas_grn's outputs against the simulator's planted
truth (simulator v2), every task's fixed model readout beside its strongest simple baseline
computed in the same run from the written files alone (analysis/baselines.py). Each task is an
object: `model` (the readout fixed in docs/design.md §7), `variants` (the paper's attention
readouts and other model readouts, reported, never scored), `baselines`, `best_baseline` (name,
value), `margin` (model − best baseline) and `met` (margin > 0).

- master_tfs — R-precision per cell type (hits among its top |master TFs| over |master TFs|; the
  top-3 precision beside it), the disease type's driver included; simulator v4's passenger TFs
  (as active in one type as its masters, no targets) are what a ranking must leave out; model:
  each cell's knockout shift per TF, ranked by the group's mean minus the mean over all analysed
  cells; variants: the same shifts and the paper's attention features ranked by one-vs-rest
  logistic regression; baselines: gene activity, TF expression and chromVAR-style motif
  accessibility, each under both rankings.
- grn — AUPRC of every (TF, gene) pair against the direct edges (the TF binds a causal element
  of the gene); model: the knockout read (the target's largest |predicted log2FC| over groups
  under the TF's knockout); variants: attention-peak motif enrichment and its ablation ranking;
  baselines: motif in the window, TF–gene expression correlation, per-gene ridge on TF expression
  (GENIE3-style), correlation × motif (SCENIC+-style). ceiling_causal_peaks: the enrichment
  pipeline fed the planted causal peaks (a reference, not a baseline).
- enhancer_gene, enhancer_gene_distal — AUPRC of (gene, peak-in-window) pairs against the gene's
  causal elements, on all pairs and on distal ones (beyond the 3 peaks nearest the TSS); model:
  |in-silico ablation| (a repressive element's is negative); variants: signed ablation, attention; baselines: distance, ABC (normalized over the gene's
  candidates), peak accessibility–expression correlation, per-gene ridge on the window's
  accessibility (SCARlink-style). per_gene_auprc: each readout's mean AUPRC within a gene (genes
  with both classes; enhancer_per_gene.parquet has each gene's), which separates ranking a gene's
  own peaks from putting all genes' scores on one scale.
- knockout, knock_in — direction accuracy over responders (|true log2FC| ≥ 0.1 in a cell type)
  among the analysed (group, TF, gene) triples, direct and indirect reported apart, with the
  responder AUPRC by |prediction| and the Spearman correlation over all triples beside it, and the
  direct responders split by whether the perturbation's sites reach a causal element; model: the
  predicted log2FC propagated through the model's own TF changes (analysis.ko_propagation steps;
  the one-step read its variant); baselines: motif sign, signed TF–gene correlation where the
  motif is in the window, the accessibility ridge with the perturbation's sites zeroed (knock-in:
  raised; the scan's sites, plus any analysis.perturb_support_pvalue adds), the same read
  propagated as the model's is, CellOracle-style ridge propagation, no change.
- transition — for the planted triple (disease, driver knockout, normal): the share of disease
  cells the perturbation moves closer to the normal centroid; baselines: a random TF's knockout
  (mean over the others), the unchanged source (0), CellOracle-style propagation.
- therapeutic_target — 1 / rank of the planted driver among the knockouts ranked by how far they
  move disease cells toward normal (hit at 1 and at 3 beside it); baseline: TFs ranked by
  disease-vs-normal differential expression.

Cells: the baselines' models are fitted on every grouped cell, as the model was trained on the
atlas's cells, and the baselines that predict what the model predicts per cell are read on the
cells the model's readouts were read on: a perturbation's group mean and the transition share are
over the cells atlas_grn analysed (all grouped cells unless analysis.cells_per_group sampled them).
Differential expression and the master-TF regressions are statistics of the data itself and use
every grouped cell. With a sample, the knockout and knock-in tasks also report the accessibility
regression read over every grouped cell (`all_cells_reference`), never as the baseline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy.stats import spearmanr

from creformer.config import load_config
from creformer.engine.errors import InputError
from creformer.engine.rulebook import VERSION as SIMULATOR_VERSION

from .baselines import (
    CellData,
    accessibility_perturbation,
    cell_data,
    celloracle_perturbation,
    correlation,
    enhancer_baselines,
    motif_deviations,
    tf_gene_baselines,
    window_models,
)
from .grn import pair_scores
from .inputs import TF, cell_groups, load_tables, sample_cells
from .master_tf import group_mean_difference, master_tfs
from .metrics import auprc, precision_at_recall, r_precision, top_k_precision
from .propagation import propagate
from .transitions import fraction_closer

MIN_KO_EFFECT = 0.1
TASKS = ("master_tfs", "grn", "enhancer_gene", "enhancer_gene_distal", "knockout", "knock_in", "transition",
         "therapeutic_target")


def check_truth(truth: Path) -> None:
    """A truth folder of this simulator version, or an error saying what it is and what to do."""
    if not truth.is_dir():
        raise InputError(f"truth folder {truth} does not exist (creformer simulate --out DIR writes DIR/truth)")
    version = (truth / "VERSION").read_text().strip() if (truth / "VERSION").exists() else "1"
    if version != str(SIMULATOR_VERSION):
        raise InputError(f"{truth} comes from simulator v{version}; this scorecard needs simulator v{SIMULATOR_VERSION} "
                         "truth (repressors, cascades, a disease state, passenger TFs): simulate again with `creformer simulate`")


def task(metric: str, model: float, readout: str, baselines: dict[str, float], variants: dict[str, float] | None = None,
         **extra) -> dict[str, Any]:
    """One scorecard task: the fixed readout's value beside every baseline, the best one and the margin."""
    finite = {k: v for k, v in baselines.items() if v is not None and np.isfinite(v)}
    best = max(finite, key=finite.get) if finite else None
    margin = float(model - finite[best]) if best is not None else float("nan")
    return {"metric": metric, "model": float(model), "readout": readout, "variants": variants or {},
            "baselines": {k: (None if v is None else float(v)) for k, v in baselines.items()},
            "best_baseline": {"name": best, "value": finite.get(best)}, "margin": margin,
            "met": bool(best is not None and margin > 0), **extra}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation (0 when either side is constant)."""
    if np.std(a) == 0 or np.std(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def _truth(truth: Path, name: str) -> pl.DataFrame:
    path = truth / name
    if not path.exists():
        raise InputError(f"{path} is missing: --truth must be the simulator's truth folder (creformer simulate --out DIR → DIR/truth)")
    return pl.read_csv(path, separator="\t", infer_schema_length=10000)


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
    out["note"] = ("per scored effect of the one-step read (right or wrong by its sign), the summed single-peak knockout "
                   "log2FC of the touched peaks that are the gene's planted causal elements ('causal') and of the other "
                   "touched peaks ('other')")
    return out




# ---------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------

def master_tf_task(masters: pl.DataFrame, truth: Path, k: int = 3, extra: dict[str, pl.DataFrame] | None = None) -> dict:
    """``masters``: atlas_grn's master_tfs.parquet (method model, knockout_regression,
    attention_feature, gene_activity[_mean_difference], tf_expression[_mean_difference]); ``extra``: baseline rankings computed here (method name -> (group, tf, rank)).
    Scored: R-precision per cell type (hits among its top |masters| over |masters|), meaned over
    the types; the top-``k`` precision (hits over min(k, |masters|)) beside it, and per method the
    share of types whose passenger TF (simulator v4: as active there as the masters, no targets)
    sits among that top |masters|."""
    rows = list(_truth(truth, "cell_types.tsv").iter_rows(named=True))
    true = {r["cell_type"]: set(str(r["master_tfs"]).split(",")) for r in rows}
    decoy = {r["cell_type"]: r["passenger_tfs"] for r in rows if r.get("passenger_tfs")}
    tables = {m: masters.filter(pl.col("method") == m) for m in masters["method"].unique().to_list()} | (extra or {})
    ranked = {m: {g: tab.filter(pl.col("group") == g).sort("rank")["tf"].to_list() for g in tab["group"].unique().sort().to_list() if g in true}
              for m, tab in tables.items()}
    if not ranked.get("model"):
        raise InputError(f"no analysed group matches a simulated cell type ({sorted(true)}); group cells by truth/cells.tsv")

    per = {m: {g: r_precision(r, true[g]) for g, r in by.items()} for m, by in ranked.items()}
    r_prec = {m: float(np.mean(list(v.values()))) if v else None for m, v in per.items()}
    top_k = {m: float(np.mean([top_k_precision(r, true[g], k) for g, r in by.items()])) if by else None for m, by in ranked.items()}
    passenger = {m: float(np.mean([decoy[g] in r[:len(true[g])] for g, r in by.items() if g in decoy]))
                 for m, by in ranked.items() if any(g in decoy for g in by)}
    base = [m + how for m in ("gene_activity", "tf_expression", "motif_accessibility") for how in ("", "_mean_difference")
            if m + how in per]
    variants = [m for m in ("knockout_regression", "attention_feature") if m in per]
    split = lambda by: {"model": by.get("model"), "baselines": {m: by.get(m) for m in base}, "variants": {m: by.get(m) for m in variants}}  # noqa: E731
    return task("R-precision (top |masters| per cell type)", r_prec["model"], "knockout shift per cell, group mean difference",
                {m: r_prec[m] for m in base}, {m: r_prec[m] for m in variants},
                per_group=per["model"], per_group_baselines={m: per[m] for m in base},
                top_k_precision={"k": k, **split(top_k)}, **({"passenger_in_top": split(passenger)} if passenger else {}))


def master_baselines(masters: pl.DataFrame, data: CellData, groups: pl.DataFrame,
                     bound_by_tf: dict[str, np.ndarray]) -> dict[str, pl.DataFrame]:
    """chromVAR-style motif accessibility of the model's TFs over every grouped cell, ranked as
    atlas_grn ranks its master TFs (master_tf.py): by one-vs-rest regression and by group mean
    difference. Columns follow the atlas's TF order (``bound_by_tf``), never the model's ranking,
    which would otherwise break the baseline's ties."""
    ranked = set(masters.filter(pl.col("method") == "model")["tf"].to_list())
    names = [t for t in bound_by_tf if t in ranked]
    if not names:
        return {}
    cells = groups.sort("cell_id")
    dev = motif_deviations(data, {n: bound_by_tf[n] for n in names})[cells["cell_id"].to_numpy()]
    g = cells["group"].to_numpy()
    return {"motif_accessibility": master_tfs(dev, g, names),
            "motif_accessibility_mean_difference": group_mean_difference(dev, g, names)}


def grn_task(scores: pl.DataFrame, tfgene: pl.DataFrame, truth: Path) -> dict:
    edges = _truth(truth, "tf_targets.tsv").select("tf", pl.col("gene_id").alias("gene"), pl.lit(True).alias("label"))
    lab = (scores.drop([c for c in ("correlation",) if c in scores.columns])
           .join(tfgene, on=["tf", "gene_id"], how="left").fill_null(0.0)
           .join(edges, on=["tf", "gene"], how="left").with_columns(pl.col("label").fill_null(False)))
    y = lab["label"].to_numpy()
    a = {c: auprc(lab[c].to_numpy(), y) for c in lab.columns if c in (
        "model", "model_ablation", "model_knockout", "motif_only", "correlation", "regression", "scenic_like", "ceiling_causal_peaks")}
    return task("AUPRC, direct edges", a["model_knockout"], "knockout read: the target's largest |predicted log2FC| under the TF's knockout",
                {b: a[b] for b in ("motif_only", "correlation", "regression", "scenic_like")},
                {"attention": a["model"], "attention_ablation": a.get("model_ablation")},
                ceilings={"causal_peaks": a["ceiling_causal_peaks"]} if "ceiling_causal_peaks" in a else {},
                pairs=int(y.size), positives=int(y.sum()), prevalence=float(y.mean()))


def enhancer_tasks(lab: pl.DataFrame) -> tuple[dict[str, dict], pl.DataFrame]:
    """``lab``: (gene_id, peak_id, attention, ablation, distance, abc, peak_correlation,
    accessibility_regression, label). Returns the two tasks and every scored gene's own AUPRCs
    (``enhancer_per_gene``, with the task's name in ``task``)."""
    lab = lab.with_columns(pl.col("distance").rank("ordinal").over("gene_id").alias("nearness"))
    out, per_genes = {}, []
    for name, sub in (("enhancer_gene", lab), ("enhancer_gene_distal", lab.filter(pl.col("nearness") > 3))):
        y = sub["label"].to_numpy()
        if not y.any():
            continue
        magnitude = sub["ablation_abs"] if "ablation_abs" in sub.columns else sub["ablation"].abs()  # older atlases
        cols = {"ablation_abs": magnitude.to_numpy(), "ablation": sub["ablation"].to_numpy(), "attention": sub["attention"].to_numpy(),
                "distance": -sub["distance"].to_numpy().astype(float), "abc": sub["abc"].to_numpy(),
                "peak_correlation": sub["peak_correlation"].to_numpy(),
                "accessibility_regression": sub["accessibility_regression"].to_numpy()}
        a = {k: auprc(v, y) for k, v in cols.items()}
        p70 = {k: precision_at_recall(v, y, 0.7) for k, v in cols.items()}
        per_gene = enhancer_per_gene(pl.DataFrame({"gene_id": sub["gene_id"], "label": y, **cols}))
        means = {k: float(per_gene[k].mean()) if per_gene.height else None for k in cols}
        out[name] = task("AUPRC" + (", beyond the 3 nearest peaks" if name.endswith("distal") else ""), a["ablation_abs"],
                         "|in-silico ablation|", {b: a[b] for b in ("distance", "abc", "peak_correlation", "accessibility_regression")},
                         {"signed_ablation": a["ablation"], "attention": a["attention"]}, precision_at_70_recall=p70,
                         per_gene_auprc=means, per_gene_genes=per_gene.height, pairs=int(y.size), positives=int(y.sum()))
        per_genes.append(per_gene.with_columns(pl.lit(name).alias("task")))
    return out, pl.concat(per_genes) if per_genes else pl.DataFrame()


def enhancer_per_gene(scored: pl.DataFrame) -> pl.DataFrame:
    """Each gene's own AUPRC per score column of ``scored`` (gene_id, label, score columns...), over
    the genes whose candidates hold both classes. A global AUPRC mixes two things: ranking a gene's
    peaks and putting different genes' scores on one scale; this is the first alone."""
    names = [c for c in scored.columns if c not in ("gene_id", "label")]
    rows = []
    for (gid,), grp in scored.group_by("gene_id", maintain_order=True):
        y = grp["label"].to_numpy()
        if y.any() and not y.all():
            rows.append({"gene_id": int(gid), "pairs": int(y.size), "positives": int(y.sum()),
                         **{k: auprc(grp[k].to_numpy(), y) for k in names}})
    return pl.DataFrame(rows, schema={"gene_id": pl.Int64, "pairs": pl.Int64, "positives": pl.Int64, **{k: pl.Float64 for k in names}})


def perturbation_task(mode: str, triples: pl.DataFrame, predictions: dict[str, pl.DataFrame], readout: str,
                      variants: dict[str, pl.DataFrame] | None = None) -> dict:
    """``triples``: (cell_type, tf, gene_id, true_lfc, direct) for every analysed triple;
    ``predictions``: name → (cell_type, tf, gene_id, pred) ('model' first, then the baselines);
    ``variants``: other model readouts, scored alike and reported, never the model's score. Direction
    accuracy over responders is the metric; responder AUPRC and Spearman beside it. With a ``touched``
    column (the TF's bound peaks include one of the gene's planted causal elements), the direct
    responders' accuracy is also split by it: what the motif scan lets a knockout reach."""
    resp = triples["true_lfc"].abs().to_numpy() >= MIN_KO_EFFECT
    direct = triples["direct"].to_numpy()
    touched = triples["touched"].to_numpy() if "touched" in triples.columns else None
    t = np.sign(triples["true_lfc"].to_numpy())
    acc, acc_direct, acc_indirect, resp_auprc, rho = {}, {}, {}, {}, {}
    acc_touched: dict[str, float | None] = {}
    acc_untouched: dict[str, float | None] = {}
    for name, p in {**predictions, **(variants or {})}.items():
        pred = triples.join(p, on=["cell_type", "tf", "gene_id"], how="left")["pred"].fill_null(0.0).to_numpy()
        right = np.sign(pred) == t
        acc[name] = float(right[resp].mean()) if resp.any() else float("nan")
        acc_direct[name] = float(right[resp & direct].mean()) if (resp & direct).any() else None
        acc_indirect[name] = float(right[resp & ~direct].mean()) if (resp & ~direct).any() else None
        if touched is not None:
            for into, sel in ((acc_touched, resp & direct & touched), (acc_untouched, resp & direct & ~touched)):
                into[name] = float(right[sel].mean()) if sel.any() else None
        resp_auprc[name] = auprc(np.abs(pred), resp) if resp.any() else None
        rho[name] = spearman(pred, triples["true_lfc"].to_numpy())
    base = [n for n in predictions if n != "model"]

    def split(by: dict) -> dict:
        return {"model": by["model"], "baselines": {b: by[b] for b in base}, "variants": {v: by[v] for v in variants or {}}}

    return task(f"{mode} direction accuracy on responders", acc["model"], readout, {b: acc[b] for b in base},
                {v: acc[v] for v in variants or {}},
                direct=split(acc_direct), indirect=split(acc_indirect), responder_auprc=split(resp_auprc), spearman=split(rho),
                triples=int(triples.height), responders=int(resp.sum()), direct_responders=int((resp & direct).sum()),
                min_true_abs_log2fc=MIN_KO_EFFECT,
                **({} if touched is None else {
                    "direct_by_scan": {"touched": split(acc_touched), "untouched": split(acc_untouched),
                                       "touched_responders": int((resp & direct & touched).sum()),
                                       "note": "direct responders split by whether the peaks the TF's perturbation acts on (the motif "
                                               "scan's, plus any accessibility-supported sites) include one of the "
                                               "gene's planted causal elements"}}))


def propagated_reads(reads: dict[str, pl.DataFrame], tf_genes: dict[str, int], n_genes: int,
                     steps: int) -> dict[str, pl.DataFrame]:
    """A baseline's single-TF knockout and knock-in reads (mode → (group, tf, gene_id, log2fc)),
    propagated ``steps`` times through the TFs' own genes as the model's read is
    (analysis/propagation.py, its knockout reads moving the other TFs); a gene the read left out
    counts as 0 before propagation and can move after it. {} when ``steps`` is 0."""
    if steps == 0 or "KO" not in reads:
        return {}
    every = pl.DataFrame({"gene_id": np.arange(n_genes, dtype=np.int64)})
    frames = []
    for mode, read in reads.items():
        pairs = read.select("group", pl.col("tf").alias("condition")).unique()
        frames.append(pairs.join(every, how="cross").join(read.rename({"tf": "condition"}), on=["group", "condition", "gene_id"],
                                                          how="left")
                      .with_columns(pl.col("log2fc").fill_null(0.0), pl.lit(mode).alias("mode")))
    moved = propagate(pl.concat(frames).select("group", "condition", "mode", "gene_id", "log2fc"), tf_genes, steps)
    return {mode: moved.filter(pl.col("mode") == mode).select("group", pl.col("condition").alias("tf"), "gene_id",
                                                              pl.col("log2fc_propagated").alias("log2fc"))
            for mode in reads}


def perturbation_truth(truth: Path, mode: str, analysed: pl.DataFrame, genes: pl.DataFrame) -> pl.DataFrame:
    """Every analysed (cell_type, tf, gene_id) with its true log2FC (0 when the network leaves the
    gene unmoved) and whether the TF binds a causal element of the gene (``direct``)."""
    key = genes.select(pl.col("gene").alias("gene_key"), "gene_id")
    pert = (_truth(truth, "perturbations.tsv").filter(pl.col("mode") == mode)
            .rename({"gene_id": "gene_key", "log2fc": "true_lfc"}).join(key, on="gene_key")
            .select("cell_type", "tf", "gene_id", "true_lfc"))
    edges = (_truth(truth, "tf_targets.tsv").rename({"gene_id": "gene_key"}).join(key, on="gene_key")
             .select("tf", "gene_id", pl.lit(True).alias("direct")))
    return (analysed.join(pert, on=["cell_type", "tf", "gene_id"], how="left").join(edges, on=["tf", "gene_id"], how="left")
            .with_columns(pl.col("true_lfc").fill_null(0.0), pl.col("direct").fill_null(False)))


def transition_task(trans: pl.DataFrame, disease: dict, groups: dict, co_fraction: float | None) -> dict | None:
    if groups.get("source") != disease["disease"] or groups.get("target") != disease["normal"]:
        return None
    ko = trans.filter((pl.col("mode") == "KO") & ~pl.col("condition").str.contains("+", literal=True))
    model = ko.filter(pl.col("condition") == disease["driver"])["fraction_closer"]
    others = ko.filter(pl.col("condition") != disease["driver"])["fraction_closer"]
    if model.is_empty():
        return None
    return task("share of disease cells moved toward normal", float(model[0]), "predicted states under the driver's knockout",
                {"random_tf": float(others.mean()) if others.len() else None, "source_unchanged": 0.0, "celloracle_like": co_fraction},
                triple=[disease["disease"], f"{disease['driver']} KO", disease["normal"]])


def therapeutic_task(ranking: pl.DataFrame, disease: dict, groups: dict, de_rank: int) -> dict | None:
    if groups.get("source") != disease["disease"] or groups.get("target") != disease["normal"]:
        return None
    single = ranking.filter(~pl.col("condition").str.contains("+", literal=True)).sort("transition_score", descending=True)
    names = single["condition"].to_list()
    if disease["driver"] not in names:
        return None
    rank = names.index(disease["driver"]) + 1
    return task("1 / rank of the planted driver", 1.0 / rank, "knockouts ranked by transition toward normal",
                {"differential_expression": 1.0 / de_rank}, driver=disease["driver"], rank=rank, hit_at_1=rank == 1,
                hit_at_3=rank <= 3, baseline_rank=de_rank)


# ---------------------------------------------------------------------------------------------
# The scorecard
# ---------------------------------------------------------------------------------------------

def read_cells(every: pl.DataFrame, per_group: int, seed: int, analysed: int) -> pl.DataFrame:
    """The (cell_id, barcode, group) rows atlas_grn analysed: its own seeded sample of ``every``
    grouped cell (analysis.cells_per_group, analysis.seed; all of them when 0), as analysis/plan.py
    draws it. ``analysed``: the cell count atlas.json recorded, which must match."""
    cells = sample_cells(every, per_group, seed)
    if cells.height != analysed:
        raise InputError(f"atlas_grn analysed {analysed} cells but its config's sample (analysis.cells_per_group="
                         f"{per_group}, analysis.seed={seed}) has {cells.height}: the atlas folder's config.yaml does "
                         "not match its outputs; rerun atlas_grn")
    return cells


def scorecard(out: Path, truth: Path, k: int = 3) -> dict:
    """Read atlas_grn's tables from ``out``, compute the baselines from its shard set, score both
    against ``truth``; writes ``out/scorecard.json``."""
    check_truth(truth)
    need = ["master_tfs.parquet", "grn/scores.parquet", "enhancers.parquet", "perturbation_effects.parquet", "windows_bound.parquet",
            "atlas.json", "config.yaml", "work/bound.npy", "transitions.parquet", "therapeutic_targets.parquet"]
    missing = [n for n in need if not (out / n).exists()]
    if missing:
        raise InputError(f"{out} lacks {missing}: run atlas_grn (this version) first (analysis.out={out})")
    meta = json.loads((out / "atlas.json").read_text())
    cfg = load_config(out / "config.yaml")
    tables = load_tables(meta["manifest"])
    genes = tables.genes
    data = cell_data(tables)
    every = cell_groups(tables, cfg.analysis.groups, cfg.analysis.group_column, 2)
    groups = read_cells(every, cfg.analysis.cells_per_group, cfg.analysis.seed,
                        meta.get("sampling", {}).get("analysed_cells", meta["cells"]))
    group_cells = {g: np.sort(df["cell_id"].to_numpy()) for (g,), df in groups.group_by("group")}
    every_cells = {g: np.sort(df["cell_id"].to_numpy()) for (g,), df in every.group_by("group")}
    tf_genes = {n: int(genes.filter(pl.col("name") == n)["gene_id"][0]) for n in meta["tfs"] if n in set(genes["name"].to_list())}
    bound = np.load(out / "work" / "bound.npy")
    bound_by_tf = {n: bound[:, m] for n, m in zip(meta["tfs"], meta["tf_motifs"]) if n in tf_genes}
    # the sites the model's perturbations acted on (analysis.perturb_support_pvalue; the scan's in
    # outputs written before it existed): the perturbation baselines act on the same
    acted = out / "work" / "perturb_bound.npy"
    pbound = np.load(acted) if acted.exists() else bound
    perturbed_by_tf = {n: pbound[:, m] for n, m in zip(meta["tfs"], meta["tf_motifs"]) if n in tf_genes}
    tfs = [TF(n, m, None) for n, m in zip(meta["tfs"], meta["tf_motifs"])]
    wb = pl.read_parquet(out / "windows_bound.parquet")
    motif_in_window = {(t, int(g)) for t, g in zip(wb["tf"], wb["gene_id"])}

    # GRN
    scores = grn_ceiling(pl.read_parquet(out / "grn" / "scores.parquet"), out, tables.peaks, genes, tfs, truth)
    tfgene = tf_gene_baselines(data, tf_genes, genes["gene_id"].to_numpy(), motif_in_window)
    # enhancer–gene
    elems = pl.read_parquet(out / "enhancers.parquet")
    windows = {int(g): df["peak_id"].to_numpy() for (g,), df in elems.group_by("gene_id")}
    elab = enhancer_labels(enhancer_baselines(data, elems), tables.peaks, genes, truth)
    access_models = window_models(data, windows)  # shared by the knockout and knock-in baselines
    # (tf, gene) pairs whose knockout reaches one of the gene's planted causal elements (the recall of the
    # perturbation sites: the scan's, unless analysis.perturb_support_pvalue adds supported ones)
    causal = elab.filter(pl.col("label")).select("gene_id", "peak_id")
    reached = {(t, int(g)) for t, b in perturbed_by_tf.items() for g, pk in zip(causal["gene_id"], causal["peak_id"]) if b[pk]}
    # knockouts and knock-ins
    effects = pl.read_parquet(out / "perturbation_effects.parquet")
    motif_tfs: dict[int, list[str]] = {}
    for t, g in motif_in_window:
        if t in tf_genes:
            motif_tfs.setdefault(g, []).append(t)
    r_signed = {}
    for t, tg in tf_genes.items():
        r = correlation(data.expression.astype(np.float64), data.expression[:, tg].astype(np.float64))
        r_signed.update({(t, g): float(r[g]) for g in range(genes.height)})
    masters = pl.read_parquet(out / "master_tfs.parquet")
    enhancer, per_gene = enhancer_tasks(elab)
    card: dict[str, Any] = {"master_tfs": master_tf_task(masters, truth, k, master_baselines(masters, data, every, bound_by_tf)),
                            "grn": grn_task(scores, tfgene, truth), **enhancer}
    if per_gene.height:  # the report's gene-by-gene plot
        per_gene.join(genes.select(pl.col("gene_id").cast(pl.Int64), "gene"), on="gene_id", how="left").write_parquet(
            out / "enhancer_per_gene.parquet")
    levels = {"KO": None, "KI": float(np.quantile(data.accessibility[data.accessibility > 0], 0.9))}
    access_reads = {mode: accessibility_perturbation(data, windows, perturbed_by_tf, group_cells, level, access_models)
                    for mode, level in levels.items()}
    access_propagated = propagated_reads(access_reads, tf_genes, genes.height, cfg.analysis.ko_propagation)
    for mode, sign in (("KO", -1.0), ("KI", 1.0)):
        single = effects.filter((pl.col("mode") == mode) & ~pl.col("condition").str.contains("+", literal=True))

        def read(column: str) -> pl.DataFrame:
            return single.select(pl.col("group").alias("cell_type"), pl.col("condition").alias("tf"), "gene_id",
                                 pl.col(column).alias("pred"))

        one_step = read("log2fc")
        # the read propagated through the model's own TF changes (analysis/propagation.py) is the scored
        # readout of both (design §7: each promoted under a rule fixed before unseen seeds ran)
        steps = cfg.analysis.ko_propagation if "log2fc_propagated" in single.columns else 0
        if steps:
            model, variants = read("log2fc_propagated"), {"model_one_step": one_step}
            readout = f"predicted log2FC propagated {steps} steps through the TFs' genes (group mean over cells)"
        else:
            model, variants = one_step, None
            readout = "predicted log2FC (group mean over cells)"
        triples = perturbation_truth(truth, mode, model.select("cell_type", "tf", "gene_id"), genes)
        triples = triples.with_columns(pl.Series("touched", [(t, int(g)) in reached for t, g in zip(triples["tf"], triples["gene_id"])],
                                                 pl.Boolean))
        keys = triples.select("cell_type", "tf", "gene_id")
        motif = keys.with_columns(pl.Series("pred", [sign if (t, g) in motif_in_window else 0.0
                                                     for t, g in zip(keys["tf"], keys["gene_id"])]))
        signed = keys.with_columns(pl.Series("pred", [sign * r_signed.get((t, g), 0.0) if (t, g) in motif_in_window else 0.0
                                                      for t, g in zip(keys["tf"], keys["gene_id"])]))
        level = levels[mode]
        access = access_reads[mode].rename({"group": "cell_type", "log2fc": "pred"})
        oracle = celloracle_perturbation(data, tf_genes, motif_tfs, group_cells, knock_in=mode == "KI").rename(
            {"group": "cell_type", "log2fc": "pred"})
        none = keys.with_columns(pl.lit(0.0).alias("pred"))
        name = "knockout" if mode == "KO" else "knock_in"
        # the accessibility regression's read propagated as the model's variant is (when steps > 0)
        access_prop = ({"accessibility_regression_propagated": access_propagated[mode].rename({"group": "cell_type", "log2fc": "pred"})}
                       if access_propagated else {})
        card[name] = perturbation_task(mode, triples, {"model": model, "motif_sign": motif, "signed_correlation": signed,
                                                       "accessibility_regression": access, **access_prop, "celloracle_like": oracle,
                                                       "no_change": none},
                                       readout, variants)
        if groups.height < every.height:  # a sample of cells: the strongest baseline's read on all of them, for reference
            ref = accessibility_perturbation(data, windows, perturbed_by_tf, every_cells, level, access_models).rename(
                {"group": "cell_type", "log2fc": "pred"})
            card[name]["all_cells_reference"] = {
                "accessibility_regression": perturbation_task(mode, triples, {"model": ref}, "")["model"],
                "note": f"read over all {every.height} grouped cells instead of the {groups.height} analysed ones"}
        if mode == "KO" and (out / "ko_mediators.parquet").exists():
            # the mediators are single peaks of the one-step read, so the decomposition reads that
            scored = triples.join(one_step, on=["cell_type", "tf", "gene_id"]).filter(
                (pl.col("true_lfc").abs() >= MIN_KO_EFFECT)).rename({"pred": "model_lfc"})
            med = pl.read_parquet(out / "ko_mediators.parquet")
            card[name]["decomposition"] = ko_decomposition(
                scored, med, enhancer_labels(med.select("gene_id", "peak_id").unique(), tables.peaks, genes, truth))
    # transition and therapeutic target: the planted disease triple
    disease = _truth(truth, "disease.tsv").row(0, named=True)
    tg_path = out / "transition_groups.json"
    tgroups = json.loads(tg_path.read_text()) if tg_path.exists() else {}
    dis, nor = group_cells.get(disease["disease"]), group_cells.get(disease["normal"])
    co_fraction, de_rank = None, None
    if dis is not None and nor is not None and disease["driver"] in tf_genes:
        oracle = celloracle_perturbation(data, tf_genes, motif_tfs, {disease["disease"]: dis}, only=[disease["driver"]])
        delta = np.zeros(genes.height)
        for g, v in zip(oracle["gene_id"], oracle["log2fc"]):
            delta[g] = v * np.log(2)
        co_fraction = fraction_closer(data.expression[dis], data.expression[nor], data.expression[dis] + delta)
        # differential expression is a statistic of the data, not a read of predictions: every grouped cell
        dis_all, nor_all = every_cells[disease["disease"]], every_cells[disease["normal"]]
        de = {t: abs(float(data.expression[dis_all, g].mean() - data.expression[nor_all, g].mean())) for t, g in tf_genes.items()}
        de_rank = sorted(de, key=de.get, reverse=True).index(disease["driver"]) + 1
    tr = transition_task(pl.read_parquet(out / "transitions.parquet"), disease, tgroups, co_fraction)
    th = therapeutic_task(pl.read_parquet(out / "therapeutic_targets.parquet"), disease, tgroups, de_rank) if de_rank else None
    for key, value in (("transition", tr), ("therapeutic_target", th)):
        card[key] = value if value is not None else {
            "not_scored": f"atlas_grn compared {tgroups.get('source')} -> {tgroups.get('target')}; the planted disease "
                          f"triple is {disease['disease']} -> {disease['normal']} (set analysis.source_group and "
                          "analysis.target_group to it)"}
    card["_about"] = {"truth": str(truth), "atlas": str(out), "cells": meta.get("cells"), "groups": meta.get("groups"),
                      "simulator_version": SIMULATOR_VERSION, "disease": disease,
                      "definitions": __doc__.split("\n\n", 1)[1].strip()}
    (out / "scorecard.json").write_text(json.dumps(card, indent=1, default=float))
    return card


def scored_tasks(card: dict) -> dict[str, dict]:
    """The tasks of a scorecard that were scored (name → task)."""
    return {k: v for k, v in card.items() if not k.startswith("_") and "model" in v}

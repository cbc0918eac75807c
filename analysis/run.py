"""The driver side of atlas_grn: scored partitions in, every analysis's tables and figures out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from . import attention, crispri, enhancers, exports, features, grn, master_tf, perturb, targets, transitions
from .diagnostics import embedding_sensitivity
from .partitions import load_partitions
from .report import write_report
from .validate import scorecard


def _groups_pair(p, names: list[str]) -> tuple[str, str]:
    """Source and target groups (checked against the groups in atlas.prepare, before Ray work)."""
    a = p.cfg.analysis
    src = a.source_group or names[0]
    return src, a.target_group or next(g for g in names if g != src)


def run_analyses(p, stats: dict[str, Any], seconds: float) -> Path:
    a = p.cfg.analysis
    out = p.out
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    records, pert = load_partitions(out)
    cells = p.chosen
    tables = p.tables
    gene_names = dict(zip(tables.genes["gene_id"].to_list(), tables.genes["name"].to_list()))
    gene_keys = dict(zip(tables.genes["gene_id"].to_list(), tables.genes["gene"].to_list()))
    results: dict[str, Any] = {"stats": stats, "seconds": seconds}

    # attention: per group means, genome tracks
    long = attention.explode(records)
    gatt = attention.group_attention(long, cells)
    (out / "tables").mkdir(exist_ok=True)
    gatt.write_parquet(out / "tables" / "attention_groups.parquet")
    sizes = tables.manifest.data.get("chrom_sizes")  # shard sets built before it was recorded: sized by their last peak
    results["tracks"] = [str(x) for x in attention.write_tracks(attention.peak_tracks(gatt, tables.peaks), out / "tracks", sizes)]

    # features + AnnData
    mats = features.gene_cell_matrices(records, tables.genes, tables.peaks, a.tss_region_bp)
    features.write_h5ad(mats, cells, tables.genes, out / "features.h5ad")
    group_of = dict(zip(cells["cell_id"].to_list(), cells["group"].to_list()))
    groups = np.array([group_of[int(c)] for c in mats.cells])
    col = {int(g): j for j, g in enumerate(mats.genes.tolist())}
    tf_in = [t for t in p.tfs if t.gene_id is not None and t.gene_id in col]
    results["tfs_without_gene"] = [t.name for t in p.tfs if t not in tf_in]

    # master TFs: attention features (model) vs gene activity (baseline)
    names = sorted(set(groups.tolist()))
    masters = None
    if tf_in and len(names) >= 2:
        cols = [col[t.gene_id] for t in tf_in]
        tfn = [t.name for t in tf_in]
        masters = pl.concat([
            master_tf.master_tfs(mats.attention_feature[:, cols], groups, tfn, seed=a.seed).with_columns(pl.lit("model").alias("method")),
            master_tf.master_tfs(mats.activity[:, cols], groups, tfn, seed=a.seed).with_columns(pl.lit("gene_activity").alias("method")),
            master_tf.master_tfs(mats.expression[:, cols], groups, tfn, seed=a.seed).with_columns(pl.lit("tf_expression").alias("method")),
        ])
        masters.write_parquet(out / "master_tfs.parquet")

    # GRN edges (+ SCENIC+/CellOracle layouts) and the all-pairs score table with baselines
    edges = grn.grn_edges(gatt, p.bound, p.tfs, gene_names, high_k=a.high_attention_peaks, max_p=a.max_edge_p)
    results["grn_files"] = [str(x) for x in grn.write_grn(edges, out / "grn")]
    windows = {int(g): np.asarray(df["peak_ids"][0].to_list(), np.int64)
               for (g,), df in sorted(records.group_by("gene_id"), key=lambda kv: kv[0])}
    best = grn.pair_scores(gatt, p.bound, p.tfs, a.high_attention_peaks)
    by_ablation = grn.pair_scores(gatt, p.bound, p.tfs, a.high_attention_peaks, by="ablation")
    effects = perturb.group_effects(records, pert, cells)  # per group; also written below
    scores = grn.score_table(best, windows, p.bound, p.tfs, gene_names, mats.expression, mats.genes,
                             variants={"model_ablation": by_ablation, "model_knockout": grn.knockout_scores(effects, p.tfs)})
    scores = scores.with_columns(pl.col("gene_id").replace_strict(gene_keys, return_dtype=pl.Utf8).alias("gene"))
    scores.write_parquet(out / "grn" / "scores.parquet")
    wb = scores.filter(pl.col("motif_only") > 0).select("tf", "gene_id")
    wb.write_parquet(out / "windows_bound.parquet")
    results["n_edges"] = edges.height

    # enhancer–gene
    elems = enhancers.element_scores(gatt, tables.genes, tables.peaks)
    elems.write_parquet(out / "enhancers.parquet")
    if a.crispri:
        cr = crispri.score_crispri(a.crispri, elements=elems, genes=tables.genes, peaks=tables.peaks)
        (out / "crispri.json").write_text(json.dumps(cr, indent=1))
        results["crispri"] = cr

    # perturbations: per group effects, and the peaks each knockout acts through
    effects.write_parquet(out / "perturbation_effects.parquet")
    # the layouts CellOracle, SCENIC+ and scverse load
    links = exports.regulatory_links(elems, tables.genes, tables.peaks, a.tss_region_bp, a.high_attention_peaks)
    results["exports"] = [str(x) for x in exports.write_exports(links, p.bound, p.tfs, tables.genes, tables.peaks, records,
                                                                effects, mats, cells.join(tables.cells.select("cell_id", "rna_counts"), on="cell_id", how="left"),
                                                                out, a.seed)]
    mediators = perturb.ko_mediators(gatt, p.bound, p.conditions)
    mediators.write_parquet(out / "ko_mediators.parquet")

    # transitions and therapeutic targets
    src, tgt = _groups_pair(p, names)
    cid = {g: np.sort(cells.filter(pl.col("group") == g)["cell_id"].to_numpy()) for g in names}
    base_src = perturb.matrix(records, "pred", cid[src], mats.genes)
    base_tgt = perturb.matrix(records, "pred", cid[tgt], mats.genes)
    trans_rows = []
    states: dict[str, np.ndarray] = {}
    for c in p.conditions:
        st = perturb.perturbed_states(records, pert, c.name, c.mode, cid[src], mats.genes)
        states[f"{c.name} {c.mode}"] = st
        trans_rows.append((c.name, c.mode, transitions.transition_score(base_src, base_tgt, st),
                           transitions.fraction_closer(base_src, base_tgt, st)))
    trans = pl.DataFrame(trans_rows, schema={"condition": pl.Utf8, "mode": pl.Utf8, "transition_score": pl.Float64,
                                             "fraction_closer": pl.Float64}, orient="row")
    trans = trans.sort("transition_score", descending=True)
    trans.write_parquet(out / "transitions.parquet")
    best = trans.row(0, named=True)
    emb = transitions.embed(base_src, base_tgt, states[f"{best['condition']} {best['mode']}"], seed=a.seed)
    transitions.plot(emb, f"{src} under {best['condition']} {best['mode']} vs {tgt}", figs / "transition.png")
    results["transition"] = {"source": src, "target": tgt, "best": best}
    (out / "transition_groups.json").write_text(json.dumps({"source": src, "target": tgt}))
    ko_states = {k.split()[0]: v for k, v in states.items() if k.endswith(" KO")}
    ranking = targets.rank_knockouts(base_src, base_tgt, ko_states)
    ranking.write_parquet(out / "therapeutic_targets.parquet")
    results["targets"] = {"disease": src, "reference": tgt, "knockouts": ranking.head(5).to_dicts(),
                          "masters": targets.differing_masters(masters.filter(pl.col("method") == "model"), src, tgt, a.top_k_tfs)
                          if masters is not None else {}}

    sig0 = tables.root / tables.manifest.data["tables"]["signal"][0]["file"]
    results["sanity"] = embedding_sensitivity(p.models.elementary, tables.peak_dna, sig0, seed=a.seed)
    meta = {"manifest": str(tables.manifest.path.resolve()), "cells": cells.height, "groups": names,
            "genes": int(len(mats.genes)), "tfs": [t.name for t in p.tfs], "tf_motifs": [t.motif for t in p.tfs],
            "sampling": {"cells_per_group": a.cells_per_group, "analysed_cells": cells.height, "grouped_cells": p.groups.height,
                         "note": "a seeded sample of each group's cells (analysis.cells_per_group; 0 = every cell)"
                         if a.cells_per_group else "every grouped cell"},
            "conditions": len(p.conditions), "perturb_rule": p.cfg.analysis.perturb,
            "not_perturbed": {"count": len(p.not_perturbed), "why": "a motif but no gene among the atlas genes (analysis.perturb)",
                              "tfs": p.not_perturbed},
            "ki_level": p.ki_level, "stats": stats, "seconds": seconds, "sanity": results["sanity"],
            "elementary_weights": p.elementary_weights, "regulatory_weights": p.regulatory_weights}
    (out / "atlas.json").write_text(json.dumps(meta, indent=1, default=str))
    (out / "targets.json").write_text(json.dumps(results["targets"], indent=1, default=str))

    card = None
    if a.truth:
        card = scorecard(out, Path(a.truth), a.top_k_tfs)
    # training curves next to the report (the runs that made the weights)
    curves = []
    for w in (p.elementary_weights, p.regulatory_weights):
        png = Path(w).parent.parent / "loss_curve.png"
        if png.exists():
            dst = figs / f"loss_{Path(w).parent.parent.name}.png"
            shutil.copyfile(png, dst)
            curves.append(dst)
    return write_report(out, p, records, gatt, masters, edges, effects, trans, card, curves, results, mediators)

"""The driver side of atlas_grn: scored partitions in, every analysis's tables and figures out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import polars as pl

from . import (attention, cell_files, crispri, enhancers, exports, features, grn, master_tf, perturb, propagation, reduce, targets,
               transitions)
from .diagnostics import embedding_sensitivity
from .report import write_report
from .validate import scorecard


def _groups_pair(p, names: list[str]) -> tuple[str, str]:
    """Source and target groups (checked against the groups in atlas.prepare, before Ray work)."""
    a = p.cfg.analysis
    src = a.source_group or names[0]
    return src, a.target_group or next(g for g in names if g != src)


def run_analyses(p, stats: dict[str, Any], seconds: float) -> Path:
    """Every analysis from the scored partitions, by streaming reductions (reduce.py): the driver
    holds per-group, per-gene and per-peak aggregates and a fixed-size seeded sample of cells
    (``analysis.driver_cells_per_group``), never a cells x genes matrix."""
    a = p.cfg.analysis
    out = p.out
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    cells = p.chosen
    tables = p.tables
    gene_names = dict(zip(tables.genes["gene_id"].to_list(), tables.genes["name"].to_list()))
    gene_keys = dict(zip(tables.genes["gene_id"].to_list(), tables.genes["gene"].to_list()))
    results: dict[str, Any] = {"stats": stats, "seconds": seconds}
    universe = reduce.Universe.of(cells, tables.genes.height, [t.gene_id for t in p.tfs if t.gene_id is not None])
    fp = reduce.first_pass(out, universe)

    # attention: per group means, genome tracks
    gatt = fp.gatt
    (out / "tables").mkdir(exist_ok=True)
    gatt.write_parquet(out / "tables" / "attention_groups.parquet")
    sizes = tables.manifest.data.get("chrom_sizes")  # shard sets built before it was recorded: sized by their last peak
    results["tracks"] = [str(x) for x in attention.write_tracks(attention.peak_tracks(gatt, tables.peaks), out / "tracks", sizes)]

    # transitions (from group sums), then the per-cell pass: features, shifts, the driver's sample
    names = universe.groups
    src, tgt = _groups_pair(p, names)
    trans = (reduce.transition_table(fp, names, src, tgt, [(c.name, c.mode) for c in p.conditions])
             .sort("transition_score", descending=True, maintain_order=True))
    top = trans.row(0, named=True)
    sample = reduce.sample_cells(cells, a.driver_cells_per_group, a.seed)
    sp = reduce.second_pass(out, universe, fp, sample, src, tgt, (top["condition"], top["mode"]), a.tss_region_bp,
                            lambda g, w: features.peak_distance(tables.genes, tables.peaks, g, w), a.seed)
    seen = set(fp.genes.tolist())
    tf_in = [t for t in p.tfs if t.gene_id is not None and t.gene_id in seen]
    results["tfs_without_gene"] = [t.name for t in p.tfs if t not in tf_in]

    # master TFs (docs/design.md §7): the model's knockout shifts ranked by group mean difference (the
    # fixed readout) and by regression, its attention features (the paper's readout): variants; gene
    # activity and TF expression under both rankings: baselines
    masters = None
    if tf_in and len(names) >= 2:
        mats, groups = features.sample_matrices(sp.sample, sample, [t.gene_id for t in tf_in])
        tfn = [t.name for t in tf_in]
        mats["knockout_shift"] = features.knockout_matrix(sp.ko_shift, sample, tfn)
        regression = lambda x: master_tf.master_tfs(x, groups, tfn, seed=a.seed)  # noqa: E731
        difference = lambda x: master_tf.group_mean_difference(x, groups, tfn)  # noqa: E731
        masters = pl.concat([rank(mats[col]).with_columns(pl.lit(method).alias("method")) for method, rank, col in (
            ("model", difference, "knockout_shift"), ("knockout_regression", regression, "knockout_shift"),
            ("attention_feature", regression, "attention_feature"),
            ("gene_activity", regression, "activity"), ("gene_activity_mean_difference", difference, "activity"),
            ("tf_expression", regression, "expression"), ("tf_expression_mean_difference", difference, "expression"))])
        masters.write_parquet(out / "master_tfs.parquet")

    # GRN edges (+ SCENIC+/CellOracle layouts) and the all-pairs score table with baselines
    edges = grn.grn_edges(gatt, p.bound, p.tfs, gene_names, high_k=a.high_attention_peaks, max_p=a.max_edge_p)
    results["grn_files"] = [str(x) for x in grn.write_grn(edges, out / "grn")]
    windows = fp.windows
    best = grn.pair_scores(gatt, p.bound, p.tfs, a.high_attention_peaks)
    by_ablation = grn.pair_scores(gatt, p.bound, p.tfs, a.high_attention_peaks, by="ablation")
    effects = fp.effects(names)  # per group; also written below
    corr = fp.correlation([t.gene_id for t in p.tfs])  # (genes seen, TFs) TF-gene expression r
    scores = grn.score_table(best, windows, p.bound, p.tfs, gene_names, corr, fp.genes,
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
    tf_genes = {t.name: t.gene_id for t in tf_in}
    effects = propagation.propagate(effects, tf_genes, a.ko_propagation)
    effects.write_parquet(out / "perturbation_effects.parquet")
    # the layouts CellOracle, SCENIC+ and scverse load
    links = exports.regulatory_links(elems, tables.genes, tables.peaks, a.tss_region_bp, a.high_attention_peaks)
    results["exports"] = [str(x) for x in exports.write_exports(links, p.bound, p.tfs, tables.genes, tables.peaks, effects,
                                                                corr, fp.genes, fp.region_correlation, out)]
    meta_cells = cells.join(tables.cells.select("cell_id", "rna_counts"), on="cell_id", how="left")
    results["cell_files"] = [str(x) for x in cell_files.write_cell_files(out, fp, meta_cells, tables.genes, tables.peaks,
                                                                         sample, a.seed)]
    mediators = perturb.ko_mediators(gatt, p.perturb_bound, p.conditions)
    mediators.write_parquet(out / "ko_mediators.parquet")

    # transitions and therapeutic targets
    trans = (trans.with_columns(pl.Series("fraction_closer", [sp.fraction_closer.get((c, m), 0.0)
                                                              for c, m in zip(trans["condition"], trans["mode"])], pl.Float64)))
    trans.write_parquet(out / "transitions.parquet")
    emb = transitions.embed(sp.states["source"], sp.states["target"], sp.states["perturbed"], seed=a.seed)
    transitions.plot(emb, f"{src} under {top['condition']} {top['mode']} vs {tgt}", figs / "transition.png")
    results["transition"] = {"source": src, "target": tgt, "best": trans.row(0, named=True)}
    (out / "transition_groups.json").write_text(json.dumps({"source": src, "target": tgt}))
    ranking = targets.rank_knockouts(trans.filter(pl.col("mode") == "KO"))
    ranking.write_parquet(out / "therapeutic_targets.parquet")
    results["targets"] = {"disease": src, "reference": tgt, "knockouts": ranking.head(5).to_dicts(),
                          "masters": targets.differing_masters(masters.filter(pl.col("method") == "model"), src, tgt, a.top_k_tfs)
                          if masters is not None else {}}

    sig0 = tables.root / tables.manifest.data["tables"]["signal"][0]["file"]
    results["sanity"] = embedding_sensitivity(p.models.elementary, tables.peak_dna, sig0, seed=a.seed)
    meta = {"manifest": str(tables.manifest.path.resolve()), "cells": int(fp.cell_order.size), "groups": names,
            "genes": int(fp.genes.size), "pairs": fp.pairs, "tfs": [t.name for t in p.tfs], "tf_motifs": [t.motif for t in p.tfs],
            "sampling": {"cells_per_group": a.cells_per_group, "analysed_cells": cells.height, "grouped_cells": p.groups.height,
                         "note": "a seeded sample of each group's cells (analysis.cells_per_group; 0 = every cell)"
                         if a.cells_per_group else "every grouped cell",
                         "driver_cells_per_group": a.driver_cells_per_group,
                         "driver_sample": f"{sample.height} cells (at most analysis.driver_cells_per_group per group, seeded) "
                                          "train the master-TF classifier and are the figures' points; every other output "
                                          "covers every analysed cell"},
            "per_cell": {"cells/": "cell_id, gene_id, expression, pred, activity, attention_feature",
                         "shifts/": "cell_id, condition, mode, shift_norm, toward_target, closer (cells a condition touched)",
                         "partitions/scores/": "per (cell, gene): peak ids, attention, ATAC mass, ablation",
                         "partitions/perturb/": "per (cell, gene, condition, mode): the perturbed prediction"},
            "conditions": len(p.conditions), "perturb_rule": p.cfg.analysis.perturb,
            "not_perturbed": {"count": len(p.not_perturbed), "why": "a motif but no gene among the atlas genes (analysis.perturb)",
                              "tfs": p.not_perturbed},
            "knock_in": p.knock_in.record(), "stats": stats, "seconds": seconds, "sanity": results["sanity"],
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
    view = {"cells": int(fp.cell_order.size), "genes": int(fp.genes.size), "pairs": fp.pairs, "scatter": sp.scatter,
            "r": fp.prediction_r()}
    return write_report(out, p, view, gatt, masters, edges, effects, trans, card, curves, results, mediators)

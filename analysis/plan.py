"""Planning an atlas_grn run on the driver: every input check and every small precomputation
(tables, groups, analysed cells, TFs and motif sites, perturbation conditions, knock-in level,
the models) before Ray does any work, and the partitions the workers will score."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from creformer.config import Config
from creformer.engine.errors import InputError

from . import inputs
from .binding_support import supported_sites
from .motif_stage import scan_peaks
from .perturb import KnockIn, conditions, knock_in_profile, perturbed_tfs


@dataclass
class Prepared:
    cfg: Config
    out: Path
    tables: inputs.AtlasTables
    groups: pl.DataFrame  # every grouped cell
    chosen: pl.DataFrame  # the analysed cells (cell_id, barcode, group)
    tfs: list[inputs.TF]
    motifs: list
    bound: np.ndarray | None  # (n_peaks, n_motifs) motif sites present: the motif stage fills it, once Ray runs
    conditions: list
    not_perturbed: list[str]  # TFs with a motif but no condition (analysis.perturb), named in atlas.json
    knock_in: KnockIn
    elementary_weights: str
    regulatory_weights: str
    genes: list[int]  # analysed gene ids (empty: all)
    models: inputs.Models  # loaded once here to check the artifacts; the driver reuses them
    # (n_peaks, n_motifs) the sites a perturbation closes or opens: the scan's, or those plus the
    # accessibility-supported looser sites (analysis.perturb_support_pvalue); set after the scan
    perturb_bound: np.ndarray | None = None


def prepare(cfg: Config) -> Prepared:
    """Every check and every small precomputation, before Ray does any work."""
    a = cfg.analysis
    tables = inputs.load_tables(cfg.data.regulatory.shards)
    groups = inputs.cell_groups(tables, a.groups, a.group_column, a.min_cells_per_group)
    chosen = inputs.sample_cells(groups, a.cells_per_group, a.seed)
    names = sorted(groups["group"].unique().to_list())
    if len(names) < 2:
        raise InputError(f"atlas_grn compares cell groups and found one ({names}); give a group table with 2+ groups")
    for key in ("source_group", "target_group"):
        if getattr(a, key) and getattr(a, key) not in names:
            raise InputError(f"analysis.{key}={getattr(a, key)!r} is not a cell group (groups: {names})")
    if a.source_group and a.source_group == a.target_group:
        raise InputError(f"analysis.source_group and analysis.target_group are both {a.source_group!r}: pick two groups")
    genes = inputs.resolve_genes(tables.genes, a.genes, tables.root)
    motifs = inputs.load_motifs(a.motifs, a.motif_table)
    tfs = inputs.resolve_tfs(motifs, tables.genes, a.tfs)
    if not tfs:
        raise InputError(f"no motif name in {a.motifs} matches a gene name of the atlas: nothing to call TFs")
    el = cfg.train.regulatory.elementary_weights or str(cfg.train.weights("elementary"))
    rg = a.regulatory_weights or str(cfg.train.weights("regulatory"))
    models = inputs.load_models(el, rg, cfg, tables)  # fails here, not in a worker, when artifacts do not fit
    perturbed, not_perturbed = perturbed_tfs(tfs, a.perturb, a.tfs)
    conds = conditions(perturbed, a.multi_tf, known=tfs)
    sig0 = pq.read_table(tables.root / tables.manifest.data["tables"]["signal"][0]["file"], columns=["pos", "tok"])
    ki = knock_in_profile(sig0.column("tok").combine_chunks(), sig0.column("pos").combine_chunks(),
                          inputs.level_values(tables.atac_cuts), tables.peak_dna.shape[1], a.ki_quantile)
    return Prepared(cfg, Path(a.out), tables, groups, chosen, tfs, motifs, None, conds, not_perturbed,
                    ki, el, rg, genes, models)



def scan_motifs(p: Prepared) -> np.ndarray:
    """Motif sites of every peak (analysis.motif_pvalue, else motif_threshold) by the Ray Data motif
    stage over blocks of peaks (motif_stage.py); sets and returns ``p.bound``."""
    a = p.cfg.analysis
    t0 = time.perf_counter()
    hits = scan_peaks(p.tables.peak_dna, p.motifs, a.motif_pvalue, a.motif_threshold, a.workers)
    p.bound = hits.bound
    print(f"[atlas_grn] motif scan: {p.tables.peak_dna.shape[0]:,} peaks x {len(p.motifs)} motifs, "
          f"{int(p.bound.sum()):,} (peak, motif) sites in {time.perf_counter() - t0:.1f} s (Ray Data, {a.workers} actors)", flush=True)
    return p.bound


def perturbation_sites(p: Prepared) -> np.ndarray:
    """The sites perturbations act on (``p.perturb_bound``): the scan's (``p.bound``), plus, with
    analysis.perturb_support_pvalue, the looser sites the atlas's accessibility supports
    (binding_support.py); the looser scan runs on the same Ray Data motif stage."""
    a = p.cfg.analysis
    if not a.perturb_support_pvalue:
        p.perturb_bound = p.bound
        return p.perturb_bound
    t0 = time.perf_counter()
    loose = scan_peaks(p.tables.peak_dna, p.motifs, a.perturb_support_pvalue, a.motif_threshold, a.workers).bound
    p.perturb_bound = supported_sites(p.tables, p.bound, loose, a.perturb_support_r)
    print(f"[atlas_grn] perturbation sites: the scan's {int(p.bound.sum()):,} plus {int((p.perturb_bound & ~p.bound).sum()):,} "
          f"of {int((loose & ~p.bound).sum()):,} sites at p <= {a.perturb_support_pvalue:g} whose peak follows the motif's "
          f"accessibility (r >= {a.perturb_support_r:g}) in {time.perf_counter() - t0:.1f} s", flush=True)
    return p.perturb_bound


def partitions(p: Prepared) -> list[dict[str, Any]]:
    """One item per (sample shard, block of analysed cells); cells of a shard are a contiguous range."""
    man = p.tables.manifest
    plan_path = man.root / "plan.json"
    ranges = [t["payload"]["cells"] for t in json.loads(plan_path.read_text())["tasks"]] if plan_path.exists() else None
    signal = {Path(s["file"]).name: s for s in man.data["tables"]["signal"]}
    chosen = np.sort(p.chosen["cell_id"].to_numpy())
    items = []
    for i, entry in enumerate(man.shards):
        lo, hi = ranges[i] if ranges else (chosen.min(), chosen.max() + 1)
        cells = chosen[(chosen >= lo) & (chosen < hi)]
        for j in range(0, cells.size, p.cfg.analysis.cells_per_partition):
            items.append({"index": len(items), "shard": entry, "signal": signal[f"block-{i:06d}.parquet"],
                          "cells": cells[j:j + p.cfg.analysis.cells_per_partition].tolist()})
    return items



def absolute_paths(cfg: Config) -> Config:
    """Every file the job reads or writes as an absolute path, fixed before any Ray work."""
    def fix(value: str) -> str:
        return str(Path(value).resolve()) if value else value

    cfg.data.regulatory.shards = fix(cfg.data.regulatory.shards)
    cfg.train.storage_path = fix(cfg.train.storage_path)
    cfg.train.regulatory.elementary_weights = fix(cfg.train.regulatory.elementary_weights)
    a = cfg.analysis
    for name in ("out", "regulatory_weights", "motifs", "groups", "truth", "crispri"):
        setattr(a, name, fix(getattr(a, name)))
    return cfg



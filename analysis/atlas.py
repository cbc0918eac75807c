"""`atlas_grn(cfg)`: the zero-shot analyses as a Ray batch job over the atlas (docs/design.md §7).

1. Plans on the driver (plan.py): every input is checked before Ray starts (tables, groups,
   TFs, motifs, model artifacts vs shards); then the motif scan runs as a Ray Data stage over
   blocks of peaks (motif_stage.py).
2. Scores partitions with Ray Data actors (partitions.py, atlas_worker.py): first the shared
   embeddings (shared_slices.py), then every (sample shard x block of analysed cells), each
   written atomically with a fingerprint, so a rerun skips finished partitions and more workers
   run more partitions at once.
3. Runs the analyses on the driver (run.py): attention tracks, features + h5ad, master TFs, GRN,
   enhancer–gene, perturbation effects, transitions, therapeutic targets; then the report, and
   the scorecard when a simulator truth folder is given.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from creformer.config import Config, save_config
from creformer.ray_utils import ensure_ray

from .partitions import run_partitions
from .plan import absolute_paths, perturbation_sites, prepare, scan_motifs
from .run import run_analyses


@dataclass
class AtlasResult:
    """What atlas_grn leaves: its output folder, the HTML report and, with a truth folder, the scorecard."""

    out: Path
    report: Path
    scorecard: dict[str, Any] | None
    stats: dict[str, Any]  # partitions, reused, samples, seconds, pairs/s, cache hits and misses


def atlas_grn(cfg: Config) -> AtlasResult:
    cfg = absolute_paths(cfg)
    t0 = time.perf_counter()
    p = prepare(cfg)
    p.out.mkdir(parents=True, exist_ok=True)
    config_path = p.out / "config.yaml"
    save_config(cfg, config_path)
    print(f"[atlas_grn] {p.chosen.height} cells in {p.chosen['group'].n_unique()} groups x {p.tables.genes.height} genes, "
          f"{len(p.tfs)} TFs, {len(p.conditions)} perturbations ({p.knock_in.describe()})"
          + (f"; {len(p.not_perturbed)} TFs with a motif but no gene in the atlas are not perturbed (analysis.perturb=all "
             "perturbs them too)" if p.not_perturbed else ""), flush=True)
    ensure_ray(cfg.ray)
    scan_motifs(p)
    perturbation_sites(p)
    stats = run_partitions(p, config_path)
    try:
        os.getcwd()
    except FileNotFoundError:
        # Under `ray job submit`, Ray may delete the job's working_dir copy once the actors that
        # shared its runtime env exit; the driver goes on from its (absolute) output folder.
        os.chdir(p.out)
    print(f"[atlas_grn] {stats['samples']:,} cell x gene pairs scored in {stats['seconds']:.1f} s "
          f"({stats['reused']}/{stats['partitions']} partitions reused)", flush=True)
    report = run_analyses(p, stats, time.perf_counter() - t0)
    print(f"[atlas_grn] report {report}", flush=True)
    card_path = p.out / "scorecard.json"
    card = json.loads(card_path.read_text()) if cfg.analysis.truth and card_path.exists() else None
    return AtlasResult(p.out, report, card, stats)

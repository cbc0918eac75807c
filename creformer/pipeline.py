"""`creformer run --config my.yaml`: the whole path on a user's own data, one config file.

prepare regulatory → (prepare elementary → train_elementary, unless train.regulatory.elementary_weights
names pretrained weights) → train_regulatory → atlas_grn → report. Each stage is its typed
function; finished stages are reused (shard sets by their input hash, training runs by their
checkpoints, atlas partitions by their fingerprints), so a rerun after a failure resumes.
Templates: docs/templates/arc.yaml (Cell Ranger ARC folder) and docs/templates/h5ad.yaml.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from creformer.analysis.atlas import AtlasResult, atlas_grn
from creformer.engine.elementary_shards import prepare_elementary
from creformer.engine.errors import InputError
from creformer.engine.regulatory_shards import prepare_regulatory
from creformer.trainer.jobs import train_elementary, train_regulatory

from .config import Config


@dataclass
class RunResult:
    atlas: AtlasResult
    elementary_weights: Path
    regulatory_weights: Path
    stages: list[tuple[str, float]] = field(default_factory=list)  # (stage, seconds)


def missing_inputs(cfg: Config) -> list[str]:
    """Every input the run needs that is unset or absent, as 'key: what to do' lines (checked
    before Ray starts, so a typo costs a second, not a cluster start)."""
    r, a = cfg.data.regulatory, cfg.analysis
    need = {"data.regulatory.multiome": (r.multiome, "a Cell Ranger ARC folder, .h5mu or RNA .h5ad"),
            "data.genome": (cfg.data.genome, "the genome FASTA the peaks were called on"),
            "data.regulatory.annotation": (r.annotation, "a GTF/GFF3 or BED of gene bounds"),
            "analysis.motifs": (a.motifs, "a JASPAR motif file (MEME, .jaspar or .pfm)")}
    for key, value in (("data.regulatory.fragments", r.fragments), ("data.regulatory.peaks", r.peaks),
                       ("data.regulatory.cells", r.cells), ("analysis.groups", a.groups),
                       ("analysis.motif_table", a.motif_table), ("analysis.crispri", a.crispri)):
        if value:  # optional, but a given path must exist
            need[key] = (value, "")
    if cfg.train.regulatory.elementary_weights:
        need["train.regulatory.elementary_weights"] = (cfg.train.regulatory.elementary_weights, "pretrained Elementary safetensors")
    else:
        need["data.samples"] = (cfg.data.samples, "samples.tsv of bulk tracks to pretrain the Elementary "
                                                  "(or set train.regulatory.elementary_weights to pretrained weights)")
    out = []
    for key, (value, what) in need.items():
        if not value:
            out.append(f"{key} is not set: {what}")
        elif not Path(value).exists():
            out.append(f"{key}={value} does not exist" + (f" ({what})" if what else ""))
    if r.multiome.endswith(".h5ad") and not (r.fragments and r.peaks):
        out.append("data.regulatory.multiome is an RNA-only .h5ad: set data.regulatory.fragments and data.regulatory.peaks")
    return out


def run_pipeline(cfg: Config) -> RunResult:
    """The stages in order; returns the weights, the atlas result and each stage's time."""
    cfg = copy.deepcopy(cfg)  # the weights each stage leaves are filled in for the next
    problems = missing_inputs(cfg)
    if problems:
        raise InputError("creformer run cannot start:\n  " + "\n  ".join(problems))
    stages: list[tuple[str, float]] = []

    def timed(name, fn):
        t = time.perf_counter()
        result = fn(cfg)
        stages.append((name, time.perf_counter() - t))
        print(f"[creformer run] {name} done in {stages[-1][1]:.0f} s", flush=True)
        return result

    reg = timed("prepare regulatory", prepare_regulatory)
    if not cfg.analysis.groups:  # atlas_grn compares groups: find out now, not after training
        labels = pq.read_table(reg.manifest_path.parent / "tables" / "cells.parquet", columns=["label"]).column("label")
        if labels.null_count == len(labels):
            raise InputError(f"the cells of {cfg.data.regulatory.multiome} carry no label (obs cell_type/celltype/label) and "
                             "analysis.groups is not set: give a table of barcode<TAB>cell_type (your clustering) as analysis.groups")
    if cfg.train.regulatory.elementary_weights:
        el = Path(cfg.train.regulatory.elementary_weights)
    else:
        timed("prepare elementary", prepare_elementary)
        el = timed("train_elementary", train_elementary).weights
        cfg.train.regulatory.elementary_weights = str(el)
    rg = timed("train_regulatory", train_regulatory).weights
    if not cfg.analysis.regulatory_weights:
        cfg.analysis.regulatory_weights = str(rg)
    atlas = timed("atlas_grn", atlas_grn)
    return RunResult(atlas, el, rg, stages)

"""`atlas_grn`: the zero-shot analyses as a Ray batch job over the atlas (DESIGN §7).

1. Checks every input before Ray starts (tables, groups, TFs, motifs, model artifacts vs shards).
2. Ray Data streams work items through actors. First the shared embeddings: every analysed
   peak's zero-signal (and knockout) and knock-in entries, split across the workers and written
   to the disk cache, so that W workers do not each compute them all. Then the partitions (one
   sample shard × a block of the analysed cells), through the same actors, which hold the frozen
   Elementary (behind the embedding cache) and the Regulatory head: per (cell, gene) the
   predicted expression, the attention scores and ATAC mass of its peaks, and the predictions
   under every TF knockout / knock-in. Each partition is written atomically as
   parquet with a fingerprint; a rerun skips finished partitions (resumable), and more workers
   run more partitions at once.
3. The driver joins the partitions and runs the analyses (attention tracks, features + h5ad,
   master TFs, GRN, enhancer–gene, perturbation effects, transitions, therapeutic targets), then
   writes the report, and the scorecard when a simulator truth folder is given.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from creformer.config import Config, load_config
from creformer.engine.errors import InputError
from creformer.engine.shards import atomic_write_json, content_hash

from . import inputs

SCORE_SCHEMA = {"cell_id": pl.Int32, "gene_id": pl.Int32, "expression": pl.Float32, "pred": pl.Float32,
                "peak_ids": pl.List(pl.Int32), "attention": pl.List(pl.Float32), "atac": pl.List(pl.Float32),
                "ablation": pl.List(pl.Float32)}
PERTURB_SCHEMA = {"cell_id": pl.Int32, "gene_id": pl.Int32, "condition": pl.Utf8, "mode": pl.Utf8, "pred": pl.Float32}
SHARED_TAG = "shared-"  # cache part files of the shared-embedding pass, which every worker indexes
# Only those: the per-cell entries of other workers or earlier runs belong to cells no later
# partition scores, and indexing them would cost memory that grows with the atlas.
SHARED_FILES = f"part-{SHARED_TAG}*.arrow"
SHARED_WAIT_S = 600.0  # past this, a worker stops waiting for the shared slices and computes what it needs


def _atomic_parquet(df: pl.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    df.write_parquet(tmp)
    os.replace(tmp, path)


class AtlasWorker:
    """Ray Data actor: loads the models once, then scores whole partitions."""

    def __init__(self, work: str):
        import torch

        from creformer.trainer.model.cache import EmbeddingCache

        self.work = Path(work)
        plan = json.loads((self.work / "plan.json").read_text())
        self.plan = plan
        torch.set_num_threads(plan["threads"])
        pa.set_cpu_count(plan["threads"])  # polars' pool is sized by the actor's env (worker_env)
        cfg = load_config(plan["config"])
        self.tables = inputs.load_tables(plan["manifest"])
        self.models = inputs.load_models(plan["elementary_weights"], plan["regulatory_weights"], cfg, self.tables)
        self.values = inputs.level_values(self.tables.atac_cuts)
        self.bound = np.load(self.work / "bound.npy")
        self.verified: set[Path] = set()
        self.slices = json.loads((self.work / "shared_slices.json").read_text())  # shared_items, peaks per slice
        self.shared_ready = False  # ensure_shared has run: once per actor, before its first partition
        self.signal: tuple[Path, Any] | None = None  # the last signal block (partitions come in cell order)
        self.cache = EmbeddingCache(self.models.elementary, self.tables.peak_dna, n_tracks=self.models.cfg.n_tracks,
                                    capacity=200_000 if plan["cache"] else 0,
                                    disk_dir=plan["cache_dir"] if plan["cache"] else None, index=SHARED_FILES)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        stats = []
        for raw in batch["item"]:
            item = json.loads(raw)
            stats.append(embed_shared(self, item) if item.get("kind") == "shared" else run_partition(self, item))
        return {k: np.array([s[k] for s in stats]) for k in stats[0]}


def claim_slice(work: Path, i: int) -> bool:
    """Take shared slice ``i`` for this worker: True for exactly one caller (an exclusive create,
    atomic on a local or NFS file system), which then computes it."""
    try:
        os.close(os.open(work / "shared_claim" / f"slice-{i:05d}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def embed_slice(w: AtlasWorker, i: int) -> int:
    """Compute shared slice ``i`` (every analysed peak's zero signal, which is also the knockout
    signal, and the knock-in level of the peaks a knock-in touches) into the shared disk cache;
    returns the entries computed."""
    from .perturb import perturbed_tokens

    length = w.tables.peak_dna.shape[1]
    spec = w.slices[i]
    n = w.cache.ensure(spec["peaks"], perturbed_tokens("KO", 1, length))  # ensure runs without autograd
    n += w.cache.ensure(spec["ki_peaks"], perturbed_tokens("KI", w.plan["ki_level"], length))
    w.cache.flush(tag=SHARED_TAG)
    (w.work / "shared_done" / f"slice-{i:05d}").touch()  # its entries are on disk
    return n


def embed_shared(w: AtlasWorker, item: dict[str, Any]) -> dict[str, Any]:
    """A shared-slice work item: computes the slice unless a worker already took it."""
    t0 = time.perf_counter()
    n = embed_slice(w, item["slice"]) if claim_slice(w.work, item["slice"]) else 0
    return {"index": -1, "samples": 0, "perturbed": 0, "seconds": time.perf_counter() - t0, "cache_hits": 0, "cache_misses": n}


def ensure_shared(w: AtlasWorker) -> int:
    """Before a worker's first partition: every shared slice on disk. The worker computes the
    slices nobody has taken yet (returns how many entries), then waits for the ones other workers
    are computing. Ray Data does not keep the input order per actor (measured: an actor got
    partition 0 before the shared slice queued ahead of it), so waiting for slices another actor
    merely has queued could wait on itself; a taken slice is always being computed, so this wait
    ends. Past SHARED_WAIT_S (a worker died mid-slice) the worker computes what it needs itself."""
    n = len(w.slices)
    computed = sum(embed_slice(w, i) for i in range(n) if claim_slice(w.work, i))
    t0 = time.perf_counter()
    while len(list((w.work / "shared_done").glob("slice-*"))) < n:
        if time.perf_counter() - t0 > SHARED_WAIT_S:
            print(f"[atlas_grn] shared embeddings not all on disk after {SHARED_WAIT_S:.0f} s; this worker computes "
                  f"the ones it needs itself", flush=True)
            break
        time.sleep(0.05)
    return computed


def run_partition(w: AtlasWorker, part: dict[str, Any]) -> dict[str, Any]:
    import pyarrow.parquet as pq
    import torch

    from creformer.engine.dataset import _load_signal, _split_list, join_samples
    from creformer.engine.shards import verify_shard_file

    from .attention import score_batch
    from .perturb import bound_peaks, perturbed_predictions

    t0 = time.perf_counter()
    shared = 0  # entries of shared slices this partition computes, counted as its misses
    if not w.shared_ready:
        shared = ensure_shared(w)
        w.shared_ready = True
    w.cache.sync_disk()  # the shared entries (the cache's index) other workers have written since
    out = Path(w.plan["out"])
    root = w.tables.root
    shard, signal_entry = part["shard"], part["signal"]
    for path, entry in ((root / "shards" / shard["file"], shard), (root / signal_entry["file"], signal_entry)):
        if path not in w.verified:  # a checksum per file and actor, not per partition
            verify_shard_file(path, entry)
            w.verified.add(path)
    filters = [("cell_id", "in", part["cells"])] + ([("gene_id", "in", w.plan["genes"])] if w.plan["genes"] else [])
    table = pq.read_table(root / "shards" / shard["file"], filters=filters)
    table = table.sort_by([("cell_id", "ascending"), ("gene_id", "ascending")])
    sig_path = root / signal_entry["file"]
    if w.signal is None or w.signal[0] != sig_path:
        w.signal = (sig_path, _load_signal(sig_path))
    signal = w.signal[1]
    conds = [(c["name"], c["mode"], bound_peaks(w.bound, tuple(c["motifs"]))) for c in w.plan["conditions"]]
    scores, perturbed = [], []
    hits0, miss0 = w.cache.hits, w.cache.misses
    bs = w.plan["batch_size"]
    with torch.no_grad():
        for rb in table.to_batches(max_chunksize=bs):
            cols = {n: rb.column(n) for n in rb.schema.names}
            samples = {"cell_id": cols["cell_id"].to_numpy(), "gene_id": cols["gene_id"].to_numpy(),
                       "expression": cols["expression"].to_numpy(), "peak_ids": _split_list(cols["peak_ids"]),
                       "tss_rank": _split_list(cols["tss_rank"])}
            joined = join_samples(samples, None, signal, w.tables.peak_m)
            res = score_batch(w.models.head, w.cache, joined, w.values)
            p = res["width"]
            n_real = joined["mask"].sum(1)
            scores.append(pl.DataFrame({
                "cell_id": joined["cell_id"], "gene_id": joined["gene_id"], "expression": joined["expression"],
                "pred": res["pred"],
                "peak_ids": [r[:k].tolist() for r, k in zip(joined["peak_ids"][:, :p], n_real)],
                "attention": [r[:k].tolist() for r, k in zip(res["attention"], n_real)],
                "atac": [r[:k].tolist() for r, k in zip(res["atac"], n_real)],
                "ablation": [r[:k].tolist() for r, k in zip(res["ablation"], n_real)]}, schema=SCORE_SCHEMA))
            ids, mask = joined["peak_ids"][:, :p], joined["mask"][:, :p]
            for name, mode, peaks in conds:
                touched = mask & peaks[np.maximum(ids, 0)]
                rows, pred = perturbed_predictions(w.models.head, w.cache, res["bins"], ids, mask, res["rank"], touched,
                                                   mode, w.plan["ki_level"], joined["atac"].shape[-1], inputs=res["inputs"])
                if rows.size:
                    perturbed.append(pl.DataFrame({"cell_id": joined["cell_id"][rows], "gene_id": joined["gene_id"][rows],
                                                   "condition": name, "mode": mode, "pred": pred}, schema=PERTURB_SCHEMA))
    w.cache.flush()
    idx = part["index"]
    sc = pl.concat(scores) if scores else pl.DataFrame(schema=SCORE_SCHEMA)
    pt = pl.concat(perturbed) if perturbed else pl.DataFrame(schema=PERTURB_SCHEMA)
    _atomic_parquet(sc, out / "partitions" / "scores" / f"part-{idx:05d}.parquet")
    _atomic_parquet(pt, out / "partitions" / "perturb" / f"part-{idx:05d}.parquet")
    secs = time.perf_counter() - t0
    done = {"fingerprint": w.plan["fingerprint"], "samples": sc.height, "perturbed": pt.height, "seconds": secs,
            "cache_hits": w.cache.hits - hits0, "cache_misses": w.cache.misses - miss0 + shared,
            "threads": {"torch": torch.get_num_threads(), "polars": pl.thread_pool_size(), "arrow": pa.cpu_count()}}
    marker = out / "partitions" / "done" / f"part-{idx:05d}.json"
    atomic_write_json(marker, done)  # written last: the partition counts as finished only now
    return {"index": idx, **{k: v for k, v in done.items() if k not in ("fingerprint", "threads")}}


@dataclass
class Prepared:
    cfg: Config
    out: Path
    tables: inputs.AtlasTables
    groups: pl.DataFrame  # every grouped cell
    chosen: pl.DataFrame  # the analysed cells (cell_id, barcode, group)
    tfs: list[inputs.TF]
    motifs: list
    bound: np.ndarray  # (n_peaks, n_motifs) motif sites present
    conditions: list
    ki_level: int
    elementary_weights: str
    regulatory_weights: str
    genes: list[int]  # analysed gene ids (empty: all)
    models: inputs.Models  # loaded once here to check the artifacts; the driver reuses them


def _default_weights(cfg: Config, stage: str) -> str:
    return str(Path(cfg.train.storage_path) / stage / "export" / "model.safetensors")


def prepare(cfg: Config) -> Prepared:
    """Every check and every small precomputation, before Ray does any work."""
    from .motif_scan import decode_dna, scan
    from .perturb import conditions, knock_in_level

    a = cfg.analysis
    tables = inputs.load_tables(cfg.data.regulatory_shards)
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
    motifs = inputs.load_motifs(a.motifs)
    tfs = inputs.resolve_tfs(motifs, tables.genes, a.tfs)
    if not tfs:
        raise InputError(f"no motif name in {a.motifs} matches a gene name of the atlas: nothing to call TFs")
    el = cfg.train.elementary_weights or _default_weights(cfg, "elementary")
    rg = a.regulatory_weights or _default_weights(cfg, "regulatory")
    models = inputs.load_models(el, rg, cfg, tables)  # fails here, not in a worker, when artifacts do not fit
    hits = scan(decode_dna(tables.peak_dna), motifs, a.motif_threshold, pvalue=a.motif_pvalue or None)
    conds = conditions(tfs, a.multi_tf)
    import pyarrow.parquet as pq

    sig0 = tables.manifest.data["tables"]["signal"][0]["file"]
    tok = pq.read_table(tables.root / sig0, columns=["tok"]).column("tok").combine_chunks().values.to_numpy()
    return Prepared(cfg, Path(a.out), tables, groups, chosen, tfs, motifs, hits.bound, conds,
                    knock_in_level(tok, a.ki_quantile), el, rg, genes, models)


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


def shared_items(p: Prepared, n_items: int, max_peaks: int = 4096) -> list[dict[str, Any]]:
    """The cache entries every partition would otherwise compute on its own, in at least
    ``n_items`` slices of at most ``max_peaks`` peaks (a genome-wide atlas has ~1 M): each
    analysed peak's zero signal (also the knockout signal) and, for the peaks bound by a perturbed
    TF's motif, the knock-in level. Analysed peaks: those within ``window_bp`` of an analysed
    gene's TSS (all peaks when every gene is analysed)."""
    peaks, genes = p.tables.peaks, p.tables.genes
    if p.genes:
        half = int(p.tables.manifest.data["options"]["window_bp"])
        tss = genes.filter(pl.col("gene_id").is_in(p.genes)).select("chrom", "tss")
        near = peaks.join(tss, on="chrom").filter(((pl.col("start") + pl.col("end")) // 2 - pl.col("tss")).abs() <= half)
        ids = np.unique(near["peak_id"].to_numpy())
    else:
        ids = peaks["peak_id"].to_numpy()
    motifs = sorted({m for c in p.conditions if c.mode == "KI" for m in c.motifs})
    ki = ids[p.bound[ids][:, motifs].any(1)] if motifs else ids[:0]
    n = max(1, min(ids.size, max(n_items, -(-ids.size // max_peaks))))
    return [{"kind": "shared", "slice": i, "peaks": ids[i::n].tolist(), "ki_peaks": ki[i::n].tolist()} for i in range(n)]


def worker_env(threads: int) -> dict[str, str]:
    """Environment of the atlas_grn actors: every thread pool as wide as the CPUs Ray reserved.
    Polars sizes its pool from the core count when it is imported (before ``__init__`` runs), so
    W actors on W cores would run W x cores threads; measured on 2 cores, 2 actors: 8 % more
    wall time per partition with polars' default pool."""
    return {"POLARS_MAX_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}


def run_partitions(p: Prepared, config_path: Path) -> dict[str, Any]:
    """Score every partition with Ray Data actors; finished partitions with a matching fingerprint are kept."""
    import ray
    import ray.data
    from tqdm import tqdm

    a = p.cfg.analysis
    out = p.out
    for sub in ("scores", "perturb", "done"):
        (out / "partitions" / sub).mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    np.save(work / "bound.npy", p.bound)
    items = partitions(p)
    fingerprint = content_hash({"schema": sorted(SCORE_SCHEMA), "manifest": p.tables.manifest.data["input_hash"],
                                "weights": [inputs.file_id(p.elementary_weights), inputs.file_id(p.regulatory_weights)],
                                "conditions": [c.__dict__ for c in p.conditions], "ki": p.ki_level,
                                "bound": content_hash(p.bound.tolist()), "genes": p.genes, "items": [it["cells"] for it in items]})
    plan = {"config": str(config_path.resolve()), "manifest": str(p.tables.manifest.path.resolve()),
            "elementary_weights": str(Path(p.elementary_weights).resolve()),
            "regulatory_weights": str(Path(p.regulatory_weights).resolve()), "out": str(out.resolve()),
            "cache": a.cache, "cache_dir": str((out / "embedding_cache").resolve()), "threads": a.threads_per_worker,
            "batch_size": a.batch_size, "genes": p.genes, "ki_level": p.ki_level, "fingerprint": fingerprint,
            "conditions": [{"name": c.name, "mode": c.mode, "motifs": list(c.motifs)} for c in p.conditions]}
    todo = []
    for it in items:
        marker = out / "partitions" / "done" / f"part-{it['index']:05d}.json"
        if marker.exists() and json.loads(marker.read_text()).get("fingerprint") == fingerprint:
            continue
        marker.unlink(missing_ok=True)
        todo.append(it)
    workers = min(a.workers, max(1, len(todo)))
    # Shared entries first, one slice per worker at least; a worker whose first partition comes
    # before some slice has been taken takes it then (ensure_shared).
    shared = shared_items(p, workers) if a.cache and todo else []
    for sub in ("shared_claim", "shared_done"):
        shutil.rmtree(work / sub, ignore_errors=True)
        (work / sub).mkdir()
    (work / "shared_slices.json").write_text(json.dumps([{k: s[k] for k in ("peaks", "ki_peaks")} for s in shared]))
    (work / "plan.json").write_text(json.dumps(plan, indent=1))
    # partitions of an older, different run (more items then) must not leak into this one
    for sub in ("scores", "perturb", "done"):
        for f in (out / "partitions" / sub).glob("part-*"):
            if int(f.name[5:10]) >= len(items):
                f.unlink()
    stats = {"partitions": len(items), "reused": len(items) - len(todo), "samples": 0, "seconds": 0.0,
             "cache_hits": 0, "cache_misses": 0, "timeline": []}  # timeline: (seconds, samples) per finished partition
    t0 = time.perf_counter()
    if todo:
        run = [{"kind": "shared", "slice": s["slice"]} for s in shared] + todo
        # our own tqdm bar counts items; Ray's per-operator bars would print a log line every 10 s off a TTY
        ray.data.DataContext.get_current().enable_progress_bars = False
        ds = ray.data.from_items([{"item": json.dumps(it)} for it in run], override_num_blocks=len(run)).map_batches(
            AtlasWorker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=a.threads_per_worker,
            fn_constructor_kwargs={"work": str(work.resolve())}, runtime_env={"env_vars": worker_env(a.threads_per_worker)})
        with tqdm(total=len(run), desc="atlas_grn (shared embeddings, then partitions)", unit="item", file=sys.stdout) as bar:
            for row in ds.iter_rows():
                stats["samples"] += int(row["samples"])
                stats["cache_hits"] += int(row["cache_hits"])
                stats["cache_misses"] += int(row["cache_misses"])
                if int(row["index"]) >= 0:
                    stats["timeline"].append((time.perf_counter() - t0, int(row["samples"])))
                bar.update(1)
    stats["seconds"] = time.perf_counter() - t0
    stats["pairs_per_s"] = stats["samples"] / stats["seconds"] if stats["samples"] else 0.0
    return stats


def load_partitions(out: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    scores = pl.read_parquet(sorted((out / "partitions" / "scores").glob("part-*.parquet")))
    pert_files = sorted((out / "partitions" / "perturb").glob("part-*.parquet"))
    pert = pl.read_parquet(pert_files) if pert_files else pl.DataFrame(schema=PERTURB_SCHEMA)
    return scores.sort("cell_id", "gene_id"), pert


def absolute_paths(cfg: Config) -> Config:
    """Every file the job reads or writes as an absolute path, fixed before any Ray work."""
    def fix(value: str) -> str:
        return str(Path(value).resolve()) if value else value

    cfg.data.regulatory_shards = fix(cfg.data.regulatory_shards)
    cfg.train.storage_path = fix(cfg.train.storage_path)
    cfg.train.elementary_weights = fix(cfg.train.elementary_weights)
    a = cfg.analysis
    for name in ("out", "regulatory_weights", "motifs", "groups", "truth", "crispri"):
        setattr(a, name, fix(getattr(a, name)))
    return cfg


def atlas_grn(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="atlas_grn", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="tiny", help="preset (tiny, small, paper) or YAML path")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. analysis.groups=cells.tsv analysis.truth=sim/truth")
    args = ap.parse_args(argv)
    cfg = absolute_paths(load_config(args.config, args.overrides))
    t0 = time.perf_counter()
    p = prepare(cfg)
    p.out.mkdir(parents=True, exist_ok=True)
    from creformer.config import save_config
    from creformer.ray_utils import ensure_ray

    config_path = p.out / "config.yaml"
    save_config(cfg, config_path)
    print(f"[atlas_grn] {p.chosen.height} cells in {p.chosen['group'].n_unique()} groups x {p.tables.genes.height} genes, "
          f"{len(p.tfs)} TFs, {len(p.conditions)} perturbations (knock-in level {p.ki_level})", flush=True)
    ensure_ray(cfg.ray)
    stats = run_partitions(p, config_path)
    try:
        os.getcwd()
    except FileNotFoundError:
        # Under `ray job submit`, Ray may delete the job's working_dir copy once the actors that
        # shared its runtime env exit; the driver goes on from its (absolute) output folder.
        os.chdir(p.out)
    print(f"[atlas_grn] {stats['samples']:,} cell x gene pairs scored in {stats['seconds']:.1f} s "
          f"({stats['reused']}/{stats['partitions']} partitions reused)", flush=True)
    from .run import run_analyses

    report = run_analyses(p, stats, time.perf_counter() - t0)
    print(f"[atlas_grn] report {report}", flush=True)
    return report


def main() -> int:
    from creformer.cli import run_entrypoint

    return run_entrypoint(atlas_grn)

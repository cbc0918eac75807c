"""Running the partitions of an atlas_grn plan through Ray Data actors (atlas_worker.py), with
resume (finished partitions with a matching fingerprint are kept), and reading them back."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import ray
import ray.data
from tqdm import tqdm

from creformer.engine.shards import content_hash
from creformer.trainer.embedding_store import find_store, store_root

from . import inputs
from .atlas_worker import PERTURB_SCHEMA, SCORE_SCHEMA, AtlasWorker, worker_env
from .plan import Prepared, partitions
from .shared_slices import shared_items


def run_partitions(p: Prepared, config_path: Path) -> dict[str, Any]:
    """Score every partition with Ray Data actors; finished partitions with a matching fingerprint are kept."""
    a = p.cfg.analysis
    out = p.out
    for sub in ("scores", "perturb", "done"):
        (out / "partitions" / sub).mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    np.save(work / "bound.npy", p.bound)
    np.save(work / "perturb_bound.npy", p.perturb_bound)  # what the partitions' perturbations act on
    items = partitions(p)
    fingerprint = content_hash({"schema": sorted(SCORE_SCHEMA), "manifest": p.tables.manifest.data["input_hash"],
                                "weights": [inputs.file_id(p.elementary_weights), inputs.file_id(p.regulatory_weights)],
                                "conditions": [c.__dict__ for c in p.conditions], "ki": p.knock_in.tokens.tolist(),
                                "bound": content_hash(p.bound.tolist()),
                                **({"perturb_bound": content_hash(p.perturb_bound.tolist())} if p.perturb_bound is not p.bound else {}),
                                "genes": p.genes, "items": [it["cells"] for it in items]})
    plan = {"config": str(config_path.resolve()), "manifest": str(p.tables.manifest.path.resolve()),
            "elementary_weights": str(Path(p.elementary_weights).resolve()),
            "regulatory_weights": str(Path(p.regulatory_weights).resolve()), "out": str(out.resolve()),
            "cache": a.cache, "cache_mb": a.cache_mb, "cache_dir": str((out / "embedding_cache").resolve()),
            "threads": a.threads_per_worker,
            "store_dir": str(store_root(p.cfg).resolve()) if a.cache and find_store(p.cfg, p.tables.manifest, p.elementary_weights) else None,
            "batch_size": a.batch_size, "genes": p.genes, "ki_profile": p.knock_in.tokens.tolist(), "fingerprint": fingerprint,
            "fail_at": a.fail_at,
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
             "cache_hits": 0, "cache_misses": 0, "observed_forwards": 0, "store": plan["store_dir"],
             "worker_max_rss_mb": 0.0,
             "timeline": []}  # timeline: (seconds, samples) per finished partition
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
                stats["observed_forwards"] += int(row["observed_forwards"])
                stats["worker_max_rss_mb"] = max(stats["worker_max_rss_mb"], float(row["max_rss_mb"]))
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



"""train_regulatory throughput, ratios in one run: the packed sample stream against the dense one
(--what stream), or a warm embedding store against the online cache (--what store).

Runs the real Ray Train + DeepSpeed ZeRO-3 Regulatory training (2 workers, frozen Elementary behind
the embedding cache) for --steps steps on the same shards, three ways:
1. dense stream, 1 torch thread per worker: every batch's signal as a dense [peaks, 1024] array
   through Ray Data (the layout before the packed stream);
2. packed stream (``engine.regulatory_batches.pack_samples``), 1 thread: the non-zero signal tokens only,
   expanded on each worker;
3. packed stream, ``--threads`` torch threads per worker (the demo preset's train.torch_threads).
Reported per run: steady tokens/s (the mean of the logged rates after the first --warm steps),
wall time, and each rate over run 1's. Throughput does not depend on how well the model trains.

--what store: packed stream, --threads torch threads, the same batches in both runs:
1. online cache: each worker embeds the (cell, peak) pairs it meets, cached for the run (a cold start,
   as every train_regulatory run had before the store);
2. warm store: `prepare embeddings` has written every pair (its build time is reported, not counted).
Steps are the same batches, so the tokens/s ratio is the steps/s ratio. Also reported: the Elementary
forwards each run made (the store's should be 0).

Inputs: the demo's Regulatory shards and Elementary weights (`make demo` builds them).
--config picks the preset whose model and training knobs the runs use (the demo's by default; the
science preset is the one that trains from the store: its 512-wide head, 128 samples per worker
step and 1 torch thread, unless --batch / --threads say otherwise).

Usage: python benchmarks/regulatory_training.py [--shards runs/demo/shards/regulatory]
       [--elementary runs/demo/train/elementary/export/model.safetensors] [--steps 200] [--batch 32]
       [--config demo|science]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")


def run(name: str, work: Path, shards: Path, elementary: Path, steps: int, batch: int, packed: bool, threads: int,
        store: Path | None = None, preset: str = "demo") -> dict:
    from creformer.config import load_config
    from creformer.engine.regulatory_stream import regulatory_dataset
    from creformer.engine.shards import Manifest
    from creformer.trainer.jobs import regulatory_context, run_training

    storage = work / name
    shutil.rmtree(storage, ignore_errors=True)
    cfg = load_config(preset, [f"data.regulatory.shards={shards}", f"train.storage_path={storage}",
                               f"train.regulatory.elementary_weights={elementary}", f"train.regulatory.max_steps={steps}",
                               f"train.regulatory.checkpoint_every={steps}", f"train.regulatory.micro_batch={batch}",
                               f"train.torch_threads={threads}", "train.log_every=10"])
    man = Manifest(shards / "manifest.json")
    ds = regulatory_dataset(man, batch_size=batch, with_dna=False, packed=packed,
                            holdout=(cfg.train.regulatory.holdout_cells, cfg.train.seed, "train"), shuffle_seed=cfg.train.seed)
    context = regulatory_context(cfg, man, elementary, store, storage / "embedding_cache")
    t0 = time.perf_counter()
    run_training(cfg, "regulatory", ds, context)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (storage / "regulatory" / "metrics.jsonl").read_text().splitlines()]
    return {"rows": rows, "wall_s": wall}


def steady(rows: list[dict], warm: int) -> float:
    rates = [r["tokens_per_s"] for r in rows if r["step"] > warm]
    if not rates:
        raise ValueError(f"no logged step past --warm {warm}: run more --steps")
    return sum(rates) / len(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", default="runs/demo/shards/regulatory")
    ap.add_argument("--elementary", default="runs/demo/train/elementary/export/model.safetensors")
    ap.add_argument("--work", default="runs/bench/regulatory_training")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warm", type=int, default=40, help="logged rates up to this step are left out (start-up)")
    ap.add_argument("--batch", type=int, default=None, help="samples per worker step (default: the preset's)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads per worker in run 3 (and in --what store; default: the preset's)")
    ap.add_argument("--what", choices=["stream", "store"], default="stream")
    ap.add_argument("--config", default="demo", help="preset of the model and training knobs (demo or science)")
    args = ap.parse_args()
    from creformer.config import load_config

    preset = load_config(args.config)
    args.batch = args.batch or preset.train.regulatory.micro_batch
    args.threads = args.threads or preset.train.torch_threads
    shards, elementary = Path(args.shards).resolve(), Path(args.elementary).resolve()
    if not (shards / "manifest.json").exists() or not elementary.exists():
        sys.exit(f"needs Regulatory shards ({shards}) and Elementary weights ({elementary}): run `make demo` first, "
                 "or pass --shards and --elementary")
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    from creformer.config import RayConfig
    from creformer.ray_utils import ensure_ray

    ensure_ray(RayConfig())
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    if args.what == "store":
        return compare_store(args, work, shards, elementary)
    plan = [("dense_1_thread", False, 1), ("packed_1_thread", True, 1)]
    if args.threads != 1:
        plan.append((f"packed_{args.threads}_threads", True, args.threads))
    runs = {name: run(name, work, shards, elementary, args.steps, args.batch, packed, threads, preset=args.config)
            for name, packed, threads in plan}
    base = steady(runs["dense_1_thread"]["rows"], args.warm)
    result = {"cpu_cores": os.cpu_count(), "config": args.config, "steps": args.steps, "samples_per_worker_step": args.batch,
              "runs": {name: {"steady_tokens_per_s": round(steady(r["rows"], args.warm)), "wall_s": round(r["wall_s"], 1),
                              "over_dense_1_thread": round(steady(r["rows"], args.warm) / base, 3)} for name, r in runs.items()}}
    print(json.dumps(result, indent=1))
    (work / "result.json").write_text(json.dumps(result, indent=1))


def compare_store(args: argparse.Namespace, work: Path, shards: Path, elementary: Path) -> None:
    from creformer.config import load_config
    from creformer.trainer.embedding_store import prepare_embeddings

    cfg = load_config(args.config, [f"data.regulatory.shards={shards}"])
    t0 = time.perf_counter()
    store = prepare_embeddings(cfg, elementary, force=True)  # reused when `prepare embeddings` wrote it before
    build_s = time.perf_counter() - t0
    manifest = json.loads((store / "manifest.json").read_text())
    runs = {"online_cache": run("online_cache", work, shards, elementary, args.steps, args.batch, True, args.threads,
                                preset=args.config),
            "warm_store": run("warm_store", work, shards, elementary, args.steps, args.batch, True, args.threads, store,
                              preset=args.config)}
    base = steady(runs["online_cache"]["rows"], args.warm)
    result = {"cpu_cores": os.cpu_count(), "config": args.config, "steps": args.steps,
              "samples_per_worker_step": args.batch, "torch_threads": args.threads,
              "store": {"pairs": manifest["pairs"], "bytes": manifest["bytes"], "build_s": manifest["seconds"],
                        "this_call_s": round(build_s, 1)},
              "runs": {name: {"steady_tokens_per_s": round(steady(r["rows"], args.warm)), "wall_s": round(r["wall_s"], 1),
                              "elementary_forwards_rank0": r["rows"][-1].get("elementary_forwards"),
                              "over_online_cache": round(steady(r["rows"], args.warm) / base, 3)} for name, r in runs.items()}}
    print(json.dumps(result, indent=1))
    (work / "result_store.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

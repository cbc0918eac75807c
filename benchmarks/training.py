"""Training throughput on 2 CPU workers (Ray Train + DeepSpeed), ratios measured in one run.

1. train_elementary tokens/s (DNA positions per second, all workers) for the tiny and small model
   presets, each next to the tokens/s the streaming loader (`elementary_dataset` →
   `iter_torch_batches`, same crop length and batch) delivers on its own. Target: loader >= 10x
   the model's consumption.
2. ZeRO-3 vs plain data parallel (DeepSpeed stage 0, the DDP equivalent) on the same run: the
   ratio of tokens/s (for the record).
Steady-state rates: the first logged interval (compilation, warm-up) is dropped.

Usage: python benchmarks/training.py [--steps 40] [--work runs/bench/training]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")

CROP, BATCH = 1024, 4


def shards(work: Path) -> Path:
    from creformer.config import load_config
    from creformer.engine.elementary_shards import prepare_elementary
    from creformer.engine.simulate import simulate

    sim = work / "sim"
    if not (sim / "samples.tsv").exists():
        simulate(sim, preset="tiny", seed=0)
    return prepare_elementary(load_config("tiny", [f"data.samples={sim / 'samples.tsv'}", f"data.genome={sim / 'genome.fa'}",
                                                   f"data.shards={work / 'shards'}", "data.shard_size_mb=8"])).manifest_path


def train_rate(manifest: Path, work: Path, preset: str, steps: int, zero_stage: int) -> float:
    from creformer.config import load_config
    from creformer.trainer.jobs import train_elementary

    name = f"{preset}-zero{zero_stage}"
    shutil.rmtree(work / "train" / name, ignore_errors=True)
    train_elementary(load_config(preset, [f"data.shards={manifest.parent}", f"train.storage_path={work / 'train'}",
                                          f"train.elementary.name={name}", f"data.crop_length={CROP}",
                                          f"train.elementary.micro_batch={BATCH}", f"train.elementary.max_steps={steps}",
                                          f"train.elementary.checkpoint_every={steps}", f"train.log_every={max(1, steps // 4)}",
                                          f"train.zero_stage={zero_stage}"]))
    rows = [json.loads(x) for x in (work / "train" / name / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in rows[1:]] or [rows[-1]["tokens_per_s"]]
    return sum(rates) / len(rates)


def loader_rate(manifest: Path, seconds: float = 20.0) -> float:
    from creformer.engine.elementary_stream import elementary_dataset

    tokens, t0 = 0, None
    while t0 is None or time.perf_counter() - t0 < seconds:
        ds = elementary_dataset(manifest, CROP, crops_per_window=32768 // CROP)
        for batch in ds.iter_torch_batches(batch_size=BATCH * 2):  # both workers' micro-batches
            if t0 is None:
                t0 = time.perf_counter()  # after the pipeline has started
                continue
            tokens += batch["dna"].numel()
            if time.perf_counter() - t0 >= seconds:
                break
    return tokens / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--work", default="runs/bench/training")
    args = ap.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    from creformer.config import RayConfig
    from creformer.ray_utils import ensure_ray

    ensure_ray(RayConfig())
    manifest = shards(work)
    loader = loader_rate(manifest)
    result: dict = {"cpu_cores": os.cpu_count(), "crop_length": CROP, "micro_batch_per_worker": BATCH, "workers": 2,
                    "loader_tokens_per_s": round(loader)}
    for preset in ("tiny", "small"):
        rate = train_rate(manifest, work, preset, args.steps, 3)
        result[preset] = {"zero3_tokens_per_s": round(rate), "loader_over_model": round(loader / rate, 1)}
    ddp = train_rate(manifest, work, "tiny", args.steps, 0)
    result["tiny"]["ddp_tokens_per_s"] = round(ddp)
    result["tiny"]["zero3_over_ddp"] = round(result["tiny"]["zero3_tokens_per_s"] / ddp, 3)
    result["target_loader_over_model"] = 10
    print(json.dumps(result, indent=1))
    (work / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

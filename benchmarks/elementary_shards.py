"""Elementary shard engine benchmark: ratios against baselines measured in the same run.

1. Build throughput (bp/s, one core): `prepare elementary` end to end (read + tokenize + write tar
   + sha256) versus a raw read of the same windows (pysam FASTA + pyBigWig values for every
   track). Target: build >= 0.5x the raw read.
2. Peak RSS of the build at 1x and 4x the input (4x the samples): growth <= 1.2x, absolute <= 2 GB.
3. Streaming read: tokens/s delivered by `elementary_dataset` through Ray Data on 2 CPUs.

Usage: python benchmarks/elementary_shards.py [--preset small] [--work runs/bench/elementary]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ASSAYS = ["ATAC", "H3K4me1", "H3K4me3", "H3K27ac", "H3K27me3", "H3K36me3", "CTCF"]


def raw_read(samples_tsv: Path, genome_fa: Path, windows: list[tuple[str, str, int, int]]) -> float:
    """Seconds to read DNA + every track of each window with no tokenizing and no writing."""
    import pyBigWig

    from creformer.engine.io.fasta import Genome
    from creformer.engine.io.samples import read_samples

    samples = {s.name: s for s in read_samples(samples_tsv, ASSAYS)}
    genome = Genome(genome_fa)
    handles = {(s, a): pyBigWig.open(str(p)) for s, smp in samples.items() for a, p in smp.tracks.items()}
    t0 = time.perf_counter()
    for sample, chrom, start, end in windows:
        genome.fetch(chrom, start, end)
        for a in samples[sample].tracks:
            handles[(sample, a)].values(chrom, start, end, numpy=True)
    return time.perf_counter() - t0


def scaled_samples(sim: Path, factor: int, dst: Path) -> Path:
    """A samples.tsv with each sample repeated ``factor`` times under new names (more input)."""
    lines = (sim / "samples.tsv").read_text().splitlines()
    out = [lines[0]]
    for k in range(factor):
        for line in lines[1:]:
            name, assay, path = line.split("\t")
            out.append(f"{name}_x{k}\t{assay}\t{(sim / path).resolve()}")
    dst.write_text("\n".join(out) + "\n")
    return dst


def build_in_child(samples: Path, genome: Path, out: Path, windows_per_sample: int = 50000) -> tuple[float, int]:
    """Run a one-core build in a fresh process; return (seconds, peak RSS in bytes)."""
    code = (
        "import sys, time; from creformer.config import load_config\n"
        "from creformer.engine.elementary_shards import prepare_elementary\n"
        f"cfg = load_config('tiny', ['data.samples={samples}', 'data.genome={genome}', 'data.shards={out}', "
        f"'data.shard_size_mb=64', 'data.executor=local', 'data.windows_per_sample={windows_per_sample}'])\n"
        "t=time.perf_counter(); prepare_elementary(cfg)\n"
        "print(time.perf_counter()-t)"
    )
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    out_text = proc.stdout.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"build failed: {out_text}")
    return float(out_text.strip().splitlines()[-1]), usage.ru_maxrss * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", choices=["tiny", "small", "large"])
    ap.add_argument("--work", default="runs/bench/elementary")
    ap.add_argument("--stream-length", type=int, default=1024)
    ap.add_argument("--windows-per-sample", type=int, default=50000,
                    help="fewer than the genome's tiles makes the sampled windows sparse (fewer adjacent ones)")
    args = ap.parse_args()
    work = Path(args.work)
    sim = work / f"sim_{args.preset}"
    if not (sim / "samples.tsv").exists():
        from creformer.engine.simulate import simulate

        print(f"simulating the {args.preset} preset into {sim} ...")
        simulate(sim, preset=args.preset)
    results: dict[str, object] = {"preset": args.preset}

    # 1. build vs raw read, one core each, same windows
    shutil.rmtree(work / "el1", ignore_errors=True)
    s1 = scaled_samples(sim, 1, work / "samples_x1.tsv")
    build_s, rss1 = build_in_child(s1, sim / "genome.fa", work / "el1", args.windows_per_sample)
    manifest = json.loads((work / "el1" / "manifest.json").read_text())
    plan = json.loads((work / "el1" / "plan.json").read_text())
    windows = [tuple(w) for t in plan["tasks"] for w in t["payload"]["windows"]]
    raw_read(s1, sim / "genome.fa", windows)  # warm the page cache for both sides
    raw_s = min(raw_read(s1, sim / "genome.fa", windows) for _ in range(3))
    # rebuild once more with a warm cache, for a fair comparison
    shutil.rmtree(work / "el1")
    build_s, rss1 = build_in_child(s1, sim / "genome.fa", work / "el1", args.windows_per_sample)
    bp = len(windows) * manifest["record"]["span_bp"]
    results["windows"] = len(windows)
    results["candidate_windows_per_sample"] = manifest["counts"]["candidate_windows"]
    results["raw_read_bp_per_s"] = bp / raw_s
    results["build_bp_per_s"] = bp / build_s
    results["build_over_raw_ratio"] = raw_s / build_s
    results["shard_bytes"] = manifest["bytes"]

    # 2. peak RSS at 4x the input
    shutil.rmtree(work / "el4", ignore_errors=True)
    s4 = scaled_samples(sim, 4, work / "samples_x4.tsv")
    build4_s, rss4 = build_in_child(s4, sim / "genome.fa", work / "el4", args.windows_per_sample)
    results["rss_1x_mb"] = rss1 / 2**20
    results["rss_4x_mb"] = rss4 / 2**20
    results["rss_growth_4x_over_1x"] = rss4 / rss1
    results["build_4x_bp_per_s"] = 4 * bp / build4_s
    shutil.rmtree(work / "el4")

    # 3. streaming read through Ray Data on 2 CPUs
    import ray

    from creformer.config import RayConfig
    from creformer.engine.elementary_stream import elementary_dataset
    from creformer.ray_utils import ensure_ray, shutdown_ray

    ensure_ray(RayConfig(num_cpus=2))
    ray.data.DataContext.get_current().enable_progress_bars = False
    per_window = 32768 // args.stream_length
    ds = elementary_dataset(work / "el1", length=args.stream_length, seed=0, crops_per_window=per_window)
    rows = 0
    t0 = time.perf_counter()
    for batch in ds.iter_torch_batches(batch_size=32):
        rows += batch["dna"].shape[0]
    stream_s = time.perf_counter() - t0
    streams = 1 + len(ASSAYS)
    results["stream_rows_per_s"] = rows / stream_s
    results["stream_tokens_per_s"] = rows * args.stream_length * streams / stream_s
    results["stream_note"] = (f"tokens = rows x L ({args.stream_length}) x {streams} streams, {per_window} crops per "
                              "window, checksums verified, incl. Ray Data start-up")
    shutdown_ray()

    print(json.dumps(results, indent=1))
    print(f"\nbuild / raw read (one core): {results['build_over_raw_ratio']:.2f}x  (target >= 0.5x)")
    print(f"peak RSS 1x {results['rss_1x_mb']:.0f} MB, 4x {results['rss_4x_mb']:.0f} MB, growth "
          f"{results['rss_growth_4x_over_1x']:.2f}x  (target <= 1.2x, <= 2048 MB)")
    print(f"streaming read: {results['stream_tokens_per_s'] / 1e6:.1f} M tokens/s on 2 CPUs")


if __name__ == "__main__":
    main()

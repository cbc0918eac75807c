"""Regulatory data engine benchmark on the large simulated atlas (100 k cells); ratios in one run.

1. Sample-shard build: samples/s per core of the vectorized builder (target >= 50 k), beside a
   row-by-row Python builder of the same rows measured in the same run.
2. Bytes per sample on disk: sample shards alone, and everything (tables + sparse signal).
3. Peak RSS of `prepare regulatory` at 1x (25 k cells) and 4x (100 k cells): growth target <= 1.2x.
4. Streaming join (samples/s into tensors, 2 CPUs) versus the tiny Regulatory model's training
   consumption (forward + backward, samples/s on the same machine).

Usage: python benchmarks/regulatory_shards.py [--work runs/bench/regulatory] [--preset large]
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

import numpy as np


def prepare_in_child(sim: Path, out: Path, cells_file: Path | None) -> tuple[float, int]:
    keys = [f"data.genome={sim / 'genome.fa'}", "data.executor=local", f"data.regulatory.multiome={sim / 'multiome'}",
            f"data.regulatory.annotation={sim / 'genes.gtf'}", f"data.regulatory.shards={out}",
            f"data.regulatory.cells={cells_file or ''}"]
    code = (
        "import time; from creformer.config import load_config\n"
        "from creformer.engine.regulatory_shards import prepare_regulatory\n"
        f"cfg = load_config('tiny', {keys!r})\n"
        "t=time.perf_counter(); prepare_regulatory(cfg)\n"
        "print(time.perf_counter()-t)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "TQDM_DISABLE": "1"})
    _, status, usage = os.wait4(proc.pid, 0)
    text = proc.stdout.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"prepare failed: {text}")
    return float(text.strip().splitlines()[-1]), usage.ru_maxrss * 1024


def naive_rows(work: Path, cells: range, n_genes: int) -> list[dict]:
    """The same rows, built one dict at a time (the baseline for the vectorized builder); ``cells``
    lie in the expression block that starts at ``cells.start``."""
    from creformer.engine.sample_shards import expression_file

    expr = np.load(work / expression_file(cells.start))
    indptr, data, indices = expr["indptr"], expr["data"], expr["indices"]
    gflat, granks, goff = (np.load(work / f"{n}.npy") for n in ("gene_peaks", "gene_ranks", "gene_offsets"))
    rows = []
    for c in cells:
        i = c - cells.start
        expr_c = dict(zip(indices[indptr[i]:indptr[i + 1]].tolist(), data[indptr[i]:indptr[i + 1]].tolist()))
        for g in range(n_genes):
            rows.append({"cell_id": c, "gene_id": g, "expression": expr_c.get(g, 0.0),
                         "peak_ids": gflat[goff[g]:goff[g + 1]].tolist(), "tss_rank": granks[goff[g]:goff[g + 1]].tolist()})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="runs/bench/regulatory")
    ap.add_argument("--preset", default="large", choices=["tiny", "small", "large"])
    ap.add_argument("--cells", type=int, default=0, help="cells of the 4x run (0: all); the 1x run uses a quarter")
    args = ap.parse_args()
    work = Path(args.work)
    sim = work / f"sim_{args.preset}"
    if not (sim / "multiome" / "filtered_feature_bc_matrix.h5").exists():
        from creformer.engine.simulate import simulate

        print(f"simulating the {args.preset} preset into {sim} (streaming; minutes for 'large') ...")
        simulate(sim, preset=args.preset)
    res: dict[str, object] = {"preset": args.preset}

    # 3. peak RSS at 1x and 4x the cells (and the full build that the other figures use). The full
    # run compares two atlases of the same genome: a separately simulated one with a quarter of the
    # cells (1x) and the whole one (4x). --cells N instead uses the first N/4 and N barcodes of the
    # one atlas (quick, but both runs then read the same files).
    import h5py
    import pyarrow.parquet as pq

    with h5py.File(sim / "multiome" / "filtered_feature_bc_matrix.h5") as f:
        barcodes = [b.decode() for b in f["matrix/barcodes"][()]]
    res["cells_in_atlas"] = len(barcodes)
    if args.cells:
        quarter, full = work / "cells_quarter.txt", work / "cells_full.txt"
        quarter.write_text("\n".join(barcodes[: args.cells // 4]) + "\n")
        full.write_text("\n".join(barcodes[: args.cells]) + "\n")
        runs = (("1x", sim, quarter), ("4x", sim, full))
        res["rss_inputs"] = f"first {args.cells // 4} vs {args.cells} barcodes of one {len(barcodes)}-cell atlas"
    else:
        sim_q = work / f"sim_{args.preset}_quarter"
        if not (sim_q / "multiome" / "filtered_feature_bc_matrix.h5").exists():
            from creformer.engine.simulate import simulate

            print(f"simulating the {args.preset} preset with {len(barcodes) // 4} cells into {sim_q} ...")
            simulate(sim_q, preset=args.preset, n_cells=len(barcodes) // 4)
        runs = (("1x", sim_q, None), ("4x", sim, None))
        res["rss_inputs"] = f"two atlases of one genome: {len(barcodes) // 4} vs {len(barcodes)} cells, all of them"
    for tag, atlas, cells_file in runs:
        out = work / f"reg_{tag}"
        shutil.rmtree(out, ignore_errors=True)
        secs, rss = prepare_in_child(atlas, out, cells_file)
        res[f"prepare_{tag}_seconds"] = secs
        res[f"rss_{tag}_mb"] = rss / 2**20
        print(f"prepare {tag}: {secs:.0f} s, peak RSS {rss / 2**20:.0f} MB", flush=True)
    res["rss_growth_4x_over_1x"] = res["rss_4x_mb"] / res["rss_1x_mb"]
    out = work / "reg_4x"
    man = json.loads((out / "manifest.json").read_text())
    n_rec = man["records"]
    res["samples"] = n_rec
    res["cells"], res["genes"] = man["counts"]["cells"], man["counts"]["genes"]

    # 1. sample-shard build, one core: the vectorized builder vs row-by-row
    from creformer.engine.sample_shards import build_sample_shard
    from creformer.engine.shards import ShardTask

    plan = json.loads((out / "plan.json").read_text())
    tmp = work / "shard_bench"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    ctx = {"work": str((out / "work").resolve()), "n_genes": man["counts"]["genes"]}
    t0 = time.perf_counter()
    built = 0
    for t in plan["tasks"]:
        built += build_sample_shard(ShardTask(**t), ctx, tmp)["records"]
    vec_s = time.perf_counter() - t0
    res["sample_build_samples_per_s_per_core"] = built / vec_s
    first = plan["tasks"][0]["payload"]["cells"]
    n_naive_cells = max(1, min(first[1] - first[0], 200_000 // max(1, man["counts"]["genes"])))
    t0 = time.perf_counter()
    import pyarrow as pa

    rows = naive_rows(out / "work", range(first[0], first[0] + n_naive_cells), man["counts"]["genes"])
    pq.write_table(pa.Table.from_pylist(rows), tmp / "naive.parquet", compression="zstd")
    naive_s = time.perf_counter() - t0
    res["naive_samples_per_s_per_core"] = len(rows) / naive_s
    res["vectorized_over_naive"] = res["sample_build_samples_per_s_per_core"] / res["naive_samples_per_s_per_core"]
    shutil.rmtree(tmp)

    # 2. bytes per sample
    shard_bytes = man["bytes"]
    all_bytes = sum(p.stat().st_size for d in ("shards", "tables", "signal") for p in (out / d).glob("*.parquet"))
    res["bytes_per_sample_shards"] = shard_bytes / n_rec
    res["bytes_per_sample_all"] = all_bytes / n_rec
    res["signal_nonzero_pair_fraction"] = man["counts"]["cell_peak_pairs"] / (man["counts"]["cells"] * man["tables"]["peaks"]["rows"])

    # 4. streaming join vs the tiny model's consumption
    import ray
    import torch

    from creformer.config import RayConfig, load_config
    from creformer.engine.regulatory_stream import regulatory_dataset
    from creformer.ray_utils import ensure_ray, shutdown_ray
    from creformer.trainer.model import build_models

    ensure_ray(RayConfig(num_cpus=2))
    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = regulatory_dataset(out, batch_size=64, concurrency=2).limit(20_000)
    n = 0
    t0 = time.perf_counter()
    batch = None
    for batch in ds.iter_torch_batches(batch_size=64):
        n += batch["expression"].shape[0]
    join_s = time.perf_counter() - t0
    res["join_samples_per_s"] = n / join_s
    shutdown_ray()
    cfg = load_config("tiny").model
    _, reg = build_models(cfg, n_genes=int(man["counts"]["genes"]))
    opt = torch.optim.AdamW([p for p in reg.parameters() if p.requires_grad], lr=1e-3)
    b = 8
    mask, rank = batch["mask"][:b], batch["tss_rank"][:b]
    dna, atac = batch["dna"][:b], batch["atac"][:b].long()
    sig = torch.zeros(b, mask.shape[1], 7, 1024, dtype=torch.long)
    sig[:, :, 0] = atac
    steps = 3
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = reg.loss(reg(dna, sig, rank, mask, batch["gene_id"][:b]), batch["expression"][:b])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model_s = (time.perf_counter() - t0) / (steps * b)
    res["tiny_model_samples_per_s"] = 1 / model_s
    res["join_over_model"] = res["join_samples_per_s"] / res["tiny_model_samples_per_s"]
    res["mean_real_peaks_per_sample"] = float(mask.sum(1).float().mean())

    print(json.dumps(res, indent=1))
    print(f"\nsample shards: {res['sample_build_samples_per_s_per_core'] / 1e3:.0f} k samples/s/core (target >= 50 k), "
          f"{res['vectorized_over_naive']:.0f}x the row-by-row builder")
    print(f"bytes/sample: {res['bytes_per_sample_shards']:.1f} (shards), {res['bytes_per_sample_all']:.1f} (all files); target <= 1024")
    print(f"peak RSS 1x {res['rss_1x_mb']:.0f} MB, 4x {res['rss_4x_mb']:.0f} MB: growth {res['rss_growth_4x_over_1x']:.2f}x (target <= 1.2x)")
    print(f"streaming join {res['join_samples_per_s']:.0f} samples/s = {res['join_over_model']:.1f}x the tiny model's consumption")


if __name__ == "__main__":
    main()

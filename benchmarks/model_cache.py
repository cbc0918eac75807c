"""Model benchmarks, ratios measured in one run.

1. Regulatory forward throughput (samples/s) with vs without the frozen-Elementary embedding cache,
   on samples streamed from the simulated atlas (its real sparsity) and from the real muon PBMC
   set (its measured sparsity; needs CREFORMER_DATA). Cold (first pass fills the cache) and warm.
   Target: >= 10x.
2. Per-cell peak embeddings (the cache's misses): the changed-bins shortcut
   (``Elementary.embed_changed``: transformer-1 re-run only on the bins a cell's insertions reach)
   vs the full Elementary pass, on the streamed samples' non-empty (cell, peak) pairs; with the
   peaks' zero-signal reference computed in the timed run (cold) and already held (warm).
3. Elementary forward + backward tokens/s of the small preset on this machine's CPU cores (record).

Usage: python benchmarks/model_cache.py [--preset small] [--samples 512] [--work runs/bench/model]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch


def collect(manifest: Path, n: int) -> list[dict]:
    from creformer.engine.regulatory_stream import regulatory_dataset

    rows, batches = 0, []
    for b in regulatory_dataset(manifest, batch_size=32, with_dna=False).iter_torch_batches(batch_size=32):
        batches.append(b)
        rows += b["expression"].shape[0]
        if rows >= n:
            break
    return batches


def forward_rates(manifest: Path, batches: list[dict], preset: str) -> dict[str, float]:
    from creformer.config import load_config
    from creformer.engine.regulatory_batches import load_peak_dna
    from creformer.trainer.model import build_models
    from creformer.trainer.model.cache import EmbeddingCache

    torch.manual_seed(0)
    cfg = load_config(preset).model
    from creformer.engine.shards import Manifest

    _, reg = build_models(cfg, n_genes=int(Manifest(manifest).data["counts"]["genes"]))
    reg.eval()
    peak_dna = load_peak_dna(manifest.parent)
    n = sum(b["expression"].shape[0] for b in batches)
    real_pairs = sum(int(b["mask"].sum()) for b in batches)
    nonzero = sum(int(((b["atac"] > 2).any(-1) & b["mask"]).sum()) for b in batches)
    with torch.no_grad():
        t0 = time.perf_counter()
        ref = []
        for b in batches:
            ids = b["peak_ids"].long().clamp(min=0)
            dna = torch.from_numpy(peak_dna[ids.numpy()].astype(np.int64))
            sig = torch.zeros(*ids.shape, 7, 1024, dtype=torch.long)
            sig[:, :, 0] = b["atac"].long()
            ref.append(reg(dna, sig, b["tss_rank"], b["mask"], b["gene_id"]))
        plain = time.perf_counter() - t0
        cache = EmbeddingCache(reg.elementary, peak_dna)
        times = []
        for _ in range(2):  # cold, then warm
            t0 = time.perf_counter()
            out = [reg.forward_bins(cache.peak_bins(b["peak_ids"].long(), b["atac"].long(), b["mask"]), b["tss_rank"], b["mask"],
                                    b["gene_id"]) for b in batches]
            times.append(time.perf_counter() - t0)
    err = max(float((a - r).abs().max()) for a, r in zip(out, ref))
    return {"samples": n, "real_peaks_per_sample": real_pairs / n, "nonzero_signal_fraction": nonzero / max(1, real_pairs),
            "uncached_samples_per_s": n / plain, "cached_cold_samples_per_s": n / times[0],
            "cached_warm_samples_per_s": n / times[1], "speedup_cold": plain / times[0], "speedup_warm": plain / times[1],
            "max_abs_diff": err, "cache_entries": cache.stats()["entries"]}


def miss_rates(manifest: Path, batches: list[dict], preset: str, max_pairs: int = 2048) -> dict[str, float]:
    """Embeddings/s of non-empty (cell, peak) pairs: full Elementary pass vs the changed-bins shortcut."""
    from creformer.config import load_config
    from creformer.engine.regulatory_batches import load_peak_dna
    from creformer.engine.tokenize import SIG_OFFSET
    from creformer.trainer.model import Elementary
    from creformer.trainer.model.cache import EmbeddingCache

    torch.manual_seed(0)
    el = Elementary(load_config(preset).model).eval()
    peak_dna = load_peak_dna(manifest.parent)
    ids, atac, seen = [], [], set()
    for b in batches:
        has = (b["atac"] > SIG_OFFSET).any(-1) & b["mask"]
        for bi, pi in zip(*np.nonzero(has.numpy())):
            key = (int(b["peak_ids"][bi, pi]), bytes(b["atac"][bi, pi].numpy().astype(np.uint8)))
            if key not in seen:
                seen.add(key)
                ids.append(key[0])
                atac.append(b["atac"][bi, pi].numpy().astype(np.uint8))
    ids, atac = ids[:max_pairs], np.stack(atac[:max_pairs])
    cache = EmbeddingCache(el, peak_dna)
    with torch.no_grad():
        t0 = time.perf_counter()
        full = torch.cat([cache._embed_full(ids[i:i + 256], atac[i:i + 256]) for i in range(0, len(ids), 256)])
        t_full = time.perf_counter() - t0
        times = []
        for _ in range(2):  # cold: the peaks' zero-signal reference is computed too; warm: it is held
            t0 = time.perf_counter()
            fast = cache._embed(ids, atac)
            times.append(time.perf_counter() - t0)
        changed = el.changed_bins(cache._tracks(atac), cache._tracks(np.full(atac.shape, SIG_OFFSET, np.uint8)))
    return {"pairs": len(ids), "distinct_peaks": len(set(ids)), "changed_bin_fraction": float(changed.float().mean()),
            "full_pairs_per_s": len(ids) / t_full, "shortcut_cold_pairs_per_s": len(ids) / times[0],
            "shortcut_warm_pairs_per_s": len(ids) / times[1], "speedup_cold": t_full / times[0],
            "speedup_warm": t_full / times[1], "max_abs_diff": float((fast - full).abs().max())}


def elementary_tokens_per_s(preset: str, batch: int = 4, length: int = 1024, steps: int = 3) -> float:
    from creformer.config import load_config
    from creformer.trainer.masking import mask_batch
    from creformer.trainer.model import Elementary

    torch.manual_seed(0)
    model = Elementary(load_config(preset).model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dna = torch.randint(4, 4100, (batch, length))
    sig = torch.randint(2, 38, (batch, 7, length))
    mb = mask_batch(dna, sig, torch.ones(batch, 7, dtype=torch.bool))
    model(mb)["loss"].backward()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = model(mb)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * batch * length / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", help="simulator preset of the atlas")
    ap.add_argument("--model", default="tiny", help="model preset for the cache benchmark")
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--work", default="runs/bench/model")
    args = ap.parse_args()
    import ray

    from creformer.config import RayConfig, load_config
    from creformer.engine.regulatory_shards import prepare_regulatory
    from creformer.engine.simulate import simulate
    from creformer.ray_utils import ensure_ray, shutdown_ray

    work = Path(args.work)
    sim = work / f"sim_{args.preset}"
    if not (sim / "multiome").exists():
        simulate(sim, preset=args.preset)
    ensure_ray(RayConfig(num_cpus=2))
    ray.data.DataContext.get_current().enable_progress_bars = False
    res: dict[str, object] = {}
    sim_reg = prepare_regulatory(load_config("tiny", [f"data.genome={sim / 'genome.fa'}", f"data.regulatory.multiome={sim / 'multiome'}",
                                                      f"data.regulatory.annotation={sim / 'genes.gtf'}",
                                                      f"data.regulatory.shards={work / 'reg_sim'}"]))
    batches = collect(sim_reg.manifest_path, args.samples)
    res["simulated"] = forward_rates(sim_reg.manifest_path, batches, args.model)
    res["simulated_misses"] = miss_rates(sim_reg.manifest_path, batches, args.model)
    data = Path(os.environ.get("CREFORMER_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    if (data / "multiome" / "test_rna_atac.h5mu").exists():
        real = prepare_regulatory(load_config("tiny", [
            f"data.genome={data / 'genome' / 'chr2_1-2333275.fa.gz'}", f"data.regulatory.multiome={data / 'multiome' / 'test_rna_atac.h5mu'}",
            f"data.regulatory.annotation={data / 'annotation' / 'CollapsedGeneBounds.hg38.bed.gz'}",
            f"data.regulatory.shards={work / 'reg_muon'}", f"data.regulatory.fragments={data / 'multiome' / 'test_rna_atac_fragments.tsv.gz'}",
            "data.regulatory.allow_missing_sequence=true"]))
        batches = collect(real.manifest_path, args.samples)
        res["muon_pbmc"] = forward_rates(real.manifest_path, batches, args.model)
        res["muon_pbmc_misses"] = miss_rates(real.manifest_path, batches, args.model)
        res["muon_pbmc"]["note"] = "real peaks and real scATAC; the DNA of these peaks is not in the shared FASTA ([N] tokens), which does not change the cost"
    else:
        res["muon_pbmc"] = f"skipped: no real data at {data} (set CREFORMER_DATA)"
    shutdown_ray()
    res["elementary_small_fwd_bwd_tokens_per_s"] = elementary_tokens_per_s("small")
    res["torch_threads"] = torch.get_num_threads()
    print(json.dumps(res, indent=1))
    for k in ("simulated", "muon_pbmc"):
        if isinstance(res[k], dict):
            r = res[k]
            print(f"{k}: cache speed-up {r['speedup_cold']:.1f}x cold, {r['speedup_warm']:.1f}x warm (target >= 10x); "
                  f"{r['nonzero_signal_fraction']:.1%} of real peaks carry signal; max |diff| {r['max_abs_diff']:.1e}")
    for k in ("simulated_misses", "muon_pbmc_misses"):
        if k in res:
            r = res[k]
            print(f"{k}: changed-bins shortcut {r['speedup_cold']:.1f}x cold, {r['speedup_warm']:.1f}x warm over the full pass "
                  f"({r['pairs']} non-empty cell x peak pairs, {r['changed_bin_fraction']:.0%} of bins changed); max |diff| {r['max_abs_diff']:.1e}")
    print(f"Elementary small fwd+bwd: {res['elementary_small_fwd_bwd_tokens_per_s']:.0f} tokens/s on {res['torch_threads']} threads")


if __name__ == "__main__":
    main()

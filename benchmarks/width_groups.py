"""The Regulatory head on width groups against the padded batch, ratios measured in one run.

A batch is as wide as its gene with the most peaks. The Regulatory transformer runs on width
groups (``trainer.model.layers.Packing``: samples sorted by width, cut into groups, each padded to
its widest sample) and the head's first layer meets each group's slots only (``PeakSlotLinear``
with widths). The baseline is the same model on the padded batch: the transformer's layers on
every slot and the head's first layer over the batch's full width (what ``head_out`` did before).

Timed, alternating the two, medians over --reps:
1. a training step of the science preset's model (forward, backward, fused AdamW) on --batch samples;
2. a no-grad forward of --infer samples (atlas_grn's ablations run the head on chunks of 512).
Inputs are random peak bins with the real peak counts of a shard set's genes (their fill is printed).

Usage: python benchmarks/width_groups.py [--shards runs/demo/shards/regulatory] [--batch 128] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch


def padded_forward(model, bins: torch.Tensor, rank: torch.Tensor, mask: torch.Tensor, gene: torch.Tensor) -> torch.Tensor:
    """The model's prediction computed on the padded batch (the baseline)."""
    x = model._inputs(bins, rank, mask)
    h = model._with_gene(x, gene)
    for layer in model.t3.layers:
        h = layer(h, ~mask)
    h = model.t3.norm(h) * mask[..., None]
    return model.head(h).squeeze(-1) + model.cis(x, mask, gene, rank)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", default="runs/demo/shards/regulatory")
    ap.add_argument("--batch", type=int, default=128, help="samples per training step (the science preset's)")
    ap.add_argument("--infer", type=int, default=512, help="samples per no-grad forward")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=12)
    args = ap.parse_args()
    genes = Path(args.shards) / "tables" / "genes.parquet"
    if not genes.exists():
        sys.exit(f"needs a Regulatory shard set's gene table ({genes}): run `make demo` first, or pass --shards")
    import polars as pl

    from creformer.config import load_config
    from creformer.trainer.model.regulatory import RegulatoryHead

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n_peaks = pl.read_parquet(genes)["n_peaks"].to_numpy()
    cfg = load_config("science", [])
    model = RegulatoryHead(cfg.model, cfg.data.regulatory.peak_m, len(n_peaks))
    torch.nn.init.normal_(model.gene_peak_w.weight, std=0.1)  # a trained cis table is not zero
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    rng = np.random.default_rng(0)

    def batch(b: int):
        gene = rng.integers(0, len(n_peaks), b)
        width = torch.from_numpy(n_peaks[gene])
        mask = torch.arange(int(width.max()))[None] < width[:, None]
        bins = torch.randn(b, mask.shape[1], 2, 8, cfg.model.d_model) * mask[:, :, None, None, None]
        rank = torch.arange(mask.shape[1])[None].expand(b, -1) - 10
        return bins, rank, mask, torch.from_numpy(gene), torch.randn(b)

    train = [batch(args.batch) for _ in range(4)]
    infer = [batch(args.infer) for _ in range(2)]
    grouped = lambda bins, rank, mask, gene: model(bins, rank, mask, gene)  # noqa: E731
    padded = lambda bins, rank, mask, gene: padded_forward(model, bins, rank, mask, gene)  # noqa: E731
    with torch.no_grad():
        diff = max(float((grouped(*b[:4]) - padded(*b[:4])).abs().max()) for b in infer)

    def steps(fn) -> float:
        t0 = time.perf_counter()
        for b in train:
            loss = model.loss(fn(*b[:4]), b[4])
            opt.zero_grad()
            loss.backward()
            opt.step()
        return (time.perf_counter() - t0) / len(train) * 1e3

    @torch.no_grad()
    def forwards(fn) -> float:
        t0 = time.perf_counter()
        for b in infer:
            fn(*b[:4])
        return (time.perf_counter() - t0) / len(infer) * 1e3

    times: dict[str, list[float]] = {k: [] for k in ("step_padded", "step_grouped", "forward_padded", "forward_grouped")}
    steps(padded), steps(grouped), forwards(padded), forwards(grouped)  # warm-up
    for _ in range(args.reps):
        times["step_padded"].append(steps(padded))
        times["step_grouped"].append(steps(grouped))
        times["forward_padded"].append(forwards(padded))
        times["forward_grouped"].append(forwards(grouped))
    med = {k: statistics.median(v) for k, v in times.items()}
    fill = float(np.mean([b[2].float().mean() for b in train]))
    result = {"threads": args.threads, "batch": args.batch, "infer": args.infer, "slot_fill": round(fill, 3),
              "max_abs_diff_grouped_vs_padded": diff, **{f"{k}_ms": round(v, 1) for k, v in med.items()},
              "step_speedup": round(med["step_padded"] / med["step_grouped"], 3),
              "forward_speedup": round(med["forward_padded"] / med["forward_grouped"], 3)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

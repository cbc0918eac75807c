"""Attention scores (docs/design.md §7) per (cell, gene, peak), their cell-group means, and genome tracks.

score_j = Σ_i A_ij over real queries i of the first Regulatory layer's head-averaged softmax
attention: it sums to the number of real peaks, so 1.0 is "average attention".

Beside it, the in-silico ablation of each peak: the predicted expression minus the prediction with
that one peak's cell signal replaced by zero signal (the cached zero-signal half of its bins, so no
Elementary pass). It is 0 for a peak without signal in the cell; group means are taken over the
cells where the peak has signal.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyBigWig
import torch

from creformer.engine.regulatory_batches import trim_peak_columns


@torch.no_grad()
def score_batch(head, cache, batch: dict[str, np.ndarray], values: np.ndarray) -> dict[str, np.ndarray]:
    """Predicted expression, attention scores and ATAC mass for a joined batch (engine.regulatory_batches.join_samples).

    Only the peak columns some sample uses are computed (genes have far fewer than peak_m peaks);
    the head reads only the peak slots a batch fills."""
    batch = trim_peak_columns(batch)
    p = batch["mask"].shape[1]
    ids = torch.from_numpy(batch["peak_ids"].astype(np.int64))
    atac = torch.from_numpy(batch["atac"])
    mask = torch.from_numpy(batch["mask"])
    rank = torch.from_numpy(batch["tss_rank"].astype(np.int64))
    gene = torch.from_numpy(batch["gene_id"].astype(np.int64))
    bins = cache.peak_bins(ids, atac, mask)
    x = head._inputs(bins, rank, mask)  # per-peak inputs, shared by the prediction, ablation and perturbations
    pred = head.forward_inputs(x, mask, gene, rank)
    att = head.attention_scores(bins, rank, mask, inputs=x, gene=gene)
    mass = values[batch["atac"]].mean(-1) * batch["mask"]
    return {"pred": pred.numpy().astype(np.float32), "attention": att.numpy().astype(np.float32),
            "atac": mass.astype(np.float32), "ablation": ablation(head, bins, rank, mask, pred, inputs=x, gene=gene),
            "bins": bins, "inputs": x, "rank": rank, "mask": mask, "gene": gene, "width": p}


@torch.no_grad()
def ablation(head, bins: torch.Tensor, rank: torch.Tensor, mask: torch.Tensor, pred: torch.Tensor,
             chunk: int = 512, inputs: torch.Tensor | None = None, gene: torch.Tensor | None = None) -> np.ndarray:
    """(B, P) predicted expression minus the prediction with peak j's cell signal set to zero
    signal; 0 where the peak has no signal in the cell (its two halves are equal) or is padding.
    Works on the per-peak inputs: only peak j's input changes, to its zero-signal input."""
    out = np.zeros(mask.shape, np.float32)
    has = ((bins[:, :, 0] != bins[:, :, 1]).flatten(2).any(-1) & mask).numpy()
    rows, cols = np.nonzero(has)
    if rows.size == 0:
        return out
    x = head._inputs(bins, rank, mask) if inputs is None else inputs
    x_zero = head._inputs(bins[:, :, 1:].expand(-1, -1, 2, -1, -1), rank, mask)  # every peak at zero signal
    for s in range(0, rows.size, chunk):
        r, c = torch.from_numpy(rows[s:s + chunk]), torch.from_numpy(cols[s:s + chunk])
        xr = x[r].clone()
        xr[torch.arange(r.numel()), c] = x_zero[r, c]
        gr = None if gene is None else gene[r]
        out[rows[s:s + chunk], cols[s:s + chunk]] = (pred[r] - head.forward_inputs(xr, mask[r], gr, rank[r])).numpy()
    return out


def peak_tracks(group_att: pl.DataFrame, peaks: pl.DataFrame) -> pl.DataFrame:
    """Per group and peak the highest gene-wise mean attention (a peak serves several genes)."""
    return (group_att.group_by("group", "peak_id").agg(pl.col("attention").max())
            .join(peaks.select("peak_id", "chrom", "start", "end"), on="peak_id")
            .sort("group", "chrom", "start"))


def _intervals(df: pl.DataFrame) -> list[tuple[str, int, int, float]]:
    """Sorted, non-overlapping intervals (a peak overlapping the previous one is clipped)."""
    out: list[tuple[str, int, int, float]] = []
    for chrom, start, end, value in df.sort("chrom", "start").select("chrom", "start", "end", "attention").iter_rows():
        if out and out[-1][0] == chrom and start < out[-1][2]:
            start = out[-1][2]
        if end > start:
            out.append((chrom, int(start), int(end), float(value)))
    return out


def write_tracks(tracks: pl.DataFrame, out_dir: Path, chrom_sizes: dict[str, int] | None = None) -> list[Path]:
    """One bedGraph and one bigWig per group, for genome browsers."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for (group,), df in sorted(tracks.group_by("group"), key=lambda kv: str(kv[0])):
        rows = _intervals(df)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(group))
        bg = out_dir / f"attention.{safe}.bedGraph"
        bg.write_text(f'track type=bedGraph name="attention {group}"\n'
                      + "".join(f"{c}\t{s}\t{e}\t{v:.5f}\n" for c, s, e, v in rows))
        sizes = dict(chrom_sizes or {})
        for c, _, e, _ in rows:
            sizes[c] = max(sizes.get(c, 0), e)
        chroms = list(dict.fromkeys(c for c, *_ in rows))
        bw_path = out_dir / f"attention.{safe}.bw"
        bw = pyBigWig.open(str(bw_path), "w")
        bw.addHeader([(c, int(sizes[c])) for c in chroms])
        bw.addEntries([r[0] for r in rows], [r[1] for r in rows], ends=[r[2] for r in rows], values=[r[3] for r in rows])
        bw.close()
        written += [bg, bw_path]
    return written

"""Closed-form refit of the Regulatory model's per-gene cis table (``train.regulatory.cis_refit``;
docs/design.md §5).

The cis term is linear in its per-gene numbers: expression = rest(x) + Σⱼ w[gene, rankⱼ] · a(xⱼ) +
b[gene], where a(·) is the model's own peak activity and rest(x) everything else. Adam moves the
zero-started table by about lr per step, so after training it is refit exactly, with the rest of
the model fixed: for each gene, a ridge regression of each training cell's expression minus
rest(x) on the peak activities, standardized, its penalty chosen by 5-fold cross-validation over
cells, as the per-gene accessibility regression chooses its own. One pass over the training
samples accumulates per (gene, fold) sufficient statistics of the gene's peak slots, so memory is
genes × folds × slots², not samples (20,000 genes of 65 peaks: ~3.4 GB)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from creformer.config import Config
from creformer.engine.shards import Manifest

from .peak_batches import iter_peak_batches, load_head, peak_cache

# the penalties tried on standardized inputs, shared with the per-gene accessibility-regression
# baseline (analysis/baselines.py): the model's refit and that baseline search the same grid
RIDGE_ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0)
FOLDS = 5


@dataclass
class GeneStats:
    """Sums over one gene's training cells, per cross-validation fold: of the activities x (its
    peak slots), the residual y, and their products."""

    slots: np.ndarray  # (S,) rows of the rank table that the gene's real peaks use
    xx: np.ndarray  # (FOLDS, S, S)
    xy: np.ndarray  # (FOLDS, S)
    x: np.ndarray  # (FOLDS, S)
    y: np.ndarray  # (FOLDS,)
    yy: np.ndarray  # (FOLDS,)
    n: np.ndarray  # (FOLDS,)

    @classmethod
    def empty(cls, slots: np.ndarray) -> "GeneStats":
        s = len(slots)
        return cls(slots, np.zeros((FOLDS, s, s)), np.zeros((FOLDS, s)), np.zeros((FOLDS, s)),
                   np.zeros(FOLDS), np.zeros(FOLDS), np.zeros(FOLDS))

    def add(self, fold: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
        """Add samples: ``fold`` (n,) in 0..FOLDS-1, activities ``x`` (n, S), residuals ``y`` (n,)."""
        x, y = x.astype(np.float64), y.astype(np.float64)
        for f in np.unique(fold):
            s = fold == f
            xs, ys = x[s], y[s]
            self.xx[f] += xs.T @ xs
            self.xy[f] += xs.T @ ys
            self.x[f] += xs.sum(0)
            self.y[f] += ys.sum()
            self.yy[f] += ys @ ys
            self.n[f] += len(ys)


def _sums(st: GeneStats, folds: np.ndarray) -> tuple[np.ndarray, ...]:
    return st.xx[folds].sum(0), st.xy[folds].sum(0), st.x[folds].sum(0), st.y[folds].sum(), st.yy[folds].sum(), st.n[folds].sum()


def _ridge(xx: np.ndarray, xy: np.ndarray, x: np.ndarray, y: float, n: float, alpha: float) -> tuple[np.ndarray, float]:
    """Ridge with an intercept on standardized columns (constant ones get weight 0), from sums;
    returns the weights and intercept on the original scale."""
    mx, my = x / n, y / n
    sxx = xx - n * np.outer(mx, mx)
    sxy = xy - n * mx * my
    sd = np.sqrt(np.clip(np.diag(sxx), 0, None) / n)
    keep = sd > 1e-9 * max(1.0, float(np.abs(mx).max(initial=0)))
    w = np.zeros(len(x))
    if keep.any():
        k = np.flatnonzero(keep)
        z = sxx[np.ix_(k, k)] / np.outer(sd[k], sd[k])
        w[k] = np.linalg.solve(z + alpha * np.eye(len(k)), sxy[k] / sd[k]) / sd[k]
    return w, float(my - w @ mx)


def _sse(xx: np.ndarray, xy: np.ndarray, x: np.ndarray, y: float, yy: float, n: float, w: np.ndarray, b: float) -> float:
    """Σ (y − b − w·x)² over the samples whose sums these are."""
    return float(yy - 2 * b * y - 2 * w @ xy + n * b * b + 2 * b * (w @ x) + w @ xx @ w)


def fit_gene(st: GeneStats) -> tuple[np.ndarray, float, float, float] | None:
    """The gene's weights (over ``st.slots``), intercept, chosen penalty and mean squared error of
    the fit, or None with fewer than two samples in some fold."""
    if (st.n < 2).any():
        return None
    all_folds = np.arange(FOLDS)
    cv = []
    for alpha in RIDGE_ALPHAS:
        err = 0.0
        for f in all_folds:
            xx, xy, x, y, _, n = _sums(st, all_folds[all_folds != f])
            w, b = _ridge(xx, xy, x, y, n, alpha)
            err += _sse(st.xx[f], st.xy[f], st.x[f], st.y[f], st.yy[f], st.n[f], w, b)
        cv.append(err)
    alpha = RIDGE_ALPHAS[int(np.argmin(cv))]
    xx, xy, x, y, yy, n = _sums(st, all_folds)
    w, b = _ridge(xx, xy, x, y, n, alpha)
    return w, b, alpha, max(0.0, _sse(xx, xy, x, y, yy, n, w, b)) / float(n)


def refit_cis(cfg: Config, manifest: Path, elementary_weights: Path, head_weights: Path,
              store: Path | None = None) -> dict[str, Any]:
    """Refit the per-gene cis table (and per-gene bias) of the exported Regulatory weights
    ``head_weights`` in place, on the training cells (the held-out split stays out); its summary
    goes into the export's meta.json (``cis_refit``) and is returned. Without a ``store`` every
    training pair is embedded once by the frozen Elementary (an online cache)."""
    man = Manifest(manifest)
    n_genes = int(man.data["counts"]["genes"])
    head = load_head(cfg, n_genes, head_weights)
    state = head.state_dict()
    cache = peak_cache(cfg, man, elementary_weights, store)
    st = cfg.train.regulatory
    stats: dict[int, GeneStats] = {}
    sse_before: dict[int, float] = {}
    samples = 0
    total = int(man.data["records"] * (1 - max(0.0, st.holdout_cells)))
    with torch.no_grad(), tqdm(total=total, desc="cis refit: training samples", unit="sample", mininterval=5) as bar:
        for pb in iter_peak_batches(cfg, man, cache, "train", st.micro_batch * 4):
            mask, rank, gene = pb.mask, pb.rank, pb.gene
            x = head._inputs(pb.bins, rank, mask)
            head_part = head.head_out(x, mask, gene)
            act = torch.where(mask, head.peak_activity(x).squeeze(-1), 0.0)  # each peak's activity, once
            pred = (head_part + head.cis(x, mask, gene, rank, activity=act)).numpy()
            rest = head_part.numpy()
            slot = head._rank_index(rank)
            table = torch.zeros(len(gene), 2 * head.peak_m + 1).scatter_add_(1, slot, act).numpy()
            # added, not assigned: a padded peak's slot may be a real peak's too
            used = torch.zeros(len(gene), 2 * head.peak_m + 1).scatter_add_(1, slot, mask.float()).numpy() > 0
            y = pb.columns["expression"].astype(np.float64)
            err = (pred - y) ** 2
            fold = pb.columns["cell_id"].astype(np.int64) % FOLDS
            genes = gene.numpy()
            for g in np.unique(genes):
                sel = genes == g
                g_stats = stats.get(int(g))
                if g_stats is None:
                    g_stats = stats[int(g)] = GeneStats.empty(np.flatnonzero(used[sel].any(0)))
                outside = np.ones(used.shape[1], bool)
                outside[g_stats.slots] = False
                if used[sel][:, outside].any():
                    raise ValueError(f"gene_id {g}: its samples do not share one set of peak slots in {manifest}; "
                                     "the cis refit expects each gene's window to be the same in every cell")
                g_stats.add(fold[sel], table[sel][:, g_stats.slots], y[sel] - rest[sel])
                sse_before[int(g)] = sse_before.get(int(g), 0.0) + float(err[sel].sum())
            samples += len(y)
            bar.update(len(y))
    if not samples:
        raise ValueError(f"no training sample in {manifest} to refit the cis table on")
    w_table = state["gene_peak_w.weight"].clone()
    bias = state["gene_bias"].clone()  # zero in exports written before it existed (a load hook)
    alphas: dict[str, int] = {}
    sse = [0.0, 0.0, 0.0]  # over the refit genes' samples: before, after, count
    refit, kept = 0, 0
    for g, g_stats in sorted(stats.items()):
        fit = fit_gene(g_stats)
        n = float(g_stats.n.sum())
        if fit is None:  # too few cells: the gene keeps what training learned
            kept += 1
            continue
        w, b, alpha, mse = fit
        w_table[g] = 0.0
        w_table[g, torch.from_numpy(g_stats.slots)] = torch.from_numpy(w).float()
        bias[g] = b
        alphas[str(alpha)] = alphas.get(str(alpha), 0) + 1
        sse[0] += sse_before[g]
        sse[1] += mse * n
        sse[2] += n
        refit += 1
    state["gene_peak_w.weight"], state["gene_bias"] = w_table, bias.float()
    with safe_open(str(head_weights), "pt") as f:
        header = f.metadata() or {}
    save_file({k: v.contiguous() for k, v in state.items()}, str(head_weights), metadata=header)
    summary = {"genes_refit": refit, "genes_kept": kept, "samples": samples, "folds": FOLDS,
               "train_mse_before": sse[0] / sse[2] if refit else None,
               "train_mse_after": sse[1] / sse[2] if refit else None, "alphas": alphas}
    meta_path = head_weights.parent / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    meta["cis_refit"] = summary
    meta_path.write_text(json.dumps(meta, indent=1))
    change = f"train MSE {sse[0] / sse[2]:.4f} -> {sse[1] / sse[2]:.4f}" if refit else "no gene had enough cells"
    print(f"[regulatory] cis refit: {refit} of {len(stats)} genes refit in closed form on {samples} training samples "
          f"({change}); penalties chosen {alphas}; {head_weights}")
    return summary

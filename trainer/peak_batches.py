"""Regulatory samples as model inputs in one process (no Ray): the trained head loaded from its
export, and a split's batches turned into peak bins through the frozen Elementary's cache.

What the driver-side passes share: the signal scale measured before training (trainer/jobs.py),
the held-out evaluation (trainer/evaluate.py) and the cis refit (trainer/cis_refit.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from creformer.config import Config
from creformer.engine.regulatory_batches import trim_peak_columns
from creformer.engine.regulatory_stream import iter_regulatory_batches
from creformer.engine.shards import Manifest

from .model.cache import EmbeddingCache, frozen_cache
from .model.regulatory import RegulatoryHead


@dataclass
class PeakBatch:
    """One batch: its shard columns (trimmed to its widest sample's peaks) and the model's inputs."""

    columns: dict[str, np.ndarray]  # cell_id, gene_id, expression, peak_ids, atac, ...
    bins: torch.Tensor  # (B, P, 2, 8, d) [cell's signal, zero signal]
    rank: torch.Tensor  # (B, P) signed TSS rank
    mask: torch.Tensor  # (B, P) True for real peaks
    gene: torch.Tensor  # (B,) gene_id


def load_head(cfg: Config, n_genes: int, weights: str | Path) -> RegulatoryHead:
    """The exported Regulatory head at ``weights``, in eval mode."""
    head = RegulatoryHead(cfg.model, cfg.data.regulatory.peak_m, n_genes)
    head.load_state_dict(load_file(str(weights)))
    head.eval()
    return head


def peak_cache(cfg: Config, man: Manifest, elementary_weights: str | Path, store: Path | None = None) -> EmbeddingCache:
    """The frozen Elementary behind its cache over ``man``'s peaks, reading the embedding store
    ``store`` (a ``prepare embeddings`` folder) when there is one."""
    return frozen_cache(cfg.model, elementary_weights, man.root, store_dir=store.parent if store else None)


def split(cfg: Config, which: str) -> tuple[float, int, str] | None:
    """The cell filter of ``which`` ("train" or "holdout") for the stream readers (training's
    dataset too); None (every cell) for the training split when no cell is held out."""
    fraction = cfg.train.regulatory.holdout_cells
    if fraction <= 0 and which == "train":
        return None
    return fraction, cfg.train.seed, which


def iter_peak_batches(cfg: Config, man: Manifest, cache: EmbeddingCache, which: str, batch_size: int, *,
                      shuffle: bool = False, max_samples: int | None = None) -> Iterator[PeakBatch]:
    """The batches of split ``which`` with their peak bins: in shard order, or with ``shuffle`` in
    the order training reads them; the last one cut so that at most ``max_samples`` come out."""
    n = 0
    for raw in iter_regulatory_batches(man, batch_size=batch_size, holdout=split(cfg, which),
                                       shuffle_seed=cfg.train.seed if shuffle else None):
        if max_samples is not None:
            raw = {k: v[:max_samples - n] for k, v in raw.items()}
        b = trim_peak_columns(raw)
        mask = torch.from_numpy(b["mask"])
        bins = cache.peak_bins(torch.from_numpy(b["peak_ids"].astype(np.int64)), torch.from_numpy(b["atac"]), mask)
        yield PeakBatch(b, bins, torch.from_numpy(b["tss_rank"].astype(np.int64)), mask,
                        torch.from_numpy(b["gene_id"].astype(np.int64)))
        n += len(b["gene_id"])
        if max_samples is not None and n >= max_samples:
            return

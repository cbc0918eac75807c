"""CREformer models: Elementary (DNA + tracks) and Regulatory (peaks → expression)."""

from __future__ import annotations

import torch

from creformer.config import ModelConfig, RegulatoryDataConfig

from .elementary import Elementary
from .regulatory import Regulatory

__all__ = ["COUNTED_GENES", "Elementary", "Regulatory", "build_models", "parameter_counts"]


# genes of a human atlas (protein-coding, roughly): the gene table parameter_counts assumes
COUNTED_GENES = 20_000


def build_models(cfg: ModelConfig, device: str | torch.device = "cpu", peak_m: int = RegulatoryDataConfig.peak_m,
                 n_genes: int = 0) -> tuple[Elementary, Regulatory]:
    """``n_genes``: the shard set's genes (needed with ``model.gene_embedding``)."""
    with torch.device(device):
        elementary = Elementary(cfg)
        regulatory = Regulatory(cfg, elementary, peak_m, n_genes)
    return elementary, regulatory


def parameter_counts(cfg: ModelConfig, peak_m: int = RegulatoryDataConfig.peak_m, n_genes: int = COUNTED_GENES
                     ) -> dict[str, int]:
    """Parameters per part, built on the meta device (no memory is allocated); the gene table
    (``model.gene_embedding``) counted for ``n_genes`` genes."""
    elementary, regulatory = build_models(cfg, "meta", peak_m, n_genes)

    def n(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    parts = {
        "elementary.embeddings": n(elementary.dna_emb) + n(elementary.sig_emb) + elementary.cls.numel()
        + n(elementary.pos1) + n(elementary.pos2),
        "elementary.local_conv": n(elementary.local) if elementary.local is not None else 0,
        "elementary.transformer1": n(elementary.t1),
        "elementary.transformer2": n(elementary.t2),
        "elementary.heads": n(elementary.dna_head) + n(elementary.sig_head) + n(elementary.bin_head),
        "regulatory.pool_and_rank": regulatory.pool_query.numel() + n(regulatory.rank_emb),
        "regulatory.gene_embedding": n(regulatory.gene_emb) if regulatory.gene_emb is not None else 0,
        "regulatory.signal_proj": n(regulatory.signal_proj),
        "regulatory.gene_peak_weights": (n(regulatory.gene_peak_w) + n(regulatory.peak_activity)
                                         if regulatory.gene_peak_w is not None else 0),
        "regulatory.transformer3": n(regulatory.t3),
        "regulatory.head": n(regulatory.head),
    }
    parts["total"] = sum(parts.values())
    assert parts["total"] == n(regulatory)
    return parts

"""The Regulatory CREformer (DESIGN §5): frozen Elementary peak embeddings → gene expression."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from creformer.config import ModelConfig

from .elementary import Elementary
from .layers import Encoder


class Regulatory(nn.Module):
    def __init__(self, cfg: ModelConfig, elementary: Elementary | None = None):
        """``elementary=None`` builds the trainable part only (distributed training keeps the frozen
        Elementary outside the sharded engine, behind the embedding cache)."""
        super().__init__()
        d = cfg.d_model
        self.cfg = cfg
        self.elementary = elementary
        if elementary is not None:
            for p in elementary.parameters():
                p.requires_grad_(False)
        self.pool_query = nn.Parameter(torch.randn(d) * 0.02)
        self.rank_emb = nn.Embedding(2 * cfg.peak_m + 1, d)  # signed TSS rank in [-peak_m, peak_m]
        self.t3 = Encoder(cfg.n3, d, cfg.n_heads, cfg.ffn, cfg.dropout, cfg.activation_checkpointing)
        self.head = nn.Sequential(nn.Linear(cfg.peak_m * d, cfg.head_hidden), nn.GELU(), nn.Linear(cfg.head_hidden, 1))

    def train(self, mode: bool = True) -> "Regulatory":
        super().train(mode)
        if self.elementary is not None:
            self.elementary.eval()  # frozen: no dropout, whatever the mode of the rest
        return self

    @torch.no_grad()
    def peak_bins(self, dna: torch.Tensor, sig: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Frozen Elementary bins (B, P, 8, d) for real peaks (padded peaks stay zero)."""
        if self.elementary is None:
            raise RuntimeError("this Regulatory model was built without its Elementary; feed peak bins to forward_bins")
        b, p, length = dna.shape
        out = torch.zeros(b, p, length // self.cfg.bin_size, self.cfg.d_model, device=dna.device)
        if mask.any():
            out[mask] = self.elementary.embed(dna[mask], sig[mask])
        return out

    def pool(self, bins: torch.Tensor) -> torch.Tensor:
        """Attention pooling over a peak's 8 bins: (B, P, 8, d) → (B, P, d)."""
        w = (bins @ self.pool_query / bins.shape[-1] ** 0.5).softmax(-1)
        return (w[..., None] * bins).sum(-2)

    def _inputs(self, bins: torch.Tensor, rank: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        r = rank.long().clamp(-self.cfg.peak_m, self.cfg.peak_m) + self.cfg.peak_m
        return self.pool(bins) + self.rank_emb(r)

    def forward_bins(self, bins: torch.Tensor, rank: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Expression (B,) from precomputed peak bins (the embedding cache path)."""
        b, p = mask.shape
        if p > self.cfg.peak_m:
            raise ValueError(f"{p} peaks exceed model.peak_m={self.cfg.peak_m}")
        h = self.t3(self._inputs(bins, rank, mask), key_padding=~mask) * mask[..., None]
        h = F.pad(h, (0, 0, 0, self.cfg.peak_m - p))  # zero-pad to (peak_m, d)
        return self.head(h.flatten(1)).squeeze(-1)

    def forward(self, dna: torch.Tensor, sig: torch.Tensor, rank: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """dna (B, P, 1024), sig (B, P, A, 1024), rank (B, P), mask (B, P) True for real peaks."""
        return self.forward_bins(self.peak_bins(dna, sig, mask), rank, mask)

    def loss(self, pred: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(pred, expression.float())

    @torch.no_grad()
    def attention_scores(self, bins: torch.Tensor, rank: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """DESIGN §7: first-layer softmax attention averaged over heads, summed over real queries i:
        score_j = sum_i A_ij (B, P); padded peaks score 0."""
        x = self._inputs(bins, rank, mask)
        att = self.t3.layers[0].attention_weights(x, key_padding=~mask).mean(1)  # (B, P, P)
        return (att * mask[:, :, None]).sum(1) * mask


class RegulatoryHead(Regulatory):
    """The trainable part alone, called on precomputed peak bins: what the ZeRO-3 engine wraps."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, None)

    def forward(self, bins: torch.Tensor, rank: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.forward_bins(bins, rank, mask)

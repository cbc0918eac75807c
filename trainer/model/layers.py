"""One pre-norm transformer block for all three CREformer transformers (docs/design.md §4-5).

Attention goes through ``torch.nn.functional.scaled_dot_product_attention`` so GPUs use flash or
memory-efficient kernels; ``need_weights`` computes the softmax explicitly for the first-layer
attention scores of the zero-shot analyses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, ffn: int, dropout: float = 0.0):
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, ffn), nn.GELU(), nn.Linear(ffn, d_model))
        self.dropout = dropout

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        return q, k, v

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None) -> torch.Tensor:
        """``key_padding``: bool (B, T), True where the position is padding (never attended to)."""
        b, t, d = x.shape
        q, k, v = self._heads(x)
        mask = None if key_padding is None else (~key_padding)[:, None, None, :]
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.ff(self.norm2(x))

    def attention_weights(self, x: torch.Tensor, key_padding: torch.Tensor | None = None) -> torch.Tensor:
        """Softmax attention (B, heads, T, T) of this block, as the forward pass computes it."""
        q, k, _ = self._heads(x)
        logits = q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5)
        if key_padding is not None:
            logits = logits.masked_fill(key_padding[:, None, None, :], float("-inf"))
        return logits.softmax(-1)


class Encoder(nn.Module):
    """A stack of blocks with optional activation checkpointing (trades compute for memory)."""

    def __init__(self, n_layers: int, d_model: int, n_heads: int, ffn: int, dropout: float = 0.0, checkpointing: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(Block(d_model, n_heads, ffn, dropout) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.checkpointing = checkpointing

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            if self.checkpointing and self.training and x.requires_grad:
                x = checkpoint(layer, x, key_padding, use_reentrant=False)
            else:
                x = layer(x, key_padding)
        return self.norm(x)

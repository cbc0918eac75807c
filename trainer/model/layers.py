"""One pre-norm transformer block for all three CREformer transformers (docs/design.md §4-5).

Attention goes through ``torch.nn.functional.scaled_dot_product_attention`` so GPUs use flash or
memory-efficient kernels; ``need_weights`` computes the softmax explicitly for the first-layer
attention scores of the zero-shot analyses.

With a key-padding mask (the Regulatory transformer over a gene's peaks) the encoder runs on width
groups (``Packing``): a batch is as wide as its gene with the most peaks, and on the simulated atlas
~28 % of its (sample, slot) positions are padding. Padded positions attend to nothing and nothing
attends to them, so the real tokens' outputs are the same as the padded computation's; the padded
outputs are zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

# A batch's samples, sorted by width, run in this many groups of similar width (at least 8 samples
# each), each group padded only to its widest sample (``Packing``, and the Regulatory head's
# ``PeakSlotLinear``). Measured on 2 threads (2026-12-07, one process, a training step of the
# science preset's 128 samples): groups of 32 beat 16 and 64; at the demo's 32 samples grouping
# gains nothing measurable, and groups of 8 cost nothing either.
WIDTH_GROUPS = 4


def width_group(batch: int) -> int:
    """Samples per width group of a batch of ``batch`` samples."""
    return max(8, -(-batch // WIDTH_GROUPS))


def slot_widths(keep: torch.Tensor) -> torch.Tensor:
    """(B,) each sample's width: one past its last real slot of ``keep`` (B, T), 0 when it has none,
    so a sample with holes still fits the slots its width covers."""
    return (torch.arange(1, keep.shape[1] + 1, device=keep.device) * keep).amax(1)


@dataclass
class Packing:
    """A padded (B, T) batch regrouped by width: its samples sorted by width and cut into groups
    (``width_group``), each group padded only to its widest sample, all groups' tokens in one
    (N, d) tensor. Position-wise layers run on that tensor in one call each; attention runs per
    group on a view of it, so no index operation sits inside a layer."""

    index: torch.Tensor  # (N,) flat position b * T + t in the padded batch of each grouped token
    batch: int
    width: int
    groups: list[tuple[int, int, torch.Tensor]]  # (samples n, width w, keys' mask (n, 1, 1, w)) per group

    @classmethod
    def from_padding(cls, key_padding: torch.Tensor) -> "Packing":
        keep = ~key_padding
        b, t = keep.shape
        dev = keep.device
        ends = slot_widths(keep)
        order = torch.argsort(ends, stable=True)
        index, groups = [], []
        for rows in order.split(width_group(b)):
            w = max(1, int(ends[rows].max()))  # a group of empty samples keeps one (masked) slot
            index.append((rows[:, None] * t + torch.arange(w, device=dev)[None]).reshape(-1))
            mask = keep[rows, :w]
            # an empty sample has no key: attending to its own padding keeps its (dropped) outputs finite
            mask = mask | ~mask.any(1, keepdim=True)
            groups.append((len(rows), w, mask[:, None, None, :]))
        return cls(torch.cat(index), b, t, groups)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, c) → (N, c): every group's samples, each cut to its group's width."""
        return x.reshape(self.batch * self.width, -1)[self.index]

    def unpack(self, xp: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """(N, c) → (B, T, c), zero wherever ``keep`` (B, T) is False."""
        out = xp.new_zeros(self.batch * self.width, xp.shape[-1]).index_copy(0, self.index, xp)
        return out.view(self.batch, self.width, -1) * keep[..., None]

    def attend(self, qkv: torch.Tensor, n_heads: int, dropout: float) -> torch.Tensor:
        """Attention of grouped (N, 3d) queries, keys and values within each sample → (N, d)."""
        d = qkv.shape[-1] // 3
        outs = []
        for part, (n, w, mask) in zip(qkv.split([n * w for n, w, _ in self.groups]), self.groups):
            q, k, v = part.view(n, w, 3, n_heads, d // n_heads).permute(2, 0, 3, 1, 4)
            att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
            outs.append(att.transpose(1, 2).reshape(n * w, d))
        return torch.cat(outs)


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

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor | None = None, packing: Packing | None = None) -> torch.Tensor:
        """``key_padding``: bool (B, T), True where the position is padding (never attended to).
        With ``packing``, ``x`` is the batch's grouped tokens (N, d) instead (``Packing.pack``)."""
        dropout = self.dropout if self.training else 0.0
        if packing is not None:
            x = x + self.proj(packing.attend(self.qkv(self.norm1(x)), self.n_heads, dropout))
            return x + self.ff(self.norm2(x))
        b, t, d = x.shape
        q, k, v = self._heads(x)
        mask = None if key_padding is None else (~key_padding)[:, None, None, :]
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
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
        """(B, T, d) → (B, T, d). With ``key_padding`` the blocks run on width groups (``Packing``)
        and the padded positions' outputs are zero."""
        packing = None if key_padding is None else Packing.from_padding(key_padding)
        if packing is not None:
            x = packing.pack(x)
        for layer in self.layers:
            if self.checkpointing and self.training and x.requires_grad:
                x = checkpoint(layer, x, key_padding, packing, use_reentrant=False)
            else:
                x = layer(x, key_padding, packing)
        x = self.norm(x)
        return x if packing is None else packing.unpack(x, ~key_padding)

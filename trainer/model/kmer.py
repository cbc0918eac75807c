"""Overlapping k-mer DNA tokens with an embedding and an output head built from their bases.

A 6-mer vocabulary has 4,096 rows; in a batch of a few thousand tokens each row is seen about
once, so a free table learns slowly and never learns that ACGTAC and CGTACG share five bases.
Here a k-mer's vector is its own row plus one learned vector per (position, base), and the head
scores a k-mer as its row plus the same per-(position, base) sum, so the model predicts a masked
k-mer from its bases as much as from its identity (docs/design.md §4, "DNA token embedding").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from creformer.engine.tokenize import DNA_OFFSET, DNA_VOCAB, K

_NO_BASE = 4  # special tokens ([PAD], [CLS], [MASK], [N]) have no bases


def kmer_base_index(k: int = K, vocab: int = DNA_VOCAB, offset: int = DNA_OFFSET) -> torch.Tensor:
    """(vocab, k) rows into a (k x 5)-row table: position p of token t holds base b at p * 5 + b
    (ACGT = 0..3, first base most significant as in the tokenizer; 4 for special tokens)."""
    idx = torch.full((vocab, k), _NO_BASE, dtype=torch.long)
    kmers = torch.arange(4**k)
    for p in range(k):
        idx[offset:, p] = (kmers // 4 ** (k - 1 - p)) % 4
    return idx + 5 * torch.arange(k)[None]


class KmerEmbedding(nn.Module):
    """token → its k-mer row + Σ over positions of that position's base vector."""

    def __init__(self, d_model: int):
        super().__init__()
        self.register_buffer("base_index", kmer_base_index(), persistent=False)
        self.weight = nn.Parameter(torch.randn(DNA_VOCAB, d_model) * 0.02)
        self.base = nn.Parameter(torch.randn(5 * K, d_model) / K**0.5)

    def table(self) -> torch.Tensor:
        return self.weight + self.base[self.base_index].sum(1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens, self.table())


class KmerHead(nn.Module):
    """hidden → k-mer logits, each the k-mer's own score plus the scores of its bases."""

    def __init__(self, d_model: int):
        super().__init__()
        self.register_buffer("base_index", kmer_base_index(), persistent=False)
        self.weight = nn.Parameter(torch.empty(DNA_VOCAB, d_model))
        self.bias = nn.Parameter(torch.zeros(DNA_VOCAB))
        self.base = nn.Parameter(torch.randn(5 * K, d_model) * 0.02)
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # as nn.Linear

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.weight + self.base[self.base_index].sum(1), self.bias)

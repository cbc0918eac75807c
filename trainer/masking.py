"""Batch-time masking for Elementary pretraining (docs/design.md §4); shards are never masked.

- DNA: 15 % of real positions are targets; of those 80 % become [MASK], 10 % a random k-mer, 10 % stay.
- Tracks: each sample splits its present tracks at random into *selected* (kept in the input,
  15 % of positions masked and predicted) and *preserved* (withheld from the input: all [PAD];
  the model predicts their per-bin mean level from the rest).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from creformer.engine.tokenize import DNA_MASK, DNA_OFFSET, DNA_VOCAB, SIG_MASK, SIG_OFFSET, SIG_PAD

IGNORE = -100


@dataclass
class MaskedBatch:
    dna: torch.Tensor  # (B, L) input tokens
    sig: torch.Tensor  # (B, A, L) input tokens, preserved tracks all [PAD]
    dna_target: torch.Tensor  # (B, L) original token at masked positions, IGNORE elsewhere
    sig_target: torch.Tensor  # (B, A, L) level (0..35) at masked positions of selected tracks, IGNORE elsewhere
    preserved: torch.Tensor  # (B, A) bool: tracks withheld from the input
    bin_target: torch.Tensor  # (B, A, L/bin) mean level per bin of preserved tracks (rounded), IGNORE elsewhere


def mask_batch(dna: torch.Tensor, sig: torch.Tensor, present: torch.Tensor, *, bin_size: int = 128,
               rate: float = 0.15, generator: torch.Generator | None = None) -> MaskedBatch:
    dna = dna.long()
    sig = sig.long()
    b, a, length = sig.shape
    g = generator

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g, device=dna.device)

    # DNA: BERT 80/10/10 over real k-mers (not [N] or padding)
    real = dna >= DNA_OFFSET
    pick = (rand(b, length) < rate) & real
    dna_target = torch.where(pick, dna, torch.full_like(dna, IGNORE))
    roll = rand(b, length)
    dna_in = dna.clone()
    dna_in[pick & (roll < 0.8)] = DNA_MASK
    swap = pick & (roll >= 0.8) & (roll < 0.9)
    dna_in[swap] = torch.randint(DNA_OFFSET, DNA_VOCAB, (int(swap.sum()),), generator=g, device=dna.device)

    # Tracks: random selected / preserved split per sample, at least one of each when possible
    score = rand(b, a).masked_fill(~present, 2.0)
    n_present = present.sum(1, keepdim=True)
    n_keep = torch.clamp((n_present.float() * rand(b, 1)).long() + 1, max=n_present.clamp(min=1))
    n_keep = torch.where(n_present > 1, torch.clamp(n_keep, max=n_present - 1), n_present)
    rank = score.argsort(1).argsort(1)
    selected = present & (rank < n_keep)
    preserved = present & ~selected

    levels = (sig - SIG_OFFSET).clamp(min=0)
    sig_pick = (rand(b, a, length) < rate) & selected[:, :, None] & (sig >= SIG_OFFSET)
    sig_target = torch.where(sig_pick, levels, torch.full_like(sig, IGNORE))
    sig_in = sig.clone()
    sig_in[sig_pick] = SIG_MASK
    sig_in[preserved] = SIG_PAD

    bins = levels.view(b, a, length // bin_size, bin_size).float().mean(-1).round().long()
    bin_target = torch.where(preserved[:, :, None], bins, torch.full_like(bins, IGNORE))
    return MaskedBatch(dna_in, sig_in, dna_target, sig_target, preserved, bin_target)

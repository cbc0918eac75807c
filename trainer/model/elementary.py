"""The Elementary CREformer (docs/design.md §4): DNA + track tokens → per-bin and per-base representations."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from creformer.config import ModelConfig
from creformer.engine.tokenize import N_LEVELS, SIG_VOCAB

from ..masking import IGNORE, MaskedBatch
from .kmer import KmerEmbedding, KmerHead
from .layers import Encoder


class Elementary(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.cfg = cfg
        self.dna_emb = KmerEmbedding(d)
        self.sig_emb = nn.ModuleList(nn.Embedding(SIG_VOCAB, d) for _ in range(cfg.n_tracks))
        # Self-attention with learned absolute positions takes thousands of steps to find a token's
        # neighbours; a convolution over the summed embeddings gives every token its local context
        # (the overlapping k-mers around it, nearby signal) from the first step.
        k = cfg.local_kernel
        self.local = nn.Conv1d(d, d, k, padding=k // 2) if k else None
        self.cls = nn.Parameter(torch.randn(d) * 0.02)
        self.pos1 = nn.Embedding(cfg.bin_size + 1, d)
        self.pos2 = nn.Embedding(cfg.max_bins, d)
        self.t1 = Encoder(cfg.n1, d, cfg.n_heads, cfg.ffn, cfg.dropout, cfg.activation_checkpointing)
        self.t2 = Encoder(cfg.n2, d, cfg.n_heads, cfg.ffn, cfg.dropout, cfg.activation_checkpointing)
        self.dna_head = KmerHead(d)
        self.sig_head = nn.Linear(d, cfg.n_tracks * N_LEVELS)
        self.bin_head = nn.Linear(d, cfg.n_tracks * N_LEVELS)

    def encode(self, dna: torch.Tensor, sig: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """dna (B, L), sig (B, A, L) → per-token (B, L, d) and per-bin (B, L/128, d) outputs."""
        b, length = dna.shape
        h = self._t1_outputs(dna, sig)
        nb, d = h.shape[0] // b, h.shape[-1]
        bins = h[:, 0].view(b, nb, d) + self.pos2.weight[:nb][None]
        return h[:, 1:].reshape(b, length, d), self.t2(bins)

    def _t1_outputs(self, dna: torch.Tensor, sig: torch.Tensor) -> torch.Tensor:
        """transformer-1 outputs (B × L/128, 1 + 128, d) of every bin, [CLS] first."""
        b, length = dna.shape
        bs = self.cfg.bin_size
        if length % bs:
            raise ValueError(f"sequence length {length} is not a multiple of the bin size {bs}")
        nb = length // bs
        if nb > self.cfg.max_bins:
            raise ValueError(f"{nb} bins exceed model.max_bins={self.cfg.max_bins}")
        x = self._token_inputs(dna, sig.transpose(1, 2))
        if self.local is not None:
            x = x + self.local(x.transpose(1, 2)).transpose(1, 2)
        return self._t1(x.view(b * nb, bs, x.shape[-1]))

    def _token_inputs(self, dna: torch.Tensor, sig: torch.Tensor) -> torch.Tensor:
        """Summed token embeddings (..., d) of dna (...) and sig (..., A), before the convolution."""
        x = self.dna_emb(dna.long())
        for a, emb in enumerate(self.sig_emb):
            x = x + emb(sig[..., a].long())
        return x

    def _t1(self, x: torch.Tensor) -> torch.Tensor:
        """transformer-1 over bins of tokens (n, bin_size, d) with [CLS] and position 1 → (n, 1 + bin_size, d)."""
        n, _, d = x.shape
        return self.t1(torch.cat([self.cls.expand(n, 1, d), x], 1) + self.pos1.weight[None])

    def embed(self, dna: torch.Tensor, sig: torch.Tensor) -> torch.Tensor:
        """Per-bin representations (B, L/128, d), e.g. (B, 8, d) for a 1,024-bp peak: transformer-2's
        bin output plus the mean of the bin's transformer-1 token outputs.

        Why both: pretraining asks the bin ([CLS]) outputs only for the levels of withheld tracks, and
        after short pretraining they hardly depend on the input (measured on the demo: 0.03 % change
        when a peak's ATAC is zeroed, 0.3 % for another peak's DNA), while the token outputs, trained
        to fill in masked DNA and signal, change by 3.8 % and 28 %. The Regulatory model must see both
        the sequence and the cell's accessibility."""
        return self.embed_from_parts(self.bin_parts(dna, sig))

    def bin_parts(self, dna: torch.Tensor, sig: torch.Tensor) -> torch.Tensor:
        """transformer-1's per-bin outputs (B, L/128, 2, d): [CLS] output and mean token output, all
        ``embed`` needs besides transformer-2 (``embed_from_parts``)."""
        h = self._t1_outputs(dna, sig)
        return self._summary(h).view(dna.shape[0], -1, 2, h.shape[-1])

    @staticmethod
    def _summary(h: torch.Tensor) -> torch.Tensor:
        """(n, 2, d) per bin from transformer-1 outputs (n, 1 + 128, d): [CLS] output, mean token output."""
        return torch.stack([h[:, 0], h[:, 1:].mean(1)], 1)

    def embed_from_parts(self, parts: torch.Tensor) -> torch.Tensor:
        """``embed`` from ``bin_parts`` (B, nb, 2, d): transformer-2 over the bins' [CLS] outputs plus
        the bins' mean token outputs."""
        nb = parts.shape[1]
        return self.t2(parts[:, :, 0] + self.pos2.weight[:nb][None]) + parts[:, :, 1]

    def changed_bins(self, sig: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """(B, nb) True for the bins whose transformer-1 input differs between signal tokens ``sig``
        and ``ref`` (B, A, L): a changed token reaches the bins within the convolution's reach."""
        diff = (sig != ref).any(1).float()[:, None]  # (B, 1, L)
        if self.local is not None:  # an odd kernel (the config checks it) reaches k // 2 tokens each way
            reach = self.cfg.local_kernel // 2
            diff = F.max_pool1d(diff, 2 * reach + 1, stride=1, padding=reach)
        b, _, length = diff.shape
        return diff.view(b, length // self.cfg.bin_size, self.cfg.bin_size).amax(-1) > 0

    def embed_changed(self, dna: torch.Tensor, sig: torch.Tensor, ref_parts: torch.Tensor, changed: torch.Tensor) -> torch.Tensor:
        """``embed(dna, sig)`` computed from the ``bin_parts`` of the same DNA under a reference signal,
        re-running transformer-1 only on the ``changed`` bins (``changed_bins``); the others keep the
        reference's outputs, which they equal exactly: transformer-1 sees one bin, and the
        convolution only its reach beyond it. Single-cell ATAC touches a few bins of a peak (a
        Tn5 insertion is 6 tokens), so per-cell peak embeddings cost a fraction of a full pass."""
        bs = self.cfg.bin_size
        parts = ref_parts.clone()
        bi, ni = torch.nonzero(changed, as_tuple=True)
        if bi.numel():
            k = self.cfg.local_kernel if self.local is not None else 1
            pad = k // 2
            pos = ni[:, None] * bs - pad + torch.arange(bs + k - 1)[None]  # the bin plus the convolution's reach
            inside = (pos >= 0) & (pos < dna.shape[1])
            at = pos.clamp(0, dna.shape[1] - 1)
            x = self._token_inputs(dna[bi[:, None], at], sig.transpose(1, 2)[bi[:, None], at]) * inside[..., None]
            win = x[:, pad:pad + bs]
            if self.local is not None:
                win = win + F.conv1d(x.transpose(1, 2), self.local.weight, self.local.bias).transpose(1, 2)
            parts[bi, ni] = self._summary(self._t1(win))
        return self.embed_from_parts(parts)

    def forward(self, batch: MaskedBatch) -> dict[str, torch.Tensor]:
        tokens, bins = self.encode(batch.dna, batch.sig)
        b, length, _ = tokens.shape
        a = self.cfg.n_tracks
        out: dict[str, torch.Tensor] = {}
        # the 4,096-way k-mer head only where DNA is masked (~15 % of positions): the same loss and
        # gradients as scoring every position and ignoring the rest, for ~1/7 of the head's work
        m = batch.dna_target != IGNORE
        dna_logits = self.dna_head(tokens[m])
        dna_target = batch.dna_target[m]
        out["loss_dna"] = F.cross_entropy(dna_logits, dna_target) if dna_target.numel() else tokens.sum() * 0.0
        sig_logits = self.sig_head(tokens).view(b, length, a, N_LEVELS).permute(0, 2, 1, 3)
        out["loss_sig"] = _ce(sig_logits, batch.sig_target)
        bin_logits = self.bin_head(bins).view(b, -1, a, N_LEVELS).permute(0, 2, 1, 3)
        out["loss_bin"] = _ce(bin_logits, batch.bin_target)
        out["loss"] = out["loss_dna"] + out["loss_sig"] + out["loss_bin"]  # loss1 (masked) + loss2 (preserved)
        with torch.no_grad():
            out["acc_dna"] = (dna_logits.argmax(-1) == dna_target).float().mean() if dna_target.numel() else tokens.new_tensor(0.0)
        return out


def _ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over counted positions only; zero (with a graph) when nothing is counted."""
    flat_t = target.reshape(-1)
    if not (flat_t != IGNORE).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), flat_t, ignore_index=IGNORE)

"""The Regulatory CREformer (docs/design.md §5): frozen Elementary peak embeddings → gene expression.

Peak bins come in pairs, (B, P, 2, 8, d): the Elementary output for the cell's own signal over the
peak, and for the same peak with zero signal (cached once per peak). A peak's input is the pooled
first plus a learned projection of their difference, scaled to unit size: the frozen Elementary
moves a peak's embedding by only ~2 % when its ATAC changes (measured on the demo), far below its
DNA identity, and without the explicit difference the head never learned within-gene (cell) signal
(held-out within-gene r 0.00 vs 0.40 with it, same data and steps)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from creformer.config import ModelConfig, RegulatoryDataConfig
from creformer.engine.tokenize import SIG_OFFSET, SIG_PAD

from .elementary import Elementary
from .layers import Encoder, slot_widths, width_group


def measure_signal_scale(bins: torch.Tensor, mask: torch.Tensor) -> float:
    """1 / RMS of the bin-mean signal difference over the real peaks whose signal is not zero, in
    sample peak bins (B, P, 2, 8, d) (1.0 when no peak has signal)."""
    delta = (bins[:, :, 0] - bins[:, :, 1]).mean(-2)[mask]
    delta = delta[delta.abs().amax(-1) > 0]
    rms = float(delta.pow(2).mean().sqrt()) if delta.numel() else 0.0
    return 1.0 / rms if rms > 0 else 1.0


class Regulatory(nn.Module):
    def __init__(self, cfg: ModelConfig, elementary: Elementary | None = None, peak_m: int = RegulatoryDataConfig.peak_m,
                 n_genes: int = 0):
        """``elementary=None`` builds the trainable part only (distributed training keeps the frozen
        Elementary outside the sharded engine, behind the embedding cache). ``peak_m`` is the
        shard set's peaks per gene (data.regulatory.peak_m): the head's input width. ``n_genes``:
        the shard set's genes (gene_id 0..n_genes-1), needed with ``model.gene_embedding``."""
        super().__init__()
        d = cfg.d_model
        self.cfg = cfg
        self.peak_m = peak_m
        self.elementary = elementary
        if elementary is not None:
            for p in elementary.parameters():
                p.requires_grad_(False)
        self.pool_query = nn.Parameter(torch.randn(d) * 0.02)
        self.rank_emb = nn.Embedding(2 * peak_m + 1, d)  # signed TSS rank in [-peak_m, peak_m]
        self.signal_proj = nn.Linear(d, d)
        # 1 / typical size of the signal difference, measured on the data before training
        # (``signal_scale``); a buffer, so exports carry it.
        self.register_buffer("signal_scale", torch.ones(()))
        per_gene = [k for k in ("gene_embedding", "gene_peak_weights") if getattr(cfg, k)]
        if per_gene and n_genes <= 0:
            raise ValueError(f"model.{per_gene[0]} needs the shard set's gene count (n_genes > 0); "
                             f"build the model with it or set {' and '.join(f'model.{k}=false' for k in per_gene)}")
        # which gene the window belongs to, so a peak can count for one gene and not for its
        # neighbour (design §5: every zero-shot score rose with it, science seed 0)
        self.gene_emb = nn.Embedding(n_genes, d) if cfg.gene_embedding else None
        # a per-gene linear cis term: weight[gene, rank] x activity(peak input), summed over peaks.
        # Whether a peak drives *this* gene is a per-(gene, peak) fact that a per-gene regression
        # learns directly and the head only through interactions (design §5). Zero at the start,
        # so the model begins as it was without it.
        self.peak_activity = (nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))
                              if cfg.gene_peak_weights else None)
        self.gene_peak_w = nn.Embedding(n_genes, 2 * peak_m + 1) if cfg.gene_peak_weights else None
        if self.gene_peak_w is not None:
            nn.init.zeros_(self.gene_peak_w.weight)
            # the cis term's per-gene intercept: zero unless the table is refit in closed form after
            # training (train.regulatory.cis_refit, trainer/cis_refit.py); a buffer, so SGD leaves it
            self.register_buffer("gene_bias", torch.zeros(n_genes))
            self._register_load_state_dict_pre_hook(_zero_gene_bias)
        self.t3 = Encoder(cfg.n3, d, cfg.n_heads, cfg.ffn, cfg.dropout, cfg.activation_checkpointing)
        # LayerNorm before the GELU: the first layer's fan-in is peak_m x d (9,600 in the demo), so one
        # Adam step can shift every hidden unit's input by units, and a loss spike had pushed all of
        # them below zero for good: the demo's head on simulator v4 (train.seed 0) ended with 99.7 %
        # of pre-activations negative (mean -7.4) and an output that ignored the cell (design §5).
        # Normalized per sample over the units, about half of them stay on.
        self.head = nn.Sequential(PeakSlotLinear(peak_m, d, cfg.head_hidden), nn.LayerNorm(cfg.head_hidden), nn.GELU(),
                                  nn.Linear(cfg.head_hidden, 1))
        self._register_load_state_dict_pre_hook(_reject_head_without_norm)

    def train(self, mode: bool = True) -> "Regulatory":
        super().train(mode)
        if self.elementary is not None:
            self.elementary.eval()  # frozen: no dropout, whatever the mode of the rest
        return self

    @torch.no_grad()
    def peak_bins(self, dna: torch.Tensor, sig: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Frozen Elementary bins (B, P, 2, 8, d) for real peaks, [cell's signal, zero signal]
        (padded peaks stay zero). ``sig`` (B, P, A, 1024); the zero signal sets every real track
        to level 0 and keeps [PAD] where the input has it."""
        if self.elementary is None:
            raise RuntimeError("this Regulatory model was built without its Elementary; feed peak bins to forward_bins")
        b, p, length = dna.shape
        out = torch.zeros(b, p, 2, length // self.cfg.bin_size, self.cfg.d_model, device=dna.device)
        if mask.any():
            s = sig[mask]
            zero = torch.where(s == SIG_PAD, s, torch.full_like(s, SIG_OFFSET))
            out[mask] = torch.stack([self.elementary.embed(dna[mask], s), self.elementary.embed(dna[mask], zero)], 1)
        return out

    def set_signal_scale(self, bins: torch.Tensor, mask: torch.Tensor) -> float:
        """Set ``signal_scale`` to ``measure_signal_scale(bins, mask)``; returns it."""
        scale = measure_signal_scale(bins, mask)
        self.signal_scale.fill_(scale)
        return scale

    def pool(self, bins: torch.Tensor) -> torch.Tensor:
        """Attention pooling over a peak's 8 bins: (B, P, 8, d) → (B, P, d)."""
        w = (bins @ self.pool_query / bins.shape[-1] ** 0.5).softmax(-1)
        return (w[..., None] * bins).sum(-2)

    def _rank_index(self, rank: torch.Tensor) -> torch.Tensor:
        """Signed TSS rank → row of the rank tables: clamped to [−peak_m, peak_m], shifted to 0.."""
        return rank.long().clamp(-self.peak_m, self.peak_m) + self.peak_m

    def _inputs(self, bins: torch.Tensor, rank: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if bins.dim() != 5 or bins.shape[2] != 2:
            raise ValueError(f"peak bins must be (batch, peaks, 2, bins, d) [cell's signal, zero signal], got {tuple(bins.shape)}")
        r = self._rank_index(rank)
        cell, zero = bins[:, :, 0], bins[:, :, 1]
        delta = (cell - zero).mean(-2) * self.signal_scale
        return self.pool(cell) + self.rank_emb(r) + self.signal_proj(delta)

    def forward_bins(self, bins: torch.Tensor, rank: torch.Tensor, mask: torch.Tensor,
                     gene: torch.Tensor | None = None) -> torch.Tensor:
        """Expression (B,) from precomputed peak bins (the embedding cache path)."""
        return self.forward_inputs(self._inputs(bins, rank, mask), mask, gene, rank)

    def _with_gene(self, x: torch.Tensor, gene: torch.Tensor | None) -> torch.Tensor:
        """Per-peak inputs plus the sample's gene vector (``model.gene_embedding``). Added here,
        not in ``_inputs``, so a peak's input stays a function of its own bins and rank."""
        if self.gene_emb is None:
            return x
        if gene is None:
            raise ValueError("this Regulatory model was built with model.gene_embedding: pass each sample's gene_id")
        return x + self.gene_emb(gene.long())[:, None, :]

    def forward_inputs(self, x: torch.Tensor, mask: torch.Tensor, gene: torch.Tensor | None = None,
                       rank: torch.Tensor | None = None) -> torch.Tensor:
        """Expression (B,) from per-peak inputs (B, P, d) (``_inputs``): a peak's input depends on
        its own bins and rank only, so a one-peak change can be made here without re-pooling.
        ``gene`` (B,): the samples' gene_id, needed with ``model.gene_embedding`` or
        ``model.gene_peak_weights``; ``rank`` (B, P): the peaks' TSS ranks, needed with the latter."""
        out = self.head_out(x, mask, gene)
        if self.gene_peak_w is not None:
            out = out + self.cis(x, mask, gene, rank)
        return out

    def head_out(self, x: torch.Tensor, mask: torch.Tensor, gene: torch.Tensor | None = None) -> torch.Tensor:
        """The transformer and MLP head's part of the expression (B,): ``forward_inputs`` without
        the cis term (what the cis refit regresses out)."""
        p = mask.shape[1]
        if p > self.peak_m:
            raise ValueError(f"{p} peaks exceed data.regulatory.peak_m={self.peak_m}")
        h = self.t3(self._with_gene(x, gene), key_padding=~mask)  # zero at padded slots
        first, norm, act, last = self.head
        return last(act(norm(first(h, slot_widths(mask))))).squeeze(-1)

    def cis(self, x: torch.Tensor, mask: torch.Tensor, gene: torch.Tensor | None, rank: torch.Tensor | None,
            activity: torch.Tensor | None = None) -> torch.Tensor:
        """The per-gene linear cis term (B,) of ``model.gene_peak_weights``: Σ_j weight[gene, rank_j] ×
        activity(x_j) over real peaks, plus the gene's intercept (zero unless refit). ``activity``:
        the peaks' ``peak_activity(x)`` (B, P) when the caller has computed them already."""
        if self.gene_peak_w is None:  # built together with peak_activity
            raise RuntimeError("this Regulatory model was built without model.gene_peak_weights")
        if gene is None or rank is None:
            raise ValueError("this Regulatory model was built with model.gene_peak_weights: pass each sample's gene_id and "
                             "its peaks' tss_rank")
        a = self.peak_activity(x).squeeze(-1) if activity is None else activity
        w = self.gene_peak_w(gene.long()).gather(1, self._rank_index(rank))  # (B, P)
        return (w * a * mask).sum(1) + self.gene_bias[gene.long()]

    def forward(self, dna: torch.Tensor, sig: torch.Tensor, rank: torch.Tensor, mask: torch.Tensor,
                gene: torch.Tensor | None = None) -> torch.Tensor:
        """dna (B, P, 1024), sig (B, P, A, 1024), rank (B, P), mask (B, P) True for real peaks,
        gene (B,) the samples' gene_id (with ``model.gene_embedding``)."""
        return self.forward_bins(self.peak_bins(dna, sig, mask), rank, mask, gene)

    def loss(self, pred: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(pred, expression.float())

    @torch.no_grad()
    def attention_scores(self, bins: torch.Tensor, rank: torch.Tensor, mask: torch.Tensor,
                         inputs: torch.Tensor | None = None, gene: torch.Tensor | None = None) -> torch.Tensor:
        """docs/design.md §7: first-layer softmax attention averaged over heads, summed over real queries i:
        score_j = sum_i A_ij (B, P); padded peaks score 0. ``inputs``: the batch's ``_inputs``
        when the caller already has them (atlas scoring shares one computation)."""
        x = self._inputs(bins, rank, mask) if inputs is None else inputs
        att = self.t3.layers[0].attention_weights(self._with_gene(x, gene), key_padding=~mask).mean(1)  # (B, P, P)
        return (att * mask[:, :, None]).sum(1) * mask


def _reject_head_without_norm(state: dict, prefix: str, *args) -> None:
    """Weights exported before the head's LayerNorm (2026-12-07) hold their output layer at
    ``head.2``: they computed another function, so they are refused by name, not loaded."""
    if prefix + "head.2.weight" in state:
        raise ValueError("these Regulatory weights predate the head's LayerNorm (2026-12-07, docs/design.md §5): "
                         "their head has no normalization before its GELU, so this version cannot run them; "
                         "retrain them with train_regulatory (the Elementary weights stay valid)")


def _zero_gene_bias(state: dict, prefix: str, *args) -> None:
    """Weights exported before the cis term had an intercept load with it at zero, as it was."""
    key = prefix + "gene_peak_w.weight"
    if key in state and prefix + "gene_bias" not in state:
        state[prefix + "gene_bias"] = torch.zeros(state[key].shape[0])


class PeakSlotLinear(nn.Linear):
    """The head's first layer, ``nn.Linear(peak_m * d, out)`` over the flattened (peak_m, d) peak
    slots, called on (B, P, d) with P <= peak_m: the P filled slots meet the first P x d weight
    columns only. The same output and gradients as zero-padding to peak_m and flattening, without
    the multiply-adds of the empty slots (a small-preset batch fills ~65 of 150, so ~57 % of this
    layer's work was zeros). Its own module, so ZeRO-3 gathers the weight around this forward.

    ``widths`` (B,): each sample's filled slots (one past its last real peak). With them a sample
    meets only the weight columns of its own width, rounded up to its group of samples of similar
    width (``layers.width_group``, ``_SlotStairs``): a batch is as wide as its widest gene, and on the
    simulated atlas ~28 % of a batch's slots are padding."""

    def __init__(self, slots: int, d: int, out: int):
        super().__init__(slots * d, out)
        self.d = d

    def forward(self, h: torch.Tensor, widths: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        p = h.shape[1]
        if widths is None:
            return F.linear(h.flatten(1), self.weight[:, :p * self.d], self.bias)
        order = torch.argsort(widths, descending=True, stable=True)
        # group g (samples [g G, (g+1) G) of the order) is as wide as its first sample; the slots
        # between the next group's width and its own are met by it and every wider group
        size = width_group(len(order))
        tops = widths[order][::size].tolist() + [0]
        cuts = [(min((g + 1) * size, len(order)), tops[g + 1] * self.d, tops[g] * self.d)
                for g in range(len(tops) - 1) if tops[g] > tops[g + 1]]
        return _SlotStairs.apply(h[order].flatten(1), self.weight, self.bias, cuts)[order.argsort()]


class _SlotStairs(torch.autograd.Function):
    """y = bias + Σ over cuts (rows_end, lo, hi): x[:rows_end, lo:hi] @ weight[:, lo:hi]ᵀ, with
    x's rows sorted by width, widest first, so each column block is multiplied only by the rows
    that reach it. Gradients are written into one full-size buffer each; the plain autograd
    of weight slices would allocate a zeroed weight-sized gradient per block."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, cuts: list) -> torch.Tensor:
        out = bias.expand(x.shape[0], weight.shape[0]).clone()
        for end, lo, hi in cuts:
            out[:end].addmm_(x[:end, lo:hi], weight[:, lo:hi].t())
        ctx.save_for_backward(x, weight)
        ctx.cuts = cuts
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        gx = torch.zeros_like(x) if ctx.needs_input_grad[0] else None
        gw = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        for end, lo, hi in ctx.cuts:
            if gx is not None:
                gx[:end, lo:hi] = grad[:end] @ weight[:, lo:hi]
            if gw is not None:
                gw[:, lo:hi] = grad[:end].t() @ x[:end, lo:hi]
        gb = grad.sum(0) if ctx.needs_input_grad[2] else None
        return gx, gw, gb, None


class RegulatoryHead(Regulatory):
    """The trainable part alone, called on precomputed peak bins: what the ZeRO-3 engine wraps."""

    def __init__(self, cfg: ModelConfig, peak_m: int = RegulatoryDataConfig.peak_m, n_genes: int = 0):
        super().__init__(cfg, None, peak_m, n_genes)

    def forward(self, bins: torch.Tensor, rank: torch.Tensor, mask: torch.Tensor,  # type: ignore[override]
                gene: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_bins(bins, rank, mask, gene)

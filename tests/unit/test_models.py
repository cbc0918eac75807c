"""Elementary and Regulatory models on tiny shapes (CPU, fp32)."""

import pytest
import torch

from creformer.config import load_config
from creformer.engine.tokenize import DNA_OFFSET, DNA_VOCAB, SIG_OFFSET, SIG_PAD, SIG_VOCAB
from creformer.trainer.masking import IGNORE, mask_batch
from creformer.trainer.model import Elementary, build_models, parameter_counts


N_GENES = 3  # the gene table of the Regulatory models built here (model.gene_embedding)
GENE = torch.tensor([2, 0])  # gene_id of the two samples of ``regulatory_inputs``


def tiny_cfg(**over):
    return load_config("tiny", [f"model.{k}={v}" for k, v in over.items()]).model


def random_tokens(b, length, a=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    dna = torch.randint(DNA_OFFSET, DNA_VOCAB, (b, length), generator=g)
    sig = torch.randint(SIG_OFFSET, SIG_VOCAB, (b, a, length), generator=g)
    return dna, sig


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_elementary_shapes_and_losses(preset):
    cfg = load_config(preset).model
    el = Elementary(cfg)
    dna, sig = random_tokens(2, 256)
    present = torch.ones(2, 7, dtype=torch.bool)
    batch = mask_batch(dna, sig, present, generator=torch.Generator().manual_seed(1))
    tokens, bins = el.encode(batch.dna, batch.sig)
    assert tokens.shape == (2, 256, cfg.d_model) and bins.shape == (2, 2, cfg.d_model)
    assert el.embed(*random_tokens(3, 1024)).shape == (3, 8, cfg.d_model)  # a 1,024-bp peak -> 8 bins
    el.eval()
    with torch.no_grad():
        peak = random_tokens(1, 256)
        tokens, bins = el.encode(*peak)
        # a bin's embedding: transformer-2's output plus the mean of its 128 token outputs
        assert torch.allclose(el.embed(*peak)[0, 1], bins[0, 1] + tokens[0, 128:].mean(0), atol=1e-5)
    out = el(batch)
    for k in ("loss_dna", "loss_sig", "loss_bin", "loss"):
        assert torch.isfinite(out[k]), k


def test_masking_counts_only_the_intended_positions():
    dna, sig = random_tokens(4, 1024)
    dna[:, :10] = 3  # [N] is never a DNA target
    present = torch.ones(4, 7, dtype=torch.bool)
    present[1, 3:] = False
    sig[1, 3:] = SIG_PAD
    mb = mask_batch(dna, sig, present, generator=torch.Generator().manual_seed(0))
    frac = (mb.dna_target != IGNORE).float().mean()
    assert 0.12 < frac < 0.18 and (mb.dna_target[:, :10] == IGNORE).all()
    assert not (mb.preserved & ~present).any()  # only present tracks are preserved
    assert ((mb.preserved | ~present).sum(1) < 7).all()  # and at least one track is selected
    assert (mb.sig[mb.preserved] == SIG_PAD).all()  # preserved tracks are withheld from the input
    assert (mb.sig_target[mb.preserved] == IGNORE).all() and (mb.bin_target[~mb.preserved] == IGNORE).all()
    assert (mb.bin_target[mb.preserved] != IGNORE).all()
    masked = mb.dna_target != IGNORE
    assert ((mb.dna == 2) & ~masked).sum() == 0  # [MASK] only at target positions


def test_elementary_overfits_one_batch():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    el = Elementary(cfg)  # trained alone: the Regulatory wrapper freezes it
    dna, sig = random_tokens(2, 128)
    batch = mask_batch(dna, sig, torch.ones(2, 7, dtype=torch.bool), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(el.parameters(), lr=3e-3)
    first = None
    for _ in range(300):
        loss = el(batch)["loss"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first


def regulatory_inputs(b=2, p=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    dna = torch.randint(DNA_OFFSET, DNA_VOCAB, (b, p, 1024), generator=g)
    sig = torch.full((b, p, 7, 1024), SIG_PAD)
    sig[:, :, 0] = torch.randint(SIG_OFFSET, SIG_VOCAB, (b, p, 1024), generator=g)
    rank = torch.arange(p).repeat(b, 1) - 2
    mask = torch.ones(b, p, dtype=torch.bool)
    mask[1, 3:] = False
    return dna, sig, rank, mask


def eval_regulatory_with_bins():
    """Tiny models (seed 0, eval mode), the inputs of ``regulatory_inputs`` and their peak bins."""
    torch.manual_seed(0)
    cfg = tiny_cfg()
    el, reg = build_models(cfg, n_genes=N_GENES)
    reg.eval()
    dna, sig, rank, mask = regulatory_inputs()
    return cfg, el, reg, (dna, sig, rank, mask), reg.peak_bins(dna, sig, mask)


def test_regulatory_padding_invariance_and_attention():
    _, _, reg, (dna, sig, rank, mask), bins = eval_regulatory_with_bins()
    pred = reg.forward_bins(bins, rank, mask, GENE)
    scores = reg.attention_scores(bins, rank, mask, gene=GENE)
    # add three padded peaks with garbage content: nothing about the real peaks changes
    pad = 3
    bins2 = torch.cat([bins, torch.randn(2, pad, *bins.shape[2:])], 1)
    rank2 = torch.cat([rank, torch.full((2, pad), 7)], 1)
    mask2 = torch.cat([mask, torch.zeros(2, pad, dtype=torch.bool)], 1)
    assert torch.allclose(reg.forward_bins(bins2, rank2, mask2, GENE), pred, atol=1e-5)
    assert torch.allclose(reg.attention_scores(bins2, rank2, mask2, gene=GENE)[:, :5], scores, atol=1e-5)
    att = reg.t3.layers[0].attention_weights(reg._inputs(bins, rank, mask), key_padding=~mask)
    assert torch.allclose(att.sum(-1), torch.ones_like(att.sum(-1)), atol=1e-5)  # rows sum to 1
    assert (att[1, :, :, 3:] == 0).all()  # padded keys get no attention
    assert torch.allclose(scores.sum(1), mask.sum(1).float(), atol=1e-4)  # column sums add up to n real
    assert (scores[1, 3:] == 0).all()


def test_trimmed_peak_columns_predict_the_same():
    """Training and evaluation cut a batch's peak columns to its widest sample (the stream pads to
    peak_m): same predictions, other columns untouched."""
    from creformer.engine.regulatory_batches import trim_peak_columns

    _, _, reg, (_, _, rank, mask), bins = eval_regulatory_with_bins()
    pad = 6
    bins2 = torch.cat([bins, torch.zeros(2, pad, *bins.shape[2:])], 1)
    batch = {"mask": torch.cat([mask, torch.zeros(2, pad, dtype=torch.bool)], 1),
             "tss_rank": torch.cat([rank, torch.zeros(2, pad, dtype=rank.dtype)], 1),
             "peak_ids": torch.cat([torch.arange(5).repeat(2, 1), torch.full((2, pad), -1)], 1), "expression": torch.ones(2)}
    cut = trim_peak_columns(batch)
    assert cut["mask"].shape == (2, 5) and cut["peak_ids"].shape == (2, 5) and cut["expression"] is batch["expression"]
    assert torch.allclose(reg.forward_bins(bins2[:, :5], cut["tss_rank"], cut["mask"], GENE),
                          reg.forward_bins(bins2, batch["tss_rank"], batch["mask"], GENE), atol=1e-5)


def test_head_reads_filled_peak_slots_as_the_zero_padded_linear_would():
    """The head's first layer skips the empty peak slots: the same output and weight gradient as
    nn.Linear over the input zero-padded to peak_m slots and flattened (zero gradient beyond)."""
    from creformer.trainer.model.regulatory import PeakSlotLinear

    torch.manual_seed(0)
    slots, d, p = 6, 4, 3
    layer = PeakSlotLinear(slots, d, 5)
    h = torch.randn(2, p, d)
    padded = torch.nn.functional.linear(torch.nn.functional.pad(h, (0, 0, 0, slots - p)).flatten(1), layer.weight, layer.bias)
    padded.pow(2).sum().backward()
    want = layer.weight.grad.clone()
    layer.zero_grad()
    out = layer(h)
    out.pow(2).sum().backward()
    assert out.shape == (2, 5) and torch.allclose(out, padded, atol=1e-6)
    assert torch.allclose(layer.weight.grad, want, atol=1e-6)
    assert (layer.weight.grad[:, p * d:] == 0).all() and layer.weight.grad[:, :p * d].abs().sum() > 0
    assert layer.weight.shape == (5, slots * d)  # the checkpoint layout of nn.Linear(peak_m * d, hidden)


def _ragged_padding(b=45, t=13, seed=0):
    """A key-padding mask (True = padding) of ``b`` samples of different widths: real tokens first,
    one sample with a hole, one with no real token, one full; enough samples for several width groups."""
    g = torch.Generator().manual_seed(seed)
    widths = torch.randint(1, t + 1, (b,), generator=g)
    widths[0], widths[1] = t, 0
    pad = torch.arange(t)[None] >= widths[:, None]
    pad[2, 0] = True  # a hole before the sample's last real token
    return pad


def test_encoder_on_grouped_real_tokens_equals_the_padded_computation():
    """With a key-padding mask the encoder runs on width groups (layers.Packing): the real tokens'
    outputs and every gradient equal the plain padded pass (float64), padded outputs are zero."""
    from creformer.trainer.model.layers import Encoder, width_group

    torch.manual_seed(0)
    pad = _ragged_padding()
    assert -(-pad.shape[0] // width_group(pad.shape[0])) > 1  # several groups
    enc = Encoder(2, 16, 4, 32).double()
    x = torch.randn(*pad.shape, 16, dtype=torch.float64, requires_grad=True)
    real = ~pad

    def padded_pass(x):  # the layers on the whole padded batch, as before packing
        h = x
        for layer in enc.layers:
            h = layer(h, pad)
        return enc.norm(h) * real[..., None]

    want, got = padded_pass(x), enc(x, pad)
    assert torch.allclose(got, want, atol=1e-12) and (got[pad] == 0).all() and got[real].abs().min() > 0
    weights = torch.randn_like(want)
    grads_want = torch.autograd.grad((want * weights).sum(), [x, *enc.parameters()])
    grads_got = torch.autograd.grad((enc(x, pad) * weights).sum(), [x, *enc.parameters()])
    for a, b in zip(grads_want, grads_got):
        assert torch.allclose(a, b, atol=1e-10)
    enc.checkpointing = True  # activation checkpointing takes the same path
    assert torch.allclose(enc(x, pad), want, atol=1e-12)


def test_head_with_widths_meets_only_each_samples_slots():
    """PeakSlotLinear with per-sample widths (width groups, ``_SlotStairs``): the same output and
    weight and bias gradients as the plain layer on the zero-padded batch (float64), and the same
    input gradient on every sample's own slots."""
    from creformer.trainer.model.layers import slot_widths
    from creformer.trainer.model.regulatory import PeakSlotLinear

    torch.manual_seed(0)
    pad = _ragged_padding()
    real = ~pad
    widths = slot_widths(real)
    assert widths[0] == pad.shape[1] and widths[1] == 0  # a full sample, one with no real slot
    layer = PeakSlotLinear(20, 3, 7).double()
    h = (torch.randn(*pad.shape, 3, dtype=torch.float64) * real[..., None]).requires_grad_()
    want, got = layer(h), layer(h, widths)
    assert torch.allclose(got, want, atol=1e-12)
    weights = torch.randn_like(want)
    gw = torch.autograd.grad((want * weights).sum(), [h, layer.weight, layer.bias])
    gg = torch.autograd.grad((got * weights).sum(), [h, layer.weight, layer.bias])
    assert torch.allclose(gg[0][real], gw[0][real], atol=1e-12)
    assert torch.allclose(gg[1], gw[1], atol=1e-12) and torch.allclose(gg[2], gw[2], atol=1e-12)
    assert torch.allclose(layer(h[1:2], widths[1:2]), layer.bias[None])  # no real slot: the bias alone


def test_cell_signal_enters_as_scaled_difference_from_zero_signal():
    cfg, el, reg, (dna, sig, rank, mask), bins = eval_regulatory_with_bins()
    assert bins.shape == (2, 5, 2, 8, cfg.d_model)
    zero_sig = torch.where(sig == SIG_PAD, sig, torch.full_like(sig, SIG_OFFSET))
    assert torch.allclose(bins[:, :, 1][mask], el.embed(dna[mask], zero_sig[mask]), atol=1e-5)  # the zero-signal half
    assert (bins[1, 3:] == 0).all()  # padding
    scale = reg.set_signal_scale(bins, mask)
    delta = (bins[:, :, 0] - bins[:, :, 1]).mean(-2)[mask] * scale
    assert float(delta.pow(2).mean().sqrt()) == pytest.approx(1.0, rel=1e-4)  # unit RMS after scaling
    assert float(reg.signal_scale) == pytest.approx(scale)
    # a peak whose cell signal equals its zero signal gets only the projection's bias from that path
    same = bins.clone()
    same[:, :, 0] = same[:, :, 1]
    x = reg._inputs(same, rank, mask)
    r = rank.long().clamp(-reg.peak_m, reg.peak_m) + reg.peak_m
    assert torch.allclose(x, reg.pool(same[:, :, 0]) + reg.rank_emb(r) + reg.signal_proj.bias, atol=1e-6)
    # changing one peak's signal changes the prediction of that sample only
    sig2 = sig.clone()
    sig2[0, 2, 0] = SIG_OFFSET
    pred, pred2 = reg(dna, sig, rank, mask, GENE), reg(dna, sig2, rank, mask, GENE)
    assert pred[0] != pred2[0] and pred[1] == pred2[1]
    with pytest.raises(ValueError, match="2, bins, d"):
        reg.forward_bins(bins[:, :, 0], rank, mask)


def test_head_hidden_units_stay_on_when_the_first_layer_drifts_negative():
    """The head normalizes its first layer's outputs per sample before the GELU: a drift that
    would put every hidden unit below zero (the demo's head on simulator v4 ended at a mean
    pre-activation of -7.4, 99.7 % negative) leaves about half of them on, and the output still
    follows the cell's peaks."""
    cfg, _, reg, (_, _, rank, mask), bins = eval_regulatory_with_bins()
    first, norm, act, last = reg.head
    assert isinstance(norm, torch.nn.LayerNorm) and isinstance(act, torch.nn.GELU)
    x = reg._inputs(bins, rank, mask)
    h = reg.t3(reg._with_gene(x, GENE), key_padding=~mask)
    other = bins.clone()
    other[0, 0, 0] += 1.0  # another cell signal in one peak of sample 0
    before = reg.forward_bins(other, rank, mask, GENE) - reg.forward_bins(bins, rank, mask, GENE)
    with torch.no_grad():
        first.bias.sub_(10.0)  # every unit's input shifted far below zero
    on = (norm(first(h * mask[..., None])) > 0).float().mean()
    assert (first(h * mask[..., None]) < 0).all() and 0.3 < on < 0.7
    after = reg.forward_bins(other, rank, mask, GENE) - reg.forward_bins(bins, rank, mask, GENE)
    assert after[0].abs() > 1e-4 and torch.allclose(after, before, atol=1e-5)  # a shift of every unit is normalized away
    old = {("head.2." + k[len("head.3."):] if k.startswith("head.3.") else k): v
           for k, v in reg.state_dict().items() if not k.startswith("head.1.")}  # the layout before the norm
    with pytest.raises(ValueError, match="predate the head's LayerNorm"):
        reg.load_state_dict(old)


def test_gene_embedding_conditions_each_sample_on_its_gene():
    """model.gene_embedding: the same peaks predict differently for another gene; the gene id is
    required, and the table needs the shard set's gene count."""
    cfg, _, reg, (_, _, rank, mask), bins = eval_regulatory_with_bins()
    pred = reg.forward_bins(bins, rank, mask, GENE)
    other = reg.forward_bins(bins, rank, mask, torch.tensor([1, 0]))
    assert other[0] != pred[0] and other[1] == pred[1]
    x = reg._inputs(bins, rank, mask)  # per-peak inputs carry no gene: ablations and knockouts edit them
    assert torch.allclose(reg.forward_inputs(x, mask, GENE, rank), pred, atol=1e-6)
    with pytest.raises(ValueError, match="pass each sample's gene_id"):
        reg.forward_bins(bins, rank, mask)
    with pytest.raises(ValueError, match="gene count"):
        build_models(cfg)
    off = tiny_cfg(gene_embedding="false", gene_peak_weights="false")
    _, plain = build_models(off)
    assert plain.gene_emb is None and "gene_emb.weight" not in plain.state_dict()


def test_gene_peak_weights_add_a_per_gene_cis_term():
    """model.gene_peak_weights: zero at the start (the same prediction as without it); a weight on
    (gene, rank) moves only that gene's samples holding a peak at that rank, by weight x the peak's
    activity; ablating the peak's signal changes the term; gene and rank are required."""
    torch.manual_seed(0)
    cfg = tiny_cfg()  # on by default
    _, reg = build_models(cfg, n_genes=N_GENES)
    reg.eval()
    dna, sig, rank, mask = regulatory_inputs()
    bins = reg.peak_bins(dna, sig, mask)
    x = reg._inputs(bins, rank, mask)
    h = reg.t3(reg._with_gene(x, GENE), key_padding=~mask) * mask[..., None]
    head_only = reg.head(h).squeeze(-1)
    pred = reg.forward_bins(bins, rank, mask, GENE)
    assert torch.allclose(pred, head_only, atol=1e-6)  # the table starts at zero
    j = int(mask[0].nonzero()[0])
    with torch.no_grad():
        reg.gene_peak_w.weight[int(GENE[0]), int(rank[0, j]) + reg.peak_m] = 2.0
    moved = reg.forward_bins(bins, rank, mask, GENE)
    activity = reg.peak_activity(x[0, j]).squeeze()
    assert torch.allclose(moved[0] - pred[0], 2.0 * activity, atol=1e-5) and moved[1] == pred[1]
    assert torch.allclose(reg.forward_inputs(x, mask, GENE, rank), moved, atol=1e-6)
    # the peak at zero signal: the term follows its input (what the ablation readout edits)
    zero = reg._inputs(bins[:, :, 1:].expand(-1, -1, 2, -1, -1), rank, mask)
    xz = x.clone()
    xz[0, j] = zero[0, j]
    assert torch.allclose(reg.cis(xz, mask, GENE, rank)[0], 2.0 * reg.peak_activity(zero[0, j]).squeeze(), atol=1e-5)
    with pytest.raises(ValueError, match="tss_rank"):
        reg.forward_inputs(x, mask, GENE)
    with pytest.raises(ValueError, match="gene count"):
        build_models(tiny_cfg(gene_peak_weights="true", gene_embedding="false"))
    counts = parameter_counts(cfg, peak_m=reg.peak_m, n_genes=N_GENES)
    assert counts["regulatory.gene_peak_weights"] == N_GENES * (2 * reg.peak_m + 1) + sum(
        p.numel() for p in reg.peak_activity.parameters())
    _, plain = build_models(tiny_cfg(gene_peak_weights="false"), n_genes=N_GENES)
    assert plain.gene_peak_w is None and "gene_peak_w.weight" not in plain.state_dict()


def test_the_cis_intercept_is_per_gene_and_old_exports_load_it_as_zero():
    """gene_bias (set only by train.regulatory.cis_refit): adds to its gene's samples alone, is no
    parameter (SGD leaves it), and weights saved before it existed load with it at zero."""
    torch.manual_seed(0)
    _, reg = build_models(tiny_cfg(), n_genes=N_GENES)
    reg.eval()
    dna, sig, rank, mask = regulatory_inputs()
    bins = reg.peak_bins(dna, sig, mask)
    before = reg.forward_bins(bins, rank, mask, GENE)
    assert "gene_bias" not in dict(reg.named_parameters()) and "gene_bias" in reg.state_dict()
    with torch.no_grad():
        reg.gene_bias[int(GENE[0])] = 1.5
    after = reg.forward_bins(bins, rank, mask, GENE)
    same = GENE == GENE[0]
    assert torch.allclose(after[same], before[same] + 1.5, atol=1e-6) and torch.equal(after[~same], before[~same])
    old = {k: v for k, v in reg.state_dict().items() if k != "gene_bias"}
    reg.load_state_dict(old)  # strict: the hook supplies the missing intercept
    assert torch.equal(reg.gene_bias, torch.zeros(N_GENES))


def test_frozen_elementary_gets_no_gradient():
    cfg = tiny_cfg()
    el, reg = build_models(cfg, n_genes=N_GENES)
    reg.train()
    assert not el.training
    dna, sig, rank, mask = regulatory_inputs()
    loss = reg.loss(reg(dna, sig, rank, mask, GENE), torch.tensor([1.0, 2.0]))
    loss.backward()
    assert all(p.grad is None for p in el.parameters())
    assert reg.t3.layers[0].qkv.weight.grad is not None and reg.pool_query.grad is not None


def test_paper_parameter_count_on_meta_device():
    counts = parameter_counts(load_config("paper").model)
    # the paper's ~3.0 B, plus our gene table (model.gene_embedding: 20,000 genes x d 2,048)
    assert counts["regulatory.gene_embedding"] == 20_000 * 2048
    assert 2.85e9 <= counts["total"] - counts["regulatory.gene_embedding"] <= 3.15e9


def test_model_info_cli(capsys):
    from creformer.cli import main

    assert main(["model-info", "--config", "paper"]) == 0
    out = capsys.readouterr().out
    assert "total" in out and "elementary.transformer1" in out


def test_kmer_embedding_and_head_are_built_from_bases():
    from creformer.engine.tokenize import DNA_MASK, dna_tokens
    from creformer.trainer.model.kmer import KmerEmbedding, KmerHead, kmer_base_index

    idx = kmer_base_index()
    tok = int(dna_tokens(b"ACGTAC")[0])
    assert idx[tok].tolist() == [0, 6, 12, 18, 20, 26]  # bases A C G T A C at positions 0..5 (p * 5 + base)
    assert idx[DNA_MASK].tolist() == [4, 9, 14, 19, 24, 29]  # special tokens: the "no base" row at every position

    torch.manual_seed(0)
    emb, head = KmerEmbedding(8), KmerHead(8)
    by_hand = emb.weight[tok] + emb.base[[0, 6, 12, 18, 20, 26]].sum(0)
    assert torch.allclose(emb(torch.tensor([tok]))[0], by_hand)
    h = torch.randn(8)
    score = (head.weight[tok] + head.base[[0, 6, 12, 18, 20, 26]].sum(0)) @ h + head.bias[tok]
    assert torch.allclose(head(h[None])[0, tok], score, atol=1e-5)


def test_local_convolution_mixes_only_nearby_tokens():
    cfg = load_config("tiny", ["model.local_kernel=5"]).model
    torch.manual_seed(0)
    el = Elementary(cfg).eval()
    seen = []
    el.t1.register_forward_pre_hook(lambda mod, args: seen.append(args[0][:, 1:].reshape(-1, cfg.d_model)))  # drop [CLS]
    dna = torch.randint(DNA_OFFSET, DNA_VOCAB, (1, 256))
    sig = torch.full((1, cfg.n_tracks, 256), SIG_OFFSET)
    dna2 = dna.clone()
    dna2[0, 200] = DNA_OFFSET if int(dna[0, 200]) != DNA_OFFSET else DNA_OFFSET + 1
    with torch.no_grad():
        el.encode(dna, sig), el.encode(dna2, sig)
    changed = (seen[0] != seen[1]).any(-1).nonzero().flatten().tolist()
    assert changed == [198, 199, 200, 201, 202]  # the token and its neighbours within the 5-wide kernel


@pytest.mark.parametrize("kernel", [11, 3, 0])
def test_changed_bins_shortcut_equals_the_full_pass(kernel):
    """embed_changed re-runs transformer-1 only on the bins a signal change reaches, and equals embed
    exactly; changed_bins marks exactly the bins within the convolution's reach of a change."""
    torch.manual_seed(0)
    el = Elementary(tiny_cfg(local_kernel=kernel)).eval()
    dna, _ = random_tokens(4, 1024, seed=3)
    ref = torch.zeros(4, 7, 1024, dtype=torch.long)
    ref[:, 0] = SIG_OFFSET
    sig = ref.clone()
    sig[0, 0, 300:306] = SIG_OFFSET + 7  # inside bin 2, far from its edges
    sig[1, 0, 0:6] = SIG_OFFSET + 3  # first tokens of the peak (the convolution's zero padding)
    sig[1, 0, 1020:1024] = SIG_OFFSET + 30  # last tokens
    sig[2, 0, 126:128] = SIG_OFFSET + 12  # end of bin 0: reaches bin 1 through the convolution
    with torch.no_grad():
        changed = el.changed_bins(sig, ref)
        assert changed[0].nonzero().flatten().tolist() == [2]
        assert changed[1].nonzero().flatten().tolist() == [0, 7]
        assert changed[2].nonzero().flatten().tolist() == ([0] if kernel == 0 else [0, 1])
        assert not changed[3].any()  # no change: the reference's outputs as they are
        parts = el.bin_parts(dna, ref)
        assert torch.allclose(el.embed_from_parts(parts), el.embed(dna, ref), atol=1e-5)
        assert torch.allclose(el.embed_changed(dna, sig, parts, changed), el.embed(dna, sig), atol=1e-5)
        # a bin left out of `changed` keeps the reference's outputs: the shortcut then differs
        wrong = changed.clone()
        wrong[0, 2] = False
        assert not torch.allclose(el.embed_changed(dna, sig, parts, wrong)[0], el.embed(dna, sig)[0], atol=1e-4)

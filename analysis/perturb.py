"""In-silico TF knockout / knock-in (docs/design.md §7) on the model's inputs.

A TF's motif-bound peaks (PWM hits in the peak sequence) get their scATAC tokens set to the zero
level (knockout) or to a given open level at every position (knock-in); several TFs
perturb the union of their peaks. The TF's own expression is not a model input (the model reads
DNA + ATAC only), so nothing else changes. The effect is the predicted log2 fold change: the model
predicts log1p(counts per 10 k), so log2((x'+1)/(x+1)) = (pred' − pred) / ln 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from creformer.engine.tokenize import N_LEVELS, SIG_OFFSET

from .inputs import TF

LN2 = float(np.log(2.0))


@dataclass(frozen=True)
class Condition:
    name: str  # "TF01" or "TF01+TF02"
    mode: str  # "KO" or "KI"
    motifs: tuple[int, ...]


def perturbed_tfs(tfs: list[TF], rule: str, named: list[str]) -> tuple[list[TF], list[str]]:
    """(TFs to knock out and in, why the others are not): every TF named in ``analysis.tfs``; else by
    ``rule`` "expressed", the TFs with a motif whose own gene is among the atlas genes (a TF the cells
    do not express has nothing to knock out: with JASPAR CORE on a 45-gene atlas, 883 motifs gave
    1,766 conditions, almost all of them for TFs absent from the atlas), or "all" of them."""
    if named or rule == "all":
        return tfs, []
    keep = [t for t in tfs if t.gene_id is not None]
    return keep, [t.name for t in tfs if t.gene_id is None]


def conditions(tfs: list[TF], multi: list[str], modes: tuple[str, ...] = ("KO", "KI"), known: list[TF] | None = None
               ) -> list[Condition]:
    """One KO and one KI per TF, plus each multi-TF combination ("TF01+TF02") of ``known`` TFs
    (default: ``tfs``) in both modes."""
    by_name = {t.name.upper(): t for t in (known or tfs)}
    out = [Condition(t.name, m, (t.motif,)) for t in tfs for m in modes]
    for combo in multi:
        names = [n.strip() for n in combo.split("+") if n.strip()]
        unknown = [n for n in names if n.upper() not in by_name]
        if unknown or len(names) < 2:
            raise ValueError(f"multi-TF perturbation {combo!r}: {'unknown TF(s) ' + str(unknown) if unknown else 'needs 2+ TFs'}")
        out += [Condition("+".join(by_name[n.upper()].name for n in names), m,
                          tuple(by_name[n.upper()].motif for n in names)) for m in modes]
    return out


def bound_peaks(bound: np.ndarray, motifs: tuple[int, ...]) -> np.ndarray:
    """(n_peaks,) True where any of the motifs has a site."""
    return bound[:, list(motifs)].any(1)


def perturb_atac(atac: np.ndarray, peak_ids: np.ndarray, mask: np.ndarray, peaks: np.ndarray, mode: str,
                 ki_level: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Perturbed copy of atac tokens (B, P, L) and the (B, P) mask of peaks it touched.

    KO: touched peaks → the zero level; KI: every position of a touched peak → level ``ki_level``
    (1..35), a uniformly open peak. Setting (rather than raising to at least) the level makes the
    perturbed signal the same in every cell, so one cached embedding per peak serves them all.
    Padding and untouched peaks are returned unchanged."""
    if mode not in ("KO", "KI"):
        raise ValueError(f"perturbation mode {mode!r} must be KO or KI")
    if not 1 <= ki_level < N_LEVELS:
        raise ValueError(f"knock-in level {ki_level} must be in 1..{N_LEVELS - 1}")
    touched = mask & peaks[np.maximum(peak_ids, 0)]
    out = atac.copy()
    out[touched] = perturbed_tokens(mode, ki_level, atac.shape[-1])
    return out, touched


def perturbed_tokens(mode: str, ki_level: int, length: int) -> np.ndarray:
    """The signal of every touched peak: the same in every cell (zero level, or the knock-in level)."""
    return np.full(length, SIG_OFFSET if mode == "KO" else SIG_OFFSET + ki_level, np.uint8)


def perturbed_predictions(head, cache, bins, ids: np.ndarray, mask: np.ndarray, rank, touched: np.ndarray,
                          mode: str, ki_level: int, length: int, inputs=None, gene=None):
    """Predictions for the rows with a touched peak, reusing the unperturbed peak bins of a batch.

    Exact shortcut of perturb_atac + a full embedding pass: untouched peaks keep their inputs, and a
    touched peak's perturbed signal does not depend on the cell, so one Elementary embedding per
    distinct touched peak (cached) replaces them all. A peak's input to the head depends on its own
    bins and rank only (``Regulatory._inputs``), so only the touched peaks' inputs are recomputed;
    ``inputs`` are the batch's unperturbed ones when the caller has them; ``gene`` (B,) the samples'
    gene_id (a model with model.gene_embedding needs it). Returns (rows, predictions)."""
    rows = np.flatnonzero(touched.any(1))
    if rows.size == 0:
        return rows, np.zeros(0, np.float32)
    uniq, inverse = np.unique(ids[rows][touched[rows]], return_inverse=True)
    sig = np.broadcast_to(perturbed_tokens(mode, ki_level, length), (1, uniq.size, length))
    emb = cache.peak_bins(torch.from_numpy(uniq[None].astype(np.int64)), torch.from_numpy(sig.astype(np.int64)),
                          torch.ones(1, uniq.size, dtype=torch.bool))[0]  # (peaks, [perturbed, zero signal], bins, d)
    if inputs is None:
        inputs = head._inputs(bins, rank, torch.from_numpy(mask))
    r, c = np.nonzero(touched[rows])
    tr, tc = torch.from_numpy(rows[r]), torch.from_numpy(c)
    slots = head._inputs(emb[torch.from_numpy(inverse)][None], rank[tr, tc][None], torch.ones(1, r.size, dtype=torch.bool))[0]
    x = inputs[torch.from_numpy(rows)].clone()
    x[torch.from_numpy(r), tc] = slots
    at = torch.from_numpy(rows)
    pred = head.forward_inputs(x, torch.from_numpy(mask[rows]), None if gene is None else gene[at], rank[at])
    return rows, pred.numpy().astype(np.float32)


def knock_in_level(tok_values: np.ndarray, quantile: float = 0.9) -> int:
    """The level at ``quantile`` of the atlas's non-zero ATAC tokens (a strong but observed signal)."""
    levels = tok_values[tok_values > SIG_OFFSET].astype(np.int64) - SIG_OFFSET
    return int(np.clip(np.quantile(levels, quantile) if levels.size else N_LEVELS // 2, 1, N_LEVELS - 1))


def ko_mediators(group_att: pl.DataFrame, bound: np.ndarray, conds: list[Condition]) -> pl.DataFrame:
    """Through which peaks each knockout acts: per (group, KO condition, gene) every peak of the
    window the knockout touches, with its own single-peak knockout effect, the group mean of
    −ablation / ln 2 over all the group's cells (cells where the peak has no signal count 0, as
    they do in the knockout). The single-peak effects need not add up to the knockout's effect
    (the head is not additive), but show which peaks carry it. ``group_att``: reduce.FirstPass.gatt."""
    frames = []
    for c in conds:
        if c.mode != "KO":
            continue
        hit = np.flatnonzero(bound_peaks(bound, c.motifs)).tolist()
        frames.append(group_att.filter(pl.col("peak_id").is_in(hit)).select(
            "group", pl.lit(c.name).alias("condition"), "gene_id", "peak_id",
            (-pl.col("ablation_all_cells").cast(pl.Float64) / LN2).alias("log2fc")))
    schema = {"group": pl.Utf8, "condition": pl.Utf8, "gene_id": pl.Int32, "peak_id": pl.Int32, "log2fc": pl.Float64}
    if not frames:
        return pl.DataFrame(schema=schema)
    return pl.concat(frames).cast(schema).sort("group", "condition", "gene_id", "peak_id")

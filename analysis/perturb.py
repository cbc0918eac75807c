"""In-silico TF knockout / knock-in (docs/design.md §7) on the model's inputs.

A TF's motif-bound peaks (PWM hits in the peak sequence) get their scATAC tokens set to the zero
level (knockout) or to one observed strong profile (knock-in: ``knock_in_profile``); several TFs
perturb the union of their peaks. The TF's own expression is not a model input (the model reads
DNA + ATAC only), so nothing else changes. The effect is the predicted log2 fold change: the model
predicts log1p(counts per 10 k), so log2((x'+1)/(x+1)) = (pred' − pred) / ln 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import torch

from creformer.engine.tokenize import SIG_OFFSET

from .inputs import TF, row_masses

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
                 ki_profile: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Perturbed copy of atac tokens (B, P, L) and the (B, P) mask of peaks it touched.

    KO: touched peaks → the zero level; KI: touched peaks → ``ki_profile`` (L,) (``knock_in_profile``).
    Setting (rather than raising to at least) the signal makes it the same in every cell, so one
    cached embedding per peak serves them all. Padding and untouched peaks are returned unchanged."""
    touched = mask & peaks[np.maximum(peak_ids, 0)]
    out = atac.copy()
    out[touched] = perturbed_tokens(mode, ki_profile, atac.shape[-1])
    return out, touched


def perturbed_tokens(mode: str, ki_profile: np.ndarray | None, length: int) -> np.ndarray:
    """The signal of every touched peak, the same in every cell: the zero level (KO) or the
    knock-in profile (KI)."""
    if mode == "KO":
        return np.full(length, SIG_OFFSET, np.uint8)
    if mode != "KI":
        raise ValueError(f"perturbation mode {mode!r} must be KO or KI")
    if ki_profile is None or len(ki_profile) != length:
        raise ValueError(f"a knock-in needs a signal profile of {length} tokens (knock_in_profile), got "
                         f"{None if ki_profile is None else len(ki_profile)}")
    return np.asarray(ki_profile, np.uint8)


def perturbed_predictions(head, cache, bins, ids: np.ndarray, mask: np.ndarray, rank, touched: np.ndarray,
                          mode: str, ki_profile: np.ndarray | None, length: int, inputs=None, gene=None):
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
    sig = np.broadcast_to(perturbed_tokens(mode, ki_profile, length), (1, uniq.size, length))
    emb = cache.peak_bins(torch.from_numpy(uniq[None].astype(np.int64)), torch.from_numpy(sig.astype(np.int64)),
                          torch.ones(1, uniq.size, dtype=torch.bool))[0]  # (peaks, [perturbed, zero signal], bins, d)
    if inputs is None:
        inputs = head._inputs(bins, rank, torch.from_numpy(mask))
    r, c = np.nonzero(touched[rows])
    tr, tc = torch.from_numpy(rows[r]), torch.from_numpy(c)
    slots = head._inputs(emb[torch.from_numpy(inverse)][None], rank[tr, tc][None], torch.ones(1, r.size, dtype=torch.bool))[0]
    at = torch.from_numpy(rows)
    x = inputs[at].clone()
    x[torch.from_numpy(r), tc] = slots
    pred = head.forward_inputs(x, torch.from_numpy(mask[rows]), None if gene is None else gene[at], rank[at])
    return rows, pred.numpy().astype(np.float32)


@dataclass(frozen=True)
class KnockIn:
    """The knock-in signal: one observed (cell, peak) profile, set in every touched peak of every cell."""
    tokens: np.ndarray  # (L,) signal token ids
    mass: float  # its ATAC mass (sum of per-token values, as the baselines measure accessibility)
    quantile: float  # the quantile of the atlas's non-zero (cell, peak) masses it was chosen at

    def record(self) -> dict:
        """For atlas.json: the mass, the quantile and the open tokens (position, token id)."""
        at = np.flatnonzero(self.tokens > SIG_OFFSET)
        return {"mass": self.mass, "quantile": self.quantile, "length": int(self.tokens.size),
                "open_positions": at.tolist(), "open_tokens": self.tokens[at].tolist()}

    def describe(self) -> str:
        return (f"knock-in: an observed profile of mass {self.mass:.0f} (the {self.quantile:g} quantile of non-zero "
                f"cell x peak masses), {int((self.tokens > SIG_OFFSET).sum())} open tokens")


def knock_in_profile(tok: pa.ListArray, pos: pa.ListArray, values: np.ndarray, length: int, quantile: float = 0.9) -> KnockIn:
    """The (cell, peak) signal whose ATAC mass is nearest the ``quantile`` of the non-zero masses
    among a block of the atlas's sparse signal rows (``pos``/``tok`` lists; the first such row, so
    the choice is deterministic), as a dense (``length``,) token profile.

    Why an observed profile: the knock-in used to set every position of a peak to the quantile's
    level, a mass ~150x any observed (cell, peak) signal (science seed 1: 27,324 against the 0.9
    quantile's 180), far outside what the model was trained on; the accessibility-regression
    baseline sets a peak's mass to this same quantile."""
    offsets = tok.offsets.to_numpy()
    if len(offsets) < 2:
        raise ValueError("no ATAC signal rows to choose a knock-in profile from")
    flat = tok.values.to_numpy()
    mass = row_masses(tok, values)
    if not (mass > 0).any():
        raise ValueError("every ATAC signal row of the block is empty: no knock-in profile to choose")
    target = float(np.quantile(mass[mass > 0], quantile))
    row = int(np.argmin(np.where(mass > 0, np.abs(mass - target), np.inf)))
    p_off = pos.offsets.to_numpy()
    p = pos.values.to_numpy()[p_off[row]:p_off[row + 1]].astype(np.int64)
    t = flat[offsets[row]:offsets[row + 1]]
    dense = np.full(length, SIG_OFFSET, np.uint8)
    dense[p[p < length]] = t[p < length]
    return KnockIn(dense, float(mass[row]), quantile)


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

"""Model sanity checks that explain zero-shot results before anyone reads them.

The Regulatory model only sees peaks through the frozen Elementary's bins. If those barely change
with the peak's ATAC signal (or even with its DNA), attention, knockouts and every feature built
on them cannot carry cell-type information, however long the Regulatory part trains. This measures
the relative change ||e(x') − e(x)|| / ||e(x)|| of a sample of real (cell, peak) inputs when their
ATAC is zeroed, and when the DNA is swapped for another peak's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from creformer.engine.regulatory_batches import load_signal
from creformer.engine.tokenize import SIG_OFFSET, SIG_PAD

WEAK = 0.01  # below 1 % relative change the head cannot realistically use the difference


@torch.no_grad()
def embedding_sensitivity(elementary, peak_dna: np.ndarray, signal_path: Path, n: int = 64, seed: int = 0) -> dict:
    keys, order, offsets, pos, tok = load_signal(signal_path)
    if keys.size == 0:
        return {"pairs": 0, "note": "no non-empty (cell, peak) pair in the first signal block"}
    rng = np.random.default_rng(seed)
    pick = rng.choice(keys.size, size=min(n, keys.size), replace=False)
    peaks = (keys[pick] & 0xFFFFFFFF).astype(np.int64)
    a_tracks = elementary.cfg.n_tracks
    sig = np.full((pick.size, a_tracks, peak_dna.shape[1]), SIG_PAD, np.int64)
    sig[:, 0] = SIG_OFFSET
    for i, k in enumerate(pick):
        r = order[k]
        sig[i, 0, pos[offsets[r]:offsets[r + 1]]] = tok[offsets[r]:offsets[r + 1]]
    zero = sig.copy()
    zero[:, 0] = SIG_OFFSET
    dna = torch.from_numpy(peak_dna[peaks].astype(np.int64))
    was = elementary.training
    elementary.eval()
    base = elementary.embed(dna, torch.from_numpy(sig))
    no_atac = elementary.embed(dna, torch.from_numpy(zero))
    other_dna = elementary.embed(dna.roll(1, 0), torch.from_numpy(sig))
    elementary.train(was)
    norm = base.norm(dim=(1, 2)).clamp_min(1e-12)
    atac = float(((no_atac - base).norm(dim=(1, 2)) / norm).mean())
    dna_change = float(((other_dna - base).norm(dim=(1, 2)) / norm).mean())
    return {"pairs": int(pick.size), "atac_relative_change": atac, "dna_relative_change": dna_change,
            "weak": atac < WEAK or dna_change < WEAK,
            "note": ("the frozen Elementary barely distinguishes these inputs: attention-based analyses cannot carry "
                     "cell-type signal; pretrain the Elementary longer") if atac < WEAK or dna_change < WEAK else ""}

"""Knockout propagation (docs/design.md §7): a TF's perturbation reaches genes through the TFs it moves.

The in-silico knockout closes the TF's bound peaks and reads the change of every gene: the direct
effect. But a TF's activity follows its own expression, so when the knockout lowers another TF's
gene, that TF's bound peaks close in part too, and its targets move: an indirect effect the
one-step read cannot see. As CellOracle's ``n_propagation`` does with its GRN, each step adds,
for every other TF b, the fraction of b's expression the perturbation removes (1 − 2^{log2FC of
b's gene}, clipped to [−1, 1]; negative when b rises) times b's own knockout effect, all read
from the same model in the same group:

    L₀ = D_c,   L_{k+1}(c, g) = D_c(g) + Σ_{b ∉ c} clip(1 − 2^{L_k(c, gene of b)}) · KO_b(g)

Linear in b's activity (the knockout of b is its activity set to 0), and bounded: no TF is moved
by more than its whole activity. Knock-ins use the same knockout effects: a TF that rises by a
fraction f moves its targets by −f times its knockout effect.
"""

from __future__ import annotations

import numpy as np
import polars as pl


def propagate(effects: pl.DataFrame, tf_genes: dict[str, int], steps: int) -> pl.DataFrame:
    """``effects`` (reduce.FirstPass.effects: group, condition, mode, gene_id, log2fc, …) with a
    ``log2fc_propagated`` column: each condition's effect after ``steps`` steps through the TFs in
    ``tf_genes`` (TF name → its gene's id; TFs without a single-TF knockout in a group pass
    nothing on there). A condition "A+B" holds all its TFs fixed. ``steps`` 0 copies log2fc."""
    if steps < 0:
        raise ValueError(f"analysis.ko_propagation={steps}: the number of propagation steps must be ≥ 0")
    if effects.height == 0 or steps == 0 or not tf_genes:
        return effects.with_columns(pl.col("log2fc").alias("log2fc_propagated"))
    n_genes = max(int(effects["gene_id"].max()), *tf_genes.values()) + 1
    frames = []
    for _, part in effects.group_by("group", maintain_order=True):
        ko = part.filter(pl.col("mode") == "KO")
        knocked = set(ko["condition"].to_list())
        movers = [t for t in tf_genes if t in knocked]
        ko_mat = _matrix(ko, movers, n_genes)  # (movers, genes): each mover's own knockout effect
        mover_genes = np.array([tf_genes[t] for t in movers], np.int64)
        for (mode,), sub in part.group_by("mode", maintain_order=True):
            conds = sub["condition"].unique(maintain_order=True).to_list()
            direct = _matrix(sub, conds, n_genes)
            fixed = np.array([[b in c.split("+") for b in movers] for c in conds], bool).reshape(len(conds), len(movers))
            lfc = direct
            for _ in range(steps):
                moved = np.clip(1.0 - np.exp2(lfc[:, mover_genes]), -1.0, 1.0)
                moved[fixed] = 0.0  # a perturbed TF is held where the perturbation puts it
                lfc = direct + moved @ ko_mat
            row = {c: i for i, c in enumerate(conds)}
            frames.append(sub.with_columns(pl.Series("log2fc_propagated", lfc[[row[c] for c in sub["condition"]],
                                                                             sub["gene_id"].to_numpy()], pl.Float64)))
    return pl.concat(frames).sort("group", "condition", "mode", "gene_id")


def _matrix(df: pl.DataFrame, rows: list[str], n_genes: int) -> np.ndarray:
    """(rows, n_genes) log2fc of each named condition (0 where a gene has no row)."""
    out = np.zeros((len(rows), n_genes))
    index = {c: i for i, c in enumerate(rows)}
    keep = df.filter(pl.col("condition").is_in(rows))
    out[[index[c] for c in keep["condition"]], keep["gene_id"].to_numpy()] = keep["log2fc"].to_numpy()
    return out

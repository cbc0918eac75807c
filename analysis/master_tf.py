"""Master TFs per cell group, two rankings of one per-cell feature per TF (docs/design.md §7).

- ``group_mean_difference``: the group's mean feature minus its mean over every cell given. It keeps
  the feature's size, so a TF whose knockout moves its type's cells a little, but only there, does
  not look like one that moves them a lot. The scored readout on the model's per-cell knockout shifts.
- ``master_tfs``: one-vs-rest logistic regression on the features standardized per TF,
  L2-regularized; it finds the TFs whose feature tells the group apart, whatever their size.

Both run on the model's knockout shifts (the mean difference scored, the regression a variant),
its attention features (a variant), and on gene activity, TF expression and chromVAR-style motif
accessibility (the baselines, each under both rankings), so the rankings differ only in their input.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from sklearn.linear_model import LogisticRegression


def _rank_per_group(features: np.ndarray, groups: np.ndarray, tf_names: list[str], score) -> pl.DataFrame:
    """(group, tf, coef, rank): ``score(x, in_group)`` gives each TF's coef for one group; rank 1 =
    largest, ties keep the TFs' order."""
    if features.shape != (len(groups), len(tf_names)):
        raise ValueError(f"features {features.shape} do not match {len(groups)} cells x {len(tf_names)} TFs")
    x = features.astype(np.float64)
    rows = []
    for g in sorted(set(groups.tolist())):
        y = groups == g
        if y.all() or not y.any():
            raise ValueError(f"group {g!r}: a ranking per group needs cells inside and outside the group")
        coef = score(x, y)
        order = np.argsort(-coef, kind="stable")
        rows += [(str(g), tf_names[j], float(coef[j]), r + 1) for r, j in enumerate(order)]
    return pl.DataFrame(rows, schema={"group": pl.Utf8, "tf": pl.Utf8, "coef": pl.Float64, "rank": pl.Int64}, orient="row")


def master_tfs(features: np.ndarray, groups: np.ndarray, tf_names: list[str], *, c: float = 1.0, seed: int = 0) -> pl.DataFrame:
    """features (cells, TFs), groups (cells,) → (group, tf, coef, rank): one-vs-rest logistic
    regression coefficients on the features standardized per TF."""
    x = features.astype(np.float64)
    sd = x.std(0)
    z = (x - x.mean(0)) / np.where(sd > 0, sd, 1.0)  # once, over every cell: the same for each group
    return _rank_per_group(z, groups, tf_names, lambda z, y: LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(z, y).coef_[0])


def group_mean_difference(features: np.ndarray, groups: np.ndarray, tf_names: list[str]) -> pl.DataFrame:
    """features (cells, TFs), groups (cells,) → (group, tf, coef, rank): coef = the group's mean
    feature minus the mean over all cells."""
    overall = features.astype(np.float64).mean(0)
    return _rank_per_group(features, groups, tf_names, lambda x, y: x[y].mean(0) - overall)


def top_tfs(table: pl.DataFrame, group: str, k: int) -> list[str]:
    return table.filter(pl.col("group") == group).sort("rank")["tf"].head(k).to_list()

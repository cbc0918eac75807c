"""The simple baselines every scored readout stands beside (docs/design.md §7), computed from the
written files alone: every cell's expression and peak accessibility in the regulatory shard set.

They are minimal versions of what peers do, with hyperparameters fixed by rule, never tuned per
run: ridge penalties are chosen by 5-fold cross-validation over cells from ``RIDGE_ALPHAS``.
- per-gene regression of expression on the window's peak accessibility (SCARlink-style);
- peak accessibility–expression correlation;
- TF–gene expression correlation, per-gene regression on TF expression (GENIE3/GRNBoost2-style),
  and correlation × motif in the window (SCENIC+-style);
- knockouts and knock-ins simulated by per-gene ridge models on the expression of the TFs with a
  motif in the gene's window, propagated a few steps (CellOracle-style, ``n_propagation``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from creformer.trainer.cis_refit import RIDGE_ALPHAS

from .inputs import AtlasTables, level_values, row_masses

CELLORACLE_STEPS = 3  # CellOracle's default n_propagation


@dataclass
class CellData:
    cell_ids: np.ndarray  # (cells,)
    expression: np.ndarray  # (cells, genes) log1p CP10k, columns = gene_id order
    accessibility: np.ndarray  # (cells, peaks) ATAC mass per peak (sum of token level values)


def cell_data(tables: AtlasTables) -> CellData:
    """Every cell's expression (from the sample shards) and peak accessibility (from the signal
    blocks) as dense matrices; the simulated atlases and test sets fit easily."""
    man = tables.manifest
    n_cells, n_genes, n_peaks = tables.cells.height, tables.genes.height, tables.peaks.height
    expr = np.zeros((n_cells, n_genes), np.float32)
    for entry in man.shards:
        t = pq.read_table(man.root / "shards" / entry["file"], columns=["cell_id", "gene_id", "expression"])
        expr[t.column("cell_id").to_numpy(), t.column("gene_id").to_numpy()] = t.column("expression").to_numpy()
    acc = np.zeros((n_cells, n_peaks), np.float32)
    for cell, peak, mass in signal_masses(tables):
        acc[cell, peak] = mass
    return CellData(np.arange(n_cells), expr, acc)


def signal_masses(tables: AtlasTables) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(cell, peak, ATAC mass) arrays of each non-empty signal block of the shard set, one block at a time."""
    values = level_values(tables.atac_cuts)
    for entry in tables.manifest.data["tables"]["signal"]:
        t = pq.read_table(tables.manifest.root / entry["file"], columns=["cell", "peak", "tok"])
        if t.num_rows:
            yield t.column("cell").to_numpy(), t.column("peak").to_numpy(), row_masses(t.column("tok").combine_chunks(), values)


def correlation(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each column of ``x`` with ``y`` (0 for constant columns)."""
    xc, yc = x - x.mean(0), y - y.mean()
    den = np.sqrt((xc**2).sum(0) * (yc**2).sum())
    return np.where(den > 0, xc.T @ yc / np.where(den > 0, den, 1.0), 0.0)


@dataclass
class RidgeModel:
    """A fitted ridge regression: ``coef_``, ``intercept_`` and the penalty ``alpha_`` chosen."""

    coef_: np.ndarray
    intercept_: float
    alpha_: float

    def predict(self, x: np.ndarray) -> np.ndarray:
        return x @ self.coef_ + self.intercept_


def _ridge(x: np.ndarray, y: np.ndarray, alphas: tuple[float, ...]) -> list[tuple[np.ndarray, float]]:
    """Ridge with an unpenalized intercept for each penalty: centre once, then solve
    (XᵀX + αI) w = Xᵀy per α on the same Gram matrix."""
    xm, ym = x.mean(0), y.mean()
    xc = x - xm
    gram, xy, eye = xc.T @ xc, xc.T @ (y - ym), np.eye(x.shape[1])
    return [(w, float(ym - xm @ w)) for w in (np.linalg.solve(gram + alpha * eye, xy) for alpha in alphas)]


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    """sklearn's r2_score: 1 - SS_res / SS_tot; for a constant y, 1 if predicted exactly, else 0."""
    ss_res, ss_tot = float(((y - pred) ** 2).sum()), float(((y - y.mean()) ** 2).sum())
    return (1.0 if ss_res == 0 else 0.0) if ss_tot == 0 else 1.0 - ss_res / ss_tot


def ridge_cv(x: np.ndarray, y: np.ndarray, alphas: tuple[float, ...] = RIDGE_ALPHAS, folds: int = 5) -> RidgeModel:
    """What sklearn's ``RidgeCV(alphas, cv=folds)`` fits (unshuffled K-fold over rows, mean R² over
    the folds, the first best penalty, then a refit on every row), without its per-fit input checks
    and search machinery, and with one Gram matrix per fold for all penalties: ``creformer validate``
    on the demo's atlas (13,950 small fits) took 56.6 s with RidgeCV, 9.4 s with this (alone on
    2 cores; the same scorecard)."""
    n = x.shape[0]
    bounds = np.cumsum([0] + [n // folds + (1 if f < n % folds else 0) for f in range(folds)])
    scores = np.zeros((len(alphas), folds))
    for f, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        train = np.r_[0:lo, hi:n]
        for a, (w, b) in enumerate(_ridge(x[train], y[train], alphas)):
            scores[a, f] = _r2(y[lo:hi], x[lo:hi] @ w + b)
    alpha = alphas[int(np.argmax(scores.mean(1)))]  # the first of equal means, as GridSearchCV ranks them
    (w, b), = _ridge(x, y, (alpha,))
    return RidgeModel(w, b, alpha)


def fit_ridge(x: np.ndarray, y: np.ndarray) -> tuple[RidgeModel, np.ndarray, np.ndarray]:
    """Ridge regression of ``y`` on standardized ``x``, its penalty by 5-fold CV over cells; with
    the column means and spreads (constant columns: 1) that standardize new inputs the same way."""
    mean, sd = x.mean(0), np.where(x.std(0) > 0, x.std(0), 1.0)
    return ridge_cv((x - mean) / sd, y), mean, sd


def window_models(data: CellData, windows: dict[int, np.ndarray]) -> dict[int, tuple[np.ndarray, RidgeModel, np.ndarray, np.ndarray]]:
    """Each gene's ridge model on its window's accessibility (``fit_ridge``), fitted once for the
    knockout and the knock-in baselines: gene_id → (peak ids, model, mean, spread)."""
    out = {}
    for gid, pids in windows.items():
        if pids.size == 0:
            continue
        x, y = data.accessibility[:, pids].astype(np.float64), data.expression[:, gid].astype(np.float64)
        if y.std() > 0 and x.std(0).max() > 0:
            out[gid] = (pids, *fit_ridge(x, y))
    return out


def enhancer_baselines(data: CellData, pairs: pl.DataFrame) -> pl.DataFrame:
    """``pairs`` (gene_id, peak_id) with ``peak_correlation`` (|r| of the peak's accessibility with
    the gene's expression over all cells) and ``accessibility_regression`` (|coefficient| of the
    peak in the gene's ridge model on its window's standardized accessibility)."""
    corr, coef = np.zeros(pairs.height), np.zeros(pairs.height)
    for (gid,), grp in pairs.with_row_index("row").group_by("gene_id"):
        rows, pids = grp["row"].to_numpy(), grp["peak_id"].to_numpy()
        x, y = data.accessibility[:, pids].astype(np.float64), data.expression[:, gid].astype(np.float64)
        corr[rows] = np.abs(correlation(x, y))
        if y.std() > 0 and x.std(0).max() > 0:
            coef[rows] = np.abs(fit_ridge(x, y)[0].coef_)
    return pairs.with_columns(pl.Series("peak_correlation", corr), pl.Series("accessibility_regression", coef))


def tf_gene_baselines(data: CellData, tf_genes: dict[str, int], gene_ids: np.ndarray, motif_in_window: set[tuple[str, int]]
                      ) -> pl.DataFrame:
    """(tf, gene_id) with ``correlation`` (|r| of TF and gene expression over all cells),
    ``regression`` (|coefficient| of the TF in the gene's ridge model on every TF's expression,
    the TF's own gene left out) and ``scenic_like`` (correlation where the TF's motif is in the
    gene's window, else 0)."""
    names = list(tf_genes)
    tf_x = data.expression[:, [tf_genes[t] for t in names]].astype(np.float64)
    rows = []
    for gid in gene_ids.tolist():
        y = data.expression[:, gid].astype(np.float64)
        r = np.abs(correlation(tf_x, y))
        keep = np.array([tf_genes[t] != gid for t in names])
        coef = np.zeros(len(names))
        if y.std() > 0 and keep.any():
            coef[keep] = np.abs(fit_ridge(tf_x[:, keep], y)[0].coef_)
        for j, t in enumerate(names):
            rows.append((t, gid, float(r[j]), float(coef[j]), float(r[j]) if (t, gid) in motif_in_window else 0.0))
    return pl.DataFrame(rows, schema={"tf": pl.Utf8, "gene_id": pl.Int64, "correlation": pl.Float64, "regression": pl.Float64,
                                      "scenic_like": pl.Float64}, orient="row")


def accessibility_perturbation(data: CellData, windows: dict[int, np.ndarray], bound_by_tf: dict[str, np.ndarray],
                               group_cells: dict[str, np.ndarray], level: float | None = None,
                               models: dict | None = None) -> pl.DataFrame:
    """Knockout (``level`` None: the TF's bound peaks' accessibility set to 0) or knock-in (set to
    ``level``) through each gene's ridge model on its window's accessibility (``models`` from
    ``window_models``, fitted here when not given): (group, tf, gene_id, log2fc), the group's mean
    predicted change / ln 2 (expression is log1p)."""
    rows = []
    for gid, (pids, model, mean, sd) in (window_models(data, windows) if models is None else models).items():
        x = data.accessibility[:, pids].astype(np.float64)
        for tf, bound in bound_by_tf.items():
            hit = bound[pids]
            if not hit.any():
                continue
            for g, cells in group_cells.items():
                xg = x[cells].copy()
                before = model.predict((xg - mean) / sd)
                xg[:, hit] = 0.0 if level is None else level
                rows.append((g, tf, gid, float(np.mean(model.predict((xg - mean) / sd) - before) / np.log(2))))
    return pl.DataFrame(rows, schema={"group": pl.Utf8, "tf": pl.Utf8, "gene_id": pl.Int64, "log2fc": pl.Float64}, orient="row")


def motif_deviations(data: CellData, bound_by_tf: dict[str, np.ndarray]) -> np.ndarray:
    """chromVAR-style motif accessibility, (cells, TFs in ``bound_by_tf`` order): per cell, the ATAC
    mass in the TF's motif-bound peaks over the mass expected from the cell's total and those peaks'
    share of all mass, minus 1 (chromVAR's raw deviation, without its GC/background-peak
    correction: simulated peaks share one composition)."""
    acc = data.accessibility.astype(np.float64)
    b = np.stack(list(bound_by_tf.values()), 1).astype(np.float64)  # (peaks, TFs)
    return deviations(acc, b, (acc.sum(0) / max(float(acc.sum()), 1e-12)) @ b)


def deviations(acc, b: np.ndarray, expected_share: np.ndarray) -> np.ndarray:
    """chromVAR's raw deviation of each row (cell) of ``acc`` (dense or sparse, (cells, peaks)) for the
    peak sets in the columns of ``b``, given each set's share of all mass (``expected_share``:
    the peaks' shares @ ``b``, from every cell, so blocks of cells can be computed apart)."""
    expected = np.asarray(acc.sum(1)).reshape(-1, 1) * expected_share[None]
    return np.where(expected > 0, np.asarray(acc @ b) / np.where(expected > 0, expected, 1.0) - 1.0, 0.0)


def celloracle_perturbation(data: CellData, tf_genes: dict[str, int], motif_tfs: dict[int, list[str]],
                            group_cells: dict[str, np.ndarray], knock_in: bool = False,
                            steps: int = CELLORACLE_STEPS, only: list[str] | None = None) -> pl.DataFrame:
    """CellOracle-style: a ridge model per gene on the expression of the TFs with a motif in its
    window; a TF's expression set to 0 (knockout) or to its 99th percentile over cells (knock-in),
    the predicted change propagated ``steps`` times through the models (TF genes' changes feed
    their targets). (group, tf, gene_id, log2fc): the group's mean change / ln 2; ``only``: perturb
    these TFs (default all)."""
    n_genes = data.expression.shape[1]
    models = {}
    for gid, tfs in motif_tfs.items():
        cols = [tf_genes[t] for t in tfs if tf_genes[t] != gid]
        y = data.expression[:, gid].astype(np.float64)
        if cols and y.std() > 0:
            m, _, sd = fit_ridge(data.expression[:, cols].astype(np.float64), y)
            models[gid] = (np.array(cols), m.coef_ / sd)  # change of y per unit change of each TF's expression
    rows = []
    for tf, tg in tf_genes.items():
        if only is not None and tf not in only:
            continue
        target = float(np.quantile(data.expression[:, tg], 0.99)) if knock_in else 0.0
        for g, cells in group_cells.items():
            delta = np.zeros(n_genes)
            delta[tg] = target - float(data.expression[cells, tg].mean())
            for _ in range(steps):
                new = np.zeros(n_genes)
                for gid, (cols, w) in models.items():
                    new[gid] = float(w @ delta[cols])
                new[tg] = delta[tg]  # the perturbed TF is held
                delta = new
            for gid in range(n_genes):
                if gid != tg and delta[gid] != 0:
                    rows.append((g, tf, gid, float(delta[gid] / np.log(2))))
    return pl.DataFrame(rows, schema={"group": pl.Utf8, "tf": pl.Utf8, "gene_id": pl.Int64, "log2fc": pl.Float64}, orient="row")

"""The closed-form cis refit's per-gene ridge (trainer/cis_refit.py), from sufficient statistics,
against scikit-learn on the same samples."""

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from creformer.trainer.cis_refit import FOLDS, RIDGE_ALPHAS, GeneStats, _ridge, _sse, _sums, fit_gene


def stats_of(x: np.ndarray, y: np.ndarray, fold: np.ndarray, batches: int = 3) -> GeneStats:
    st = GeneStats.empty(np.arange(x.shape[1]))
    for part in np.array_split(np.arange(len(y)), batches):  # sums add up over batches
        st.add(fold[part], x[part], y[part])
    return st


def sample(n: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.gamma(2.0, 1.5, size=(n, 6)) * np.array([1, 10, 0.1, 1, 1, 1])  # unequal scales
    x[:, 5] = 3.0  # a constant column: it gets weight 0
    y = 2.0 + x @ np.array([0.5, 0.0, -4.0, 0.0, 0.2, 0.0]) + noise * rng.normal(size=n)
    return x, y, np.arange(n) % FOLDS


def test_the_fit_from_sums_is_sklearns_ridge_on_standardized_inputs():
    x, y, fold = sample(400, 1.0)
    st = stats_of(x, y, fold)
    w, b, alpha, mse = fit_gene(st)
    assert alpha in RIDGE_ALPHAS
    keep = x.std(0) > 0
    mean, sd = x[:, keep].mean(0), x[:, keep].std(0)
    ref = Ridge(alpha=alpha).fit((x[:, keep] - mean) / sd, y)
    assert np.allclose(w[keep], ref.coef_ / sd, rtol=1e-6, atol=1e-9) and w[~keep] == 0
    assert b == pytest.approx(ref.intercept_ - (ref.coef_ * mean / sd).sum(), rel=1e-6)
    assert mse == pytest.approx(np.mean((y - b - x @ w) ** 2), rel=1e-6)
    # the squared error of any weights, from one fold's sums
    f = fold == 2
    rng = np.random.default_rng(1)
    w2, b2 = rng.normal(size=6), 0.7
    assert _sse(st.xx[2], st.xy[2], st.x[2], st.y[2], st.yy[2], st.n[2], w2, b2) == pytest.approx(
        np.sum((y[f] - b2 - x[f] @ w2) ** 2), rel=1e-9)


def test_cross_validation_picks_little_penalty_for_signal_and_the_most_for_noise():
    x, y, fold = sample(500, 0.05)
    signal = stats_of(x, y, fold)
    w_signal, _, alpha, _ = fit_gene(signal)
    assert alpha == min(RIDGE_ALPHAS)
    rng = np.random.default_rng(3)
    w, _, alpha, _ = fit_gene(stats_of(x, rng.normal(size=500), fold))
    assert alpha == max(RIDGE_ALPHAS) and np.abs(w).max() < np.abs(w_signal).max()
    # a lone weight with no penalty is ordinary least squares
    xx, xy, xs, ys, _, n = _sums(signal, np.arange(FOLDS))
    w1, b1 = _ridge(xx, xy, xs, ys, n, 0.0)
    ols = np.linalg.lstsq(np.c_[np.ones(len(y)), x[:, :5]], y, rcond=None)[0]
    assert np.allclose(w1[:5], ols[1:], atol=1e-6) and b1 == pytest.approx(ols[0], abs=1e-6)


def test_a_gene_with_too_few_cells_in_a_fold_is_not_refit():
    x, y, _ = sample(12, 1.0)
    fold = np.zeros(12, np.int64)
    fold[:8] = np.arange(8) % 4  # fold 4 gets nothing
    assert fit_gene(stats_of(x, y, fold)) is None

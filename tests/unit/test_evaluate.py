"""Held-out evaluation metrics, by hand."""

import numpy as np

from creformer.trainer.evaluate import pearson, within_gene_r


def test_pearson_by_hand():
    assert abs(pearson([1, 2, 3], [2, 4, 6]) - 1.0) < 1e-12
    assert abs(pearson([1, 2, 3], [3, 2, 1]) + 1.0) < 1e-12
    # x = (-1, 0, 1), y = (1, 0, 2) - 1 = (0, -1, 1): cov = 1, |x| = sqrt2, |y| = sqrt2 -> r = 1/2
    assert abs(pearson([-1, 0, 1], [1, 0, 2]) - 0.5) < 1e-12
    assert np.isnan(pearson([1, 1, 1], [1, 2, 3]))


def test_within_gene_r_averages_genes():
    gene = np.array([0] * 5 + [1] * 5 + [2] * 2)
    pred = np.array([1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2], float)
    truth = np.array([1, 2, 3, 4, 5, 5, 4, 3, 2, 1, 0, 9], float)  # gene 2 has too few cells
    assert abs(within_gene_r(gene, pred, truth)) < 1e-12  # (+1 + -1) / 2

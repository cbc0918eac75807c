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


def test_kmer_baselines_by_hand():
    from creformer.engine.tokenize import dna_tokens
    from creformer.trainer.evaluate import kmer_baselines

    # per 8-bp repeat the k-mers are AAAAAA x2, AAAAAC, AAAACA, AAACAA, AACAAA, ACAAAA, CAAAAA
    toks = dna_tokens(b"AAAAAAAC" * 40)
    top, nxt = kmer_baselines(toks)
    assert top == int(dna_tokens(b"AAAAAA")[0])
    # after AAAAAA the next k-mer starts AAAAA: AAAAAA (x2 per repeat) beats AAAAAC (x1)
    assert nxt[int(dna_tokens(b"AAAAAA")[0])] == int(dna_tokens(b"AAAAAA")[0])
    # after AAAACA only AAACAA was seen
    assert nxt[int(dna_tokens(b"AAAACA")[0])] == int(dna_tokens(b"AAACAA")[0])


def test_motif_token_mask_keeps_whole_kmers():
    from creformer.trainer.evaluate import motif_token_mask

    inst = {"chr1": np.array([[105, 117], [195, 203]])}  # 12 bp and 8 bp motifs
    m = motif_token_mask("chr1", 100, 100, inst)
    # 6-mers fully inside [105, 117): starts 105..111 -> positions 5..11; inside [195, 203): 195..197 -> 95..97
    assert np.flatnonzero(m).tolist() == list(range(5, 12)) + [95, 96, 97]
    assert not motif_token_mask("chr2", 100, 100, inst).any()

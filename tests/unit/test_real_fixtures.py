"""The readers on tiny real files committed under tests/data (cut from the public files of
../shared/data by tests/data/make_fixtures.py; sources and licences in tests/data/PROVENANCE.md),
so the io paths run on real formats even without the shared data folder."""

from pathlib import Path

import numpy as np

from creformer.analysis.crispri import score_crispri
from creformer.engine.io.bigwig import Track
from creformer.engine.io.fasta import Genome
from creformer.engine.io.fragments import iter_fragments
from creformer.engine.io.motifs import read_meme
from creformer.engine.tokenize import DNA_N, default_cutpoints, dna_tokens, signal_tokens

DATA = Path(__file__).resolve().parents[1] / "data"


def test_real_bgzip_fasta_cut_out():
    g = Genome(DATA / "hg38_chr2_1000000-1002000.fa.gz")
    assert g.lengths == {"chr2_1000000_1002000": 2000}
    seq = g.fetch("chr2_1000000_1002000", 0, 2000)
    assert len(seq) == 2000 and set(seq) <= set(b"ACGTN")
    toks = dna_tokens(seq)
    assert toks.shape == (1995,) and (toks != DNA_N).mean() > 0.9


def test_real_encode_bigwig_cut_out():
    t = Track(DATA / "CEBPB_A549_chr19_41870000-41875000.fc.bigwig")
    assert t.chrom_sizes["chr19"] == 58_617_616  # the real chromosome length in the header
    v = t.values("chr19", 41_870_000, 41_875_000)
    assert v.shape == (5000,) and np.isfinite(v).all() and v.max() > 0 and (v >= 0).all()
    levels = signal_tokens(v, default_cutpoints())
    assert levels.min() >= 2 and len(np.unique(levels)) > 3  # real fold-change spreads over several levels
    assert not t.has_data("chr19", 1_000, 2_000)  # outside the cut-out


def test_real_fragments_cut_out():
    batches = list(iter_fragments(DATA / "pbmc_fragments_300.tsv.gz"))
    n = sum(b.start.size for b in batches)
    assert n == 300 and all((b.end > b.start).all() for b in batches)
    assert all(str(bc).endswith("-1") for b in batches for bc in b.barcode.to_pylist()[:5])


def test_real_jaspar_motifs():
    motifs = {m.name: m for m in read_meme(DATA / "jaspar2026_3motifs.meme")}
    assert set(motifs) == {"CEBPB", "CTCF", "GATA1"}
    for m in motifs.values():
        assert m.pwm.shape[1] == 4 and np.allclose(m.pwm.sum(1), 1.0, atol=0.02)
    assert motifs["CTCF"].pwm.shape[0] > motifs["CEBPB"].pwm.shape[0]


def test_real_crispri_rows_score_their_baselines():
    res = score_crispri(DATA / "crispri_k562_40rows.tsv.gz")
    assert res["counts"]["valid_pairs"] == 40 and res["counts"]["positives"] == 10
    assert 0.0 < res["scores"]["distance"]["auprc"] <= 1.0 and 0.0 < res["scores"]["abc"]["auprc"] <= 1.0

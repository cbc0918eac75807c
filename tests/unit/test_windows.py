from creformer.engine.elementary_shards import candidate_windows, sample_windows
from creformer.engine.io.fasta import Genome


def test_candidates_tile_and_exclude_n(sim_tiny):
    g = Genome(sim_tiny / "genome.fa")
    cand = candidate_windows(g, 32768, 0.1)
    span = 32773
    assert all(w.end - w.start == span for w in cand.windows)
    for chrom in g.lengths:
        starts = sorted(w.start for w in cand.windows if w.chrom == chrom)
        assert all(b - a >= span for a, b in zip(starts, starts[1:]))  # non-overlapping
        assert all(w.end <= g.lengths[chrom] for w in cand.windows)
    assert cand.skipped_n == 4  # the simulated 40 kb gap near each chromosome end
    assert max(cand.n_fraction.values()) <= 0.1
    strict = candidate_windows(g, 32768, 0.0)
    assert len(strict.windows) <= len(cand.windows)


def test_sampling_is_seeded_distinct_and_capped(sim_tiny):
    g = Genome(sim_tiny / "genome.fa")
    cand = candidate_windows(g, 1024, 0.1).windows
    a = sample_windows(cand, 50, "S1", 0)
    assert a == sample_windows(cand, 50, "S1", 0)
    assert a != sample_windows(cand, 50, "S2", 0) and a != sample_windows(cand, 50, "S1", 1)
    assert len(set(a)) == 50 and a == sorted(a)
    assert sample_windows(cand, 10**6, "S1", 0) == cand  # fewer when the genome is small

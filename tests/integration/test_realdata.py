"""Real public files from the shared data folder (CREFORMER_DATA), skipped with a reason when absent.

The only real DNA is hg38 chr2:1-2,333,275 and the only real tracks are ENCODE CEBPB on chr19, so
real DNA and real tracks do not overlap. The shard test pairs the real chr2 DNA with a bigWig whose
values are copied from the real chr19 track (coordinates shifted): real files and real values, but
not a biologically matched pair.
"""

import numpy as np
import pyBigWig
import pytest

from creformer.engine.elementary_shards import prepare_elementary
from creformer.engine.elementary_stream import iter_manifest_records
from creformer.engine.io.bigwig import Track
from creformer.engine.io.fasta import Genome
from creformer.engine.shards import Manifest
from creformer.engine.tokenize import DNA_N, SIG_OFFSET, SignalStats, default_cutpoints, dna_tokens, signal_tokens

from ..conftest import elementary_config
from ..unit.test_tokenize import reference_signal

pytestmark = pytest.mark.realdata
FA = "genome/chr2_1-2333275.fa.gz"
FC = "tracks/CEBPB_A549_chr19.pooled.fc.signal.bigwig"


def kmer_id(kmer: bytes) -> int:
    kmer = kmer.upper()
    if any(c not in b"ACGT" for c in kmer):
        return DNA_N
    return 4 + sum(b"ACGT".index(c) * 4 ** (5 - i) for i, c in enumerate(kmer))


def test_real_bgzip_fasta_reads_and_tokenizes(shared_data):
    g = Genome(shared_data / FA)  # bgzip + .fai + .gzi in a read-only folder
    assert g.lengths == {"chr2": 2_333_275}
    assert g.fetch("chr2", 0, 10_000) == b"N" * 10_000  # the first 10 kb are N
    toks = dna_tokens(g.fetch("chr2", 9_990, 10_100))
    assert np.all(toks[:10] == DNA_N) and np.all(toks[10:] >= 4)
    seq = g.fetch("chr2", 1_000_000, 1_000_400)
    assert toks.dtype == np.uint16
    assert dna_tokens(seq).tolist() == [kmer_id(seq[i:i + 6]) for i in range(len(seq) - 5)]


def test_real_encode_bigwig_tokenizes(shared_data):
    t = Track(shared_data / FC)
    cuts = default_cutpoints()
    start, end = 33_052_342 - 2_000, 33_052_657 + 2_000  # the strongest CEBPB peak (mean 85.7)
    values = t.values("chr19", start, end)
    a = signal_tokens(values, cuts)
    assert np.array_equal(a, reference_signal(values, cuts, SignalStats()))
    peak = a[2_000:2_300] - SIG_OFFSET
    flank = a[:500] - SIG_OFFSET
    assert peak.mean() > flank.mean() + 5 and peak.max() >= 28  # mean ~86 sits near the top of the scale


def test_real_dna_with_real_track_values_through_prepare(shared_data, tmp_path):
    src = pyBigWig.open(str(shared_data / FC))
    vals = np.nan_to_num(src.values("chr19", 30_000_000, 32_333_275, numpy=True))
    bw = pyBigWig.open(str(tmp_path / "cebpb_values_on_chr2.bw"), "w")
    bw.addHeader([("2", 2_333_275)])  # Ensembl-style name: must be harmonized with the FASTA's chr2
    change = np.flatnonzero(np.diff(vals)) + 1
    starts = np.concatenate(([0], change))
    ends = np.append(change, vals.size)
    keep = vals[starts] != 0
    bw.addEntries(["2"] * int(keep.sum()), starts[keep].tolist(), ends=ends[keep].tolist(), values=vals[starts][keep].astype(float).tolist())
    bw.close()
    (tmp_path / "samples.tsv").write_text("sample\tassay\tpath\nA549_like\tCTCF\tcebpb_values_on_chr2.bw\n")
    res = prepare_elementary(elementary_config(tmp_path / "samples.tsv", shared_data / FA, tmp_path / "el", assays=["ATAC", "CTCF"], windows_per_sample=6, executor="local"))
    recs = list(iter_manifest_records(res.manifest_path))
    assert len(recs) == 6
    assert Manifest(res.manifest_path).data["inputs"][1]["chroms_not_in_genome"] == []
    g = Genome(shared_data / FA)
    track = Track(tmp_path / "cebpb_values_on_chr2.bw", {"chr2": "2"})
    for rec in recs:
        _, region = rec["key"].split("/")
        start, end = map(int, region.split(":")[1].split("-"))
        assert np.array_equal(rec["dna"], dna_tokens(g.fetch("chr2", start, end)))
        assert np.array_equal(rec["sig"][1], signal_tokens(track.values("chr2", start, end), default_cutpoints()))
        assert np.all(rec["sig"][0] == 0)  # ATAC absent: [PAD], flagged
        assert rec["meta"]["assays_missing"] == ["ATAC"]

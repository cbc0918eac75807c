import gzip
import shutil

import numpy as np
import pyBigWig
import pysam
import pytest

from creformer.engine.errors import InputError
from creformer.engine.io.bigwig import Track
from creformer.engine.io.chroms import canonical, harmonize
from creformer.engine.io.fasta import Genome
from creformer.engine.io.motifs import read_meme, write_meme
from creformer.engine.io.samples import read_samples

SEQ = "ACGTacgtNNACGTTTGGCCAA" * 10


def write_fa(path, seqs):
    path.write_text("".join(f">{k}\n" + "\n".join(v[i:i + 50] for i in range(0, len(v), 50)) + "\n" for k, v in seqs.items()))
    return path


@pytest.mark.parametrize("kind", ["plain", "gzip", "bgzip"])
def test_fasta_formats(tmp_path, kind):
    fa = write_fa(tmp_path / "g.fa", {"chr1": SEQ, "chr2": SEQ[::-1]})
    if kind == "gzip":
        with open(fa, "rb") as src, gzip.open(tmp_path / "g.fa.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        fa = tmp_path / "g.fa.gz"
    elif kind == "bgzip":
        pysam.tabix_compress(str(fa), str(tmp_path / "g.fa.bgz"))
        fa = tmp_path / "g.fa.bgz"
    g = Genome(fa)
    assert g.lengths == {"chr1": len(SEQ), "chr2": len(SEQ)}
    assert g.fetch("chr1", 2, 12) == SEQ[2:12].upper().encode()
    with pytest.raises(InputError, match="chromosome 'chr9' is not in genome FASTA"):
        g.fetch("chr9", 0, 5)
    with pytest.raises(InputError, match="outside chr1"):
        g.fetch("chr1", 0, 10**6)


def test_fasta_missing_not_fasta_and_truncated(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        Genome(tmp_path / "nope.fa")
    junk = tmp_path / "junk.fa"
    junk.write_text("hello world\n")
    with pytest.raises(InputError, match="not a FASTA"):
        Genome(junk)
    fa = write_fa(tmp_path / "t.fa", {"chr1": SEQ * 20})
    Genome(fa)  # builds the .fai
    data = fa.read_bytes()
    fa.write_bytes(data[: len(data) // 2])  # truncated after indexing: the stale .fai promises more
    with pytest.raises(InputError, match="truncated"):
        Genome(fa).fetch("chr1", len(SEQ) * 15, len(SEQ) * 15 + 10)
    gz = tmp_path / "t.fa.gz"
    with gzip.open(gz, "wb") as fh:
        fh.write(data)
    gz.write_bytes(gz.read_bytes()[:-30])
    with pytest.raises(InputError, match="truncated or corrupt"):
        Genome(gz)


def test_chrom_harmonization():
    assert canonical("chrM") == canonical("MT") == "M"
    assert harmonize(["1", "2", "MT", "GL000192.1"], ["chr1", "chr2", "chrM"], query_label="q", target_label="t") == {
        "1": "chr1", "2": "chr2", "MT": "chrM"}
    with pytest.raises(InputError, match="same genome assembly"):
        harmonize(["scaffold_1"], ["chr1"], query_label="bigWig x", target_label="genome y")


def write_bw(path, chroms, entries):
    bw = pyBigWig.open(str(path), "w")
    bw.addHeader(list(chroms.items()))
    for chrom, s, e, v in entries:
        bw.addEntries([chrom], [s], ends=[e], values=[v])
    bw.close()
    return path


def test_bigwig_values_and_nan(tmp_path):
    bw = write_bw(tmp_path / "a.bw", {"1": 1000}, [("1", 10, 20, 2.0), ("1", 20, 25, float("nan")), ("1", 100, 200, 5.0)])
    t = Track(bw, {"chr1": "1"})
    vals = t.values("chr1", 8, 102)
    assert np.isnan(vals[0]) and vals[2] == 2.0 and np.isnan(vals[14]) and vals[93] == 5.0
    assert np.isnan(t.values("chr7", 0, 10)).all()  # absent chromosome: no data
    tail = t.values("chr1", 990, 1010)  # past the chromosome end: no data
    assert tail.shape == (20,) and np.isnan(tail).all()


def test_bigwig_bad_files(tmp_path):
    bw = write_bw(tmp_path / "a.bw", {"chr1": 100000}, [("chr1", i * 100, i * 100 + 50, 1.0) for i in range(900)])
    bad = tmp_path / "bad.bw"
    bad.write_bytes(b"not a bigwig at all" * 100)
    with pytest.raises(InputError, match="not a readable bigWig|not a bigWig"):
        Track(bad)
    trunc = tmp_path / "trunc.bw"
    trunc.write_bytes(bw.read_bytes()[:2000])
    with pytest.raises(InputError):
        t = Track(trunc)
        t.values("chr1", 0, 90000)
    with pytest.raises(InputError, match="does not exist"):
        Track(tmp_path / "missing.bw")


def test_samples_table_errors(tmp_path):
    bw = write_bw(tmp_path / "a.bw", {"chr1": 1000}, [("chr1", 0, 10, 1.0)])
    assays = ["ATAC", "CTCF"]
    good = tmp_path / "s.tsv"
    good.write_text("sample\tassay\tpath\nS1\tDNase\ta.bw\nS1\tctcf\ta.bw\n")
    (s1,) = read_samples(good, assays)
    assert set(s1.tracks) == {"ATAC", "CTCF"} and s1.tracks["ATAC"] == bw.resolve()
    cases = {
        "": "is empty",
        "sample\tassay\tpath\n": "no tracks",
        "sample\tpath\nS\ta.bw\n": "lacks column",
        "sample\tassay\tpath\nS\tH3K9me9\ta.bw\n": "line 2: unknown assay 'H3K9me9'",
        "sample\tassay\tpath\nS\tATAC\tmissing.bw\n": "line 2: bigWig .* does not exist",
        "sample\tassay\tpath\nS\tATAC\ta.bw\nS\tATAC\ta.bw\n": "line 3: .* twice",
    }
    for text, message in cases.items():
        p = tmp_path / "bad.tsv"
        p.write_text(text)
        with pytest.raises(InputError, match=message):
            read_samples(p, assays)


def test_meme_round_trip_and_errors(tmp_path):
    from creformer.engine.io.motifs import Motif

    pwm = np.array([[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]])
    write_meme(tmp_path / "m.meme", [Motif("X1", "FOO", pwm)])
    (m,) = read_meme(tmp_path / "m.meme")
    assert (m.id, m.name) == ("X1", "FOO") and np.allclose(m.pwm, pwm)
    bad = tmp_path / "bad.meme"
    bad.write_text((tmp_path / "m.meme").read_text().replace("0.700000", "abc"))
    with pytest.raises(InputError, match="line .*: motif X1 row is not 4 numbers"):
        read_meme(bad)
    bad.write_text("hello\n")
    with pytest.raises(InputError, match="not MEME"):
        read_meme(bad)

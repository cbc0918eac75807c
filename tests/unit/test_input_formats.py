"""Input formats as users have them: own peak calls (BED, narrowPeak), JASPAR's matrix formats and
metadata table, GFF3 annotations (Ensembl, GENCODE and RefSeq styles)."""

import gzip
from pathlib import Path

import numpy as np
import pytest

from creformer.engine.errors import InputError
from creformer.engine.io.annotation import read_annotation
from creformer.engine.io.motifs import name_motifs, read_meme, read_motif_table, read_motifs
from creformer.engine.io.peaks import read_peaks

DATA = Path(__file__).resolve().parents[1] / "data"


def test_peaks_merge_like_bedtools_merge(tmp_path):
    rows = ["track name=calls", "# MACS2 per cluster, concatenated",
            "chr2\t100\t200\tp1\t0\t.\t1\t1\t1\t50", "chr1\t500\t600\tp2\t0\t.\t1\t1\t1\t50",
            "chr1\t100\t300\tp3\t0\t.\t1\t1\t1\t50", "chr1\t250\t400\tp4\t0\t.\t1\t1\t1\t50",  # overlap -> 100-400
            "chr1\t400\t450\tp5\t0\t.\t1\t1\t1\t50",  # book-ended -> 100-450
            "chr2\t201\t300\tp6\t0\t.\t1\t1\t1\t50"]  # 1 bp gap: kept apart
    with gzip.open(tmp_path / "calls.narrowPeak.gz", "wt") as fh:
        fh.write("\n".join(rows) + "\n")
    ps = read_peaks(tmp_path / "calls.narrowPeak.gz")
    got = list(zip(ps.chrom.tolist(), ps.start.tolist(), ps.end.tolist()))
    assert got == [("chr2", 100, 200), ("chr2", 201, 300), ("chr1", 100, 450), ("chr1", 500, 600)]
    assert (ps.read, ps.merged) == (6, 2)
    (tmp_path / "three.bed").write_text("chr1 10 20\n")  # space-separated BED3
    assert read_peaks(tmp_path / "three.bed").end.tolist() == [20]


def _counts_from_meme(path: Path) -> list[tuple[str, str, np.ndarray]]:
    """JASPAR's MEME export is counts / column total; nsites= gives the total back."""
    text = path.read_text().splitlines()
    out = []
    for m in read_meme(path):
        line = next(x for x in text if x.startswith("letter-probability") and text.index(x) > text.index(f"MOTIF {m.id} {m.name}"))
        nsites = float(line.split("nsites=")[1].split()[0])
        out.append((m.id, m.name, np.round(m.pwm * nsites)))
    return out


def test_jaspar_and_raw_pfm_give_the_meme_matrices(tmp_path):
    """The three real JASPAR 2026 matrices of the fixture, written as JASPAR's .jaspar and raw .pfm
    downloads are laid out, read back to the same probabilities as its MEME export."""
    meme = {m.id: m for m in read_meme(DATA / "jaspar2026_3motifs.meme")}
    counts = _counts_from_meme(DATA / "jaspar2026_3motifs.meme")
    jaspar = "".join(f">{mid}\t{name}\n" + "".join(f"{b}  [ " + " ".join(f"{int(v):6d}" for v in c[:, k]) + " ]\n"
                                                   for k, b in enumerate("ACGT")) for mid, name, c in counts)
    (tmp_path / "all.jaspar").write_text(jaspar)
    pfm = "".join(f">{mid} {name}\n" + "".join("\t".join(str(int(v)) for v in c[:, k]) + "\n" for k in range(4))
                  for mid, name, c in counts)
    (tmp_path / "pfm_all.txt").write_text(pfm)
    one = counts[0]
    (tmp_path / f"{one[0]}.pfm").write_text("".join(" ".join(str(int(v)) for v in one[2][:, k]) + "\n" for k in range(4)))
    for path in (tmp_path / "all.jaspar", tmp_path / "pfm_all.txt"):
        got = read_motifs(path)
        assert [(m.id, m.name) for m in got] == [(mid, name) for mid, name, _ in counts]
        for m in got:
            assert np.allclose(m.pwm, meme[m.id].pwm, atol=2e-3)
    (single,) = read_motifs(tmp_path / f"{one[0]}.pfm")
    assert single.id == one[0] and np.allclose(single.pwm, meme[one[0]].pwm, atol=2e-3)
    assert [m.id for m in read_motifs(DATA / "jaspar2026_3motifs.meme")] == list(meme)  # MEME still by content


def test_jaspar_metadata_table_names_motifs(tmp_path):
    motifs = read_meme(DATA / "jaspar2026_3motifs.meme")
    (tmp_path / "meta.tsv").write_text("matrix_id\tbase_id\ttf_name\n" + f"{motifs[0].id}\tX\tRENAMED\n")
    named = name_motifs(motifs, read_motif_table(tmp_path / "meta.tsv"))
    assert named[0].name == "RENAMED" and [m.name for m in named[1:]] == [m.name for m in motifs[1:]]
    (tmp_path / "bad.tsv").write_text("id\tname\n")
    with pytest.raises(InputError, match="matrix_id and tf_name"):
        read_motif_table(tmp_path / "bad.tsv")


@pytest.mark.parametrize("reader, name, text, message", [
    (read_peaks, "p.bed", "chr1\t10\n", "line 1: a peak needs chrom, start and end"),
    (read_peaks, "p.bed", "chr1\t20\t10\n", "line 1: interval chr1:20-10 is empty"),
    (read_peaks, "p.bed", "# only a comment\n", "holds no peaks"),
    (read_motifs, "m.jaspar", ">MA1 X\nA [ 1 2 ]\nC [ 1 2 ]\nG [ 1 2 ]\n", "needs four count rows"),
    (read_motifs, "m.jaspar", ">MA1 X\nA [ 1 2 ]\nG [ 1 2 ]\nC [ 1 2 ]\nT [ 1 2 ]\n", "rows must be A, C, G, T"),
    (read_motifs, "m.jaspar", ">MA1 X\nA [ 0 2 ]\nC [ 0 2 ]\nG [ 0 2 ]\nT [ 0 2 ]\n", "all-zero column"),
    (read_motifs, "m.jaspar", "MOTIF? nothing\n", "not a MEME, JASPAR or PFM"),
])
def test_bad_peak_and_motif_files_say_where(tmp_path, reader, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(InputError, match=message):
        reader(tmp_path / name)


def test_gff3_annotations_of_three_providers(tmp_path):
    gff = ["##gff-version 3",
           "##sequence-region chr1 1 248956422",
           # Ensembl: ID=gene:..., Name=
           "1\tensembl_havana\tgene\t1000\t2000\t.\t+\t.\tID=gene:ENSG01;Name=AAA;biotype=protein_coding;gene_id=ENSG01",
           "1\tensembl_havana\tmRNA\t1000\t2000\t.\t+\t.\tID=transcript:ENST01;Parent=gene:ENSG01",
           # GENCODE: gene_id=, gene_name=
           "chr1\tHAVANA\tgene\t5000\t9000\t.\t-\t.\tID=ENSG02.3;gene_id=ENSG02.3;gene_type=lncRNA;gene_name=BBB",
           # RefSeq: ID=gene-..., Name=, percent-encoded value
           "NC_000001.11\tBestRefSeq\tgene\t12000\t13000\t.\t+\t.\tID=gene-CCC;Name=CCC;description=a%3Bb%2Cc;gene_biotype=protein_coding",
           "###"]
    (tmp_path / "genes.gff3").write_text("\n".join(gff) + "\n")
    got = [(g.gene_id, g.name, g.chrom, g.tss, g.strand) for g in read_annotation(tmp_path / "genes.gff3")]
    assert got == [("ENSG01", "AAA", "1", 999, "+"), ("ENSG02.3", "BBB", "chr1", 8999, "-"),
                   ("CCC", "CCC", "NC_000001.11", 11999, "+")]
    (tmp_path / "bad.gff3").write_text("##gff-version 3\nchr1\tx\tgene\t1\t10\t.\t.\t.\tID=gene:X\n")
    with pytest.raises(InputError, match="gene X has strand '.'"):
        read_annotation(tmp_path / "bad.gff3")

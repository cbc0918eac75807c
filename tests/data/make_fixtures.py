"""Cut the tiny real fixtures of tests/data from the shared real data (../shared/data, or
CREFORMER_DATA): a few KB each, so the io tests run on real files without that folder.
Run once by a developer; the outputs are committed (licences and attribution in PROVENANCE.md)."""

from __future__ import annotations

import gzip
import os
import sys
from pathlib import Path

import pyBigWig
import pysam

HERE = Path(__file__).resolve().parent


def main(data: Path) -> None:
    # 2 kb of hg38 chr2 (bgzip + indexes), renamed to its region so coordinates stay honest
    fa = pysam.FastaFile(str(data / "genome" / "chr2_1-2333275.fa.gz"))
    seq = fa.fetch("chr2", 1_000_000, 1_002_000)
    plain = HERE / "hg38_chr2_1000000-1002000.fa"
    plain.write_text(">chr2_1000000_1002000\n" + "\n".join(seq[i:i + 60] for i in range(0, len(seq), 60)) + "\n")
    pysam.tabix_compress(str(plain), str(plain) + ".gz", force=True)
    pysam.faidx(str(plain) + ".gz")
    plain.unlink()
    # 5 kb of the ENCODE CEBPB A549 fold-change bigWig on chr19, every interval kept
    src = pyBigWig.open(str(data / "tracks" / "CEBPB_A549_chr19.pooled.fc.signal.bigwig"))
    lo, hi = 41_870_000, 41_875_000
    iv = src.intervals("chr19", lo, hi)
    dst = pyBigWig.open(str(HERE / "CEBPB_A549_chr19_41870000-41875000.fc.bigwig"), "w")
    dst.addHeader([("chr19", src.chroms("chr19"))])
    dst.addEntries(["chr19"] * len(iv), [max(lo, s) for s, _, _ in iv], ends=[min(hi, e) for _, e, _ in iv],
                   values=[float(v) for _, _, v in iv])
    dst.close()
    # the first 300 fragments of the muon PBMC multiome fragments file (with its header lines)
    with gzip.open(data / "multiome" / "test_rna_atac_fragments.tsv.gz", "rt") as fh:
        lines = [next(fh) for _ in range(400)]
    body = [line for line in lines if not line.startswith("#")][:300]
    head = [line for line in lines if line.startswith("#")]
    out = HERE / "pbmc_fragments_300.tsv"
    out.write_text("".join(head + body))
    pysam.tabix_compress(str(out), str(out) + ".gz", force=True)
    out.unlink()
    # three JASPAR 2026 motifs (CEBPB, CTCF, GATA1) in MEME format, with the file's header
    meme = (data / "motifs" / "JASPAR_CORE_vertebrates.meme").read_text().split("\nMOTIF ")
    keep = [m for m in meme[1:] if m.split()[1] in ("CEBPB", "CTCF", "GATA1")]
    (HERE / "jaspar2026_3motifs.meme").write_text(meme[0] + "".join("\nMOTIF " + m for m in keep).rstrip("\n") + "\n")
    # 40 K562 CRISPRi rows of the EPCrisprBenchmark training table: its header, 10 positives, 30 negatives
    with gzip.open(data / "crispri" / "EPCrisprBenchmark_combined_data.training_K562.GRCh38.tsv.gz", "rt") as fh:
        header = next(fh)
        cols = header.rstrip("\n").split("\t")
        reg = cols.index("Regulated")
        pos, neg = [], []
        for line in fh:
            (pos if line.split("\t")[reg] == "TRUE" else neg).append(line)
            if len(pos) >= 10 and len(neg) >= 30:
                break
    with gzip.open(HERE / "crispri_k562_40rows.tsv.gz", "wt") as fh:
        fh.write(header + "".join(pos[:10] + neg[:30]))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("CREFORMER_DATA", HERE.parents[2] / "shared" / "data")))

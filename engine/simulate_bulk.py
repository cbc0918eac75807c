"""Simulator part 1: the genome, annotation, motifs, bulk epigenomic tracks and truth tables of a
rulebook, written as real files (FASTA + .fai, GTF, bigWig, MEME, TSV) so that the real readers
are the ones exercised.

Bulk tracks: promoters of expressed genes carry H3K4me3, active enhancers H3K27ac and H3K4me1,
expressed gene bodies H3K36me3, silent genes H3K27me3, CTCF motifs CTCF signal.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyBigWig
import pysam

from creformer.config import ASSAYS

from .io.files import write_tsv
from .rulebook import BASES, BIN, VERSION, Gene, Rulebook, gap_of, sample_motif


def make_sequences(book: Rulebook) -> tuple[dict[str, np.ndarray], list[tuple[str, str, int, int, str]]]:
    """Background DNA with motif instances planted in every element; soft-masked repeats and N gaps."""
    rng = np.random.default_rng(book.seed + 1)
    seqs = {c: BASES[rng.choice(4, size=n, p=[0.29, 0.21, 0.21, 0.29])].copy() for c, n in book.chroms.items()}
    instances: list[tuple[str, str, int, int, str]] = []
    for e in book.elements:
        seq = seqs[e.chrom]
        tfs = [e.tf] if e.partner < 0 else [e.tf, e.partner]
        for k, tf in enumerate(tfs):
            motif = book.motifs[tf] if tf >= 0 else book.motifs[-1]
            for rep in range(2 if k == 0 else 1):  # two copies of the primary motif, one of the partner
                site = sample_motif(rng, motif.pwm)
                at = e.start + 40 + 80 * (2 * k + rep)
                if k == 1 and not e.grammar:
                    # the grammar: the partner's motif sits 80 bp after the primary's second copy;
                    # without it, 30 bp further (either strand, as every planted site)
                    at += 30
                seq[at : at + len(site)] = site
                instances.append((motif.name, e.chrom, at, at + len(site), e.element_id))
    for chrom, seq in seqs.items():
        n = len(seq)
        for _ in range(n // 20_000):  # soft-masked "repeats": lower case, sequence unchanged
            s = int(rng.integers(0, n - 600))
            seq[s : s + int(rng.integers(100, 600))] |= 32
        lo, hi = gap_of(n)
        seq[lo:hi] = ord("N")
    return seqs, instances


def write_fasta(path: Path, seqs: dict[str, np.ndarray], width: int = 60) -> None:
    with path.open("w") as fh:
        for chrom, seq in seqs.items():
            fh.write(f">{chrom}\n")
            raw = seq.tobytes().decode()
            fh.write("\n".join(raw[i : i + width] for i in range(0, len(raw), width)) + "\n")
    pysam.faidx(str(path))


def write_gtf(path: Path, genes: list[Gene]) -> None:
    with path.open("w") as fh:
        fh.write("#!genome-build creformer-sim\n")
        for g in genes:
            lo, hi = g.body
            attrs = f'gene_id "{g.gene_id}"; gene_name "{g.name}"; gene_biotype "protein_coding";'
            tx = attrs + f' transcript_id "{g.gene_id}.1";'
            fh.write(f"{g.chrom}\tcreformer\tgene\t{lo + 1}\t{hi}\t.\t{g.strand}\t.\t{attrs}\n")
            fh.write(f"{g.chrom}\tcreformer\ttranscript\t{lo + 1}\t{hi}\t.\t{g.strand}\t.\t{tx}\n")
            mid = (lo + hi) // 2
            fh.write(f"{g.chrom}\tcreformer\texon\t{lo + 1}\t{mid - 500}\t.\t{g.strand}\t.\t{tx} exon_number \"1\";\n")
            fh.write(f"{g.chrom}\tcreformer\texon\t{mid + 500}\t{hi}\t.\t{g.strand}\t.\t{tx} exon_number \"2\";\n")


# ---------------------------------------------------------------------------------------------
# Bulk tracks
# ---------------------------------------------------------------------------------------------

def _bump(track: np.ndarray, center: int, sigma_bp: float, height: float) -> None:
    c, s = center // BIN, max(1.0, sigma_bp / BIN)
    lo, hi = max(0, int(c - 4 * s)), min(len(track), int(c + 4 * s) + 1)
    x = np.arange(lo, hi)
    track[lo:hi] += height * np.exp(-0.5 * ((x - c) / s) ** 2)


def sample_tracks(book: Rulebook, cell_type: int, rng: np.random.Generator) -> dict[str, dict[str, np.ndarray]]:
    """Per-assay, per-chromosome signal at BIN resolution for one bulk sample of ``cell_type``."""
    act = book.activity[cell_type]
    openness = book.element_activity(act)
    expr = book.expression(openness)
    silent = book.repressed[cell_type]
    tracks = {a: {c: np.zeros(n // BIN, np.float64) for c, n in book.chroms.items()} for a in ASSAYS}
    for j, e in enumerate(book.elements):
        o = openness[j]
        if e.kind == "ctcf":
            if rng.random() < 0.9:
                _bump(tracks["CTCF"][e.chrom], e.center, 40, 30.0)
                _bump(tracks["ATAC"][e.chrom], e.center, 60, 6.0)
            continue
        if e.kind == "promoter" and e.gene in silent:
            continue
        if o <= 0.02:
            continue
        _bump(tracks["ATAC"][e.chrom], e.center, 60, 25.0 * o)
        if e.kind in ("enhancer", "inert"):
            _bump(tracks["H3K27ac"][e.chrom], e.center - 400, 300, 10.0 * o)
            _bump(tracks["H3K27ac"][e.chrom], e.center + 400, 300, 10.0 * o)
            _bump(tracks["H3K4me1"][e.chrom], e.center, 900, 6.0 * min(1.0, o + 0.3))
        elif e.kind == "promoter":
            _bump(tracks["H3K27ac"][e.chrom], e.center, 400, 8.0 * o)
    for gi, g in enumerate(book.genes):
        lo, hi = g.body
        if gi in silent:
            tracks["H3K27me3"][g.chrom][max(0, (lo - 5_000) // BIN) : (hi + 5_000) // BIN] += 4.0
            continue
        level = expr[gi] / 30.0
        tss_bins = [g.tss - 600, g.tss + 600]
        for b in tss_bins:
            _bump(tracks["H3K4me3"][g.chrom], b, 400, 20.0 * level + 2.0)
        body = tracks["H3K36me3"][g.chrom][lo // BIN : hi // BIN]
        ramp = np.linspace(0.2, 1.0, len(body))
        body += 6.0 * level * (ramp if g.strand == "+" else ramp[::-1])
    for assay, per_chrom in tracks.items():
        for chrom, arr in per_chrom.items():
            noise = rng.random(arr.size) < 0.02  # sparse background reads
            arr[noise] += rng.exponential(0.3, noise.sum())
            arr *= rng.lognormal(0.0, 0.15, arr.size)
            np.round(arr, 1, out=arr)  # creates runs of equal values, as real bedGraph tracks have
    return tracks


def write_bigwig(path: Path, chroms: dict[str, int], per_chrom: dict[str, np.ndarray]) -> None:
    bw = pyBigWig.open(str(path), "w")
    bw.addHeader(list(chroms.items()), maxZooms=6)
    for chrom, arr in per_chrom.items():
        if not arr.any():
            continue
        # Run-length encode equal neighbours; zero runs are left out (no data = zero).
        change = np.flatnonzero(np.diff(arr)) + 1
        starts = np.concatenate(([0], change))
        ends = np.append(change, arr.size)
        vals = arr[starts]
        keep = vals > 0
        s = (starts[keep] * BIN).astype(np.int64)
        e = np.minimum(ends[keep] * BIN, chroms[chrom]).astype(np.int64)
        bw.addEntries([chrom] * int(keep.sum()), s.tolist(), ends=e.tolist(), values=vals[keep].astype(np.float64).tolist())
    bw.close()


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------

def write_truth(out: Path, book: Rulebook, instances) -> None:
    truth = out / "truth"
    truth.mkdir(parents=True, exist_ok=True)
    (truth / "VERSION").write_text(f"{VERSION}\n")
    tf_gene = book._arrays()["tf_gene"]
    passenger = set(book.passengers)
    write_tsv(truth / "tfs.tsv", ["tf", "motif_id", "gene_id", "role", "kind"],
               [(tf, book.motifs[i].id, book.genes[tf_gene[i]].gene_id, book.tf_role[i], "passenger" if i in passenger else "regulator")
                for i, tf in enumerate(book.tfs)])
    write_tsv(truth / "disease.tsv", ["disease", "normal", "driver"],
               [(book.cell_types[-1], book.cell_types[book.normal], book.tfs[book.driver])])
    # passenger_tfs: as active here as the masters, regulating no gene (v4)
    write_tsv(truth / "cell_types.tsv", ["cell_type", "master_tfs", "passenger_tfs"],
               [(ct, ",".join(book.tfs[m] for m in book.masters[c]),
                 book.tfs[book.passengers[c]] if book.passengers and book.passengers[c] >= 0 else "")
                for c, ct in enumerate(book.cell_types)])
    write_tsv(truth / "tf_activity.tsv", ["cell_type", *book.tfs],
               [(ct, *[f"{v:.3f}" for v in book.activity[c]]) for c, ct in enumerate(book.cell_types)])
    name = lambda i: book.tfs[i] if i >= 0 else ("CTCF" if i == -1 else "")  # noqa: E731
    write_tsv(truth / "elements.tsv", ["element_id", "chrom", "start", "end", "kind", "tf", "partner_tf", "gene_id", "weight",
                                       "sign", "grammar"],
               [(e.element_id, e.chrom, e.start, e.end, e.kind, name(e.tf) if e.kind != "ctcf" else "CTCF",
                 name(e.partner) if e.partner >= 0 else "", book.genes[e.gene].gene_id if e.gene >= 0 else "",
                 f"{e.weight:.4f}", e.sign if e.gene >= 0 else 0, str(e.grammar).lower()) for e in book.elements])
    write_tsv(truth / "motif_instances.tsv", ["motif", "chrom", "start", "end", "element_id"], instances)
    expr = book.mean_expression(book.activity)
    write_tsv(truth / "expression_celltype.tsv", ["gene_id", "name", *book.cell_types],
               [(g.gene_id, g.name, *[f"{expr[c, i]:.4f}" for c in range(len(book.cell_types))]) for i, g in enumerate(book.genes)])

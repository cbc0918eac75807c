"""Synthetic genomes, bulk epigenomic tracks and (later) single cells with planted regulatory truth.

Everything comes from one seeded ``Rulebook``: a genome with genes, transcription factors (TFs)
with motifs, regulatory elements carrying motif instances, and cell types defined by TF activity.
The rulebook decides which elements are open in which cell type and how genes respond, and every
output is written as a real file (FASTA + .fai, GTF, bigWig, MEME) so the real readers are the
ones exercised. The truth goes to ``DIR/truth/`` as TSV files.

The planted grammar (DESIGN §8):
- an element opens in proportion to the activity of its primary TF, boosted by a partner TF;
- causal enhancers drive their gene with distance-decaying weights and saturation; not all lie
  nearest the TSS, and inert elements (open, but driving nothing) and closed decoys (a motif
  inside a repressed domain) carry the same motifs, so a motif alone is not a regulatory call;
- promoters of expressed genes carry H3K4me3, active enhancers H3K27ac and H3K4me1, expressed gene
  bodies H3K36me3, silent genes H3K27me3, CTCF motifs CTCF signal.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyBigWig
import pysam

from .io.motifs import Motif, write_meme
from .io.samples import Sample, write_samples

BIN = 10  # bigWig resolution of simulated tracks (bp)
ASSAYS = ["ATAC", "H3K4me1", "H3K4me3", "H3K27ac", "H3K27me3", "H3K36me3", "CTCF"]
_BASES = np.frombuffer(b"ACGT", dtype=np.uint8)


@dataclass(frozen=True)
class SimPreset:
    n_chroms: int
    chrom_len: int
    n_tfs: int
    n_cell_types: int
    gene_spacing: int  # mean bp between TSSs
    n_cells: int  # single cells (Regulatory engine)


PRESETS = {
    "tiny": SimPreset(n_chroms=2, chrom_len=300_000, n_tfs=6, n_cell_types=3, gene_spacing=30_000, n_cells=300),
    "small": SimPreset(n_chroms=3, chrom_len=1_000_000, n_tfs=10, n_cell_types=5, gene_spacing=30_000, n_cells=2_000),
    "large": SimPreset(n_chroms=8, chrom_len=4_000_000, n_tfs=16, n_cell_types=8, gene_spacing=30_000, n_cells=100_000),
}


@dataclass
class Gene:
    gene_id: str
    name: str
    chrom: str
    tss: int
    strand: str
    end: int  # gene body end (exclusive) in genome coordinates, downstream of the TSS
    base: float  # basal expression drive

    @property
    def body(self) -> tuple[int, int]:
        return (self.tss, self.end) if self.strand == "+" else (self.end, self.tss)


@dataclass
class Element:
    element_id: str
    chrom: str
    start: int
    end: int
    kind: str  # promoter | enhancer | inert | decoy | ctcf
    tf: int  # primary TF index (-1 for CTCF)
    partner: int  # partner TF index or -1
    gene: int = -1  # target gene index for promoters/enhancers
    weight: float = 0.0  # causal effect size on the target

    @property
    def center(self) -> int:
        return (self.start + self.end) // 2


@dataclass
class Rulebook:
    preset: SimPreset
    seed: int
    chroms: dict[str, int]
    tfs: list[str]
    motifs: list[Motif]  # one per TF, then CTCF last
    activity: np.ndarray  # (cell types, TFs) in [0, 1]
    masters: list[list[int]]
    genes: list[Gene]
    elements: list[Element]
    repressed: list[set[int]] = field(default_factory=list)  # per cell type: silent gene indices

    @property
    def cell_types(self) -> list[str]:
        return [f"CT{i}" for i in range(self.activity.shape[0])]

    def element_activity(self, activity: np.ndarray) -> np.ndarray:
        """Openness of every element (0..1) for TF activity vector(s) ``activity`` (..., TFs)."""
        act = np.asarray(activity, dtype=np.float64)
        out = np.zeros(act.shape[:-1] + (len(self.elements),))
        for j, e in enumerate(self.elements):
            if e.kind == "ctcf":
                out[..., j] = 0.9
            elif e.kind == "decoy":
                out[..., j] = 0.0
            else:
                boost = 0.5 + 0.5 * act[..., e.partner] if e.partner >= 0 else 1.0
                out[..., j] = act[..., e.tf] * boost
        return out

    def expression(self, openness: np.ndarray) -> np.ndarray:
        """Mean expression (counts-per-10k scale) of every gene given element openness (..., elements)."""
        drive = np.zeros(openness.shape[:-1] + (len(self.genes),))
        drive += np.array([g.base for g in self.genes])
        for j, e in enumerate(self.elements):
            if e.gene >= 0 and e.weight > 0:
                decay = np.exp(-abs(e.center - self.genes[e.gene].tss) / 80_000)
                drive[..., e.gene] += e.weight * decay * openness[..., j]
        return 30.0 * drive / (drive + 1.0)  # saturation


def _pwm(rng: np.random.Generator, width: int) -> np.ndarray:
    pwm = np.full((width, 4), 0.04)
    pwm[np.arange(width), rng.integers(0, 4, width)] = 0.88
    return pwm


def gap_of(chrom_len: int) -> tuple[int, int]:
    """The assembly gap (a run of N) of every simulated chromosome, near its end, away from genes."""
    return chrom_len - 45_000, chrom_len - 5_000


def make_rulebook(preset: str | SimPreset, seed: int = 0) -> Rulebook:
    p = PRESETS[preset] if isinstance(preset, str) else preset
    rng = np.random.default_rng(seed)
    chroms = {f"chr{i + 1}": p.chrom_len for i in range(p.n_chroms)}
    tfs = [f"TF{i + 1:02d}" for i in range(p.n_tfs)]
    motifs = [Motif(f"SIM{i + 1:04d}.1", tf, _pwm(rng, int(rng.integers(8, 13)))) for i, tf in enumerate(tfs)]
    motifs.append(Motif("SIM9999.1", "CTCF", _pwm(rng, 15)))
    # Cell types: two master TFs each (cycling through all TFs), weak background activity elsewhere.
    activity = np.zeros((p.n_cell_types, p.n_tfs))
    masters = []
    for c in range(p.n_cell_types):
        m = [(2 * c) % p.n_tfs, (2 * c + 1) % p.n_tfs]
        masters.append(m)
        activity[c, m] = 1.0
        weak = rng.choice(p.n_tfs, size=2, replace=False)
        activity[c, weak] = np.maximum(activity[c, weak], 0.25)
    genes: list[Gene] = []
    elements: list[Element] = []

    def add(chrom: str, center: int, kind: str, tf: int, partner: int, gene: int = -1, weight: float = 0.0) -> None:
        elements.append(Element(f"E{len(elements):05d}", chrom, center - 150, center + 150, kind, tf, partner, gene, weight))

    for chrom, length in chroms.items():
        pos = 20_000
        while pos < length - 60_000:
            strand = "+" if rng.random() < 0.5 else "-"
            body = int(rng.integers(5_000, 30_000))
            gi = len(genes)
            is_tf = gi < p.n_tfs  # the first genes encode the TFs themselves
            name = tfs[gi] if is_tf else f"G{gi:04d}"
            end = pos + body if strand == "+" else pos - body
            genes.append(Gene(f"SIMG{gi:05d}", name, chrom, pos, strand, end, float(rng.uniform(0.05, 0.3))))
            # Promoter: a motif of one TF; TF genes autoregulate through their own motif.
            ptf = gi if is_tf else int(rng.integers(0, p.n_tfs))
            add(chrom, pos, "promoter", ptf, -1, gi, float(rng.uniform(0.3, 1.0)))
            # Causal enhancers, some far beyond the nearest elements.
            for _ in range(int(rng.integers(1, 4))):
                dist = int(rng.choice([rng.integers(3_000, 20_000), rng.integers(20_000, 120_000)]))
                center = pos + dist * (1 if rng.random() < 0.5 else -1)
                if 1_000 < center < length - 1_000:
                    tf = gi if is_tf else int(rng.integers(0, p.n_tfs))
                    partner = int(rng.integers(0, p.n_tfs))
                    add(chrom, center, "enhancer", tf, partner, gi, float(rng.gamma(2.0, 1.5)))
            # Inert (open, no target) elements near the TSS and closed decoys: same motifs, no effect.
            for _ in range(int(rng.integers(1, 3))):
                center = pos + int(rng.integers(1_500, 15_000)) * (1 if rng.random() < 0.5 else -1)
                if 1_000 < center < length - 1_000:
                    add(chrom, center, "inert", int(rng.integers(0, p.n_tfs)), int(rng.integers(0, p.n_tfs)))
            center = pos + int(rng.integers(2_000, 40_000)) * (1 if rng.random() < 0.5 else -1)
            if 1_000 < center < length - 1_000:
                add(chrom, center, "decoy", int(rng.integers(0, p.n_tfs)), -1)
            if rng.random() < 0.6:
                center = pos + int(rng.integers(-25_000, 25_000))
                if 1_000 < center < length - 1_000:
                    add(chrom, center, "ctcf", -1, -1)
            pos += int(rng.integers(p.gene_spacing // 2, 3 * p.gene_spacing // 2))
    # Drop elements that overlap an earlier one, so motif instances never collide.
    elements.sort(key=lambda e: (e.chrom, e.start))
    kept: list[Element] = []
    for e in elements:
        gap = gap_of(chroms[e.chrom])
        if e.end > gap[0] - 1_000 and e.start < gap[1] + 1_000:
            continue
        if kept and kept[-1].chrom == e.chrom and e.start < kept[-1].end + 50:
            continue
        kept.append(e)
    for i, e in enumerate(kept):
        e.element_id = f"E{i:05d}"
    book = Rulebook(p, seed, chroms, tfs, motifs, activity, masters, genes, kept)
    expr = book.expression(book.element_activity(activity))
    book.repressed = [set(np.flatnonzero(expr[c] < np.quantile(expr[c], 0.25)).tolist()) for c in range(p.n_cell_types)]
    return book


# ---------------------------------------------------------------------------------------------
# Genome
# ---------------------------------------------------------------------------------------------

def _sample_motif(rng: np.random.Generator, pwm: np.ndarray) -> np.ndarray:
    cum = np.cumsum(pwm, axis=1)
    idx = (rng.random((len(pwm), 1)) > cum).sum(1)
    site = _BASES[np.minimum(idx, 3)]
    if rng.random() < 0.5:  # reverse complement
        site = np.frombuffer(site.tobytes().translate(bytes.maketrans(b"ACGT", b"TGCA"))[::-1], dtype=np.uint8)
    return site


def make_sequences(book: Rulebook) -> tuple[dict[str, np.ndarray], list[tuple[str, str, int, int, str]]]:
    """Background DNA with motif instances planted in every element; soft-masked repeats and N gaps."""
    rng = np.random.default_rng(book.seed + 1)
    seqs = {c: _BASES[rng.choice(4, size=n, p=[0.29, 0.21, 0.21, 0.29])].copy() for c, n in book.chroms.items()}
    instances: list[tuple[str, str, int, int, str]] = []
    for e in book.elements:
        seq = seqs[e.chrom]
        tfs = [e.tf] if e.partner < 0 else [e.tf, e.partner]
        for k, tf in enumerate(tfs):
            motif = book.motifs[tf] if tf >= 0 else book.motifs[-1]
            for rep in range(2 if k == 0 else 1):  # two copies of the primary motif, one of the partner
                at = e.start + 40 + 80 * (2 * k + rep)
                site = _sample_motif(rng, motif.pwm)
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

def _write_tsv(path: Path, header: list[str], rows) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def write_truth(out: Path, book: Rulebook, instances) -> None:
    truth = out / "truth"
    truth.mkdir(parents=True, exist_ok=True)
    _write_tsv(truth / "tfs.tsv", ["tf", "motif_id", "gene_id"],
               [(tf, book.motifs[i].id, book.genes[i].gene_id) for i, tf in enumerate(book.tfs)])
    _write_tsv(truth / "cell_types.tsv", ["cell_type", "master_tfs"],
               [(ct, ",".join(book.tfs[m] for m in book.masters[c])) for c, ct in enumerate(book.cell_types)])
    _write_tsv(truth / "tf_activity.tsv", ["cell_type", *book.tfs],
               [(ct, *[f"{v:.3f}" for v in book.activity[c]]) for c, ct in enumerate(book.cell_types)])
    name = lambda i: book.tfs[i] if i >= 0 else ("CTCF" if i == -1 else "")  # noqa: E731
    _write_tsv(truth / "elements.tsv", ["element_id", "chrom", "start", "end", "kind", "tf", "partner_tf", "gene_id", "weight"],
               [(e.element_id, e.chrom, e.start, e.end, e.kind, name(e.tf) if e.kind != "ctcf" else "CTCF",
                 name(e.partner) if e.partner >= 0 else "", book.genes[e.gene].gene_id if e.gene >= 0 else "",
                 f"{e.weight:.4f}") for e in book.elements])
    _write_tsv(truth / "motif_instances.tsv", ["motif", "chrom", "start", "end", "element_id"], instances)
    openness = book.element_activity(book.activity)
    expr = book.expression(openness)
    _write_tsv(truth / "expression_celltype.tsv", ["gene_id", "name", *book.cell_types],
               [(g.gene_id, g.name, *[f"{expr[c, i]:.4f}" for c in range(len(book.cell_types))]) for i, g in enumerate(book.genes)])


def simulate(out: str | Path, preset: str = "tiny", seed: int = 0, cells: bool = True, n_cells: int | None = None) -> Path:
    """Write genome.fa(+.fai), genes.gtf, motifs.meme, tracks/*.bw, samples.tsv, multiome/ (single
    cells in Cell Ranger ARC layout, unless ``cells`` is False) and truth/ under ``out``."""
    if preset not in PRESETS:
        raise ValueError(f"unknown simulator preset {preset!r}; choose one of {', '.join(PRESETS)}")
    out = Path(out)
    (out / "tracks").mkdir(parents=True, exist_ok=True)
    book = make_rulebook(preset, seed)
    seqs, instances = make_sequences(book)
    write_fasta(out / "genome.fa", seqs)
    write_gtf(out / "genes.gtf", book.genes)
    write_meme(out / "motifs.meme", book.motifs)
    rng = np.random.default_rng(seed + 2)
    samples = []
    for c, ct in enumerate(book.cell_types):
        sample = Sample(f"bulk_{ct}")
        for assay, per_chrom in sample_tracks(book, c, rng).items():
            path = out / "tracks" / f"{sample.name}.{assay}.bw"
            write_bigwig(path, book.chroms, per_chrom)
            sample.tracks[assay] = path
        samples.append(sample)
    write_samples(out / "samples.tsv", samples)
    write_truth(out, book, instances)
    if cells:
        from .simulate_cells import simulate_cells

        simulate_cells(out, book, preset, seed, n_cells)
    return out

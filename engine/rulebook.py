"""The simulator's rulebook: one seeded description of a genome, its genes, TFs with motifs,
regulatory elements and cell types, from which every simulated file is written (docs/design.md §8).

The planted grammar:
- an element opens in proportion to the activity of its primary TF, boosted by a partner TF;
- causal enhancers drive their gene with distance-decaying weights and saturation; not all lie
  nearest the TSS, and inert elements (open, but driving nothing) and closed decoys (a motif
  inside a repressed domain) carry the same motifs, so a motif alone is not a regulatory call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .io.motifs import Motif

BIN = 10  # bigWig resolution of simulated tracks (bp)
BASES = np.frombuffer(b"ACGT", dtype=np.uint8)


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

def sample_motif(rng: np.random.Generator, pwm: np.ndarray) -> np.ndarray:
    cum = np.cumsum(pwm, axis=1)
    idx = (rng.random((len(pwm), 1)) > cum).sum(1)
    site = BASES[np.minimum(idx, 3)]
    if rng.random() < 0.5:  # reverse complement
        site = np.frombuffer(site.tobytes().translate(bytes.maketrans(b"ACGT", b"TGCA"))[::-1], dtype=np.uint8)
    return site

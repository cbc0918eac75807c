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
VERSION = 4  # written to truth/VERSION; `creformer validate` refuses truth of another version
# An allele of a fully active element is open in this share of cells (the mean state of an element
# is OPEN_MAX x its openness; simulate_cells.py draws each cell's states around it).
OPEN_MAX = 0.85
REPRESSOR_SHARE = 0.3  # TFs that repress every element they bind as primary TF
DUAL_SHARE = 0.2  # TFs whose elements repress with a repressor partner and activate otherwise
GRAMMAR_FUNCTIONAL = 0.85  # P(partner at the preferred spacing) for a causal element
GRAMMAR_INERT = 0.15  # ... and for an inert one
TF_FROM_EXPRESSION = 0.8  # a TF's activity from its own expression: this x expression / 30
DISEASE = "DIS"
BASES = np.frombuffer(b"ACGT", dtype=np.uint8)


@dataclass(frozen=True)
class SimPreset:
    n_chroms: int
    chrom_len: int
    n_tfs: int  # regulators: each cell type's two masters among them, cycling through all
    n_cell_types: int
    gene_spacing: int  # mean bp between TSSs
    n_cells: int  # single cells (Regulatory engine)
    # passenger TFs (v4), after the regulators: passenger i is as active in cell type i as its
    # masters and regulates no gene, so activity alone cannot tell the masters from it
    n_passengers: int = 0


PRESETS = {
    "tiny": SimPreset(n_chroms=2, chrom_len=300_000, n_tfs=6, n_cell_types=3, gene_spacing=30_000, n_cells=300, n_passengers=3),
    "small": SimPreset(n_chroms=3, chrom_len=1_000_000, n_tfs=10, n_cell_types=5, gene_spacing=30_000, n_cells=2_000,
                       n_passengers=5),
    "large": SimPreset(n_chroms=8, chrom_len=4_000_000, n_tfs=16, n_cell_types=8, gene_spacing=30_000, n_cells=100_000,
                       n_passengers=8),
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
    sign: int = 1  # +1 activates the target, -1 represses it (causal elements)
    grammar: bool = False  # the partner's motif sits at the preferred spacing and orientation

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
    inputs: np.ndarray  # (cell types, TFs): external TF input of each cell type (the disease type last)
    masters: list[list[int]]
    genes: list[Gene]
    elements: list[Element]
    tf_role: list[str] = field(default_factory=list)  # activator | repressor | dual, per TF
    normal: int = 0  # the cell type the disease type derives from
    driver: int = 0  # the TF switched on in the disease type
    passengers: list[int] = field(default_factory=list)  # per cell type (as masters): its passenger TF, or -1
    activity: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # (cell types, TFs) at steady state
    repressed: list[set[int]] = field(default_factory=list)  # per cell type: silent gene indices

    @property
    def cell_types(self) -> list[str]:
        return [f"CT{i}" for i in range(self.inputs.shape[0] - 1)] + [DISEASE]

    def _arrays(self) -> dict[str, np.ndarray]:
        if getattr(self, "_cache", None) is None:
            e = self.elements
            n_genes = len(self.genes)
            kind = np.array([x.kind for x in e])
            eff = np.zeros((len(e), n_genes))
            for j, x in enumerate(e):
                if x.gene >= 0 and x.weight > 0:
                    eff[j, x.gene] = x.weight * np.exp(-abs(x.center - self.genes[x.gene].tss) / 80_000)
            sign = np.array([x.sign for x in e])[:, None]
            self._cache = {"tf": np.array([max(x.tf, 0) for x in e]), "partner": np.array([max(x.partner, 0) for x in e]),
                           "has_partner": np.array([x.partner >= 0 for x in e]), "ctcf": kind == "ctcf",
                           "decoy": kind == "decoy", "act": np.where(sign > 0, eff, 0.0), "rep": np.where(sign < 0, eff, 0.0),
                           "base": np.array([g.base for g in self.genes]),
                           "tf_gene": np.array([next(i for i, g in enumerate(self.genes) if g.name == t) for t in self.tfs])}
        return self._cache

    def element_activity(self, activity: np.ndarray) -> np.ndarray:
        """Openness of every element (0..1) for TF activity vector(s) ``activity`` (..., TFs)."""
        a = self._arrays()
        act = np.asarray(activity, dtype=np.float64)
        boost = np.where(a["has_partner"], 0.5 + 0.5 * act[..., a["partner"]], 1.0)
        out = act[..., a["tf"]] * boost
        out = np.where(a["ctcf"], 0.9, out)
        return np.where(a["decoy"], 0.0, out)

    def expression(self, openness: np.ndarray) -> np.ndarray:
        """Mean expression (counts-per-10k scale) of every gene given element openness (..., elements):
        activating elements add to a saturating drive, repressive ones divide it."""
        a = self._arrays()
        drive = a["base"] + openness @ a["act"]
        return 30.0 * drive / (drive + 1.0) / (1.0 + openness @ a["rep"])

    def steady_activity(self, inputs: np.ndarray, fixed: dict[int, float] | None = None, iters: int = 80) -> np.ndarray:
        """TF activity at the network's fixed point for external ``inputs`` (..., TFs): each TF's
        activity is max(input, TF_FROM_EXPRESSION x its gene's expression / 30) at the mean element
        states it implies; ``fixed`` holds TFs at a level (a knockout 0, a knock-in 1)."""
        tf_gene = self._arrays()["tf_gene"]
        inputs = np.asarray(inputs, np.float64).copy()
        for t, v in (fixed or {}).items():
            inputs[..., t] = v
        act = inputs.copy()
        for _ in range(iters):
            expr = self.expression(OPEN_MAX * self.element_activity(act))
            new = np.maximum(inputs, TF_FROM_EXPRESSION * expr[..., tf_gene] / 30.0)
            for t, v in (fixed or {}).items():
                new[..., t] = v
            act = 0.5 * act + 0.5 * new  # damped: repression makes the map non-monotone
        return act

    def mean_expression(self, activity: np.ndarray) -> np.ndarray:
        """Expression at the mean element states of TF activity ``activity``."""
        return self.expression(OPEN_MAX * self.element_activity(activity))

    def direct_edges(self) -> dict[tuple[int, int], float]:
        """(TF, gene) -> signed weight: the TF's motif sits in a causal element of the gene (primary
        TF, or partner at half weight), signed by the element's effect."""
        edges: dict[tuple[int, int], float] = {}
        for e in self.elements:
            if e.gene >= 0 and e.weight > 0 and e.kind in ("promoter", "enhancer"):
                for tf, share in ((e.tf, 1.0), (e.partner, 0.5)):
                    if tf >= 0:
                        edges[(tf, e.gene)] = edges.get((tf, e.gene), 0.0) + share * e.weight * e.sign
        return edges


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
    # Cell types: two master TFs each (cycling through all TFs), weak background input elsewhere.
    inputs = np.zeros((p.n_cell_types, p.n_tfs))
    masters = []
    for c in range(p.n_cell_types):
        m = [(2 * c) % p.n_tfs, (2 * c + 1) % p.n_tfs]
        masters.append(m)
        inputs[c, m] = 1.0
        weak = rng.choice(p.n_tfs, size=2, replace=False)
        inputs[c, weak] = np.maximum(inputs[c, weak], 0.25)
    # TF roles: repressors and dual TFs drawn among all TFs (a master may repress its targets).
    order = rng.permutation(p.n_tfs)
    n_rep, n_dual = max(1, round(REPRESSOR_SHARE * p.n_tfs)), max(1, round(DUAL_SHARE * p.n_tfs))
    role = ["activator"] * p.n_tfs
    for t in order[:n_rep]:
        role[t] = "repressor"
    for t in order[n_rep:n_rep + n_dual]:
        role[t] = "dual"
    genes: list[Gene] = []
    elements: list[Element] = []

    def add(chrom: str, center: int, kind: str, tf: int, partner: int, gene: int = -1, weight: float = 0.0) -> None:
        sign = 1
        if kind in ("promoter", "enhancer"):
            sign = -1 if role[tf] == "repressor" or (role[tf] == "dual" and partner >= 0 and role[partner] == "repressor") else 1
        p_grammar = GRAMMAR_FUNCTIONAL if kind == "enhancer" else GRAMMAR_INERT if kind == "inert" else 0.0
        grammar = partner >= 0 and bool(rng.random() < p_grammar)
        elements.append(Element(f"E{len(elements):05d}", chrom, center - 150, center + 150, kind, tf, partner, gene, weight,
                                sign, grammar))

    for chrom, length in chroms.items():
        pos = 20_000
        while pos < length - 60_000:
            strand = "+" if rng.random() < 0.5 else "-"
            body = int(rng.integers(5_000, 30_000))
            gi = len(genes)
            is_tf = gi < p.n_tfs  # the first genes encode the TFs themselves
            name = tfs[gi] if is_tf else f"G{gi:04d}"
            # a minus-strand body stops at the chromosome's start (the first TSS sits at 20 kb, bodies
            # reach 30 kb: seed 1 of the small preset wrote a gene at -7,270); no seed's draws change
            end = pos + body if strand == "+" else max(0, pos - body)
            genes.append(Gene(f"SIMG{gi:05d}", name, chrom, pos, strand, end, float(rng.uniform(0.05, 0.3))))
            # Promoter: a motif of one TF; TF genes autoregulate through their own motif.
            ptf = gi if is_tf else int(rng.integers(0, p.n_tfs))
            add(chrom, pos, "promoter", ptf, -1, gi, float(rng.uniform(0.3, 1.0)))
            # Causal enhancers, some far beyond the nearest elements. A TF gene's first enhancer
            # carries its own motif (autoregulation); the others any TF's (cascades between TFs).
            for k in range(int(rng.integers(1, 4))):
                dist = int(rng.choice([rng.integers(3_000, 20_000), rng.integers(20_000, 120_000)]))
                center = pos + dist * (1 if rng.random() < 0.5 else -1)
                if 1_000 < center < length - 1_000:
                    tf = gi if is_tf and k == 0 else int(rng.integers(0, p.n_tfs))
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
    # The disease type: cell type 0 with a driver TF switched on, the activator (not active in type
    # 0) with the most direct targets.
    book = Rulebook(p, seed, chroms, tfs, motifs, inputs, masters, genes, kept, role)
    targets = np.zeros(p.n_tfs)
    for (t, _), w in book.direct_edges().items():
        targets[t] += abs(w)
    candidates = [t for t in range(p.n_tfs) if inputs[0, t] == 0 and role[t] == "activator"] or \
                 [t for t in range(p.n_tfs) if inputs[0, t] == 0]
    book.normal, book.driver = 0, max(candidates, key=lambda t: targets[t])
    # A signal-activated driver (constitutive activity, as an activating mutation or a fusion gives):
    # it does not regulate its own gene, whose mRNA therefore barely moves in the disease type while
    # its targets do. With autoregulation, disease-vs-normal DE ranked the driver first on every
    # preset (the therapeutic task was trivial for its baseline); without it, 2nd-7th (seeds 0-3).
    driver_gene = book._arrays()["tf_gene"][book.driver]
    stand_in = (book.driver + 1) % p.n_tfs
    for e in kept:
        if e.gene == driver_gene and e.tf == book.driver:
            e.tf = stand_in
        if e.gene == driver_gene and e.partner == book.driver:
            e.partner = (stand_in + 1) % p.n_tfs
    add_passengers(book, p.n_passengers, seed)
    inputs = book.inputs
    book._cache = None  # element arrays are built lazily; drop any built before this change
    disease = inputs[book.normal].copy()
    disease[book.driver] = 1.0
    book.inputs = np.vstack([inputs, disease])
    book.masters = masters + [sorted(masters[book.normal] + [book.driver])]
    book.passengers = book.passengers + [book.passengers[book.normal]] if book.passengers else []  # DIS keeps its normal type's
    book.activity = book.steady_activity(book.inputs)
    expr = book.mean_expression(book.activity)
    book.repressed = [set(np.flatnonzero(expr[c] < np.quantile(expr[c], 0.25)).tolist()) for c in range(expr.shape[0])]
    return book


def add_passengers(book: Rulebook, n: int, seed: int) -> None:
    """Simulator v4: passenger TFs, after the regulators (and before CTCF's motif). Passenger i gets
    the external input of a master (1.0) in cell type i, signal-activated as the disease driver is
    (its activity does not need its mRNA), one gene of its own among the genes least expressed in
    every cell type (so its activity stays low elsewhere, from its own expression), and the primary
    motif of a share of the inert and decoy elements: open where it is active, driving nothing. It
    regulates no gene, so its motif accessibility is as type-specific as a master's and only what
    its knockout does (nothing) tells it apart.

    Why (v3's known failure, docs/design.md §8): masters were simply each type's most active TFs, so
    chromVAR-style motif accessibility found every one of them. Drawn from their own seeded stream,
    so the regulators, genes and causal elements of a seed stay v3's."""
    if n <= 0:
        return
    n_types = book.inputs.shape[0]
    if n > n_types:
        raise ValueError(f"{n} passenger TFs for {n_types} cell types: at most one per cell type")
    rng = np.random.default_rng([seed, 4])
    n_reg = len(book.tfs)
    candidates = np.arange(n_reg, len(book.genes))
    peak = book.mean_expression(book.steady_activity(book.inputs)).max(0)[candidates]
    genes = [int(g) for g in candidates[np.argsort(peak, kind="stable")[:n]]]
    ctcf = book.motifs.pop()
    for i, gi in enumerate(genes):
        name = f"TF{n_reg + i + 1:02d}"
        book.tfs.append(name)
        book.motifs.append(Motif(f"SIM{n_reg + i + 1:04d}.1", name, _pwm(rng, int(rng.integers(8, 13)))))
        book.tf_role.append("activator")
        book.genes[gi].name = name
    book.motifs.append(ctcf)
    share = n / (n_reg + n)  # each passenger's motif in about as many inert and decoy elements as a regulator's
    for e in book.elements:
        if e.kind in ("inert", "decoy") and rng.random() < share:
            e.tf = n_reg + int(rng.integers(0, n))
    book.inputs = np.hstack([book.inputs, np.zeros((n_types, n))])
    book.inputs[np.arange(n), n_reg + np.arange(n)] = 1.0
    book.passengers = [n_reg + c if c < n else -1 for c in range(n_types)]


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

import csv

import numpy as np
import pyBigWig
import pytest

from creformer.engine.io.fasta import Genome
from creformer.engine.io.motifs import read_meme
from creformer.analysis.metrics import r_precision
from creformer.engine.rulebook import PRESETS, make_rulebook


def rows(path):
    with open(path) as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_files_are_real_and_readable(sim_tiny):
    g = Genome(sim_tiny / "genome.fa")
    assert g.lengths == {"chr1": 300_000, "chr2": 300_000}
    assert (sim_tiny / "genome.fa.fai").exists()
    motifs = read_meme(sim_tiny / "motifs.meme")
    assert [m.name for m in motifs][-1] == "CTCF" and len(motifs) == 10  # 6 regulators, 3 passengers (v4), CTCF
    tracks = rows(sim_tiny / "samples.tsv")
    assert len(tracks) == 4 * 7 and {r["assay"] for r in tracks} == {"ATAC", "H3K4me1", "H3K4me3", "H3K27ac", "H3K27me3", "H3K36me3", "CTCF"}
    gtf = (sim_tiny / "genes.gtf").read_text().splitlines()
    assert sum(1 for line in gtf if "\tgene\t" in line) == len(rows(sim_tiny / "truth" / "expression_celltype.tsv"))


def test_deterministic_by_seed():
    a, b, c = make_rulebook("tiny", 0), make_rulebook("tiny", 0), make_rulebook("tiny", 1)
    assert [e.__dict__ for e in a.elements] == [e.__dict__ for e in b.elements]
    assert [e.__dict__ for e in a.elements] != [e.__dict__ for e in c.elements]


def test_planted_grammar_in_tracks(sim_tiny):
    """ATAC is high at enhancers whose primary TF is active (steady-state activity >= 0.8) in the
    sample's cell type, low where it is nearly inactive (<= 0.2; v2 TFs that are not masters are
    partly active through their own expression, so some types have none), and decoys stay closed."""
    elements = rows(sim_tiny / "truth" / "elements.tsv")
    activity = {r["cell_type"]: {k: float(v) for k, v in r.items() if k != "cell_type"}
                for r in rows(sim_tiny / "truth" / "tf_activity.tsv")}
    for ct, act in activity.items():
        bw = pyBigWig.open(str(sim_tiny / "tracks" / f"bulk_{ct}.ATAC.bw"))
        def mean(e):
            return bw.stats(e["chrom"], int(e["start"]), int(e["end"]))[0] or 0.0
        enh = [e for e in elements if e["kind"] == "enhancer"]
        active = [mean(e) for e in enh if act[e["tf"]] >= 0.8]
        inactive = [mean(e) for e in enh if act[e["tf"]] <= 0.2]
        decoys = [mean(e) for e in elements if e["kind"] == "decoy"]
        assert active
        if inactive:
            assert np.mean(active) > 3 * max(np.mean(inactive), 0.1)
        assert np.mean(decoys) < 0.2 * np.mean(active)


def test_motif_instances_are_in_the_sequence(sim_tiny):
    g = Genome(sim_tiny / "genome.fa")
    motifs = {m.name: m for m in read_meme(sim_tiny / "motifs.meme")}
    inst = rows(sim_tiny / "truth" / "motif_instances.tsv")
    comp = bytes.maketrans(b"ACGT", b"TGCA")
    close = 0
    for r in inst:
        site = g.fetch(r["chrom"], int(r["start"]), int(r["end"]))
        pwm = motifs[r["motif"]].pwm
        cons = bytes(b"ACGT"[i] for i in pwm.argmax(1))
        fwd = sum(a == b for a, b in zip(site, cons))
        rev = sum(a == b for a, b in zip(site.translate(comp)[::-1], cons))
        close += max(fwd, rev) >= len(cons) - 4
    assert close >= 0.95 * len(inst)  # sampled from the PWM (0.88 per position): mostly the consensus


def test_causal_enhancers_not_all_nearest():
    book = make_rulebook("small", 0)
    far = total = 0
    by_gene = {}
    for e in book.elements:
        if e.gene >= 0:
            by_gene.setdefault(e.gene, []).append(e)
    for gi, own in by_gene.items():
        tss = book.genes[gi].tss
        near = sorted((x for x in book.elements if x.chrom == book.genes[gi].chrom and x.kind != "promoter"),
                      key=lambda x: abs(x.center - tss))[:3]
        for e in own:
            if e.kind == "enhancer":
                total += 1
                far += e not in near
    assert far / total >= 0.2


def test_element_states_are_per_cell_and_make_causal_elements_identifiable():
    """Per-cell element states: their mean is OPEN_MAX x the rulebook's openness, elements of one TF
    no longer open together, and within a cell type a gene's expression follows its causal elements'
    states (not its inert ones'), which shared openness hid (noise-free states here; the fragments
    the model sees are far noisier)."""
    from creformer.analysis.metrics import auprc
    from creformer.engine.rulebook import OPEN_MAX
    from creformer.engine.simulate_cells import cell_states, element_states

    book = make_rulebook("small", 0)
    rng = np.random.default_rng(0)
    types, act = cell_states(book, 2000, rng)
    openness = book.element_activity(act)
    state = element_states(book, act, rng)
    assert set(np.unique(state)) <= {0.0, 0.5, 1.0}
    active = openness.mean(0) > 0.2
    assert np.allclose(state.mean(0)[active], OPEN_MAX * openness.mean(0)[active], rtol=0.1)
    same_tf = [j for j, e in enumerate(book.elements) if e.kind == "inert" and e.tf == book.elements[0].tf]
    assert len(same_tf) >= 2 and not np.array_equal(state[:, same_tf[0]], state[:, same_tf[1]])

    def within_type(x):
        x = x.astype(float).copy()
        for t in np.unique(types):
            x[types == t] -= x[types == t].mean(0)
        return x

    def scores(states):
        expr = within_type(book.expression(states))
        st = within_type(states)
        y, s = [], []
        for gi, g in enumerate(book.genes):
            for j, e in enumerate(book.elements):
                if e.chrom == g.chrom and abs(e.center - g.tss) <= 150_000 and e.kind != "decoy":
                    y.append(e.gene == gi and e.weight > 0)
                    d = np.sqrt((expr[:, gi] ** 2).sum() * (st[:, j] ** 2).sum())
                    s.append(abs((expr[:, gi] * st[:, j]).sum()) / d if d > 0 else 0.0)  # repressors: negative
        return auprc(np.array(s), np.array(y)), float(np.mean(y))

    per_cell, prevalence = scores(state)
    shared, _ = scores(OPEN_MAX * openness)  # openness shared by a TF's elements: the old simulator
    assert per_cell > 0.8 and per_cell > 2 * shared and shared > prevalence


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_v2_invariants(preset):
    """Simulator v2 (and v3's signal-activated driver): >= 25 % repressive TF->target edges, dual TFs acting both ways, cascades
    (knocking out one TF moves another's activity), a disease type with its driver, grammar that
    separates functional from inert elements, and a knockout truth that the motif-only rule
    ("down wherever the motif is") gets right at most 80 % of the time."""
    book = make_rulebook(preset, 0)
    edges = book.direct_edges()
    assert sum(w < 0 for w in edges.values()) / len(edges) >= 0.25
    dual = [t for t, r in enumerate(book.tf_role) if r == "dual"]
    signs = {e.sign for e in book.elements if e.tf in dual and e.gene >= 0 and e.kind == "enhancer"}
    assert dual and signs == {-1, 1}
    moved = max(float(np.abs(book.steady_activity(book.inputs, {t: 0.0}) - book.activity)[:, [u for u in range(len(book.tfs)) if u != t]].max())
                for t in range(len(book.tfs)))
    assert moved >= 0.05
    assert book.cell_types[-1] == "DIS" and book.inputs[book.normal, book.driver] == 0 and book.inputs[-1, book.driver] == 1
    assert book.driver in book.masters[-1]
    # the driver is signal-activated: it binds no element of its own gene, and disease-vs-normal
    # differential expression of the TF genes does not rank it first
    driver_gene = book._arrays()["tf_gene"][book.driver]
    assert not any(e.gene == driver_gene and book.driver in (e.tf, e.partner) for e in book.elements)
    expr = np.log1p(book.mean_expression(book.activity)[:, book._arrays()["tf_gene"]])
    de = np.abs(expr[-1] - expr[book.normal])
    assert de[book.driver] < de.max()
    enh = [e.grammar for e in book.elements if e.kind == "enhancer" and e.partner >= 0]
    inert = [e.grammar for e in book.elements if e.kind == "inert"]
    assert np.mean(enh) >= 0.7 and np.mean(inert) <= 0.3
    base = book.mean_expression(book.activity)
    right = total = 0
    for t in range(len(book.tfs)):
        lfc = np.log2((book.mean_expression(book.steady_activity(book.inputs, {t: 0.0})) + 0.1) / (base + 0.1))
        for (tf, g) in edges:
            if tf == t:
                resp = np.abs(lfc[:, g]) >= 0.1
                right += int((lfc[resp, g] < 0).sum())
                total += int(resp.sum())
    assert total > 0 and right / total <= 0.8


def test_v2_truth_files(sim_tiny):
    assert (sim_tiny / "truth" / "VERSION").read_text().strip() == "4"
    dis = rows(sim_tiny / "truth" / "disease.tsv")
    assert len(dis) == 1 and dis[0]["disease"] == "DIS" and dis[0]["normal"] == "CT0"
    pert = rows(sim_tiny / "truth" / "perturbations.tsv")
    assert {r["direct"] for r in pert} == {"true", "false"}
    assert {r["sign"] for r in rows(sim_tiny / "truth" / "tf_targets.tsv")} == {"1", "-1"}
    assert {r["cell_type"] for r in rows(sim_tiny / "truth" / "cells.tsv")} == {"CT0", "CT1", "CT2", "DIS"}


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_v4_passengers_are_as_active_as_masters_and_regulate_no_gene(preset):
    """Simulator v4: passenger i is as active in cell type i as its masters and at most half as active
    in the other normal types, its motif opens inert elements, it binds no causal element, and its
    knockout moves no gene's expression. On the small
    preset, ranking each type's TFs by activity there minus elsewhere (what chromVAR-style motif
    accessibility reads) no longer finds every master in the top |masters|."""
    p = PRESETS[preset]
    r_prec = []
    for seed in range(3):
        book = make_rulebook(preset, seed)
        n_reg = p.n_tfs
        assert len(book.tfs) == n_reg + p.n_passengers and book.passengers[:p.n_passengers] == list(range(n_reg, len(book.tfs)))
        assert len(book.passengers) == len(book.cell_types) and book.passengers[-1] == book.passengers[book.normal]  # DIS inherits
        tf_gene = book._arrays()["tf_gene"]
        targets = {t: {g for (u, g) in book.direct_edges() if u == t} for t in range(len(book.tfs))}
        base = np.log2(book.mean_expression(book.activity) + 1)
        for c, t in enumerate(book.passengers[:-1]):  # the normal types (DIS's is its normal type's)
            if t < 0:
                continue
            act = book.activity
            assert act[c, t] == 1.0 and all(act[c, m] == 1.0 for m in book.masters[c])
            others = [o for o in range(len(book.cell_types) - 1) if o != c]  # the other normal types
            assert act[others, t].max() <= 0.5  # type-specific, as a master is
            assert not targets[t] and book.tf_role[t] == "activator" and book.genes[tf_gene[t]].name == book.tfs[t]
            assert any(e.kind == "inert" and e.tf == t for e in book.elements)
            shift = lambda u: float(np.linalg.norm(np.log2(book.mean_expression(book.steady_activity(book.inputs[c], {u: 0.0})) + 1) - base[c]))  # noqa: E731
            assert shift(t) < 1e-9 < min(shift(m) for m in book.masters[c])
        act = book.activity
        spec = act - (act.sum(0) - act) / (len(act) - 1)
        r_prec.append(np.mean([r_precision(np.argsort(-spec[c]).tolist(), set(m)) for c, m in enumerate(book.masters)]))
    if preset == "small":
        assert max(r_prec) < 1.0


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_gene_bodies_stay_on_their_chromosome(preset):
    """Every seed's genes lie within [0, chromosome length) (seed 1 of small once put one at -7,270)."""
    for seed in range(6):
        book = make_rulebook(preset, seed)
        for g in book.genes:
            lo, hi = g.body
            assert 0 <= lo < hi <= book.chroms[g.chrom], (preset, seed, g)

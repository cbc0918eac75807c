"""Regulatory data engine end to end on a hand-made multiome, the tiny simulated atlas and the
real muon PBMC set; the streaming join against tensors computed directly from the files."""

import gzip

import numpy as np
import pyarrow.parquet as pq
import pytest

from creformer.cli import main as cli_main
from creformer.engine.errors import InputError
from creformer.engine.io.fasta import Genome
from creformer.engine.regulatory_batches import join_samples, load_signal, unpack_samples
from creformer.engine.regulatory_shards import prepare_regulatory
from creformer.engine.regulatory_stream import regulatory_dataset
from creformer.engine.shards import Manifest
from creformer.engine.simulate_cells import write_10x_h5
from creformer.engine.tokenize import PEAK_SPAN, SIG_OFFSET, SIG_PAD, SignalStats, default_cutpoints, dna_tokens

from ..conftest import regulatory_config
from ..unit.test_tokenize import reference_signal

BARCODES = ["AAACAAAC-1", "CCCGCCCG-1", "GGGTGGGT-1"]
FRAGMENTS = [  # sorted by position; the last barcode is not in the matrix
    ("chr1", 4600, 4700, "AAACAAAC-1"), ("chr1", 5000, 5100, "AAACAAAC-1"), ("chr1", 9100, 9250, "CCCGCCCG-1"),
    ("chr1", 15010, 15020, "GGGTGGGT-1"), ("chr1", 17000, 17100, "TTTTTTTT-1"),
]


def make_hand_multiome(root, *, fragments=FRAGMENTS, peaks=(("chr1", 4800, 5200), ("chr1", 9000, 9400), ("chr1", 15000, 15300)),
                       rna=((5, 0, 1), (0, 3, 0), (2, 2, 0)), gtf_chrom="chr1", barcodes=BARCODES):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    seq = "".join("ACGT"[i] for i in rng.integers(0, 4, 20_000))
    (root / "genome.fa").write_text(">chr1\n" + "\n".join(seq[i:i + 60] for i in range(0, len(seq), 60)) + "\n")
    gtf = [(gtf_chrom, 5001, 8000, "+", "GA", "A"), (gtf_chrom, 9000, 12000, "-", "GB", "B")]
    (root / "genes.gtf").write_text("".join(
        f'{c}\tt\tgene\t{s}\t{e}\t.\t{st}\t.\tgene_id "{gid}"; gene_name "{name}";\n' for c, s, e, st, gid, name in gtf))
    mdir = root / "multiome"
    mdir.mkdir(exist_ok=True)
    genes = [("GA", "A", "chr1:5000-8000"), ("GB", "B", "chr1:9000-12000"), ("GC", "C", "chr1:1-2")]  # GC: no TSS
    write_10x_h5(mdir / "filtered_feature_bc_matrix.h5", barcodes, genes, list(peaks), np.array(rna),
                 np.ones((len(barcodes), len(peaks)), int))
    with gzip.open(mdir / "atac_fragments.tsv.gz", "wt") as fh:
        fh.write("# id=hand\n# pipeline=none\n")
        for c, s, e, b in fragments:
            fh.write(f"{c}\t{s}\t{e}\t{b}\t1\n")
    return root


def direct_tokens(fragments_rows, barcode, library, chrom, ws, cuts):
    """One cell x peak window computed directly: insertions at both fragment ends x 1e4 / library."""
    dense = np.zeros(PEAK_SPAN, np.float32)
    for c, s, e, bc in fragments_rows:
        if bc == barcode and c == chrom:
            for site in (s, e - 1):
                if ws <= site < ws + PEAK_SPAN:
                    dense[site - ws] += np.float32(1e4 / library)
    return reference_signal(dense, cuts, SignalStats())


def direct_atac(fragments_rows, barcodes, peak_windows, cuts):
    """Per (cell, peak) tokens of every cell and window; library = the cell's fragment count."""
    lib = {b: sum(1 for r in fragments_rows if r[3] == b) for b in barcodes}
    return {(ci, pi): direct_tokens(fragments_rows, b, lib[b], chrom, ws, cuts)
            for ci, b in enumerate(barcodes) for pi, (chrom, ws) in enumerate(peak_windows)}


def test_hand_made_multiome_coverage_and_expression(tmp_path):
    root = make_hand_multiome(tmp_path / "hand")
    res = prepare_regulatory(regulatory_config(root / "multiome", root / "genome.fa", root / "genes.gtf", tmp_path / "out", min_cells_per_gene=1, executor="local"))
    man = Manifest(res.manifest_path)
    c = man.data["counts"]
    assert c["cells"] == 3 and c["genes"] == 2 and c["genes_without_tss"] == 1
    assert c["fragments_barcode_not_in_matrix"] == 1 and c["barcodes_in_fragments_not_in_matrix"] == 1
    peaks = pq.read_table(tmp_path / "out" / "tables" / "peaks.parquet").to_pydict()
    assert peaks["window_start"] == [4488, 8688, 14638]  # centre - 512
    genome = Genome(root / "genome.fa")
    assert peaks["dna"][0] == dna_tokens(genome.fetch("chr1", 4488, 4488 + PEAK_SPAN)).tolist()
    cells = pq.read_table(tmp_path / "out" / "tables" / "cells.parquet").to_pydict()
    assert cells["library_size"] == [2, 1, 1]
    # cell 0, peak 0: four insertions (4600, 4699, 5000, 5099) of 1e4/2 each -> the top level around them
    signal = load_signal(tmp_path / "out" / "signal" / "block-000000.parquet")
    samples = pq.read_table(man.shard_path(man.shards[0])).to_pydict()
    batch = {"cell_id": np.array(samples["cell_id"]), "gene_id": np.array(samples["gene_id"]),
             "expression": np.array(samples["expression"]), "peak_ids": [np.array(p) for p in samples["peak_ids"]],
             "tss_rank": [np.array(r) for r in samples["tss_rank"]]}
    joined = join_samples(batch, None, signal, 150)
    expected = direct_atac(FRAGMENTS, BARCODES, [("chr1", w) for w in peaks["window_start"]], default_cutpoints())
    row = next(i for i in range(len(samples["cell_id"])) if samples["cell_id"][i] == 0 and samples["gene_id"][i] == 0)
    pids = samples["peak_ids"][row]
    for slot, pid in enumerate(pids):
        assert np.array_equal(joined["atac"][row, slot], expected[0, pid])
    p0 = pids.index(0)
    tokens = joined["atac"][row, p0]
    assert tokens[112 - 5:113].tolist() == [SIG_OFFSET + 35] * 6 and tokens[300] == SIG_OFFSET
    assert (joined["atac"][row, len(pids):] == SIG_PAD).all()
    # expression: log1p(counts x 1e4 / RNA total); cell 0 has 5 + 0 + 1 counts, gene A = 5
    assert samples["expression"][row] == pytest.approx(np.log1p(5 * 1e4 / 6), rel=1e-6)
    # gene A (+, TSS 5000): peak 0 overlaps the TSS -> rank 0; peak 1 downstream -> +1; peak 2 -> +2
    assert dict(zip(pids, samples["tss_rank"][row])) == {0: 0, 1: 1, 2: 2}


def test_streaming_join_equals_direct_on_simulated_atlas(sim_tiny, tmp_path, ray_local):
    res = prepare_regulatory(regulatory_config(sim_tiny / "multiome", sim_tiny / "genome.fa", sim_tiny / "genes.gtf", tmp_path / "reg", rows_per_shard=1_600, executor="ray"))
    man = Manifest(res.manifest_path)
    c = man.data["counts"]
    per_shard = 1_600 // c["genes"]  # rows_per_shard // genes cells per sample shard
    assert len(man.shards) == -(-c["cells"] // per_shard) > 1 and man.data["records"] == c["cells"] * c["genes"]
    n_peaks = man.data["tables"]["peaks"]["rows"]
    assert c["cell_peak_pairs"] < 0.5 * c["cells"] * n_peaks  # most cell x peak pairs have no fragment
    rows = regulatory_dataset(man, batch_size=64).take_all()
    assert len(rows) == man.data["records"]
    peaks = pq.read_table(tmp_path / "reg" / "tables" / "peaks.parquet").to_pydict()
    barcodes = pq.read_table(tmp_path / "reg" / "tables" / "cells.parquet").column("barcode").to_pylist()
    genome = Genome(sim_tiny / "genome.fa")
    rng = np.random.default_rng(0)
    picked = [rows[i] for i in rng.choice(len(rows), 6, replace=False)]
    frag_rows = []
    with gzip.open(sim_tiny / "multiome" / "atac_fragments.tsv.gz", "rt") as fh:
        wanted = {barcodes[r["cell_id"]] for r in picked}
        all_rows = [line.split("\t") for line in fh]
    libs = {}
    for f in all_rows:
        libs[f[3]] = libs.get(f[3], 0) + 1
        if f[3] in wanted:
            frag_rows.append((f[0], int(f[1]), int(f[2]), f[3]))
    cuts = default_cutpoints()
    for r in picked:
        bc = barcodes[r["cell_id"]]
        for slot in np.flatnonzero(r["mask"])[:10]:
            pid = int(r["peak_ids"][slot])
            ws = peaks["window_start"][pid]
            assert np.array_equal(r["dna"][slot], dna_tokens(genome.fetch(peaks["chrom"][pid], ws, ws + PEAK_SPAN)))
            expected = direct_tokens(frag_rows, bc, libs[bc], peaks["chrom"][pid], ws, cuts)
            assert np.array_equal(r["atac"][slot], expected)
        assert (r["atac"][~r["mask"]] == SIG_PAD).all() and (r["dna"][~r["mask"]] == 0).all()
    # the packed layout training streams: every sample, token for token, once unpacked
    packed = regulatory_dataset(man, batch_size=64, with_dna=False, packed=True).take_all()
    assert len(packed) == len(rows)
    by_key = {(int(r["cell_id"]), int(r["gene_id"])): r for r in packed}
    for r in rows[::7]:
        p = by_key[(int(r["cell_id"]), int(r["gene_id"]))]
        out = unpack_samples({k: np.array([v], dtype=object if k == "atac_packed" else None) for k, v in p.items()})
        width = max(1, int(r["mask"].sum()))  # trim_peak_columns keeps one column at least
        assert out["atac"].shape[1] == width and np.array_equal(out["atac"][0], r["atac"][:width])


def test_reuse_and_resume(tmp_path):
    root = make_hand_multiome(tmp_path / "hand")
    args = (root / "multiome", root / "genome.fa", root / "genes.gtf", tmp_path / "out")
    opts = {"min_cells_per_gene": 1, "rows_per_shard": 2}
    first = prepare_regulatory(regulatory_config(*args, **opts, executor="local"))
    assert len(Manifest(first.manifest_path).shards) == 3
    assert prepare_regulatory(regulatory_config(*args, **opts, executor="local")).reused
    (tmp_path / "out" / "shards" / "samples-000001.parquet").unlink()
    again = prepare_regulatory(regulatory_config(*args, **opts, executor="local"))
    assert again.built == 1 and not again.reused
    Manifest(again.manifest_path).verify()


@pytest.mark.parametrize("case, message", [
    ("unsorted", "line 6: start 9100 comes after 15010"),  # 2 header lines, then the 4th fragment
    ("malformed", "line 3: .chr1"),
    ("no_barcodes", "none of the 3 matrix barcodes"),
    ("no_tss", "none of the .* selected genes .* has a TSS"),
    ("peaks_not_in_genome", r"no peak chromosome .* \(chrZ\) is in genome"),
    ("all_cells_empty", "every cell is empty"),
    ("truncated_h5", "not a readable HDF5"),
])
def test_bad_inputs(tmp_path, case, message):
    kw = {}
    if case == "unsorted":
        kw["fragments"] = [FRAGMENTS[0], FRAGMENTS[1], FRAGMENTS[3], FRAGMENTS[2]]
    elif case == "no_barcodes":
        kw["fragments"] = [(c, s, e, b.replace("-1", "-2")) for c, s, e, b in FRAGMENTS]
    elif case == "no_tss":
        kw["gtf_chrom"] = "chr1"
    elif case == "peaks_not_in_genome":
        kw["peaks"] = (("chrZ", 4800, 5200), ("chrZ", 9000, 9400), ("chrZ", 15000, 15300))
    elif case == "all_cells_empty":
        kw["rna"] = ((0, 0, 0),) * 3
    root = make_hand_multiome(tmp_path / "hand", **kw)
    annotation = root / "genes.gtf"
    if case == "malformed":
        with gzip.open(root / "multiome" / "atac_fragments.tsv.gz", "wt") as fh:
            fh.write("# h\nchr1\t4600\t4700\tAAACAAAC-1\t1\nchr1\t5000\tAAACAAAC-1\n")
    elif case == "no_tss":
        annotation.write_text('chr1\tt\tgene\t1\t100\t.\t+\t.\tgene_id "OTHER"; gene_name "Z";\n')
    elif case == "truncated_h5":
        h5 = root / "multiome" / "filtered_feature_bc_matrix.h5"
        h5.write_bytes(h5.read_bytes()[:3000])
    with pytest.raises(InputError, match=message):
        prepare_regulatory(regulatory_config(root / "multiome", root / "genome.fa", annotation, tmp_path / "out", min_cells_per_gene=1, executor="local"))


def test_name_mismatches_are_harmonized_and_policies_counted(tmp_path):
    frags = [("1", s, e, b) for _, s, e, b in FRAGMENTS]  # Ensembl-style names in fragments and GTF
    root = make_hand_multiome(tmp_path / "hand", fragments=frags, gtf_chrom="1", rna=((5, 0, 1), (0, 3, 0), (0, 0, 0)))
    res = prepare_regulatory(regulatory_config(root / "multiome", root / "genome.fa", root / "genes.gtf", tmp_path / "out", min_cells_per_gene=1, tss_window_bp=300, executor="local"))
    c = Manifest(res.manifest_path).data["counts"]
    assert c["cells_below_min_counts"] == 1 and c["cells"] == 2
    assert c["cell_peak_pairs"] > 0  # fragments on "1" met peaks on "chr1"
    assert c["genes_without_peaks"] == 1 and c["genes"] == 2  # gene B has no peak within 300 bp: kept
    res2 = prepare_regulatory(regulatory_config(root / "multiome", root / "genome.fa", root / "genes.gtf", tmp_path / "out2", min_cells_per_gene=1, tss_window_bp=300, keep_genes_without_peaks=False, executor="local"))
    assert Manifest(res2.manifest_path).data["counts"]["genes"] == 1


@pytest.mark.realdata
def test_real_muon_pbmc_end_to_end(shared_data, tmp_path, ray_local):
    mo = shared_data / "multiome" / "test_rna_atac.h5mu"
    frag = shared_data / "multiome" / "test_rna_atac_fragments.tsv.gz"
    fa = shared_data / "genome" / "chr2_1-2333275.fa.gz"
    ann = shared_data / "annotation" / "CollapsedGeneBounds.hg38.bed.gz"
    with pytest.raises(InputError, match="174 of 174 peaks lack sequence"):  # the real DNA covers none of them
        prepare_regulatory(regulatory_config(mo, fa, ann, tmp_path / "reg", fragments=frag, executor="local"))
    res = prepare_regulatory(regulatory_config(mo, fa, ann, tmp_path / "reg", fragments=frag, executor="ray", allow_missing_sequence=True))
    man = Manifest(res.manifest_path)
    c = man.data["counts"]
    assert c["cells"] == 980 and c["matrix_cells_without_fragments"] == 20  # 980 of 1,000 barcodes have fragments
    assert c["genes_without_tss"] == 3  # TRAC, IGHD, IGHM are absent from the gene bounds
    assert c["barcodes_in_fragments_not_in_matrix"] == 24_508 - 980
    assert 0 < c["cell_peak_pairs"] < 0.2 * 980 * 174  # real scATAC sparsity
    rows = regulatory_dataset(man, batch_size=256, with_dna=False).take(50)
    assert any(r["mask"].any() and (r["atac"][r["mask"]] > SIG_OFFSET).any() for r in rows)
    peaks = pq.read_table(tmp_path / "reg" / "tables" / "peaks.parquet")
    assert not any(peaks.column("has_sequence").to_pylist())


def test_signal_is_independent_of_streaming_batch_size(sim_tiny, tmp_path, monkeypatch):
    """Small parse blocks split chromosomes into many batches (windows pending across batches):
    the sparse signal must equal the one-batch build."""
    import creformer.engine.atac_signal as atac_signal

    def signal_rows(out):
        t = pq.read_table(out / "signal" / "block-000000.parquet").to_pydict()
        return sorted(zip(t["cell"], t["peak"], map(tuple, t["pos"]), map(tuple, t["tok"])))

    big = prepare_regulatory(regulatory_config(sim_tiny / "multiome", sim_tiny / "genome.fa", sim_tiny / "genes.gtf", tmp_path / "big", executor="local"))
    monkeypatch.setattr(atac_signal, "FRAGMENT_BLOCK_BYTES", 32 << 10)
    small = prepare_regulatory(regulatory_config(sim_tiny / "multiome", sim_tiny / "genome.fa", sim_tiny / "genes.gtf", tmp_path / "small", executor="local"))
    assert Manifest(small.manifest_path).data["counts"]["cell_peak_pairs"] == Manifest(big.manifest_path).data["counts"]["cell_peak_pairs"]
    assert signal_rows(tmp_path / "small") == signal_rows(tmp_path / "big")


@pytest.mark.parametrize("layout", ["10x", "csr", "csc", "dense"])
def test_count_matrix_reads_cells_in_blocks(sim_tiny, tmp_path, layout):
    """RNA counts are read a block of cells at a time (memory flat in the number of cells): blocks,
    any cell order, row sums and a row mapping equal the whole matrix read at once."""
    import h5py
    from scipy import sparse

    from creformer.engine.io.multiome import _anndata_counts, read_multiome

    h5 = sim_tiny / "multiome" / "filtered_feature_bc_matrix.h5"
    with h5py.File(h5) as f:
        m = f["matrix"]
        whole = sparse.csc_matrix((m["data"][()], m["indices"][()], m["indptr"][()]), shape=tuple(m["shape"][()])).T.tocsr()
        is_gene = np.array([t == b"Gene Expression" for t in m["features/feature_type"][()]])
    genes = whole[:, np.flatnonzero(is_gene)].toarray().astype(np.float32)
    if layout == "10x":
        rna = read_multiome(sim_tiny / "multiome").rna
    else:
        path = tmp_path / "x.h5ad"
        with h5py.File(path, "w") as f:
            if layout == "dense":
                f["X"] = genes
            else:
                mat = sparse.csr_matrix(genes) if layout == "csr" else sparse.csc_matrix(genes)
                g = f.create_group("X")
                g.attrs["encoding-type"], g.attrs["shape"] = f"{layout}_matrix", genes.shape
                g["data"], g["indices"], g["indptr"] = mat.data, mat.indices, mat.indptr
        with h5py.File(path) as f:
            rna = _anndata_counts(path, f, "test")
    assert rna.shape == genes.shape
    rng = np.random.default_rng(0)
    order = rng.permutation(genes.shape[0])[:50]
    assert np.array_equal(rna.read(order).toarray(), genes[order])
    stacked = np.concatenate([x.toarray() for _, x in rna.blocks(size=7)])
    assert np.array_equal(stacked, genes)
    assert np.allclose(rna.row_sums(size=13), genes.sum(1))
    rna.rows, rna.n_cells = rna.rows[order], order.size  # cells in both modalities only (h5mu)
    assert np.array_equal(rna.read(np.arange(10)).toarray(), genes[order[:10]])


def test_holdout_split_is_stable_and_disjoint(sim_tiny, tmp_path):
    """Held-out cells: a stable split by cell id; the training stream never yields them and the
    held-out stream yields only them, together every sample exactly once."""
    from creformer.engine.regulatory_batches import is_holdout
    from creformer.engine.regulatory_stream import iter_regulatory_batches

    ids = np.arange(100_000)
    held = is_holdout(ids, 0.1, seed=3)
    assert abs(held.mean() - 0.1) < 0.01 and np.array_equal(held, is_holdout(ids, 0.1, seed=3))
    assert not np.array_equal(held, is_holdout(ids, 0.1, seed=4)) and not is_holdout(ids, 0.0).any()
    res = prepare_regulatory(regulatory_config(sim_tiny / "multiome", sim_tiny / "genome.fa", sim_tiny / "genes.gtf", tmp_path / "reg", min_cells_per_gene=1, executor="local"))
    keys = {}
    for role in ("train", "holdout", None):
        rows = [(int(c), int(g)) for b in iter_regulatory_batches(res.manifest_path, batch_size=64,
                                                                 holdout=None if role is None else (0.2, 0, role))
                for c, g in zip(b["cell_id"], b["gene_id"])]
        assert len(rows) == len(set(rows))
        keys[role] = set(rows)
    assert keys["train"] and keys["holdout"] and not keys["train"] & keys["holdout"]
    assert keys["train"] | keys["holdout"] == keys[None]
    assert all(is_holdout(np.array([c]), 0.2, 0)[0] for c, _ in keys["holdout"])


def test_training_order_is_shuffled_complete_and_seeded(sim_tiny, tmp_path, monkeypatch):
    """Shards are cell-major and the simulated cells are sorted by type: training reads row groups
    in a seeded random order, cuts their cells (in random order) into groups of CELLS_PER_GROUP
    and takes each group's rows together in random order, so every sample still comes exactly
    once, a batch mixes several cells from all over the file, a cell's rows stay within its group,
    and one seed gives one order."""
    from creformer.engine import regulatory_stream, sample_shards
    from creformer.engine.regulatory_stream import iter_regulatory_batches

    monkeypatch.setattr(sample_shards, "SAMPLE_ROW_GROUP", 500)  # several row groups in the tiny shard
    monkeypatch.setattr(regulatory_stream, "CELLS_PER_GROUP", 4)
    res = prepare_regulatory(regulatory_config(sim_tiny / "multiome", sim_tiny / "genome.fa", sim_tiny / "genes.gtf", tmp_path / "reg", min_cells_per_gene=1, executor="local"))

    def order(seed):
        return [(int(c), int(g)) for b in iter_regulatory_batches(res.manifest_path, batch_size=16, shuffle_seed=seed)
                for c, g in zip(b["cell_id"], b["gene_id"])]

    plain, a, b, other = order(None), order(7), order(7), order(8)
    assert sorted(a) == sorted(plain) and len(set(a)) == len(a)
    assert a == b and a != other and a != plain
    n_cells, n_genes = len({c for c, _ in plain}), len({g for _, g in plain})
    first = [c for c, _ in a[:16]]
    assert 1 < len(set(first)) <= 4  # the first batch mixes cells of one group
    visits = list(dict.fromkeys(c for c, _ in a))[:16]
    assert max(visits) - min(visits) > n_cells // 3  # the first groups' cells come from all over the file
    pos = {}
    for i, (c, _) in enumerate(a):
        pos.setdefault(c, []).append(i)
    # a cell's rows lie within its group's stretch (4 cells' rows; row-group edges may split a cell)
    assert np.median([p[-1] - p[0] for p in pos.values()]) < 4 * n_genes
    genes = [g for c, g in a if c == first[0]]
    assert genes != sorted(genes)  # and its genes in random order


def test_config_file_reproduces_a_flag_built_shard_set(tmp_path):
    """`prepare regulatory --config X.yaml` builds the shard set that the same settings given as
    flags built: the same manifest input hash and the same shard checksums."""
    root = make_hand_multiome(tmp_path / "hand")
    flags = cli_main(["prepare", "regulatory", "--multiome", str(root / "multiome"), "--genome", str(root / "genome.fa"),
                      "--annotation", str(root / "genes.gtf"), "--out", str(tmp_path / "flags"), "--min-counts", "4",
                      "--skip-genes-without-peaks", "data.executor=local", "data.regulatory.min_cells_per_gene=1"])
    assert flags == 0
    yaml_path = tmp_path / "reg.yaml"
    yaml_path.write_text(f"""data:
  genome: {root / 'genome.fa'}
  executor: local
  regulatory:
    multiome: {root / 'multiome'}
    annotation: {root / 'genes.gtf'}
    shards: {tmp_path / 'yaml'}
    min_counts: 4
    min_cells_per_gene: 1
    keep_genes_without_peaks: false
""")
    assert cli_main(["prepare", "regulatory", "--config", str(yaml_path)]) == 0
    a, b = (Manifest(tmp_path / name / "manifest.json") for name in ("flags", "yaml"))
    assert a.data["input_hash"] == b.data["input_hash"] and a.data["options"] == b.data["options"]
    assert [s["sha256"] for s in a.shards] == [s["sha256"] for s in b.shards]
    assert a.data["options"]["min_counts"] == 4 and a.data["options"]["keep_genes_without_peaks"] is False
    assert a.data["counts"]["cells_below_min_counts"] == 1  # the flags took effect


def _shard_rows(manifest_path):
    man = Manifest(manifest_path)
    rows = [r for s in man.shards for r in pq.read_table(man.shard_path(s)).to_pylist()]
    return sorted((r["cell_id"], r["gene_id"], round(r["expression"], 6), tuple(r["peak_ids"])) for r in rows)


def test_h5ad_with_fragments_and_own_peaks_equals_the_arc_folder(tmp_path):
    """An RNA-only AnnData (normalized X, raw counts in layers['counts']) + fragments + a narrowPeak
    whose overlapping and book-ended calls merge back into the ARC peaks builds the same shards."""
    import anndata as ad
    import pandas as pd

    root = make_hand_multiome(tmp_path / "hand")
    arc = prepare_regulatory(regulatory_config(root / "multiome", root / "genome.fa", root / "genes.gtf", tmp_path / "arc",
                                               min_cells_per_gene=1))
    counts = np.array(((5, 0, 1), (0, 3, 0), (2, 2, 0)), np.float32)
    adata = ad.AnnData(X=np.log1p(counts), obs=pd.DataFrame(index=BARCODES),
                       var=pd.DataFrame({"gene_ids": ["GA", "GB", "GC"]}, index=pd.Index(["A", "B", "C"], name="symbol")),
                       layers={"counts": counts})  # a named index: AnnData stores it under that name
    adata.write_h5ad(tmp_path / "rna.h5ad")
    calls = [("chr1", 4800, 5000), ("chr1", 4950, 5200), ("chr1", 9000, 9200), ("chr1", 9200, 9400), ("chr1", 15000, 15300)]
    with gzip.open(tmp_path / "peaks.narrowPeak.gz", "wt") as fh:
        fh.write("track type=narrowPeak\n")
        for i, (c, s, e) in enumerate(reversed(calls)):  # unsorted, as concatenated per-cluster calls are
            fh.write(f"{c}\t{s}\t{e}\tpeak{i}\t100\t.\t5.0\t10.0\t8.0\t50\n")
    h5ad = prepare_regulatory(regulatory_config(tmp_path / "rna.h5ad", root / "genome.fa", root / "genes.gtf", tmp_path / "h5ad",
                                                fragments=root / "multiome" / "atac_fragments.tsv.gz",
                                                peaks=tmp_path / "peaks.narrowPeak.gz", min_cells_per_gene=1))
    for table in ("peaks", "genes"):
        assert pq.read_table(tmp_path / "arc" / "tables" / f"{table}.parquet").equals(
            pq.read_table(tmp_path / "h5ad" / "tables" / f"{table}.parquet"))
    assert pq.read_table(tmp_path / "arc" / "signal" / "block-000000.parquet").equals(
        pq.read_table(tmp_path / "h5ad" / "signal" / "block-000000.parquet"))
    assert _shard_rows(arc.manifest_path) == _shard_rows(h5ad.manifest_path)
    assert {"role": "peaks"}.items() <= Manifest(h5ad.manifest_path).data["inputs"][-1].items()


def test_h5ad_input_errors_say_what_to_do(tmp_path):
    import anndata as ad
    import pandas as pd

    root = make_hand_multiome(tmp_path / "hand")
    frag = root / "multiome" / "atac_fragments.tsv.gz"
    (tmp_path / "p.bed").write_text("chr1\t4800\t5200\n")
    adata = ad.AnnData(X=np.log1p(np.array(((5, 0, 1), (0, 3, 0), (2, 2, 0)), np.float32)), obs=pd.DataFrame(index=BARCODES),
                       var=pd.DataFrame(index=["A", "B", "C"]))
    adata.write_h5ad(tmp_path / "norm.h5ad")
    cfg = regulatory_config(tmp_path / "norm.h5ad", root / "genome.fa", root / "genes.gtf", tmp_path / "o", fragments=frag)
    with pytest.raises(InputError, match="--peaks"):
        prepare_regulatory(cfg)
    cfg = regulatory_config(tmp_path / "norm.h5ad", root / "genome.fa", root / "genes.gtf", tmp_path / "o", fragments=frag,
                            peaks=tmp_path / "p.bed")
    with pytest.raises(InputError, match=r"non-integer.*layers\['counts'\]"):
        prepare_regulatory(cfg)
    (tmp_path / "bad.bed").write_text("chr1\tstart\tend\n")
    with pytest.raises(InputError, match="bad.bed, line 1: start/end"):
        prepare_regulatory(regulatory_config(root / "multiome", root / "genome.fa", root / "genes.gtf", tmp_path / "o",
                                             peaks=tmp_path / "bad.bed"))

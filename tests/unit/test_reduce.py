"""atlas_grn's streaming reductions (analysis/reduce.py, cell_files.py) equal the in-memory
computations they replace, on random scored partitions read a few at a time: group attention,
group effects, TF–gene and region–gene correlations, attention features and gene activity,
transition scores and the share of source cells moved closer, the h5ad/h5mu matrices."""

import math

import anndata as ad
import mudata as md
import numpy as np
import polars as pl
import pytest

from creformer.analysis import cell_files, reduce
from creformer.analysis.atlas_worker import PERTURB_SCHEMA, SCORE_SCHEMA
from creformer.analysis.features import knockout_matrix, peak_distance
from creformer.analysis.perturb import LN2
from creformer.analysis.transitions import fraction_closer, transition_score

N_GENES, N_PEAKS = 5, 12
GENES = pl.DataFrame({"gene_id": list(range(N_GENES)), "gene": [f"G{i}" for i in range(N_GENES)],
                      "name": [f"N{i}" for i in range(N_GENES)], "chrom": ["c"] * N_GENES,
                      "tss": [1000 + 20_000 * i for i in range(N_GENES)], "strand": ["+"] * N_GENES})
PEAKS = pl.DataFrame({"peak_id": list(range(N_PEAKS)), "chrom": ["c"] * N_PEAKS,
                      "start": [500 + 8000 * i for i in range(N_PEAKS)], "end": [700 + 8000 * i for i in range(N_PEAKS)]})
WINDOWS = {0: [0, 1, 2], 1: [2, 3, 4, 5], 2: [], 3: [6, 7], 4: [8, 9, 10, 11, 1]}  # gene 2: an empty window


def write_partitions(out, rng, n_cells=41, per_part=4):
    cells = pl.DataFrame({"cell_id": np.arange(n_cells, dtype=np.int32), "barcode": [f"B{i}" for i in range(n_cells)],
                          "group": [["a", "b", "c"][i % 3] for i in range(n_cells)]})
    rows, pert = [], []
    for c in range(n_cells):
        for g in range(N_GENES):
            if c % 7 == 3 and g == 4:
                continue  # a missing sample
            w = WINDOWS[g]
            expr = float(rng.integers(0, 4)) if g == 1 else float(rng.normal(c % 3, 1))  # ties in gene 1's maximum
            atac = np.where(rng.random(len(w)) < 0.5, 0.0, rng.random(len(w)) * 3)
            rows.append({"cell_id": c, "gene_id": g, "expression": expr, "pred": float(rng.normal(g, 0.5)), "peak_ids": w,
                         "attention": rng.random(len(w)).tolist(), "atac": atac.tolist(),
                         "ablation": (rng.normal(0, 0.1, len(w)) * (atac > 0)).tolist()})
            for cond, mode in (("T1", "KO"), ("T2", "KI")):
                if rng.random() < 0.4:
                    pert.append({"cell_id": c, "gene_id": g, "condition": cond, "mode": mode, "pred": float(rng.normal(g, 0.5))})
    rec = pl.DataFrame(rows, schema=SCORE_SCHEMA)
    pt = pl.DataFrame(pert, schema=PERTURB_SCHEMA)
    for sub in ("scores", "perturb"):
        (out / "partitions" / sub).mkdir(parents=True)
    for k, lo in enumerate(range(0, n_cells, per_part)):
        ids = list(range(lo, min(n_cells, lo + per_part)))
        rec.filter(pl.col("cell_id").is_in(ids)).write_parquet(out / "partitions" / "scores" / f"part-{k:05d}.parquet")
        pt.filter(pl.col("cell_id").is_in(ids)).write_parquet(out / "partitions" / "perturb" / f"part-{k:05d}.parquet")
    return cells, rec, pt


@pytest.fixture
def atlas(tmp_path, monkeypatch):
    monkeypatch.setattr(reduce, "ROWS_PER_READ", 50)  # reads of 2-3 partitions, partial aggregates combined along the way
    monkeypatch.setattr(reduce, "COMBINE_EVERY", 2)
    cells, rec, pt = write_partitions(tmp_path, np.random.default_rng(0))
    u = reduce.Universe.of(cells, N_GENES, [0, 3])
    return tmp_path, cells, rec, pt, u, reduce.first_pass(tmp_path, u)


def dense(rec: pl.DataFrame, col: str, cells: np.ndarray, genes: np.ndarray) -> np.ndarray:
    m = np.zeros((cells.size, genes.size))
    ci, gi = {int(c): i for i, c in enumerate(cells)}, {int(g): i for i, g in enumerate(genes)}
    for c, g, v in rec.select("cell_id", "gene_id", col).iter_rows():
        m[ci[c], gi[g]] = v
    return m


def test_group_attention_and_effects_equal_the_in_memory_tables(atlas):
    _, cells, rec, pt, u, fp = atlas
    long = (rec.select("cell_id", "gene_id", "peak_ids", "attention", "atac", "ablation")
            .explode(["peak_ids", "attention", "atac", "ablation"]).rename({"peak_ids": "peak_id"}).drop_nulls("peak_id"))
    want = (long.join(cells.select("cell_id", "group"), on="cell_id").group_by("group", "gene_id", "peak_id")
            .agg(pl.col("attention").mean(), pl.col("atac").mean(), pl.len().alias("n_cells"),
                 (pl.col("ablation").sum() / pl.max_horizontal((pl.col("atac") > 0).sum(), 1)).alias("ablation"),
                 pl.col("ablation").mean().alias("ablation_all_cells")).sort("group", "gene_id", "peak_id"))
    got = fp.gatt
    assert got.select("group", "gene_id", "peak_id").rows() == want.select("group", "gene_id", "peak_id").rows()
    for c in ("attention", "atac", "ablation", "ablation_all_cells", "n_cells"):
        assert got[c].to_numpy() == pytest.approx(want[c].to_numpy(), abs=1e-6)
    assert fp.windows == {g: pytest.approx(np.array(w)) for g, w in WINDOWS.items()}
    # group effects: untouched samples count 0
    grid = rec.select("cell_id", "gene_id", "pred").join(pt.select("condition", "mode").unique(), how="cross")
    j = grid.join(pt.rename({"pred": "pp"}), on=["cell_id", "gene_id", "condition", "mode"], how="left")
    want = (j.with_columns(((pl.col("pp").fill_null(pl.col("pred")) - pl.col("pred")) / LN2).alias("log2fc"))
            .join(cells.select("cell_id", "group"), on="cell_id").group_by("group", "condition", "mode", "gene_id")
            .agg(pl.col("log2fc").mean(), pl.col("pp").is_not_null().sum().alias("n_touched"), pl.len().alias("n_cells"))
            .sort("group", "condition", "mode", "gene_id"))
    eff = fp.effects(u.groups)
    assert eff.select("group", "condition", "mode", "gene_id", "n_touched", "n_cells").rows() == \
        want.select("group", "condition", "mode", "gene_id", "n_touched", "n_cells").rows()
    assert eff["log2fc"].to_numpy() == pytest.approx(want["log2fc"].to_numpy(), abs=1e-6)


def test_correlations_from_sums_equal_numpy(atlas):
    _, cells, rec, _, _, fp = atlas
    ids = np.arange(cells.height)
    x = dense(rec, "expression", ids, fp.genes)
    r = fp.correlation([0, None, 3])
    for j, t in enumerate([0, None, 3]):
        want = np.zeros(fp.genes.size) if t is None else np.array([np.corrcoef(x[:, t], x[:, k])[0, 1] for k in range(fp.genes.size)])
        assert r[:, j] == pytest.approx(want, abs=1e-9)
    pairs = pl.DataFrame({"gene_id": [1, 4, 0], "peak_id": [3, 1, 2]})
    got = fp.region_correlation(pairs)
    for i, (g, p) in enumerate(pairs.iter_rows()):
        sub = rec.filter(pl.col("gene_id") == g)
        pos = WINDOWS[g].index(p)
        a = np.array([v[pos] for v in sub["atac"].to_list()])
        assert got[i] == pytest.approx(np.corrcoef(a, sub["expression"].to_numpy())[0, 1], abs=1e-9)
    assert fp.prediction_r() == pytest.approx(np.corrcoef(rec["expression"], rec["pred"])[0, 1])


def test_features_transitions_and_cell_files_equal_the_dense_computation(atlas):
    out, cells, rec, pt, u, fp = atlas
    src, tgt = "a", "b"
    trans = reduce.transition_table(fp, u.groups, src, tgt, [("T1", "KO"), ("T2", "KI"), ("T3", "KO")])
    assert trans.filter(pl.col("condition") == "T3")["transition_score"].to_list() == [0.0]  # touched nothing
    trans = trans.filter(pl.col("condition") != "T3")
    sample = reduce.sample_cells(cells, 5, seed=0)
    assert sample.group_by("group").len()["len"].to_list() == [5, 5, 5]
    dist = lambda g, w: peak_distance(GENES, PEAKS, g, w)  # noqa: E731
    sp = reduce.second_pass(out, u, fp, sample, src, tgt, ("T1", "KO"), 10_000, dist, seed=0)
    # attention feature: cosine to the top-expressed cell's attention (ties: lowest id) x activity near the TSS
    got = pl.read_parquet(sorted((out / "cells").glob("part-*.parquet")))
    assert got.height == rec.height
    for g, w in WINDOWS.items():
        sub = rec.filter(pl.col("gene_id") == g).sort("cell_id")
        e = sub["expression"].to_numpy()
        mine = got.filter(pl.col("gene_id") == g).sort("cell_id")
        if not w:
            assert (mine["activity"] == 0).all() and (mine["attention_feature"] == 0).all()
            continue
        att, atac = np.array(sub["attention"].to_list()), np.array(sub["atac"].to_list())
        ref = att[int(np.argmax(e))]
        near = peak_distance(GENES, PEAKS, np.full(len(w), g), np.array(w)) <= 10_000
        act = atac[:, near].sum(1)
        cos = att @ ref / np.linalg.norm(att, axis=1) / np.linalg.norm(ref)
        assert mine["activity"].to_numpy() == pytest.approx(act, abs=1e-5)
        assert mine["attention_feature"].to_numpy() == pytest.approx(cos * act, abs=1e-5)
    # transitions: the dense states of every source cell
    ids = np.arange(cells.height)
    base = dense(rec, "pred", ids, fp.genes)
    grp = np.array(cells["group"].to_list())
    for (c, m), score in zip(zip(trans["condition"], trans["mode"]), trans["transition_score"]):
        sub = pt.filter((pl.col("condition") == c) & (pl.col("mode") == m))
        pert = base.copy()
        for cid, gid, v in sub.select("cell_id", "gene_id", "pred").iter_rows():
            pert[cid, gid] = v
        assert score == pytest.approx(transition_score(base[grp == src], base[grp == tgt], pert[grp == src]), abs=1e-6)
        assert sp.fraction_closer[(c, m)] == pytest.approx(fraction_closer(base[grp == src], base[grp == tgt], pert[grp == src]))
    shifts = pl.read_parquet(sorted((out / "shifts").glob("part-*.parquet")))
    assert set(shifts.columns) == {"cell_id", "condition", "mode", "shift_norm", "toward_target", "closer"}
    assert sp.states["source"].shape == (5, N_GENES) and sp.states["perturbed"].shape == (5, N_GENES)
    # the master-TF readout: each sampled cell's ||predicted change|| under T1's knockout (0 untouched)
    ko = knockout_matrix(sp.ko_shift, sample, ["T1", "T9", "T1"])
    sampled = np.sort(sample["cell_id"].to_numpy())
    want = np.zeros(sampled.size)
    for i, cid in enumerate(sampled):
        sub = pt.filter((pl.col("cell_id") == cid) & (pl.col("condition") == "T1") & (pl.col("mode") == "KO"))
        d = [v - base[cid, gid] for gid, v in sub.select("gene_id", "pred").iter_rows()]
        want[i] = np.sqrt(np.sum(np.square(d))) if d else 0.0
    assert (want > 0).any() and (want == 0).any()
    assert ko[:, 0] == pytest.approx(want, abs=1e-5) and ko[:, 2] == pytest.approx(want, abs=1e-5) and (ko[:, 1] == 0).all()
    # the per-cell files hold every cell, the same matrices
    meta = cells.with_columns(pl.lit(1000).alias("rna_counts"))
    feats, mu = cell_files.write_cell_files(out, fp, meta, GENES, PEAKS, sample, seed=0)
    f = ad.read_h5ad(feats)
    assert f.shape == (cells.height, N_GENES) and list(f.obs_names) == [f"B{i}" for i in range(cells.height)]
    assert f.X == pytest.approx(dense(got, "activity", ids, fp.genes), abs=1e-6)
    assert f.layers["expression"] == pytest.approx(dense(rec, "expression", ids, fp.genes), abs=1e-6)
    m = md.read_h5mu(mu)
    assert m["rna"].layers["predicted"] == pytest.approx(base, abs=1e-6)
    assert m.obsm["X_creformer"].shape[0] == cells.height and m.obsm["X_umap"].shape == (cells.height, 2)
    assert np.isfinite(m.obsm["X_umap"]).all()
    peaks_x = m["peaks"].X.toarray()
    c0 = rec.filter(pl.col("cell_id") == 0)  # peak 1 sits in genes 0 and 4's windows: the mean of the two
    a0, a4 = (c0.filter(pl.col("gene_id") == g)["atac"][0].to_list() for g in (0, 4))
    assert peaks_x[0, 1] == pytest.approx((a0[1] + a4[4]) / 2, abs=1e-6)
    assert math.isclose(peaks_x[0, 3], c0.filter(pl.col("gene_id") == 1)["atac"][0][1], abs_tol=1e-6)


def test_a_cell_in_two_partitions_is_refused(tmp_path):
    cells, rec, _ = write_partitions(tmp_path, np.random.default_rng(1), n_cells=8)
    rec.filter(pl.col("cell_id") == 0).write_parquet(tmp_path / "partitions" / "scores" / "part-00099.parquet")
    with pytest.raises(RuntimeError, match="appear in two partitions"):
        reduce.first_pass(tmp_path, reduce.Universe.of(cells, N_GENES, [0]))

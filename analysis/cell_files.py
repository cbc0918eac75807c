"""atlas_grn's per-cell files for scverse, written row block by row block: ``features.h5ad`` and
``atlas.h5mu`` (docs/formats.md). Each is first written as a skeleton by anndata / mudata
themselves (obs, var, uns: the metadata of every cell fits), then its matrices are created on disk
and filled from the partitioned ``cells/`` Parquet and the scored partitions, a few partitions at a
time, so no cells x genes or cells x peaks matrix is ever held whole.

- ``features.h5ad``: X = gene activity; layers attention_feature, expression, predicted.
- ``atlas.h5mu``: modality ``rna`` (X = measured log1p CP10k expression; layers predicted,
  attention_feature, gene_activity) and ``peaks`` (X = ATAC mass, sparse; layer attention: the
  cell's attention to the peak, mean over the genes whose window holds it); obsm ``X_creformer``
  (incremental PCA of the predicted expression) and ``X_umap`` (UMAP fitted on the seeded
  sample of cells the driver holds, every other cell placed by ``UMAP.transform``).
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import h5py
import mudata as md
import numpy as np
import pandas as pd
import polars as pl
from anndata.io import sparse_dataset, write_elem
from scipy import sparse
from sklearn.decomposition import IncrementalPCA

from .inputs import peak_regions
from .reduce import FirstPass, chunks, explode_windows, gene_columns, partition_files, place, read_groups

PCA_COMPONENTS = 20
UMAP_MIN_CELLS = 10


def _dense_dataset(group: h5py.Group, name: str, shape: tuple[int, int], dtype=np.float32) -> h5py.Dataset:
    """An on-disk dense array in AnnData's encoding (what ``write_elem`` writes for an ndarray)."""
    if name in group:
        del group[name]
    ds = group.create_dataset(name, shape=shape, dtype=dtype, chunks=(max(1, min(shape[0], 256)), max(1, shape[1])))
    ds.attrs["encoding-type"], ds.attrs["encoding-version"] = "array", "0.2.0"
    return ds


def _sparse_dataset(group: h5py.Group, name: str, n_cols: int):
    """An appendable on-disk CSR matrix with no rows yet."""
    if name in group:
        del group[name]
    write_elem(group, name, sparse.csr_matrix((0, n_cols), dtype=np.float32))
    return sparse_dataset(group[name])


def _block(df: pl.DataFrame, col: str, rows: np.ndarray, cols: np.ndarray, width: int) -> np.ndarray:
    """(len(rows), width) float32 of ``col`` at (cell row, gene column); missing samples 0."""
    return place(df, col, rows, cols, np.zeros((rows.size, width), np.float32))


def obs_table(fp: FirstPass, cells: pl.DataFrame) -> pd.DataFrame:
    """One row per analysed cell in the order of ``cells/`` (barcode index, cell_id, group, rna_counts)."""
    keep = [c for c in ("cell_id", "barcode", "group", "rna_counts") if c in cells.columns]
    obs = (pl.DataFrame({"cell_id": fp.cell_order}).join(cells.select(keep), on="cell_id", how="left", maintain_order="left")
           .to_pandas().set_index("barcode"))
    obs.index = obs.index.astype(str)
    obs["group"] = obs["group"].astype("category")
    return obs


def var_table(fp: FirstPass, genes: pl.DataFrame, index: str) -> pd.DataFrame:
    var = (pl.DataFrame({"gene_id": fp.genes}).join(genes.select("gene_id", "gene", "name", "chrom", "tss", "strand"),
                                                    on="gene_id", how="left", maintain_order="left").to_pandas())
    var.index = pd.Index(ad.utils.make_index_unique(pd.Index(var[index].astype(str))), name="gene" if index == "gene" else "gene_name")
    return var


def fit_pca(out: Path, fp: FirstPass) -> IncrementalPCA:
    """Incremental PCA of the predicted expression over every analysed cell (blocks of cells)."""
    n_comp = max(1, min(PCA_COMPONENTS, fp.cell_order.size - 1, fp.genes.size))
    cols = gene_columns(fp.genes, fp.n_genes)
    pca = IncrementalPCA(n_components=n_comp)
    buf: list[np.ndarray] = []
    files = sorted((out / "cells").glob("part-*.parquet"))
    for k, f in enumerate(files):
        df = pl.read_parquet(f, columns=["cell_id", "gene_id", "pred"])
        buf.append(_block(df, "pred", np.unique(df["cell_id"].to_numpy()), cols, fp.genes.size).astype(np.float64))
        rows = sum(b.shape[0] for b in buf)
        # a batch must hold at least n_comp cells; the last one joins the previous when short
        if rows >= max(4 * n_comp, 512) or (k == len(files) - 1 and (rows >= n_comp or not hasattr(pca, "components_"))):
            x = np.vstack(buf)
            if x.shape[0] >= n_comp:
                pca.partial_fit(x)
            buf = []
    if not hasattr(pca, "components_"):
        raise RuntimeError(f"{fp.cell_order.size} analysed cells are too few for a PCA of the predicted expression")
    return pca


def write_cell_files(out: Path, fp: FirstPass, cells: pl.DataFrame, genes: pl.DataFrame, peaks: pl.DataFrame,
                     sample: pl.DataFrame, seed: int = 0) -> list[Path]:
    """features.h5ad and atlas.h5mu for every analysed cell, written in blocks of cells."""
    n, g = fp.cell_order.size, fp.genes.size
    obs = obs_table(fp, cells)
    feats_path, mu_path = out / "features.h5ad", out / "atlas.h5mu"
    fvar = var_table(fp, genes, "gene")
    fad = ad.AnnData(obs=obs.copy(), var=fvar,
                     uns={"creformer": {"X": "gene activity: summed ATAC mass of peaks near the TSS",
                                        "attention_feature": "cos(attention(g,c), attention(g,c_max)) x gene activity"}})
    fad.write_h5ad(feats_path)
    pvar = peaks.select("peak_id", "chrom", "start", "end").join(peak_regions(peaks), on="peak_id").to_pandas().set_index("region")
    with md.set_options(pull_on_update=False):  # mudata 0.4's behaviour (obs set here), without its FutureWarning
        mdata = md.MuData({"rna": ad.AnnData(obs=obs.copy(), var=var_table(fp, genes, "name")),
                           "peaks": ad.AnnData(obs=obs.copy(), var=pvar)})
        mdata.obs["group"] = obs["group"]
        mdata.uns["creformer"] = {"rna.X": "measured expression, log1p(counts x 1e4 / rna_counts)",
                                  "X_creformer": "incremental PCA of the model's predicted expression",
                                  "X_umap": "UMAP fitted on a seeded sample of cells (analysis.driver_cells_per_group), "
                                            "the other cells placed by UMAP.transform",
                                  "peaks.layers.attention": "per-cell attention, mean over the genes whose window holds the peak"}
        mdata.write(mu_path)
    pca = fit_pca(out, fp)
    k = pca.n_components_
    row_of = {int(c): i for i, c in enumerate(fp.cell_order.tolist())}
    cols = gene_columns(fp.genes, fp.n_genes)
    sampled = set(sample["cell_id"].to_list())
    sample_rows, sample_z = [], []
    cell_parts = sorted((out / "cells").glob("part-*.parquet"))
    with h5py.File(feats_path, "r+") as ff, h5py.File(mu_path, "r+") as fm:
        fx = {name: _dense_dataset(ff if name == "X" else ff["layers"], name, (n, g))
              for name in ("X", "attention_feature", "expression", "predicted")}
        rna, pk = fm["mod/rna"], fm["mod/peaks"]
        rx = {name: _dense_dataset(rna if name == "X" else rna["layers"], name, (n, g))
              for name in ("X", "predicted", "attention_feature", "gene_activity")}
        z_ds = [_dense_dataset(grp, "X_creformer", (n, k), np.float64) for grp in (fm["obsm"], rna["obsm"])]
        p_x, p_att = _sparse_dataset(pk, "X", peaks.height), _sparse_dataset(pk["layers"], "attention", peaks.height)
        files = partition_files(out)
        if len(cell_parts) != len(read_groups(files)):
            raise RuntimeError(f"{out / 'cells'} does not match the scored partitions: run atlas_grn's analyses again")
        for (i, sc, _), part in zip(chunks(files, "atlas_grn: h5ad/h5mu"), cell_parts):
            df = pl.read_parquet(part)
            ids = np.unique(df["cell_id"].to_numpy())
            lo = row_of[int(ids[0])]
            if not np.array_equal(fp.cell_order[lo:lo + ids.size], ids):
                raise RuntimeError(f"{part} holds cells out of the order of the first pass")
            blocks = {c: _block(df, c, ids, cols, g) for c in ("expression", "pred", "activity", "attention_feature")}
            for name, col in (("X", "activity"), ("attention_feature", "attention_feature"), ("expression", "expression"),
                              ("predicted", "pred")):
                fx[name][lo:lo + ids.size] = blocks[col]
            for name, col in (("X", "expression"), ("predicted", "pred"), ("attention_feature", "attention_feature"),
                              ("gene_activity", "activity")):
                rx[name][lo:lo + ids.size] = blocks[col]
            z = pca.transform(blocks["pred"].astype(np.float64))
            for ds in z_ds:
                ds[lo:lo + ids.size] = z
            pick = np.array([c in sampled for c in ids.tolist()])
            sample_rows.append(np.flatnonzero(pick) + lo)
            sample_z.append(z[pick])
            long = explode_windows(sc.filter(pl.col("cell_id").is_in(ids.tolist())), ["cell_id"]).drop_nulls("pos")
            per = long.group_by("cell_id", "peak_id").agg(pl.col("atac").cast(pl.Float64).mean(), pl.col("attention").cast(pl.Float64).mean())
            r = np.searchsorted(ids, per["cell_id"].to_numpy())
            c = per["peak_id"].to_numpy().astype(np.int64)
            shape = (ids.size, peaks.height)
            p_x.append(sparse.csr_matrix((per["atac"].to_numpy().astype(np.float32), (r, c)), shape=shape))
            p_att.append(sparse.csr_matrix((per["attention"].to_numpy().astype(np.float32), (r, c)), shape=shape))
        write_umap(fm, rna, z_ds[0], np.concatenate(sample_rows), np.vstack(sample_z), seed)
    return [feats_path, mu_path]


def write_umap(fm: h5py.File, rna: h5py.Group, z_ds: h5py.Dataset, rows: np.ndarray, z_sample: np.ndarray, seed: int,
               block: int = 4096) -> None:
    """obsm X_umap: UMAP fitted on the sampled cells' PCA coordinates, every other cell placed by
    ``transform`` in blocks; under ``UMAP_MIN_CELLS`` sampled cells the first two components."""
    n = z_ds.shape[0]
    outs = [_dense_dataset(grp, "X_umap", (n, 2), np.float64) for grp in (fm["obsm"], rna["obsm"])]
    if rows.size < UMAP_MIN_CELLS:
        for s in range(0, n, block):
            z = z_ds[s:s + block]
            for ds in outs:
                ds[s:s + z.shape[0]] = np.pad(z[:, :2], ((0, 0), (0, max(0, 2 - z.shape[1]))))
        return
    import umap  # here: importing it compiles numba code for seconds

    reducer = umap.UMAP(n_neighbors=min(15, rows.size - 1), random_state=seed, n_jobs=1)
    fitted = reducer.fit_transform(z_sample)
    placed = np.zeros(n, bool)
    placed[rows] = True
    for s in range(0, n, block):
        e = min(n, s + block)
        todo = np.flatnonzero(~placed[s:e]) + s
        emb = np.zeros((e - s, 2))
        if todo.size:
            emb[todo - s] = reducer.transform(z_ds[s:e][todo - s])
        here = (rows >= s) & (rows < e)
        emb[rows[here] - s] = fitted[here]  # sampled cells keep the fit's own coordinates
        for ds in outs:
            ds[s:e] = emb

"""Single-cell multiome inputs: Cell Ranger ARC output, MuData ``.h5mu`` or an AnnData ``.h5ad`` pair.

All are read with h5py (no AnnData object is built). The RNA counts stay in the file: a
``CountMatrix`` reads a block of cells at a time (sparse CSR, cells x genes), so memory does not
grow with the number of cells.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from scipy import sparse

from ..errors import InputError
from .files import require_file
from .peaks import read_peaks

_INTERVAL = re.compile(r"^([^:]+)[:-](\d+)-(\d+)$")


class CountMatrix:
    """Cells x genes counts left in an HDF5 file and read a block of cells at a time.

    ``layout`` "cells": compressed storage whose ``indptr`` runs over cells (10x CSC by barcode,
    AnnData CSR); "dense": a cells x features dataset; "memory": an in-memory CSR (AnnData CSC,
    whose per-cell reads would touch the whole file). ``rows`` maps logical cells onto the file's
    rows; ``cols`` maps the file's features onto gene columns (-1: not a gene)."""

    def __init__(self, path: Path, group: str | None, layout: str, n_rows: int, cols: np.ndarray,
                 rows: np.ndarray | None = None, matrix: sparse.csr_matrix | None = None):
        self.path, self.group, self.layout = path, group, layout
        self.cols = np.asarray(cols, np.int64)
        self.n_genes = int(self.cols.max() + 1) if self.cols.size else 0
        self.rows = np.arange(n_rows, dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
        self.n_cells = int(self.rows.size)
        self._matrix = matrix
        self._all_genes = bool(np.array_equal(self.cols, np.arange(self.cols.size)))  # no column remap needed

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_cells, self.n_genes

    def read(self, cells: np.ndarray) -> sparse.csr_matrix:
        """Counts of ``cells`` (logical ids, any order) x genes, CSR float32."""
        cells = np.asarray(cells, np.int64)
        if cells.size == 0:
            return sparse.csr_matrix((0, self.n_genes), dtype=np.float32)
        fr = self.rows[cells]
        lo, hi = int(fr.min()), int(fr.max()) + 1
        if self.layout == "memory":
            block = self._matrix[lo:hi]
        else:
            try:
                with h5py.File(self.path, "r") as f:
                    g = f[self.group]
                    if self.layout == "dense":
                        block = sparse.csr_matrix(np.asarray(g[lo:hi]))
                    else:
                        ptr = g["indptr"][lo : hi + 1].astype(np.int64)
                        a, b = int(ptr[0]), int(ptr[-1])
                        block = sparse.csr_matrix((g["data"][a:b], g["indices"][a:b], ptr - a),
                                                  shape=(hi - lo, self.cols.size))
            except (KeyError, OSError, ValueError) as err:
                raise InputError(f"{self.path}: cannot read the counts of cells {lo}-{hi} ({err}); the file may be truncated") from err
        if not self._all_genes:
            block = _gene_columns(block.tocoo(), self.cols, self.n_genes)
        return block[fr - lo].astype(np.float32)

    def blocks(self, cells: np.ndarray | None = None, size: int = 4096) -> Iterator[tuple[np.ndarray, sparse.csr_matrix]]:
        """``(cells, counts)`` for consecutive chunks of ``cells`` (default: all), in their order."""
        cells = np.arange(self.n_cells) if cells is None else np.asarray(cells, np.int64)
        for i in range(0, cells.size, size):
            chunk = cells[i : i + size]
            yield chunk, self.read(chunk)

    def row_sums(self, size: int = 4096) -> np.ndarray:
        """Total gene counts per cell (one blocked pass)."""
        out = np.zeros(self.n_cells, np.float64)
        for chunk, x in self.blocks(size=size):
            out[chunk] = np.asarray(x.sum(1)).ravel()
        return out


def _gene_columns(coo: sparse.coo_matrix, cols: np.ndarray, n_genes: int) -> sparse.csr_matrix:
    """Keep the gene features of a cells x features block, as cells x genes."""
    c = cols[coo.col]
    keep = c >= 0
    return sparse.csr_matrix((coo.data[keep], (coo.row[keep], c[keep])), shape=(coo.shape[0], n_genes))


@dataclass
class Multiome:
    barcodes: np.ndarray  # (cells,) str
    gene_ids: np.ndarray  # (genes,) str
    gene_names: np.ndarray
    rna: CountMatrix  # (cells, genes) counts, read per block of cells
    peak_chrom: np.ndarray  # (peaks,) str
    peak_start: np.ndarray  # (peaks,) int64, 0-based
    peak_end: np.ndarray
    fragments: Path | None
    labels: np.ndarray | None  # (cells,) str, when the input carries a cell label
    source: Path


def _strs(ds) -> np.ndarray:
    return np.array([x.decode() if isinstance(x, bytes) else str(x) for x in ds[()]], dtype=object)


def _index(frame: h5py.Group) -> np.ndarray:
    """An AnnData obs/var group's index: the column its "_index" attribute names ("_index" unless
    the index had a name when written)."""
    return _strs(frame[frame.attrs.get("_index", "_index")])


def parse_intervals(names, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    chrom, start, end = [], [], []
    for i, name in enumerate(names):
        m = _INTERVAL.match(str(name))
        if not m:
            raise InputError(f"{where}: peak {i} is named {name!r}; expected 'chrom:start-end'")
        chrom.append(m.group(1))
        start.append(int(m.group(2)))
        end.append(int(m.group(3)))
    return np.array(chrom, dtype=object), np.array(start, np.int64), np.array(end, np.int64)


def _open_h5(path: Path) -> h5py.File:
    require_file(path, "multiome file")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise InputError(f"{path} is not a readable HDF5 file (truncated or another format): {err}") from err


def read_10x_h5(path: str | Path, fragments: str | Path | None = None) -> Multiome:
    """Cell Ranger ARC ``filtered_feature_bc_matrix.h5`` (features x barcodes, CSC by barcode). Only
    the barcodes and features are read here; counts are read per block of cells later."""
    path = Path(path)
    with _open_h5(path) as f:
        try:
            m = f["matrix"]
            shape = tuple(int(x) for x in m["shape"][()])
            for key in ("data", "indices", "indptr"):
                if key not in m:
                    raise KeyError(f"matrix/{key}")
            if m["indptr"].shape[0] != shape[1] + 1:
                raise ValueError(f"matrix/indptr has {m['indptr'].shape[0]} entries for {shape[1]} barcodes")
            barcodes = _strs(m["barcodes"])
            ftype = _strs(m["features/feature_type"])
            ids, names = _strs(m["features/id"]), _strs(m["features/name"])
        except (KeyError, OSError, ValueError) as err:
            raise InputError(f"{path}: not a complete Cell Ranger feature-barcode matrix ({err}); the file may be truncated") from err
    genes = ftype == "Gene Expression"
    peaks = ftype == "Peaks"
    if not genes.any() or not peaks.any():
        raise InputError(f"{path} needs both 'Gene Expression' and 'Peaks' features (found {sorted(set(ftype))}); "
                         "is this a Cell Ranger ARC (multiome) output?")
    chrom, start, end = parse_intervals(ids[peaks], str(path))
    cols = np.full(len(ftype), -1, np.int64)
    cols[genes] = np.arange(int(genes.sum()))
    rna = CountMatrix(path, "matrix", "cells", len(barcodes), cols)
    frag = Path(fragments) if fragments else path.parent / "atac_fragments.tsv.gz"
    return Multiome(barcodes, ids[genes], names[genes], rna, chrom, start, end,
                    frag if frag.exists() else None, None, path)


def _anndata_counts(path: Path, group: h5py.Group, where: str) -> CountMatrix:
    """The ``X`` of an AnnData group as a ``CountMatrix`` over all its features."""
    x = group["X"]
    if isinstance(x, h5py.Dataset):
        n, m = x.shape
        return CountMatrix(path, x.name, "dense", n, np.arange(m))
    enc = x.attrs.get("encoding-type", "csr_matrix")
    shape = tuple(int(v) for v in x.attrs["shape"])
    if enc == "csc_matrix":  # per-cell reads would touch every gene's column: read it once
        mat = sparse.csc_matrix((x["data"][()], x["indices"][()], x["indptr"][()]), shape=shape).tocsr()
        return CountMatrix(path, None, "memory", shape[0], np.arange(shape[1]), matrix=mat)
    if enc != "csr_matrix":
        raise InputError(f"{where}: X has encoding {enc!r}; expected a CSR/CSC matrix of counts")
    return CountMatrix(path, x.name, "cells", shape[0], np.arange(shape[1]))


def _labels(obs: h5py.Group) -> np.ndarray | None:
    for key in ("cell_type", "celltype", "label", "labels"):
        if key in obs:
            col = obs[key]
            if isinstance(col, h5py.Group):  # anndata >= 0.8 categorical
                cats = _strs(col["categories"])
                return cats[col["codes"][()]]
            cats_group = obs.get("__categories")
            if cats_group is not None and key in cats_group:
                return _strs(cats_group[key])[col[()]]
            return _strs(col)
    return None


def read_h5mu(path: str | Path, fragments: str | Path | None = None) -> Multiome:
    """MuData ``.h5mu`` with modalities ``rna`` and ``atac`` (as muon writes them)."""
    path = Path(path)
    with _open_h5(path) as f:
        try:
            rna_g, atac_g = f["mod/rna"], f["mod/atac"]
            rna = _anndata_counts(path, rna_g, f"{path}:mod/rna")
            rna_cells, atac_cells = _index(rna_g["obs"]), _index(atac_g["obs"])
            gene_names = _index(rna_g["var"])
            gene_ids = _strs(rna_g["var/gene_ids"]) if "gene_ids" in rna_g["var"] else gene_names
            peak_names = _index(atac_g["var"])
            stored = atac_g.get("uns/files/fragments")
            stored_frag = stored[()].decode() if stored is not None and isinstance(stored[()], bytes) else None
            labels = _labels(rna_g["obs"]) if "obs" in rna_g else None
        except KeyError as err:
            raise InputError(f"{path}: missing {err} (expected MuData with mod/rna and mod/atac)") from err
    if not np.array_equal(rna_cells, atac_cells):  # cells measured in both modalities only
        rna_cells, ri, _ = np.intersect1d(rna_cells, atac_cells, return_indices=True)
        rna.rows, rna.n_cells = rna.rows[ri], int(ri.size)
        labels = labels[ri] if labels is not None else None
    chrom, start, end = parse_intervals(peak_names, f"{path}:mod/atac/var")
    frag = Path(fragments) if fragments else (path.parent / stored_frag if stored_frag else None)
    if frag is not None and not frag.exists():
        raise InputError(f"{path} names fragments file {frag}, which does not exist; pass --fragments PATH")
    return Multiome(rna_cells, gene_ids, gene_names, rna, chrom, start, end, frag, labels, path)


def _counts_source(path: Path, f: h5py.File) -> tuple[h5py.Group, str, h5py.Group]:
    """Where an RNA-only AnnData keeps raw counts: ``layers/counts``, else ``raw/X``, else ``X``
    (returned as a group holding ``X``, the label, and the var group that names its columns)."""
    layers = f.get("layers")
    if layers is not None and "counts" in layers:
        return _XView(layers, "counts"), "layers['counts']", f["var"]
    if "raw" in f and "X" in f["raw"]:
        return f["raw"], "raw.X", f["raw/var"]
    return f, "X", f["var"]


class _XView(dict):
    """A one-key mapping that presents ``group[key]`` as ``X`` (for ``_anndata_counts``)."""

    def __init__(self, group: h5py.Group, key: str):
        super().__init__(X=group[key])


def _check_integer_counts(rna: CountMatrix, path: Path, where: str) -> None:
    """Expression is log-normalized from raw counts here; refuse a matrix that is already normalized."""
    sample = rna.read(np.arange(min(rna.n_cells, 200)))
    if sample.nnz and not np.allclose(sample.data, np.round(sample.data)):
        raise InputError(f"{path}: {where} holds non-integer values (e.g. {sample.data[~np.isclose(sample.data, np.round(sample.data))][0]:.3f}); "
                         "creformer normalizes raw UMI counts itself: store them in layers['counts'] (or raw.X) and retry")


def read_h5ad(path: str | Path, fragments: str | Path | None, peaks: str | Path | None) -> Multiome:
    """RNA-only AnnData ``.h5ad`` (cells x genes raw counts) + an ATAC fragments file + a peak file.
    Counts come from ``layers['counts']``, ``raw.X`` or ``X``, in that order."""
    path = Path(path)
    if not peaks:
        raise InputError(f"{path} is RNA-only AnnData: give the ATAC peaks with data.regulatory.peaks (--peaks peaks.bed "
                         "or a MACS2 narrowPeak), and the fragments with --fragments")
    if not fragments:
        raise InputError(f"{path} is RNA-only AnnData: give the ATAC fragments with data.regulatory.fragments (--fragments)")
    with _open_h5(path) as f:
        try:
            group, where, var = _counts_source(path, f)
            rna = _anndata_counts(path, group, f"{path}:{where}")
            barcodes = _index(f["obs"])
            gene_names = _index(var)
            id_col = next((k for k in ("gene_ids", "gene_id", "ensembl_id") if k in var), None)
            gene_ids = _strs(var[id_col]) if id_col else gene_names
            labels = _labels(f["obs"])
        except KeyError as err:
            raise InputError(f"{path}: missing {err} (expected an AnnData .h5ad with obs, var and X)") from err
    if rna.n_genes != len(gene_names):
        raise InputError(f"{path}: {where} has {rna.n_genes} columns but var lists {len(gene_names)} genes")
    _check_integer_counts(rna, path, where)
    ps = read_peaks(peaks)
    frag = Path(fragments)
    require_file(frag, "fragments file")
    return Multiome(barcodes, gene_ids, gene_names, rna, ps.chrom, ps.start, ps.end, frag, labels, path)


def read_multiome(path: str | Path, fragments: str | Path | None = None, peaks: str | Path | None = None) -> Multiome:
    """A Cell Ranger ARC folder or its ``filtered_feature_bc_matrix.h5``, a ``.h5mu``, or an RNA-only
    ``.h5ad`` with fragments and peaks. ``peaks`` (BED/narrowPeak) replaces the input's own peak set."""
    path = Path(path)
    if path.is_dir():
        path = path / "filtered_feature_bc_matrix.h5"
    if path.suffix == ".h5ad":
        return read_h5ad(path, fragments, peaks)
    if path.suffix == ".h5mu":
        mo = read_h5mu(path, fragments)
    elif path.suffix == ".h5":
        mo = read_10x_h5(path, fragments)
    else:
        raise InputError(f"{path}: expected a Cell Ranger ARC folder, a filtered_feature_bc_matrix.h5, a .h5mu, "
                         "or an RNA-only .h5ad with --fragments and --peaks")
    if mo.fragments is None:
        raise InputError(f"no fragments file found for {path}; pass --fragments atac_fragments.tsv.gz")
    if peaks:
        ps = read_peaks(peaks)
        mo.peak_chrom, mo.peak_start, mo.peak_end = ps.chrom, ps.start, ps.end
    return mo

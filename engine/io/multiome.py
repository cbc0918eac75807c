"""Single-cell multiome inputs: Cell Ranger ARC output, MuData ``.h5mu`` or an AnnData ``.h5ad`` pair.

All are read with h5py (no AnnData object is built): counts stay sparse (CSR, cells x features).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from scipy import sparse

from ..errors import InputError
from .fasta import _require_file

_INTERVAL = re.compile(r"^([^:]+)[:-](\d+)-(\d+)$")


@dataclass
class Multiome:
    barcodes: np.ndarray  # (cells,) str
    gene_ids: np.ndarray  # (genes,) str
    gene_names: np.ndarray
    rna: sparse.csr_matrix  # (cells, genes) counts
    peak_chrom: np.ndarray  # (peaks,) str
    peak_start: np.ndarray  # (peaks,) int64, 0-based
    peak_end: np.ndarray
    atac_library: np.ndarray  # (cells,) total ATAC counts in the peak matrix
    fragments: Path | None
    labels: np.ndarray | None  # (cells,) str, when the input carries a cell label
    source: Path


def _strs(ds) -> np.ndarray:
    return np.array([x.decode() if isinstance(x, bytes) else str(x) for x in ds[()]], dtype=object)


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
    _require_file(path, "multiome file")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise InputError(f"{path} is not a readable HDF5 file (truncated or another format): {err}") from err


def read_10x_h5(path: str | Path, fragments: str | Path | None = None) -> Multiome:
    """Cell Ranger ARC ``filtered_feature_bc_matrix.h5`` (features x barcodes, CSC by barcode)."""
    path = Path(path)
    with _open_h5(path) as f:
        try:
            m = f["matrix"]
            shape = tuple(int(x) for x in m["shape"][()])
            mat = sparse.csc_matrix((m["data"][()], m["indices"][()], m["indptr"][()]), shape=shape).T.tocsr()
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
    atac = mat[:, np.flatnonzero(peaks)]
    frag = Path(fragments) if fragments else path.parent / "atac_fragments.tsv.gz"
    return Multiome(barcodes, ids[genes], names[genes], mat[:, np.flatnonzero(genes)].tocsr(), chrom, start, end,
                    np.asarray(atac.sum(1)).ravel(), frag if frag.exists() else None, None, path)


def _anndata_csr(group: h5py.Group, where: str) -> sparse.csr_matrix:
    x = group["X"]
    if isinstance(x, h5py.Dataset):
        return sparse.csr_matrix(x[()])
    enc = x.attrs.get("encoding-type", "csr_matrix")
    shape = tuple(int(v) for v in x.attrs["shape"])
    if enc == "csc_matrix":
        return sparse.csc_matrix((x["data"][()], x["indices"][()], x["indptr"][()]), shape=shape).tocsr()
    if enc != "csr_matrix":
        raise InputError(f"{where}: X has encoding {enc!r}; expected a CSR/CSC matrix of counts")
    return sparse.csr_matrix((x["data"][()], x["indices"][()], x["indptr"][()]), shape=shape)


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
            rna = _anndata_csr(rna_g, f"{path}:mod/rna")
            atac = _anndata_csr(atac_g, f"{path}:mod/atac")
            rna_cells, atac_cells = _strs(rna_g["obs/_index"]), _strs(atac_g["obs/_index"])
            gene_names = _strs(rna_g["var/_index"])
            gene_ids = _strs(rna_g["var/gene_ids"]) if "gene_ids" in rna_g["var"] else gene_names
            peak_names = _strs(atac_g["var/_index"])
            stored = atac_g.get("uns/files/fragments")
            stored_frag = stored[()].decode() if stored is not None and isinstance(stored[()], bytes) else None
            labels = _labels(rna_g["obs"]) if "obs" in rna_g else None
        except KeyError as err:
            raise InputError(f"{path}: missing {err} (expected MuData with mod/rna and mod/atac)") from err
    if not np.array_equal(rna_cells, atac_cells):
        common, ri, ai = np.intersect1d(rna_cells, atac_cells, return_indices=True)
        rna, atac, rna_cells = rna[ri], atac[ai], common
    chrom, start, end = parse_intervals(peak_names, f"{path}:mod/atac/var")
    frag = Path(fragments) if fragments else (path.parent / stored_frag if stored_frag else None)
    if frag is not None and not frag.exists():
        raise InputError(f"{path} names fragments file {frag}, which does not exist; pass --fragments PATH")
    return Multiome(rna_cells, gene_ids, gene_names, rna.tocsr(), chrom, start, end, np.asarray(atac.sum(1)).ravel(),
                    frag, labels, path)


def read_multiome(path: str | Path, fragments: str | Path | None = None) -> Multiome:
    """A Cell Ranger ARC folder or its ``filtered_feature_bc_matrix.h5``, or a ``.h5mu``."""
    path = Path(path)
    if path.is_dir():
        path = path / "filtered_feature_bc_matrix.h5"
    if path.suffix == ".h5mu":
        mo = read_h5mu(path, fragments)
    elif path.suffix == ".h5":
        mo = read_10x_h5(path, fragments)
    else:
        raise InputError(f"{path}: expected a Cell Ranger ARC folder, a filtered_feature_bc_matrix.h5 or a .h5mu")
    if mo.fragments is None:
        raise InputError(f"no fragments file found for {path}; pass --fragments atac_fragments.tsv.gz")
    return mo

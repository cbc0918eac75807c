"""Run by an interpreter that has CellOracle (its own environment: CellOracle pins pandas <= 1.5.3
and matplotlib < 3.7): load an atlas_grn output the CellOracle way and simulate a knockout.

    $CREFORMER_CELLORACLE_PYTHON tests/integration/celloracle_check.py ATLAS_OUT TF

Prints one JSON line (what loaded, shapes, the shift's size); exits non-zero on any failure.
"""

import json
import sys
from pathlib import Path

import anndata as ad
import celloracle as co
import h5py
import numpy as np
import pandas as pd

out, tf = Path(sys.argv[1]), sys.argv[2]
with h5py.File(out / "atlas.h5mu", "r") as f:  # the RNA modality of the MuData file, read as AnnData
    adata = ad.experimental.read_elem(f["mod/rna"])
# CellOracle normalizes raw counts itself: undo log1p(counts x 1e4 / RNA total) with the stored totals
adata.X = np.rint(np.expm1(np.asarray(adata.X, dtype=np.float64)) * adata.obs["rna_counts"].to_numpy()[:, None] / 1e4)
adata.obs["group"] = adata.obs["group"].astype("category")
base = pd.read_parquet(out / "grn" / "celloracle_base_grn.parquet")

oracle = co.Oracle()
oracle.import_anndata_as_raw_count(adata=adata, cluster_column_name="group", embedding_name="X_umap")
oracle.import_TF_data(TF_info_matrix=base)
oracle.perform_PCA()
n_comps = min(10, oracle.pca.n_components_)
k = max(2, int(0.25 * oracle.adata.n_obs))
oracle.knn_imputation(n_pca_dims=n_comps, k=k, balanced=True, b_sight=k * 2, b_maxl=k, n_jobs=1)
links = oracle.get_links(cluster_name_for_GRN_unit="group", alpha=10, verbose_level=0)
links.filter_links(p=0.1, weight="coef_abs", threshold_number=2000)
oracle.get_cluster_specific_TFdict_from_Links(links_object=links)
oracle.fit_GRN_for_simulation(alpha=10, use_cluster_specific_TFdict=True, verbose_level=0)
oracle.simulate_shift(perturb_condition={tf: 0.0}, n_propagation=3)
delta = np.asarray(oracle.adata.layers["delta_X"])
print(json.dumps({"cells": int(oracle.adata.n_obs), "genes": int(oracle.adata.n_vars), "base_grn_rows": int(base.shape[0]),
                  "tfs_in_base_grn": int(base.shape[1] - 2), "links_clusters": sorted(links.links_dict),
                  "delta_abs_sum": float(np.abs(delta).sum())}))

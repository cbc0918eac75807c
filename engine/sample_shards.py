"""Cell x gene sample shards of the regulatory set: one Ray task per cell block writes one row per
(cell, gene) with its expression and its peaks' ids and TSS ranks. A sample never copies sequence
or signal: the stream joins them per cell block (engine/regulatory_batches.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import ShardError
from .shards import HashingWriter, ShardTask, write_shard_file

# Sample shards are cell-major; training shuffles by reading row groups in random order, so they
# are kept small enough (~15 MB decoded) to hold a few at once.
SAMPLE_ROW_GROUP = 16 * 1024
SAMPLE_SCHEMA = pa.schema([("cell_id", pa.int32()), ("gene_id", pa.int32()), ("expression", pa.float32()),
                           ("peak_ids", pa.list_(pa.int32())), ("tss_rank", pa.list_(pa.int16()))])


def expression_file(c0: int) -> str:
    """Work file of the expression block starting at kept cell ``c0`` (one per sample shard)."""
    return f"expr-{c0:010d}.npz"


def build_sample_shard(task: ShardTask, context: dict[str, Any], shard_dir: Path) -> dict[str, Any]:
    """Rows (cell, gene) for a block of cells x every selected gene, vectorized."""
    work = Path(context["work"])
    c0, c1 = task.payload["cells"]
    expr = np.load(work / expression_file(c0))
    indptr, indices, data = expr["indptr"], expr["indices"], expr["data"]
    n_genes = context["n_genes"]
    nc = c1 - c0
    if indptr.size != nc + 1:
        raise ShardError(f"{work / expression_file(c0)} holds {indptr.size - 1} cells, the task {nc}: "
                         "a stale work folder; delete it and rerun")
    dense = np.zeros((nc, n_genes), np.float32)
    rows = np.repeat(np.arange(nc), np.diff(indptr))
    dense[rows, indices] = data
    gflat = np.load(work / "gene_peaks.npy")
    granks = np.load(work / "gene_ranks.npy")
    goff = np.load(work / "gene_offsets.npy")
    total = int(goff[-1])
    offsets = (np.tile(goff[:-1], nc) + np.repeat(np.arange(nc, dtype=np.int64) * total, n_genes))
    offsets = np.append(offsets, nc * total).astype(np.int32)
    table = pa.table({
        "cell_id": pa.array(np.repeat(np.arange(c0, c1, dtype=np.int32), n_genes)),
        "gene_id": pa.array(np.tile(np.arange(n_genes, dtype=np.int32), nc)),
        "expression": pa.array(dense.ravel()),
        "peak_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.tile(gflat, nc))),
        "tss_rank": pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.tile(granks, nc))),
    }, schema=SAMPLE_SCHEMA)

    def write(out: HashingWriter) -> dict[str, Any]:
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf, compression="zstd", row_group_size=SAMPLE_ROW_GROUP)
        out.write(memoryview(buf.getvalue()))
        return {"records": table.num_rows, "cells": [c0, c1]}

    return write_shard_file(shard_dir / task.file, write)

"""The Regulatory stream: sample shards joined, per cell block, with peak DNA and sparse ATAC
signal (engine/regulatory_batches.py), as a Ray Data dataset for training or in-process batches
for evaluation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray.data

from .errors import ShardError
from .regulatory_batches import is_holdout, join_samples, load_peak_dna, load_signal, pack_samples, split_list
from .shards import Manifest, stable_seed, verify_shard_file


class _JoinShard:
    """Ray Data actor: one sample shard in, joined batches out (peaks loaded once per actor)."""

    def __init__(self, root: str, peak_m: int, with_dna: bool, batch_size: int, verify: bool,
                 holdout: tuple[float, int, str] | None = None, shuffle_seed: int | None = None, packed: bool = False):
        self.root, self.peak_m, self.batch_size, self.verify = Path(root), peak_m, batch_size, verify
        self.holdout, self.shuffle_seed, self.packed = holdout, shuffle_seed, packed
        if packed and with_dna:
            raise ValueError("the packed layout carries no DNA (the embedding cache reads peak DNA itself)")
        self.dna = load_peak_dna(self.root) if with_dna else None

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        for entry_json, signal_json in zip(batch["entry"], batch["signal"]):
            entry, sig_entry = json.loads(entry_json), json.loads(signal_json)
            path = self.root / "shards" / entry["file"]
            sig_path = self.root / sig_entry["file"]
            if self.verify:
                verify_shard_file(path, entry)
                verify_shard_file(sig_path, sig_entry)
            signal = load_signal(sig_path)
            for rb in self._batches(pq.ParquetFile(path), entry["file"]):
                if self.holdout is not None:
                    fraction, seed, role = self.holdout
                    held = is_holdout(rb.column("cell_id").to_numpy(), fraction, seed)
                    rb = rb.filter(pa.array(held if role == "holdout" else ~held))
                    if rb.num_rows == 0:
                        continue
                cols = {n: rb.column(n) for n in rb.schema.names}
                samples = {"cell_id": cols["cell_id"].to_numpy(), "gene_id": cols["gene_id"].to_numpy(),
                           "expression": cols["expression"].to_numpy(),
                           "peak_ids": split_list(cols["peak_ids"]), "tss_rank": split_list(cols["tss_rank"])}
                yield pack_samples(samples, signal, self.peak_m) if self.packed else join_samples(samples, self.dna, signal, self.peak_m)

    def _batches(self, pf, name: str):
        """The shard's rows in record batches: in file order, or (``shuffle_seed``) shuffled.

        Shards are cell-major, and atlases are often sorted by sample or cell type, so file order
        would feed SGD one kind of cell at a time. Shuffling reads SHUFFLE_GROUPS row groups in a
        seeded random order, cuts their cells, in random order, into groups of CELLS_PER_GROUP and
        takes each group's rows together in random order: memory stays a few row groups whatever
        the shard size, a batch mixes up to CELLS_PER_GROUP cells, and a cell's rows stay close in
        the stream, so one training worker embeds its (cell, peak) pairs once for most of its
        genes (rows shuffled over the whole chunk reached both workers: 3x the Elementary forwards
        and 1.6x the demo's Regulatory time, 2026-12-07). Until then a cell's genes came together,
        so a batch held one or two cells (the small atlas has 93 genes a cell) and each step's
        gradient followed one cell (design §5).
        """
        if self.shuffle_seed is None:
            yield from pf.iter_batches(batch_size=self.batch_size)
            return
        rng = np.random.default_rng(stable_seed(self.shuffle_seed, 0, name))
        order = rng.permutation(pf.metadata.num_row_groups)
        for i in range(0, order.size, SHUFFLE_GROUPS):
            table = pf.read_row_groups(order[i : i + SHUFFLE_GROUPS].tolist())
            cells, row_cell = np.unique(table.column("cell_id").to_numpy(), return_inverse=True)
            group = rng.permutation(cells.size)[row_cell] // CELLS_PER_GROUP
            rows = np.lexsort((rng.random(table.num_rows), group))
            yield from table.take(rows).to_batches(max_chunksize=self.batch_size)


SHUFFLE_GROUPS = 4
CELLS_PER_GROUP = 16



def _shard_items(man: Manifest, shuffle_seed: int | None = None) -> list[dict[str, str]]:
    """(sample shard, its cell block's signal) pairs, in order or in a seeded random order."""
    signal = {Path(s["file"]).name: s for s in man.data["tables"]["signal"]}
    items = [{"entry": json.dumps(e), "signal": json.dumps(signal[f"block-{i:06d}.parquet"])} for i, e in enumerate(man.shards)]
    if shuffle_seed is not None:
        items = [items[i] for i in np.random.default_rng(shuffle_seed).permutation(len(items))]
    return items


def _regulatory_manifest(manifest: str | Path | Manifest) -> Manifest:
    man = manifest if isinstance(manifest, Manifest) else Manifest(manifest)
    if man.kind != "regulatory":
        raise ShardError(f"{man.path} is a {man.kind} shard set, not regulatory")
    return man


def regulatory_dataset(manifest: str | Path | Manifest, *, batch_size: int = 32, with_dna: bool = True,
                       verify: bool = True, concurrency: int = 1, holdout: tuple[float, int, str] | None = None,
                       shuffle_seed: int | None = None, packed: bool = False):
    """A streaming ``ray.data.Dataset`` of joined Regulatory samples (one row per cell × gene):
    dna [150, 1024], atac [150, 1024], tss_rank [150], mask [150], peak_ids [150], expression,
    cell_id, gene_id. Sample shards and their cell block's signal are checksummed when opened.
    ``holdout=(fraction, seed, "train" | "holdout")`` keeps only the cells outside / inside the
    held-out split (``is_holdout``). ``shuffle_seed`` (training) visits shards and their rows in a
    seeded random order (``_JoinShard._batches``); without it the stream is in shard order.
    ``packed`` (training) streams ``pack_samples`` rows instead: the signal as packed non-zero
    tokens (``atac_packed``) in place of the dense atac, expanded where it is consumed
    (``unpack_samples``)."""
    man = _regulatory_manifest(manifest)
    items = _shard_items(man, shuffle_seed)
    peak_m = man.data["options"]["peak_m"]
    return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _JoinShard, batch_size=1, compute=ray.data.ActorPoolStrategy(size=concurrency),
        fn_constructor_kwargs={"root": str(man.root), "peak_m": peak_m, "with_dna": with_dna,
                               "batch_size": batch_size, "verify": verify, "holdout": holdout,
                               "shuffle_seed": shuffle_seed, "packed": packed})


def iter_regulatory_batches(manifest: str | Path | Manifest, *, batch_size: int = 32, with_dna: bool = False,
                            holdout: tuple[float, int, str] | None = None,
                            shuffle_seed: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """The joined batches of ``regulatory_dataset``, in this process (no Ray): in shard order, or
    in the order training reads them with ``shuffle_seed``."""
    man = _regulatory_manifest(manifest)
    join = _JoinShard(str(man.root), man.data["options"]["peak_m"], with_dna, batch_size, True, holdout, shuffle_seed)
    for item in _shard_items(man, shuffle_seed):
        yield from join({"entry": [item["entry"]], "signal": [item["signal"]]})

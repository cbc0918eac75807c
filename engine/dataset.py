"""Streams of model-ready rows from shard sets, as Ray Data datasets.

``elementary_dataset`` reads the WebDataset tar shards of ``prepare elementary`` one read task per
shard, verifies each shard's sha256 before decoding it, and yields fixed-length random crops. It
never materializes the set: rows flow through Ray Data's streaming executor, so it works with
``iter_torch_batches`` and ``streaming_split`` (one split per Ray Train worker).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ShardError
from .shards import Manifest, verify_shard_file
from .windows import RECORD_EXTS, stable_seed

CROP_LENGTHS = (128, 1024, 2048, 4096, 8192, 16384)


def iter_shard_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """Decode one elementary tar shard: dicts with key, dna (uint16[L]), sig (uint8[A, L]), meta."""
    current: dict[str, Any] = {}
    try:
        with tarfile.open(path, mode="r|") as tar:
            for member in tar:
                name = member.name
                ext = next((e for e in RECORD_EXTS if name.endswith("." + e)), None)
                if ext is None:
                    raise ShardError(f"{path}: unexpected member {name!r} (expected *.{', *.'.join(RECORD_EXTS)})")
                key = name[: -len(ext) - 1]
                if current and current["key"] != key:
                    yield _finish(current, path)
                    current = {}
                current["key"] = key
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                if ext == "meta.json":
                    current["meta"] = json.loads(data)
                else:
                    current[ext.split(".")[0]] = np.load(io.BytesIO(data), allow_pickle=False)
    except (tarfile.TarError, EOFError, ValueError) as err:
        raise ShardError(f"shard {path} cannot be decoded ({err}); delete it and rerun `creformer prepare`") from err
    if current:
        yield _finish(current, path)


def _finish(rec: dict[str, Any], path: str | Path) -> dict[str, Any]:
    missing = [k for k in ("dna", "sig", "meta") if k not in rec]
    if missing:
        raise ShardError(f"shard {path}: record {rec['key']} lacks {missing}")
    return rec


def iter_manifest_records(manifest: str | Path | Manifest, verify: bool = True) -> Iterator[dict[str, Any]]:
    """Every record of a shard set in order, without Ray (tests, inspection, small jobs)."""
    man = manifest if isinstance(manifest, Manifest) else Manifest(manifest)
    for entry in man.shards:
        if verify:
            man.verify_entry(entry)
        yield from iter_shard_records(man.shard_path(entry))


def crop_record(rec: dict[str, Any], length: int, rng: np.random.Generator, assays: list[str], keys: bool = False,
                per_window: int = 1) -> list[dict[str, Any]]:
    """Up to ``per_window`` non-overlapping random ``length``-token crops of one window.

    Rows hold int32 tokens and the present-assay mask (and the key ``sample/chrom:start-end@offset``
    when ``keys``; strings cannot go through ``iter_torch_batches``). Several crops per window reuse
    one decoded record, which matters when L is much shorter than the 32 kb window.
    """
    total = rec["dna"].shape[0]
    phase = int(rng.integers(0, total - length + 1)) if per_window == 1 else int(rng.integers(0, length))
    slots = np.arange(phase, total - length + 1, length)
    offsets = slots if per_window >= slots.size else np.sort(rng.choice(slots, per_window, replace=False))
    present = np.array([a in rec["meta"]["assays_present"] for a in assays], dtype=bool)
    rows = []
    for off in offsets.tolist():
        row = {
            "dna": rec["dna"][off : off + length].astype(np.int32),
            "sig": rec["sig"][:, off : off + length].astype(np.int32),
            "present": present,
        }
        if keys:
            row["key"] = f"{rec['key']}@{off}"
        rows.append(row)
    return rows


class _ReadCrops:
    """Ray Data ``flat_map`` callable: one shard entry in, its verified, cropped records out."""

    def __init__(self, root: str, assays: list[str], length: int, seed: int, epoch: int, verify: bool, keys: bool,
                 per_window: int):
        self.root, self.assays, self.length = root, assays, length
        self.seed, self.epoch, self.verify, self.keys, self.per_window = seed, epoch, verify, keys, per_window

    def __call__(self, row: dict[str, Any]) -> Iterator[dict[str, Any]]:
        entry = json.loads(row["entry"])
        path = Path(self.root) / "shards" / entry["file"]
        if self.verify:
            verify_shard_file(path, entry)
        rng = np.random.default_rng(stable_seed(self.seed, self.epoch, entry["file"]))
        for rec in iter_shard_records(path):
            yield from crop_record(rec, self.length, rng, self.assays, self.keys, self.per_window)


def elementary_dataset(
    manifest: str | Path | Manifest, length: int = 1024, *, seed: int = 0, epoch: int = 0,
    shuffle_shards: bool = True, verify: bool = True, keys: bool = False, crops_per_window: int = 1,
):
    """A streaming ``ray.data.Dataset`` of crops with columns dna [L], sig [A, L], present [A] (+ key).

    Every row has the same ``length`` L (one L per batch, as training requires); build one dataset
    per L to train on several. Shard order is shuffled per (seed, epoch), each shard is checksummed
    when its read task opens it, and corrupt shards raise ``ShardError`` naming the file.
    ``crops_per_window`` > 1 takes several non-overlapping crops from each decoded window.
    """
    import ray.data

    man = manifest if isinstance(manifest, Manifest) else Manifest(manifest)
    if man.kind != "elementary":
        raise ShardError(f"{man.path} is a {man.kind} shard set, not elementary")
    window = man.data["record"]["window_bp"]
    if length not in CROP_LENGTHS or length > window:
        raise ValueError(f"crop length {length} must be one of {CROP_LENGTHS} and <= the window ({window})")
    entries = list(man.shards)
    if shuffle_shards:
        order = np.random.default_rng(stable_seed(seed, epoch, "shards")).permutation(len(entries))
        entries = [entries[i] for i in order]
    items = [{"entry": json.dumps(e)} for e in entries]
    reader = _ReadCrops(str(man.root), man.data["tokenizer"]["assays"], length, seed, epoch, verify, keys,
                        crops_per_window)
    return ray.data.from_items(items, override_num_blocks=len(items)).flat_map(reader)


# ---------------------------------------------------------------------------------------------
# Regulatory samples: stream sample shards, join peaks + sparse ATAC signal per cell block
# ---------------------------------------------------------------------------------------------

def _load_signal(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A signal block as sorted (cell, peak) keys with flat positions/tokens and their offsets."""
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    if t.num_rows == 0:
        z = np.zeros(0, np.int64)
        return z, z, np.zeros(1, np.int64), np.zeros(0, np.uint16), np.zeros(0, np.uint8)
    keys = t.column("cell").to_numpy().astype(np.int64) * (1 << 32) + t.column("peak").to_numpy()
    pos = t.column("pos").combine_chunks()
    tok = t.column("tok").combine_chunks()
    offsets = pos.offsets.to_numpy().astype(np.int64)
    order = np.argsort(keys, kind="stable")
    return keys[order], order, offsets, pos.values.to_numpy(), tok.values.to_numpy()


PEAK_TOKENS = 1024  # tokens per peak (DESIGN §3: every peak's DNA is 1,024 tokens)
# A packed signal token (``pack_samples``): slot << 18 | position << 8 | token, as uint32.
_POS_SHIFT, _SLOT_SHIFT = 8, 18


def _peak_slots(samples: dict, peak_m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """peak_ids (-1 = padding), tss_rank and mask, each [B, peak_m], from the samples' peak lists."""
    b = len(samples["cell_id"])
    ids = np.full((b, peak_m), -1, np.int32)
    rank = np.zeros((b, peak_m), np.int16)
    for i, (p, r) in enumerate(zip(samples["peak_ids"], samples["tss_rank"])):
        ids[i, : len(p)] = p
        rank[i, : len(r)] = r
    return ids, rank, ids >= 0


def _signal_tokens(cell_id: np.ndarray, ids: np.ndarray, mask: np.ndarray, signal) -> tuple[np.ndarray, ...]:
    """(sample, slot, position, token) of every non-zero signal token on the batch's real peaks,
    sorted by sample: the join of the samples with a cell block's sparse signal (``_load_signal``)."""
    keys, order, offsets, pos, tok = signal
    if not keys.size:
        z = np.zeros(0, np.int64)
        return z, z, z, np.zeros(0, np.uint8)
    want = cell_id.astype(np.int64)[:, None] * (1 << 32) + np.maximum(ids, 0)
    at = np.clip(np.searchsorted(keys, want), 0, keys.size - 1)
    bi, pi = np.nonzero(mask & (keys[at] == want))
    rows = order[at[bi, pi]]
    starts, n = offsets[rows], offsets[rows + 1] - offsets[rows]
    flat = np.repeat(starts - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))  # each row's [start, end) in turn
    return np.repeat(bi, n), np.repeat(pi, n), pos[flat].astype(np.int64), tok[flat]


def join_samples(samples: dict[str, np.ndarray], peak_dna: np.ndarray | None, signal, peak_m: int) -> dict[str, np.ndarray]:
    """Dense model inputs for a batch of samples (the streaming join, also usable directly).

    Returns peak_ids / tss_rank / mask [B, peak_m], atac [B, peak_m, 1024] (uint8 signal ids: the
    zero level for real peaks without insertions, [PAD] for padding), dna [B, peak_m, 1024] when
    ``peak_dna`` is given, expression [B], cell_id and gene_id [B].
    """
    from .tokenize import SIG_OFFSET, SIG_PAD

    ids, rank, mask = _peak_slots(samples, peak_m)
    atac = np.full((len(ids), peak_m, PEAK_TOKENS), SIG_PAD, np.uint8)
    atac[mask] = SIG_OFFSET
    sb, sp, spos, stok = _signal_tokens(samples["cell_id"], ids, mask, signal)
    atac[sb, sp, spos] = stok
    out = {"cell_id": samples["cell_id"].astype(np.int32), "gene_id": samples["gene_id"].astype(np.int32),
           "expression": samples["expression"].astype(np.float32), "peak_ids": ids, "tss_rank": rank, "mask": mask,
           "atac": atac}
    if peak_dna is not None:
        dna = peak_dna[np.maximum(ids, 0)].astype(np.int32)
        dna[~mask] = 0
        out["dna"] = dna
    return out


def pack_samples(samples: dict[str, np.ndarray], signal, peak_m: int) -> dict[str, np.ndarray]:
    """``join_samples`` without the dense signal: ``atac_packed`` holds, per sample, its non-zero
    signal tokens as packed uint32 bytes (slot, position, token): 27 KB per 32 demo samples against
    4.9 MB for the dense [peak_m, 1024] array. ``unpack_samples`` rebuilds the dense batch.
    Training streams this layout: the bytes Ray Data moves per batch, not the model, had bounded
    its throughput (the dense layout kept the split coordinator busy on a core of its own)."""
    if peak_m >= 1 << (32 - _SLOT_SHIFT):
        raise ValueError(f"peak_m={peak_m} exceeds the packed layout's {1 << (32 - _SLOT_SHIFT)} peak slots")
    ids, rank, mask = _peak_slots(samples, peak_m)
    sb, sp, spos, stok = _signal_tokens(samples["cell_id"], ids, mask, signal)
    packed = ((sp.astype(np.uint32) << _SLOT_SHIFT) | (spos.astype(np.uint32) << _POS_SHIFT) | stok.astype(np.uint32))
    ends = np.cumsum(np.bincount(sb, minlength=len(ids)))
    blobs = np.empty(len(ids), dtype=object)
    blobs[:] = [chunk.tobytes() for chunk in np.split(packed, ends[:-1])] if len(ids) else []
    return {"cell_id": samples["cell_id"].astype(np.int32), "gene_id": samples["gene_id"].astype(np.int32),
            "expression": samples["expression"].astype(np.float32), "peak_ids": ids, "tss_rank": rank, "mask": mask,
            "atac_packed": blobs}


def unpack_samples(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The dense batch of ``join_samples`` (without dna) from a ``pack_samples`` batch, its peak
    columns cut to the widest sample's real peaks (``trim_peak_columns``)."""
    from .tokenize import SIG_OFFSET, SIG_PAD

    out = trim_peak_columns({k: v for k, v in batch.items() if k != "atac_packed"})
    mask = out["mask"]
    chunks = [np.frombuffer(b, np.uint32) for b in batch["atac_packed"]]
    packed = np.concatenate(chunks) if chunks else np.zeros(0, np.uint32)
    sample = np.repeat(np.arange(len(chunks)), [c.size for c in chunks])
    atac = np.full(mask.shape + (PEAK_TOKENS,), SIG_PAD, np.uint8)
    atac[mask] = SIG_OFFSET
    atac[sample, packed >> _SLOT_SHIFT, (packed >> _POS_SHIFT) & (PEAK_TOKENS - 1)] = (packed & 0xFF).astype(np.uint8)
    out["atac"] = atac
    return out


PEAK_COLUMNS = ("peak_ids", "tss_rank", "mask", "atac", "dna")


def trim_peak_columns(batch: dict) -> dict:
    """The joined batch (numpy or torch) with its per-peak columns cut to the widest sample's real
    peaks. A sample's real peaks come first and the Regulatory head zero-pads to peak_m itself, so
    predictions are unchanged, while the model no longer runs on up to peak_m padded slots (genes
    have far fewer peaks: ~35 of 150 in the simulated atlas)."""
    width = max(1, int(batch["mask"].sum(1).max()))
    return {k: v[:, :width] if k in PEAK_COLUMNS else v for k, v in batch.items()}


def load_peak_dna(root: str | Path) -> np.ndarray:
    """DNA tokens of every peak of a regulatory shard set, (peaks, tokens per peak)."""
    import pyarrow.parquet as pq

    col = pq.read_table(Path(root) / "tables" / "peaks.parquet", columns=["dna"]).column("dna").combine_chunks()
    return col.values.to_numpy().reshape(-1, col.type.list_size)


def expression_mean(root: str | Path, max_rows: int = 1_000_000) -> float:
    """Mean expression over the first ``max_rows`` samples of a regulatory shard set (an estimate
    for starting a model's output at the data's level; shards are cell blocks, so this reads the
    first cells' every gene)."""
    import pyarrow.parquet as pq

    man = Manifest(Path(root) / "manifest.json")
    total, n = 0.0, 0
    for entry in man.shards:
        for rb in pq.ParquetFile(man.root / "shards" / entry["file"]).iter_batches(batch_size=65536, columns=["expression"]):
            col = rb.column(0).to_numpy()
            total, n = total + float(col.sum(dtype=np.float64)), n + col.size
            if n >= max_rows:
                return total / n
    return total / n if n else 0.0


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
        import pyarrow as pa
        import pyarrow.parquet as pq

        for entry_json, signal_json in zip(batch["entry"], batch["signal"]):
            entry, sig_entry = json.loads(entry_json), json.loads(signal_json)
            path = self.root / "shards" / entry["file"]
            sig_path = self.root / sig_entry["file"]
            if self.verify:
                verify_shard_file(path, entry)
                verify_shard_file(sig_path, sig_entry)
            signal = _load_signal(sig_path)
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
                           "peak_ids": _split_list(cols["peak_ids"]), "tss_rank": _split_list(cols["tss_rank"])}
                yield pack_samples(samples, signal, self.peak_m) if self.packed else join_samples(samples, self.dna, signal, self.peak_m)

    def _batches(self, pf, name: str):
        """The shard's rows in record batches: in file order, or (``shuffle_seed``) shuffled.

        Shards are cell-major, and atlases are often sorted by sample or cell type, so file order
        would feed SGD one kind of cell at a time. Shuffling reads SHUFFLE_GROUPS row groups in a
        seeded random order and visits their cells in random order, each cell's genes together
        in random order: memory stays a few row groups whatever the shard size, consecutive cells
        come from distant parts of the file, and a cell's peak embeddings are computed once for
        all its genes (row-level shuffling made the embedding cache miss and training 3x slower).
        """
        if self.shuffle_seed is None:
            yield from pf.iter_batches(batch_size=self.batch_size)
            return
        rng = np.random.default_rng(stable_seed(self.shuffle_seed, 0, name))
        order = rng.permutation(pf.metadata.num_row_groups)
        for i in range(0, order.size, SHUFFLE_GROUPS):
            table = pf.read_row_groups(order[i : i + SHUFFLE_GROUPS].tolist())
            cells, row_cell = np.unique(table.column("cell_id").to_numpy(), return_inverse=True)
            rows = np.lexsort((rng.random(table.num_rows), rng.permutation(cells.size)[row_cell]))
            yield from table.take(rows).to_batches(max_chunksize=self.batch_size)


SHUFFLE_GROUPS = 4


def _split_list(arr) -> list[np.ndarray]:
    offsets = arr.offsets.to_numpy()
    values = arr.values.to_numpy()
    return [values[a:b] for a, b in zip(offsets[:-1], offsets[1:])]


def is_holdout(cell_id: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Stable held-out split of cells: the same cells in every process and run, for a seed."""
    if fraction <= 0:
        return np.zeros(np.shape(cell_id), dtype=bool)
    h = (np.asarray(cell_id, np.uint64) + np.uint64(seed)) * np.uint64(0x9E3779B97F4A7C15)
    return ((h >> np.uint64(40)) % np.uint64(1 << 20)).astype(np.float64) < fraction * (1 << 20)


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
    import ray.data

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

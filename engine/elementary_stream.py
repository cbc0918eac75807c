"""The Elementary stream: crops of the WebDataset tar shards of `prepare elementary`.

``elementary_dataset`` reads the shards one read task per shard, verifies each shard's sha256
before decoding it, and yields fixed-length random crops. It never materializes the set: rows
flow through Ray Data's streaming executor, so it works with ``iter_torch_batches`` and
``streaming_split`` (one split per Ray Train worker).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import ray.data

from creformer.config import CROP_LENGTHS

from .elementary_shards import RECORD_EXTS
from .errors import ShardError
from .shards import Manifest, stable_seed, verify_shard_file


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
    shuffle_shards: bool = True, verify: bool = True, keys: bool = False, crops_per_window: int | None = None,
):
    """A streaming ``ray.data.Dataset`` of crops with columns dna [L], sig [A, L], present [A] (+ key).

    Every row has the same ``length`` L (one L per batch, as training requires); build one dataset
    per L to train on several. Shard order is shuffled per (seed, epoch), each shard is checksummed
    when its read task opens it, and corrupt shards raise ``ShardError`` naming the file.
    ``crops_per_window`` > 1 takes several non-overlapping crops from each decoded window; by
    default every crop the window holds (window // L, from the manifest: the truth for a reused
    shard set).
    """
    man = manifest if isinstance(manifest, Manifest) else Manifest(manifest)
    if man.kind != "elementary":
        raise ShardError(f"{man.path} is a {man.kind} shard set, not elementary")
    window = man.data["record"]["window_bp"]
    if length not in CROP_LENGTHS or length > window:
        raise ValueError(f"crop length {length} must be one of {CROP_LENGTHS} and <= the window ({window})")
    if crops_per_window is None:
        crops_per_window = window // length
    entries = list(man.shards)
    if shuffle_shards:
        order = np.random.default_rng(stable_seed(seed, epoch, "shards")).permutation(len(entries))
        entries = [entries[i] for i in order]
    items = [{"entry": json.dumps(e)} for e in entries]
    reader = _ReadCrops(str(man.root), man.data["tokenizer"]["assays"], length, seed, epoch, verify, keys,
                        crops_per_window)
    return ray.data.from_items(items, override_num_blocks=len(items)).flat_map(reader)

"""Shard-set machinery shared by every engine: fingerprints, atomic writes, resumable builds, manifests.

A shard set is a folder with ``manifest.json`` (written last), ``plan.json`` (the tasks and the
input hash, written first) and ``shards/``. Each task writes its shard under a temporary name,
renames it, then writes a small ``<shard>.json`` sidecar with its record count, size and sha256.
So a killed build leaves only complete shards behind, and a rerun with the same input hash
rebuilds just the missing ones; with a manifest in place the whole set is reused.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.data
from tqdm.auto import tqdm

from creformer.config import RayConfig
from creformer.ray_utils import ensure_ray

from .errors import ShardError

SCHEMA_VERSION = 1
_FULL_HASH_LIMIT = 64 << 20
_SAMPLE_CHUNKS = 16
_CHUNK = 1 << 20


def stable_seed(*parts: object) -> int:
    """A seed that is the same in every process and Python run (unlike ``hash``)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK * 4):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(path: str | Path) -> dict[str, Any]:
    """Size and checksum of an input. Files over 64 MiB hash 16 evenly spaced 1 MiB chunks plus the
    size (a multi-GB bigWig is not re-read on every build); the kind is recorded in the manifest."""
    path = Path(path)
    size = path.stat().st_size
    if size <= _FULL_HASH_LIMIT:
        return {"path": str(path), "size": size, "checksum": sha256_file(path), "checksum_kind": "sha256"}
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as fh:
        for i in range(_SAMPLE_CHUNKS):
            fh.seek((size - _CHUNK) * i // (_SAMPLE_CHUNKS - 1))
            h.update(fh.read(_CHUNK))
    return {"path": str(path), "size": size, "checksum": h.hexdigest(), "checksum_kind": f"sha256-sampled-{_SAMPLE_CHUNKS}MiB"}


def content_hash(obj: Any) -> str:
    """Hash of a JSON-able description (sorted keys), used as the input hash of a build."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, default=str) + "\n").encode())


class HashingWriter:
    """A write-only file wrapper that hashes and counts what passes through it."""

    def __init__(self, fh):
        self._fh = fh
        self.sha = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.bytes += len(data)
        return self._fh.write(data)

    def flush(self) -> None:
        self._fh.flush()


@dataclass
class ShardTask:
    """One unit of work: builds ``file`` (relative to the set's ``shards/``) from a JSON payload."""

    index: int
    file: str
    payload: dict[str, Any]


BuildFn = Callable[[ShardTask, dict[str, Any], Path], dict[str, Any]]


def write_shard_file(final: Path, write: Callable[[HashingWriter], dict[str, Any]]) -> dict[str, Any]:
    """Run ``write`` into a temporary file, rename it to ``final``, then write its sidecar.

    ``write`` returns the per-shard statistics; the sidecar adds file, bytes and sha256."""
    tmp = final.with_name(f".tmp-{os.getpid()}-{final.name}")
    with tmp.open("wb") as fh:
        writer = HashingWriter(fh)
        stats = write(writer)
        writer.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    result = {"file": final.name, "bytes": writer.bytes, "sha256": writer.sha.hexdigest(), **stats}
    atomic_write_json(final.with_name(final.name + ".json"), result)
    return result


def damaged_shards(out: Path, manifest: dict[str, Any]) -> list[str]:
    """Shards of a finished set that are missing or have the wrong size (a cheap check on reuse)."""
    bad = []
    for entry in manifest.get("shards", []):
        path = out / "shards" / entry["file"]
        if not path.exists() or path.stat().st_size != entry["bytes"]:
            bad.append(entry["file"])
    return bad


def _completed(shard_dir: Path, task: ShardTask) -> dict[str, Any] | None:
    final = shard_dir / task.file
    if not final.exists():
        return None
    side = shard_dir / (task.file + ".json")
    if side.exists():
        return json.loads(side.read_text())
    # Killed between the rename and the sidecar: the shard is whole (it was renamed), so only its
    # digest is missing. Rebuilding is the safe choice, since its statistics are unknown.
    final.unlink()
    return None


def _run_local(tasks: list[ShardTask], context: dict[str, Any], shard_dir: Path, build: BuildFn, desc: str,
               ray_config: RayConfig) -> Iterable[dict[str, Any]]:
    for task in tqdm(tasks, desc=desc, unit="shard"):
        yield build(task, context, shard_dir)


def _ray_build_row(row: dict[str, Any]) -> dict[str, Any]:
    module, _, name = row["build"].rpartition(".")
    build: BuildFn = getattr(importlib.import_module(module), name)
    task = ShardTask(**json.loads(row["task"]))
    result = build(task, json.loads(row["context"]), Path(row["shard_dir"]))
    return {"result": json.dumps(result)}


def _run_ray(tasks: list[ShardTask], context: dict[str, Any], shard_dir: Path, build: BuildFn, desc: str,
             ray_config: RayConfig) -> Iterable[dict[str, Any]]:
    # Started here, after every input check of the caller: a wrong path fails in a second, not
    # after Ray's start-up. Never let Ray Data auto-start a node on the host's network address.
    ensure_ray(ray_config)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # one bar, ours, counting whole shards
    items = [{"task": json.dumps(t.__dict__), "context": json.dumps(context), "shard_dir": str(shard_dir),
              "build": f"{build.__module__}.{build.__qualname__}"} for t in tasks]
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map(_ray_build_row, num_cpus=1)
    for row in tqdm(ds.iter_rows(), total=len(items), desc=desc, unit="shard"):
        yield json.loads(row["result"])


@dataclass
class BuildResult:
    manifest_path: Path
    reused: bool
    built: int  # shards built in this run
    resumed: int  # shards found complete from an earlier, interrupted run


def build_shard_set(
    out: str | Path,
    *,
    kind: str,
    input_hash: str,
    tasks: list[ShardTask],
    context: dict[str, Any],
    build: BuildFn,
    manifest_extra: dict[str, Any],
    executor: str = "ray",
    overwrite: bool = False,
    summarize: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
    ray_config: RayConfig | None = None,
) -> BuildResult:
    """Build (or reuse, or resume) a shard set; returns where its manifest is. With the "ray"
    executor, a Ray is connected or started (``ray_config``, loopback defaults) only when some
    shard is left to build."""
    out = Path(out)
    manifest_path = out / "manifest.json"
    plan_path = out / "plan.json"
    shard_dir = out / "shards"
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text())
        if old.get("input_hash") == input_hash and old.get("kind") == kind:
            broken = damaged_shards(out, old)
            if not broken:
                return BuildResult(manifest_path, reused=True, built=0, resumed=0)
            # Same inputs but shards gone or truncated: drop those and resume below.
            for name in broken:
                (shard_dir / name).unlink(missing_ok=True)
                (shard_dir / (name + ".json")).unlink(missing_ok=True)
            manifest_path.unlink()
        elif not overwrite:
            raise ShardError(f"{out} holds a {old.get('kind')} shard set built from other inputs (input hash "
                             f"{old.get('input_hash', '?')[:12]} != {input_hash[:12]}); pass --overwrite or choose another --out")
    if plan_path.exists() and not manifest_path.exists():
        old_plan = json.loads(plan_path.read_text())
        if old_plan.get("input_hash") != input_hash and not overwrite:
            raise ShardError(f"{out} holds an unfinished build from other inputs; pass --overwrite to discard it or choose another --out")
    if overwrite and (manifest_path.exists() or (plan_path.exists() and json.loads(plan_path.read_text()).get("input_hash") != input_hash)):
        shutil.rmtree(shard_dir, ignore_errors=True)
        manifest_path.unlink(missing_ok=True)
    shard_dir.mkdir(parents=True, exist_ok=True)
    for stale in shard_dir.glob(".tmp-*"):
        stale.unlink()
    atomic_write_json(plan_path, {"kind": kind, "input_hash": input_hash, "tasks": [t.__dict__ for t in tasks]})

    results: dict[int, dict[str, Any]] = {}
    todo: list[ShardTask] = []
    for task in tasks:
        done = _completed(shard_dir, task)
        if done is None:
            todo.append(task)
        else:
            results[task.index] = done
    resumed = len(results)
    if todo:
        runner = _run_ray if executor == "ray" else _run_local
        by_file = {t.file: t.index for t in todo}
        for result in runner(todo, context, shard_dir, build, f"{kind} shards", ray_config or RayConfig()):
            results[by_file[result["file"]]] = result
    ordered = [results[t.index] for t in tasks]
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "input_hash": input_hash,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **manifest_extra,
        "shards": [{k: r[k] for k in ("file", "records", "bytes", "sha256")} for r in ordered],
        "records": sum(r["records"] for r in ordered),
        "bytes": sum(r["bytes"] for r in ordered),
    }
    if summarize is not None:
        manifest["counts"] = {**manifest.get("counts", {}), **summarize(ordered)}
    atomic_write_json(manifest_path, manifest)
    return BuildResult(manifest_path, reused=False, built=len(todo), resumed=resumed)


def verify_shard_file(path: Path, entry: dict[str, Any]) -> None:
    """Check a shard against its manifest entry (size, then sha256); errors say how to repair."""
    if not path.exists():
        raise ShardError(f"shard {path} listed in the manifest is missing; rerun `creformer prepare` to rebuild it")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise ShardError(f"shard {path} has {size} bytes, the manifest says {entry['bytes']}: it is truncated or "
                         "was changed; rerun `creformer prepare` (it rebuilds damaged shards)")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise ShardError(f"shard {path} fails its checksum (sha256 {digest[:12]}..., manifest {entry['sha256'][:12]}...): "
                         "it is corrupted; delete it and rerun `creformer prepare` to rebuild it")


class Manifest:
    """A loaded ``manifest.json`` with its shard paths and checksum verification."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if path.is_dir():
            path = path / "manifest.json"
        if not path.exists():
            raise ShardError(f"no manifest at {path}: the shard set was never completed; run `creformer prepare` "
                             "(a rerun resumes an interrupted build)")
        try:
            self.data: dict[str, Any] = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ShardError(f"{path} is not valid JSON ({err}); delete it and rerun `creformer prepare`") from err
        if self.data.get("schema_version") != SCHEMA_VERSION:
            raise ShardError(f"{path} has schema version {self.data.get('schema_version')}, this creformer reads {SCHEMA_VERSION}; rebuild the shards")
        self.path = path
        self.root = path.parent

    @property
    def kind(self) -> str:
        return self.data["kind"]

    @property
    def shards(self) -> list[dict[str, Any]]:
        return self.data["shards"]

    def shard_path(self, entry: dict[str, Any]) -> Path:
        return self.root / "shards" / entry["file"]

    def verify_entry(self, entry: dict[str, Any]) -> None:
        verify_shard_file(self.shard_path(entry), entry)

    def verify(self) -> None:
        for entry in self.shards:
            self.verify_entry(entry)

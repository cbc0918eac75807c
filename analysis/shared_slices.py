"""The shared embeddings of an atlas_grn run: every analysed peak's zero-signal (also knockout)
entry and the knock-in entries, computed once across the workers rather than by each. The work
is cut into slices; a worker claims a slice with an exclusive file create (atomic on a local or
NFS file system), computes it into the shared disk cache, and marks it done."""

from __future__ import annotations

import ctypes
import os
import resource
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from .perturb import perturbed_tokens

if TYPE_CHECKING:  # type hints only: the worker and the plan import this module
    from .atlas_worker import AtlasWorker
    from .plan import Prepared

SHARED_TAG = "shared-"  # cache part files of the shared-embedding pass, which every worker indexes
# Only those: the per-cell entries of other workers or earlier runs belong to cells no later
# partition scores, and indexing them would cost memory that grows with the atlas.
SHARED_FILES = f"part-{SHARED_TAG}*.arrow"
SHARED_WAIT_S = 600.0  # past this, a worker stops waiting for the shared slices and computes what it needs

def _claimant() -> str:
    return f"{socket.gethostname()} {os.getpid()}"


def stale_claim(path: Path) -> bool:
    """A claim whose worker process is gone (a worker killed mid-slice, on this host); claims of
    other hosts count as live (their end shows as SHARED_WAIT_S passing)."""
    try:
        host, pid = path.read_text().split()
    except (OSError, ValueError):
        return False  # being written, or from an older run
    if host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def claim_slice(work: Path, i: int) -> bool:
    """Take shared slice ``i`` for this worker: True for exactly one caller (an exclusive create,
    atomic on a local or NFS file system), which then computes it; a slice whose claimant died
    without finishing it is taken over (two workers doing so at once compute the same entries)."""
    path = work / "shared_claim" / f"slice-{i:05d}"
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        if (work / "shared_done" / path.name).exists() or not stale_claim(path):
            return False
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(_claimant())
        os.replace(tmp, path)
        print(f"[atlas_grn] shared slice {i}: its worker died before finishing it; taken over", flush=True)
        return True
    with os.fdopen(fd, "w") as fh:
        fh.write(_claimant())
    return True


def embed_slice(w: AtlasWorker, i: int) -> int:
    """Compute shared slice ``i`` (every analysed peak's zero signal, which is also the knockout
    signal, and the knock-in level of the peaks a knock-in touches) into the shared disk cache;
    returns the entries computed."""
    length = w.tables.peak_dna.shape[1]
    spec = w.slices[i]
    n = w.cache.ensure(spec["peaks"], perturbed_tokens("KO", None, length))  # ensure runs without autograd
    n += w.cache.ensure(spec["ki_peaks"], perturbed_tokens("KI", w.ki_profile, length))
    w.cache.flush(tag=SHARED_TAG)
    (w.work / "shared_done" / f"slice-{i:05d}").touch()  # its entries are on disk
    return n


def peak_rss_mb() -> float:
    """This process's peak resident set so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_status() -> dict[str, float]:
    """This process's resident memory now, by kind (MB): anonymous (heap), file-backed (memory-mapped
    files), shared memory (e.g. Ray's object store), and the thread that ran the call; empty off
    Linux. Recorded per partition, so that a worker's growth can be traced to its kind."""
    import threading

    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    keys = ("VmRSS", "RssAnon", "RssFile", "RssShmem", "Threads")
    out: dict[str, float] = {}
    for line in lines:
        name, _, rest = line.partition(":")
        if name in keys:
            v = int(rest.split()[0])
            out[name] = v if name == "Threads" else round(v / 1024, 1)
    out["thread"] = threading.get_ident()
    out.update(_malloc_info())
    return out


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                                "uordblks", "fordblks", "keepcost")]


def _mallinfo2():
    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):  # not glibc, or older than 2.33
        return None
    fn.restype = _MallInfo2
    return fn


_MALLINFO2 = _mallinfo2()


def _malloc_info() -> dict[str, float]:
    """glibc's heap: bytes in use, free (kept by malloc), and in mmapped chunks (MB); empty off glibc."""
    if _MALLINFO2 is None:
        return {}
    m = _MALLINFO2()
    return {"malloc_used": round(m.uordblks / 2**20, 1), "malloc_free": round(m.fordblks / 2**20, 1),
            "malloc_mmap": round(m.hblkhd / 2**20, 1)}


def embed_shared(w: AtlasWorker, item: dict[str, Any]) -> dict[str, Any]:
    """A shared-slice work item: computes the slice unless a worker already took it."""
    t0 = time.perf_counter()
    n = embed_slice(w, item["slice"]) if claim_slice(w.work, item["slice"]) else 0
    return {"index": -1, "samples": 0, "perturbed": 0, "seconds": time.perf_counter() - t0, "cache_hits": 0, "cache_misses": n,
            "observed_forwards": 0, "max_rss_mb": peak_rss_mb()}


def ensure_shared(w: AtlasWorker) -> int:
    """Before a worker's first partition: every shared slice on disk. The worker computes the
    slices nobody has taken yet (returns how many entries), then waits for the ones other workers
    are computing. Ray Data does not keep the input order per actor (measured: an actor got
    partition 0 before the shared slice queued ahead of it), so waiting for slices another actor
    merely has queued could wait on itself; a taken slice is always being computed, so this wait
    ends; a claim whose worker died on this host is taken over at the next sweep. Past SHARED_WAIT_S
    (a worker on another host died mid-slice) the worker computes what it needs itself."""
    n = len(w.slices)
    computed = 0
    t0 = time.perf_counter()
    while True:
        # untaken slices, and (on later sweeps) slices whose claimant died meanwhile: claim_slice decides
        computed += sum(embed_slice(w, i) for i in range(n) if claim_slice(w.work, i))
        if len(list((w.work / "shared_done").glob("slice-*"))) >= n:
            break
        if time.perf_counter() - t0 > SHARED_WAIT_S:
            print(f"[atlas_grn] shared embeddings not all on disk after {SHARED_WAIT_S:.0f} s; this worker computes "
                  f"the ones it needs itself", flush=True)
            break
        time.sleep(0.05)
    return computed



def shared_items(p: Prepared, n_items: int, max_peaks: int = 4096) -> list[dict[str, Any]]:
    """The cache entries every partition would otherwise compute on its own, in at least
    ``n_items`` slices of at most ``max_peaks`` peaks (a genome-wide atlas has ~1 M): each
    analysed peak's zero signal (also the knockout signal) and, for the peaks bound by a perturbed
    TF's motif, the knock-in level. Analysed peaks: those within ``tss_window_bp`` of an analysed
    gene's TSS (all peaks when every gene is analysed)."""
    peaks, genes = p.tables.peaks, p.tables.genes
    if p.genes:
        half = int(p.tables.manifest.data["options"]["tss_window_bp"])
        tss = genes.filter(pl.col("gene_id").is_in(p.genes)).select("chrom", "tss")
        near = peaks.join(tss, on="chrom").filter(((pl.col("start") + pl.col("end")) // 2 - pl.col("tss")).abs() <= half)
        ids = np.unique(near["peak_id"].to_numpy())
    else:
        ids = peaks["peak_id"].to_numpy()
    motifs = sorted({m for c in p.conditions if c.mode == "KI" for m in c.motifs})
    ki = ids[p.perturb_bound[ids][:, motifs].any(1)] if motifs else ids[:0]
    n = max(1, min(ids.size, max(n_items, -(-ids.size // max_peaks))))
    return [{"kind": "shared", "slice": i, "peaks": ids[i::n].tolist(), "ki_peaks": ki[i::n].tolist()} for i in range(n)]



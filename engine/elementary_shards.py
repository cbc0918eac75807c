"""`prepare elementary`: genome FASTA + bulk bigWig tracks → checksummed WebDataset token shards.

Windows are non-overlapping genome tiles of data.window_bp tokens (window_bp + 5 bases), sampled
per sample; each shard is built by one Ray Data task (docs/design.md §3)."""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from creformer.config import Config

from .errors import InputError
from .io.bigwig import Track
from .io.chroms import harmonize
from .io.fasta import Genome
from .io.samples import Sample, read_samples
from .shards import (
    BuildResult,
    HashingWriter,
    ShardTask,
    build_shard_set,
    content_hash,
    fingerprint,
    stable_seed,
    write_shard_file,
)
from .tokenize import _LUT, SIG_PAD, K, Runs, dna_tokens, signal_tokens_runs, tokenizer_spec


@dataclass(frozen=True, order=True)
class Window:
    chrom: str
    start: int
    end: int  # start + window_bp + K - 1: the bases that window_bp tokens read

    def key(self, sample: str) -> str:
        return f"{sample}/{self.chrom}:{self.start}-{self.end}"


@dataclass
class Candidates:
    windows: list[Window]
    skipped_n: int  # tiles excluded for too many N bases
    n_fraction: dict[Window, float]


def candidate_windows(genome: Genome, window_bp: int, max_n_fraction: float) -> Candidates:
    """Tile every chromosome with non-overlapping spans and drop spans with > max_n_fraction N."""
    span = window_bp + K - 1
    kept: list[Window] = []
    nfrac: dict[Window, float] = {}
    skipped = 0
    for chrom, length in genome.lengths.items():
        for start in range(0, length - span + 1, span):
            seq = np.frombuffer(genome.fetch(chrom, start, start + span), dtype=np.uint8)
            frac = float(np.count_nonzero(np.take(_LUT, seq) == 4)) / span
            if frac > max_n_fraction:
                skipped += 1
                continue
            w = Window(chrom, start, start + span)
            kept.append(w)
            nfrac[w] = frac
    return Candidates(kept, skipped, nfrac)


def sample_windows(candidates: list[Window], n: int, sample: str, seed: int) -> list[Window]:
    """Up to ``n`` distinct windows for one sample, seeded by (seed, sample), in genome order."""
    if n >= len(candidates):
        return list(candidates)
    rng = np.random.default_rng(stable_seed(seed, sample))
    pick = np.sort(rng.choice(len(candidates), size=n, replace=False))
    return [candidates[i] for i in pick]


# ---------------------------------------------------------------------------------------------
# Records and the `prepare elementary` build
# ---------------------------------------------------------------------------------------------


RECORD_EXTS = ("dna.npy", "sig.npy", "meta.json")
# Adjacent windows are read as one region of at most 8 windows (a bounded, cache-friendly buffer; 8
# beat 4 and 16 in benchmarks/elementary_shards.py), bridging gaps of up to 3 windows: reading a
# skipped 32 kb tile costs less than the fixed cost of another read.
REGION_MAX_WINDOWS = 8
REGION_MAX_GAP_WINDOWS = 3
_OPEN: dict[str, Any] = {}  # per-process cache of open genome/track handles (Ray workers reuse them)


def _open_genome(path: str) -> Genome:
    if path not in _OPEN:
        _OPEN[path] = Genome(path)
    return _OPEN[path]


def _open_track(path: str, chrom_map: dict[str, str]) -> Track:
    key = f"{path}\x1f{sorted(chrom_map.items())}"
    if key not in _OPEN:
        _OPEN[key] = Track(path, chrom_map)
    return _OPEN[key]


def tokenize_window(
    genome: Genome, tracks: dict[str, Track], window: Window, assays: list[str], cuts: dict[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """DNA tokens uint16[L] and signal tokens uint8[n_assays, L] of one window, plus its counts."""
    return tokenize_region(genome, tracks, [window], assays, cuts)[0]


def tokenize_region(
    genome: Genome, tracks: dict[str, Track], windows: list[Window], assays: list[str], cuts: dict[str, np.ndarray],
) -> list[tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
    """``tokenize_window`` for windows of one chromosome in genome order, read as one region.

    One FASTA fetch and one bigWig read per track cover the region from the first window's start
    to the last one's end (gaps between windows included): each read has a fixed cost (index
    lookup, decompressing the blocks at both ends) that dominates for 32 kb windows. The windows'
    bases are then packed end to end (gaps dropped) and tokenized at once: a token depends only on
    its own 6 bases, so a window's tokens are a slice of the packed tokens (the tokens that would
    straddle two packed windows are never used)."""
    chrom, start, end = windows[0].chrom, windows[0].start, windows[-1].end
    spans = [w.end - w.start for w in windows]
    offsets = np.concatenate(([0], np.cumsum(spans)[:-1])).tolist()  # in the packed array
    packed = sum(spans)
    local = [(w.start - start, w.end - start) for w in windows]  # slices of the region to keep

    def pack(region: np.ndarray, dst: np.ndarray) -> None:
        for (lo, hi), off in zip(local, offsets):
            dst[off : off + hi - lo] = region[lo:hi]

    seq = np.frombuffer(genome.fetch(chrom, start, end), dtype=np.uint8)
    if packed != end - start:
        packed_seq = np.empty(packed, dtype=np.uint8)
        pack(seq, packed_seq)
        seq = packed_seq
    dna_all = dna_tokens(seq)
    present = [a for a in assays if a in tracks]
    rows = [assays.index(a) for a in present]
    sig_all = np.full((len(assays), packed - K + 1), SIG_PAD, dtype=np.uint8)
    missing = np.zeros((len(present), len(windows)), dtype=np.int64)
    negative = np.zeros_like(missing)
    if present:
        values = np.empty((len(present), packed), dtype=np.float32)
        for row, assay in enumerate(present):
            pack(tracks[assay].values(chrom, start, end), values[row])
        sig_all[rows], runs = signal_tokens_runs(values, [cuts[a] for a in present])
        missing, negative = _bad_value_counts(runs, offsets, spans)
    out = []
    for i, (w, off, span) in enumerate(zip(windows, offsets, spans)):
        n = span - K + 1
        meta = {
            "chrom": w.chrom, "start": w.start, "end": w.end,
            "assays_present": present,
            "assays_missing": [a for a in assays if a not in tracks],
            "tracks_without_data": [a for r, a in enumerate(present) if missing[r, i] == span],
            "missing_values": {a: int(missing[r, i]) for r, a in enumerate(present)},
            "negative_values": {a: int(negative[r, i]) for r, a in enumerate(present)},
        }
        out.append((dna_all[off : off + n], sig_all[:, off : off + n], meta))
    return out


def _bad_value_counts(runs: Runs, offsets: list[int], spans: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per (track, window) of a region: values without data and negative values (the counts
    ``SignalStats`` keeps), from the runs rather than another pass over the bases."""
    a = runs.rows
    rows = np.repeat(np.arange(a), len(offsets))
    lo = np.tile(np.asarray(offsets, np.int64), a)
    hi = lo + np.tile(np.asarray(spans, np.int64), a)
    missing = runs.count(runs.missing(), rows, lo, hi).reshape(a, len(offsets))
    negative = runs.count(runs.values < 0, rows, lo, hi).reshape(a, len(offsets))
    return missing, negative


def window_runs(windows: list[list[Any]], max_gap_bp: int, max_region_bp: int) -> list[list[int]]:
    """Indices of ``[sample, chrom, start, end]`` windows grouped into regions read in one go: same
    sample and chromosome, in order, gaps of at most ``max_gap_bp``, at most ``max_region_bp``."""
    runs: list[list[int]] = []
    for i, (sample, chrom, start, end) in enumerate(windows):
        if runs:
            first, last = windows[runs[-1][0]], windows[runs[-1][-1]]
            if (sample == last[0] and chrom == last[1] and 0 <= start - last[3] <= max_gap_bp
                    and end - first[2] <= max_region_bp):
                runs[-1].append(i)
                continue
        runs.append([i])
    return runs


_NPY_HEADERS: dict[tuple[str, tuple[int, ...]], bytes] = {}


def _npy_header(arr: np.ndarray) -> bytes:
    """The .npy v1 header of ``arr`` (the array bytes follow it as they are in memory); cached, as
    every record has the same few shapes."""
    key = (arr.dtype.str, arr.shape)
    if key not in _NPY_HEADERS:
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, np.lib.format.header_data_from_array_1_0(arr))
        _NPY_HEADERS[key] = buf.getvalue()
    return _NPY_HEADERS[key]


def _tarinfo_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0  # identical inputs give byte-identical shards
    info.mode = 0o644
    return info.tobuf(format=tarfile.USTAR_FORMAT)


# The header of a regular file as tarfile writes it, with an empty name, size 0 and the checksum
# field blank (8 spaces, as the checksum is computed): per member only those three change.
_TAR_TEMPLATE = bytearray(_tarinfo_header("", 0))
_TAR_TEMPLATE[148:156] = b" " * 8


def _tar_header(name: str, size: int) -> bytes:
    """``tarfile``'s USTAR header for a file member, byte for byte, without building a TarInfo
    (a third of the write cost for 32 kb records). Long names go through tarfile."""
    raw = name.encode("utf-8")
    if len(raw) > 99 or size >= 8**11:
        return _tarinfo_header(name, size)
    h = bytearray(_TAR_TEMPLATE)
    h[: len(raw)] = raw
    h[124:136] = b"%011o\0" % size
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def _add_member(out: HashingWriter, name: str, parts: list[bytes | memoryview]) -> None:
    """Append one tar member straight to the stream: header, data, zero padding to 512 bytes."""
    size = sum(len(p) for p in parts)
    out.write(_tar_header(name, size))
    for part in parts:
        out.write(part)
    if size % 512:
        out.write(b"\0" * (512 - size % 512))


def _add_array(out: HashingWriter, name: str, arr: np.ndarray) -> None:
    arr = np.ascontiguousarray(arr)
    _add_member(out, name, [_npy_header(arr), memoryview(arr).cast("B")])


def build_elementary_shard(task: ShardTask, context: dict[str, Any], shard_dir: Path) -> dict[str, Any]:
    """Build one WebDataset tar shard of windows (runs in a Ray task or in-process)."""
    assays: list[str] = context["assays"]
    cuts = {a: np.asarray(c, dtype=np.float64) for a, c in context["cutpoints"].items()}
    genome = _open_genome(context["genome"])

    def write(out: HashingWriter) -> dict[str, Any]:
        counts = {"records": 0, "missing_values": {a: 0 for a in assays}, "negative_values": {a: 0 for a in assays},
                  "tracks_without_data": {a: 0 for a in assays}, "assay_missing_windows": {a: 0 for a in assays}}
        listed = task.payload["windows"]
        span = int(listed[0][3]) - int(listed[0][2]) if listed else 0
        for run in window_runs(listed, max_gap_bp=REGION_MAX_GAP_WINDOWS * span, max_region_bp=REGION_MAX_WINDOWS * span):
            sample, chrom = listed[run[0]][0], listed[run[0]][1]
            spec = context["samples"][sample]
            tracks = {a: _open_track(spec[a]["path"], spec[a]["chrom_map"]) for a in assays if a in spec}
            windows = [Window(chrom, listed[i][2], listed[i][3]) for i in run]
            for window, (dna, sig, meta) in zip(windows, tokenize_region(genome, tracks, windows, assays, cuts)):
                meta["sample"] = sample
                key = window.key(sample)
                _add_array(out, f"{key}.dna.npy", dna)
                _add_array(out, f"{key}.sig.npy", sig)
                _add_member(out, f"{key}.meta.json", [json.dumps(meta, sort_keys=True).encode()])
                counts["records"] += 1
                for a in assays:
                    counts["missing_values"][a] += meta["missing_values"].get(a, 0)
                    counts["negative_values"][a] += meta["negative_values"].get(a, 0)
                    counts["tracks_without_data"][a] += a in meta["tracks_without_data"]
                    counts["assay_missing_windows"][a] += a in meta["assays_missing"]
        out.write(b"\0" * 1024)  # tar end-of-archive: two zero blocks
        return counts

    return write_shard_file(shard_dir / task.file, write)


def _sum_counts(results: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for r in results:
        for key in ("missing_values", "negative_values", "tracks_without_data", "assay_missing_windows"):
            bucket = total.setdefault(key, {})
            for assay, n in r[key].items():
                bucket[assay] = bucket.get(assay, 0) + n
    return total


def _record_bytes(window_bp: int, n_assays: int) -> int:
    return 2 * window_bp + n_assays * window_bp + 3 * 512 + 2 * 128 + 512


def _check_track_covers(track: Track, windows: list[Window], sample: str, assay: str) -> None:
    """Error when a bigWig has no data in any of the sample's windows (wrong file or assembly)."""
    if any(track.has_data(w.chrom, w.start, w.end) for w in windows):
        return
    chroms = sorted({w.chrom for w in windows})
    raise InputError(
        f"bigWig {track.path} ({sample}, {assay}) has no data in any of the sample's {len(windows)} windows "
        f"on {', '.join(chroms[:5])}{' ...' if len(chroms) > 5 else ''} (its chromosomes: "
        f"{', '.join(list(track.chrom_sizes)[:5])}); check the genome assembly and the samples table"
    )


def prepare_elementary(cfg: Config, *, overwrite: bool = False) -> BuildResult:
    """FASTA + bigWig tracks → checksummed WebDataset token shards (docs/design.md §3), as ``cfg.data`` says."""
    d = cfg.data
    if not (d.samples and d.genome):
        raise InputError("prepare elementary needs data.samples and data.genome (config keys, or --samples / --genome)")
    samples_tsv, genome_path, out, assays = d.samples, d.genome, d.shards, d.assays
    window_bp, windows_per_sample, max_n_fraction = d.window_bp, d.windows_per_sample, d.max_n_fraction
    shard_size_mb, seed, executor = d.shard_size_mb, d.seed, d.executor
    samples: list[Sample] = read_samples(samples_tsv, assays)
    genome = Genome(genome_path)
    spec = tokenizer_spec(assays)
    cand = candidate_windows(genome, window_bp, max_n_fraction)
    if not cand.windows:
        raise InputError(f"genome {genome_path} has no {window_bp + K - 1}-bp window with <= {max_n_fraction:.0%} N "
                         f"(chromosomes: {', '.join(f'{c}={n}' for c, n in list(genome.lengths.items())[:5])}); "
                         "use a larger genome or lower data.window_bp")
    ctx_samples: dict[str, dict[str, Any]] = {}
    inputs = [{"role": "genome", **fingerprint(genome_path)}]
    windows: list[tuple[str, Window]] = []
    for sample in samples:
        picked = sample_windows(cand.windows, windows_per_sample, sample.name, seed)
        ctx_samples[sample.name] = {}
        for assay, path in sample.tracks.items():
            track = Track(path)
            cmap = harmonize(track.chrom_sizes, genome.chroms, query_label=f"bigWig {path}", target_label=f"genome {genome_path}")
            inverse = {g: t for t, g in cmap.items()}
            track.chrom_map = inverse
            _check_track_covers(track, picked, sample.name, assay)
            track.close()
            ctx_samples[sample.name][assay] = {"path": str(path), "chrom_map": inverse}
            # Recorded, not silently dropped: chromosomes of the track that the genome lacks.
            unmatched = sorted(set(track.chrom_sizes) - set(cmap))
            inputs.append({"role": f"track:{sample.name}:{assay}", **fingerprint(path), "chroms_not_in_genome": unmatched})
        windows += [(sample.name, w) for w in picked]
    params = {"window_bp": window_bp, "windows_per_sample": windows_per_sample, "max_n_fraction": max_n_fraction,
              "shard_size_mb": shard_size_mb, "seed": seed}
    # Paths are left out of the hash: moving identical files does not invalidate the shards.
    input_hash = content_hash({"kind": "elementary", "tokenizer": spec, "params": params,
                               "inputs": [{k: v for k, v in i.items() if k != "path"} for i in inputs]})
    per_shard = max(1, (shard_size_mb << 20) // _record_bytes(window_bp, len(assays)))
    tasks = [ShardTask(i, f"elementary-{i:06d}.tar",
                       {"windows": [[s, w.chrom, w.start, w.end] for s, w in windows[j : j + per_shard]]})
             for i, j in enumerate(range(0, len(windows), per_shard))]
    context = {"genome": str(Path(genome_path).resolve()), "assays": assays, "samples": ctx_samples,
               "cutpoints": spec["signal"]["cutpoints"]}
    extra = {
        "tokenizer": spec,
        "params": params,
        "inputs": inputs,
        "samples": {s.name: sorted(s.tracks) for s in samples},
        "record": {"window_bp": window_bp, "span_bp": window_bp + K - 1, "files": list(RECORD_EXTS)},
        "counts": {"windows": len(windows), "candidate_windows": len(cand.windows),
                   "windows_skipped_n": cand.skipped_n, "samples": len(samples)},
    }
    return build_shard_set(out, kind="elementary", input_hash=input_hash, tasks=tasks, context=context,
                           build=build_elementary_shard, manifest_extra=extra, executor=executor,
                           overwrite=overwrite, summarize=_sum_counts, ray_config=cfg.ray)

"""Elementary shards: round trip against the inputs, reuse, resume, corruption, Ray paths, bad input."""

import json
import shutil

import numpy as np
import pyBigWig
import pytest

from creformer.engine.elementary_shards import (
    Window,
    _tar_header,
    _tarinfo_header,
    build_elementary_shard,
    prepare_elementary,
    tokenize_region,
    tokenize_window,
    window_runs,
)
from creformer.engine.elementary_stream import elementary_dataset, iter_manifest_records
from creformer.engine.errors import InputError, ShardError
from creformer.engine.io.bigwig import Track
from creformer.engine.io.fasta import Genome
from creformer.engine.io.samples import read_samples
from creformer.engine.shards import Manifest
from creformer.engine.tokenize import SIG_PAD, default_cutpoints, dna_tokens, signal_tokens

from ..conftest import ASSAYS, elementary_config

WINDOWS = 4 * 14  # the tiny world's 4 bulk samples (3 cell types and the disease type) x 14 windows


def test_round_trip_equals_direct_tokenization(sim_tiny, tiny_shards):
    """Decode records and re-tokenize FASTA + per-base bigWig values at their coordinates: equal."""
    man = Manifest(tiny_shards)
    genome = Genome(sim_tiny / "genome.fa")
    samples = {s.name: s for s in read_samples(sim_tiny / "samples.tsv", ASSAYS)}
    assert man.data["records"] == WINDOWS and man.data["tokenizer"]["assays"] == ASSAYS
    records = list(iter_manifest_records(man))
    assert len(records) == WINDOWS and len({r["key"] for r in records}) == WINDOWS
    cuts = default_cutpoints()
    for rec in records[::5]:
        sample, region = rec["key"].split("/")
        chrom, span = region.split(":")
        start, end = map(int, span.split("-"))
        assert end - start == 32773 and rec["dna"].dtype == np.uint16 and rec["sig"].shape == (7, 32768)
        assert np.array_equal(rec["dna"], dna_tokens(genome.fetch(chrom, start, end)))
        for row, assay in enumerate(ASSAYS):
            values = Track(samples[sample].tracks[assay]).values(chrom, start, end)
            assert np.array_equal(rec["sig"][row], signal_tokens(values, cuts)), (rec["key"], assay)


def test_reuse_when_inputs_unchanged(sim_tiny, tiny_shards):
    before = tiny_shards.read_text()
    res = prepare_elementary(elementary_config(sim_tiny / "samples.tsv", sim_tiny / "genome.fa", tiny_shards.parent, shard_size_mb=1, executor="local"))
    assert res.reused and tiny_shards.read_text() == before


def flip_byte(path, at, mask):
    """Corrupt a shard in place without changing its size."""
    data = bytearray(path.read_bytes())
    data[at] ^= mask
    path.write_bytes(bytes(data))


def _copy_sim(sim_tiny, tmp_path):
    dst = tmp_path / "sim"
    shutil.copytree(sim_tiny, dst)
    return dst


def test_interrupted_build_resumes_missing_shards_only(sim_tiny, tiny_shards, tmp_path, monkeypatch):
    import creformer.engine.shards as shards_mod

    out = tmp_path / "el"
    calls = {"n": 0}

    def dying(task, context, shard_dir):
        if calls["n"] == 5:
            (shard_dir / f".tmp-999-{task.file}").write_bytes(b"half a shard")  # a torn write
            raise KeyboardInterrupt("killed")
        calls["n"] += 1
        return build_elementary_shard(task, context, shard_dir)

    monkeypatch.setattr(shards_mod, "_run_local",
                        lambda tasks, ctx, sd, build, desc, ray_config: (dying(t, ctx, sd) for t in tasks))
    with pytest.raises(KeyboardInterrupt):
        prepare_elementary(elementary_config(sim_tiny / "samples.tsv", sim_tiny / "genome.fa", out, shard_size_mb=1, executor="local"))
    assert not (out / "manifest.json").exists()
    done = sorted(p.name for p in (out / "shards").glob("elementary-*.tar"))
    assert len(done) == 5
    mtimes = {p: (out / "shards" / p).stat().st_mtime_ns for p in done}
    monkeypatch.undo()
    res = prepare_elementary(elementary_config(sim_tiny / "samples.tsv", sim_tiny / "genome.fa", out, shard_size_mb=1, executor="local"))
    assert res.resumed == 5 and res.built == len(Manifest(out).shards) - 5
    assert all((out / "shards" / p).stat().st_mtime_ns == t for p, t in mtimes.items())
    assert not list((out / "shards").glob(".tmp-*"))
    # byte-identical to an uninterrupted build
    assert [s["sha256"] for s in Manifest(out).shards] == [s["sha256"] for s in Manifest(tiny_shards).shards]


def test_corrupted_shard_detected_and_rebuilt(sim_tiny, tiny_shards, tmp_path):
    out = tmp_path / "el"
    shutil.copytree(tiny_shards.parent, out)
    man = Manifest(out)
    victim = man.shard_path(man.shards[1])
    flip_byte(victim, 5000, 0xFF)
    with pytest.raises(ShardError, match="fails its checksum"):
        list(iter_manifest_records(man))
    victim.write_bytes(victim.read_bytes()[:1000])
    with pytest.raises(ShardError, match="truncated"):
        man.verify()
    # a rerun with the same inputs notices the damaged shard and rebuilds only it
    res = prepare_elementary(elementary_config(sim_tiny / "samples.tsv", sim_tiny / "genome.fa", out, shard_size_mb=1, executor="local"))
    assert not res.reused and res.built == 1
    Manifest(out).verify()


def test_other_inputs_refuse_to_overwrite(sim_tiny, tiny_shards, tmp_path):
    out = tmp_path / "el"
    shutil.copytree(tiny_shards.parent, out)
    with pytest.raises(ShardError, match="other inputs.*--overwrite"):
        prepare_elementary(elementary_config(sim_tiny / "samples.tsv", sim_tiny / "genome.fa", out, shard_size_mb=1, windows_per_sample=3, executor="local"))
    res = prepare_elementary(elementary_config(sim_tiny / "samples.tsv", sim_tiny / "genome.fa", out, shard_size_mb=1, windows_per_sample=3, executor="local"), overwrite=True)
    assert Manifest(res.manifest_path).data["records"] == 3 * 4  # 3 windows x 4 samples


def test_missing_assay_is_pad_and_flagged(sim_tiny, tmp_path):
    sim = _copy_sim(sim_tiny, tmp_path)
    lines = (sim / "samples.tsv").read_text().splitlines()
    kept = [line for line in lines if not (line.startswith("bulk_CT1") and "\tCTCF\t" in line)]
    (sim / "samples.tsv").write_text("\n".join(kept) + "\n")
    res = prepare_elementary(elementary_config(sim / "samples.tsv", sim / "genome.fa", tmp_path / "el", windows_per_sample=2, executor="local"))
    man = Manifest(res.manifest_path)
    assert man.data["counts"]["assay_missing_windows"]["CTCF"] == 2
    for rec in iter_manifest_records(man):
        has = rec["key"].startswith("bulk_CT1")
        assert (rec["meta"]["assays_missing"] == ["CTCF"]) == has
        assert np.all(rec["sig"][ASSAYS.index("CTCF")] == SIG_PAD) == has


def test_nan_values_are_zero_and_counted(sim_tiny, tmp_path):
    sim = _copy_sim(sim_tiny, tmp_path)
    path = sim / "tracks" / "bulk_CT0.ATAC.bw"
    bw = pyBigWig.open(str(path), "w")
    bw.addHeader([("chr1", 300_000), ("chr2", 300_000)])
    bw.addEntries(["chr1"] * 3, [0, 100, 1000], ends=[100, 200, 2000], values=[float("nan"), 3.0, float("inf")])
    bw.close()
    res = prepare_elementary(elementary_config(sim / "samples.tsv", sim / "genome.fa", tmp_path / "el", executor="local"))
    man = Manifest(res.manifest_path)
    rec = next(r for r in iter_manifest_records(man) if r["key"] == "bulk_CT0/chr1:0-32773")
    atac = rec["sig"][0]
    assert atac[0] == 2 and atac[100] > 2 and atac[1500] == 2
    # every base of bulk_CT0's ATAC windows lacks data except the 100 bp of value 3.0
    assert man.data["counts"]["missing_values"]["ATAC"] >= 14 * 32773 - 100


@pytest.mark.parametrize("case", ["empty_samples", "unknown_assay", "no_common_chrom", "track_covers_no_window",
                                  "missing_genome", "missing_track"])
def test_bad_inputs_are_explained(sim_tiny, tmp_path, case):
    sim = _copy_sim(sim_tiny, tmp_path)
    samples, genome = sim / "samples.tsv", sim / "genome.fa"
    expect = {
        "empty_samples": "is empty",
        "unknown_assay": "unknown assay 'H3K9me3'",
        "no_common_chrom": "same genome assembly",
        "track_covers_no_window": "has no data in any of the sample's",
        "missing_genome": "genome FASTA .* does not exist",
        "missing_track": "bigWig .* does not exist",
    }[case]
    if case == "empty_samples":
        samples.write_text("")
    elif case == "unknown_assay":
        samples.write_text(samples.read_text().replace("\tCTCF\t", "\tH3K9me3\t", 1))
    elif case in ("no_common_chrom", "track_covers_no_window"):
        bw = pyBigWig.open(str(sim / "tracks" / "bulk_CT0.ATAC.bw"), "w")
        chrom = "scaffold_9" if case == "no_common_chrom" else "chr1"
        bw.addHeader([(chrom, 300_000)])
        bw.addEntries([chrom], [299_000], ends=[299_100], values=[1.0])  # only inside the N gap
        bw.close()
    elif case == "missing_genome":
        genome = sim / "nope.fa"
    elif case == "missing_track":
        (sim / "tracks" / "bulk_CT2.H3K27ac.bw").unlink()
    with pytest.raises(InputError, match=expect):
        prepare_elementary(elementary_config(samples, genome, tmp_path / "el", executor="local"))


def test_ray_build_equals_local_build(sim_tiny, tiny_shards, tmp_path, ray_local):
    res = prepare_elementary(elementary_config(sim_tiny / "samples.tsv", sim_tiny / "genome.fa", tmp_path / "el", shard_size_mb=1, executor="ray"))
    assert [s["sha256"] for s in Manifest(res.manifest_path).shards] == [s["sha256"] for s in Manifest(tiny_shards).shards]


def test_elementary_dataset_streams_crops(tiny_shards, ray_local):
    import torch

    ds = elementary_dataset(tiny_shards, length=1024, seed=3, crops_per_window=1)
    n = 0
    for batch in ds.iter_torch_batches(batch_size=8, drop_last=False):
        assert batch["dna"].shape[1:] == (1024,) and batch["sig"].shape[1:] == (7, 1024)
        assert batch["dna"].dtype == torch.int32 and batch["present"].all()
        assert int(batch["dna"].max()) < 4100 and int(batch["sig"].max()) < 38
        n += batch["dna"].shape[0]
    assert n == WINDOWS
    # crops are real slices of the stored windows
    rows = elementary_dataset(tiny_shards, length=128, seed=1, keys=True, crops_per_window=1).take(3)
    recs = {r["key"]: r for r in iter_manifest_records(tiny_shards)}
    for row in rows:
        key, off = row["key"].rsplit("@", 1)
        assert np.array_equal(row["dna"], recs[key]["dna"][int(off):int(off) + 128])
    # several non-overlapping crops per decoded window
    many = elementary_dataset(tiny_shards, length=1024, crops_per_window=8, keys=True).take_all()
    assert len(many) == WINDOWS * 8
    by_window = {}
    for row in many:
        key, off = row["key"].rsplit("@", 1)
        by_window.setdefault(key, []).append(int(off))
    assert all(len(v) == 8 and min(np.diff(sorted(v))) >= 1024 for v in by_window.values())
    # by default every crop the window holds after a random phase: 31 or 32 of 1,024 in 32,768 (from the manifest)
    assert WINDOWS * 31 <= elementary_dataset(tiny_shards, length=1024).count() <= WINDOWS * 32
    # two streaming splits (one per Ray Train worker) together see every window once
    a, b = elementary_dataset(tiny_shards, length=128, keys=True, crops_per_window=1).streaming_split(2, equal=False)
    import threading

    keys = {0: [], 1: []}

    def drain(i, it):
        for batch in it.iter_batches(batch_size=4):
            keys[i].extend(k.rsplit("@", 1)[0] for k in batch["key"])

    threads = [threading.Thread(target=drain, args=(i, it)) for i, it in enumerate((a, b))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(keys[0] + keys[1]) == sorted(recs) and keys[0] and keys[1]


def test_dataset_refuses_corrupt_shard(tiny_shards, tmp_path, ray_local):
    out = tmp_path / "el"
    shutil.copytree(tiny_shards.parent, out)
    man = Manifest(out)
    flip_byte(man.shard_path(man.shards[0]), -2000, 1)
    with pytest.raises(Exception, match="fails its checksum"):
        elementary_dataset(out, length=128).materialize()
    with pytest.raises(ValueError, match="crop length 100"):
        elementary_dataset(out, length=100)


def test_cli_prepare_elementary(sim_tiny, tmp_path, capsys):
    from creformer.cli import main

    rc = main(["prepare", "elementary", "--samples", str(sim_tiny / "samples.tsv"), "--genome", str(sim_tiny / "genome.fa"),
               "--out", str(tmp_path / "el"), "data.executor=local", "data.windows_per_sample=2"])
    assert rc == 0 and "8 windows" in capsys.readouterr().out  # 2 x 4 samples
    rc = main(["prepare", "elementary", "--samples", str(tmp_path / "none.tsv"), "--genome", str(sim_tiny / "genome.fa"),
               "--out", str(tmp_path / "el2"), "data.executor=local"])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    m = json.loads((tmp_path / "el" / "manifest.json").read_text())
    assert {"schema_version", "tokenizer", "inputs", "shards", "counts", "input_hash"} <= set(m)
    assert all(i["checksum_kind"] == "sha256" for i in m["inputs"])


def test_shards_are_plain_webdataset(tiny_shards):
    """Other tools can read the shards: webdataset groups the members into the same records."""
    import io

    import webdataset as wds

    man = Manifest(tiny_shards)
    ours = list(iter_manifest_records(man))[:5]
    theirs = list(wds.WebDataset(str(man.shard_path(man.shards[0])), shardshuffle=False))[:5]
    for a, b in zip(ours, theirs):
        assert b["__key__"] == a["key"]
        assert np.array_equal(np.load(io.BytesIO(b["dna.npy"])), a["dna"])
        assert np.array_equal(np.load(io.BytesIO(b["sig.npy"])), a["sig"])
        assert json.loads(b["meta.json"]) == a["meta"]


def test_region_read_equals_window_reads(sim_tiny, tmp_path):
    """Windows read as one region (with a skipped tile between them) give the records and counts
    that reading each window alone gives: NaN gaps, +inf and negative values straddling windows."""
    path = tmp_path / "t.bw"
    bw = pyBigWig.open(str(path), "w")
    bw.addHeader([("chr1", 300_000)])
    bw.addEntries(["chr1"] * 5, [10, 32_700, 40_000, 98_300, 131_000], ends=[500, 32_900, 41_000, 98_400, 131_050],
                  values=[2.0, -1.0, float("inf"), 7.5, 0.25])
    bw.close()
    genome = Genome(sim_tiny / "genome.fa")
    tracks = {"ATAC": Track(path)}
    span = 32773
    windows = [Window("chr1", i * span, (i + 1) * span) for i in (0, 1, 3)]
    cuts = {a: default_cutpoints() for a in ASSAYS}
    together = tokenize_region(genome, tracks, windows, ASSAYS, cuts)
    for w, (dna, sig, meta) in zip(windows, together):
        dna1, sig1, meta1 = tokenize_window(genome, tracks, w, ASSAYS, cuts)
        assert np.array_equal(dna, dna1) and np.array_equal(sig, sig1) and meta == meta1
    # with data: window 0 490 + 73 bp, window 1 127 bp (+inf counts as missing), window 3 81 + 50 bp
    assert [m["missing_values"]["ATAC"] for _, _, m in together] == [span - 563, span - 127, span - 131]
    assert [m["negative_values"]["ATAC"] for _, _, m in together] == [73, 127, 0]


def test_window_runs_group_adjacent_windows():
    w = [["a", "chr1", 0, 10], ["a", "chr1", 10, 20], ["a", "chr1", 40, 50], ["a", "chr2", 50, 60],
         ["b", "chr2", 60, 70], ["b", "chr2", 70, 80], ["b", "chr2", 80, 90]]
    assert window_runs(w, max_gap_bp=20, max_region_bp=20) == [[0, 1], [2], [3], [4, 5], [6]]
    assert window_runs(w, max_gap_bp=0, max_region_bp=100) == [[0, 1], [2], [3], [4, 5, 6]]


@pytest.mark.parametrize("name", ["a", "bulk_CT0/chr1:0-32773.dna.npy", "x" * 99, "x" * 100, "ü/chr1:1-2.meta.json", "d" * 120 + "/x.npy"])
@pytest.mark.parametrize("size", [0, 1, 511, 65664, 8**11 - 1])
def test_fast_tar_header_equals_tarfile(name, size):
    assert _tar_header(name, size) == _tarinfo_header(name, size)

"""The hand-written NumPy motif scanner (``motif_scan.scan``) against memelite's FIMO (``scan_fimo``,
numba, from the tangermeme authors; what atlas_grn uses), same run, same peaks, same motifs, same
p-value (1e-4, FIMO's default).

    .venv/bin/python benchmarks/motif_scan.py --demo runs/demo [--json out.json]

Peaks: the demo atlas's regulatory peak windows (1,029 bp each, decoded from the DNA tokens). Truth:
the simulator's planted motif instances (truth/motif_instances.tsv). A (peak, motif) pair is
"planted" when an instance of that motif lies wholly inside the peak's window. Reported per scanner:
recall (planted pairs found), precision (found pairs that are planted; random sequence also holds
real PWM hits, so neither scanner reaches 1), agreement between the two, and wall time (best of
``--repeats``; memelite's first call includes numba compilation, reported apart).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from creformer.analysis.motif_scan import decode_dna, scan, scan_fimo
from creformer.engine.io.motifs import read_motifs


def planted_pairs(peaks: pl.DataFrame, instances: pl.DataFrame, motif_index: dict[str, int], n_motifs: int, span: int
                  ) -> np.ndarray:
    """(n_peaks, n_motifs) bool: an instance of the motif (by name or id) lies inside the peak's window."""
    out = np.zeros((peaks.height, n_motifs), bool)
    ws = peaks["window_start"].to_numpy()
    for chrom, df in peaks.with_row_index("row").group_by("chrom"):
        inst = instances.filter(pl.col("chrom") == chrom[0])
        if inst.is_empty():
            continue
        starts, ends = inst["start"].to_numpy(), inst["end"].to_numpy()
        mids = np.array([motif_index.get(m, -1) for m in inst["motif"].to_list()])
        for row, w in zip(df["row"].to_numpy(), ws[df["row"].to_numpy()]):
            inside = (starts >= w) & (ends <= w + span) & (mids >= 0)
            out[row, mids[inside]] = True
    return out


def scores(found: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    tp = int((found & truth).sum())
    return {"recall": tp / max(1, int(truth.sum())), "precision": tp / max(1, int(found.sum())), "pairs_found": int(found.sum())}


def timed(fn, repeats: int) -> tuple[object, float]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", default="runs/demo", help="a finished `make demo` folder")
    ap.add_argument("--pvalue", type=float, default=1e-4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    demo = Path(args.demo)
    peaks_t = pq.read_table(demo / "shards" / "regulatory" / "tables" / "peaks.parquet")
    peaks = pl.from_arrow(peaks_t.drop(["dna"]))
    bases = decode_dna(np.stack(peaks_t.column("dna").to_numpy(zero_copy_only=False)))
    motifs = read_motifs(demo / "sim" / "motifs.meme")
    index = {m.name: i for i, m in enumerate(motifs)} | {m.id: i for i, m in enumerate(motifs)}
    truth = planted_pairs(peaks, pl.read_csv(demo / "sim" / "truth" / "motif_instances.tsv", separator="\t"), index, len(motifs),
                          bases.shape[1])

    ours, t_ours = timed(lambda: scan(bases, motifs, pvalue=args.pvalue).counts > 0, args.repeats)
    t0 = time.perf_counter()
    scan_fimo(bases, motifs, args.pvalue)  # first call: numba compiles
    t_first = time.perf_counter() - t0
    theirs, t_theirs = timed(lambda: scan_fimo(bases, motifs, args.pvalue).counts > 0, args.repeats)
    res = {"peaks": int(bases.shape[0]), "motifs": len(motifs), "window_bp": int(bases.shape[1]), "pvalue": args.pvalue,
           "planted_pairs": int(truth.sum()),
           "hand_written": {**scores(ours, truth), "seconds": t_ours},
           "memelite_fimo": {**scores(theirs, truth), "seconds": t_theirs, "first_call_seconds": t_first},
           "agreement": float((ours == theirs).mean()), "speed_ratio_hand_over_memelite": t_theirs / t_ours}
    print(f"{res['peaks']} peaks x {res['motifs']} motifs, p <= {args.pvalue}; {res['planted_pairs']} planted (peak, motif) pairs")
    for name in ("hand_written", "memelite_fimo"):
        r = res[name]
        print(f"  {name:14s} recall {r['recall']:.3f}  precision {r['precision']:.3f}  pairs {r['pairs_found']:6d}  "
              f"{r['seconds']:.2f} s (best of {args.repeats})")
    print(f"  memelite first call (numba compile) {t_first:.1f} s; agreement on (peak, motif) pairs {res['agreement']:.4f}; "
          f"hand-written is {res['speed_ratio_hand_over_memelite']:.2f}x memelite's speed")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

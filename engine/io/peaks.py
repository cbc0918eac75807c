"""A user's own peak set: BED3+ or ENCODE narrowPeak/broadPeak, plain or gzip.

Peaks called per cluster (MACS2 on pseudo-bulks) overlap; they are merged the way ``bedtools merge``
does by default (overlapping and book-ended intervals become one), so every base belongs to at
most one peak and a fragment is counted once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from .files import open_text, require_file


@dataclass
class PeakSet:
    chrom: np.ndarray  # (peaks,) str, in first-seen chromosome order
    start: np.ndarray  # (peaks,) int64, 0-based
    end: np.ndarray
    read: int  # intervals in the file
    merged: int  # intervals absorbed into an overlapping or book-ended neighbour


def read_peaks(path: str | Path) -> PeakSet:
    """Intervals of a BED-like file (columns chrom, start, end; extra columns, ``track``/``browser``
    lines and ``#`` comments ignored), sorted by chromosome (first-seen order) and start, then merged."""
    path = Path(path)
    require_file(path, "peak file")
    by_chrom: dict[str, list[tuple[int, int]]] = {}
    n = 0
    try:
        with open_text(path) as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip() or line.startswith(("#", "track", "browser")):
                    continue
                f = line.split("\t") if "\t" in line else line.split()
                if len(f) < 3:
                    raise InputError(f"{path}, line {lineno}: a peak needs chrom, start and end (got {line.strip()[:60]!r})")
                try:
                    start, end = int(f[1]), int(f[2])
                except ValueError as err:
                    raise InputError(f"{path}, line {lineno}: start/end {f[1]!r}, {f[2]!r} are not integers; "
                                     "is this a BED or narrowPeak file?") from err
                if start < 0 or end <= start:
                    raise InputError(f"{path}, line {lineno}: interval {f[0]}:{start}-{end} is empty or negative")
                by_chrom.setdefault(f[0], []).append((start, end))
                n += 1
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read peak file {path}: {err}") from err
    if not n:
        raise InputError(f"{path} holds no peaks")
    chrom, start, end = [], [], []
    for c, iv in by_chrom.items():
        iv.sort()
        cur_s, cur_e = iv[0]
        for s, e in iv[1:]:
            if s <= cur_e:  # overlapping or book-ended: bedtools merge -d 0
                cur_e = max(cur_e, e)
                continue
            chrom.append(c), start.append(cur_s), end.append(cur_e)
            cur_s, cur_e = s, e
        chrom.append(c), start.append(cur_s), end.append(cur_e)
    return PeakSet(np.array(chrom, dtype=object), np.array(start, np.int64), np.array(end, np.int64), n, n - len(chrom))

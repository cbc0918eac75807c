"""bigWig tracks through pyBigWig, with values as numpy and interval runs for speed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyBigWig

from ..errors import InputError
from .fasta import _require_file


class Track:
    """One bigWig track. ``chrom_map`` maps genome chromosome names onto the file's names."""

    def __init__(self, path: str | Path, chrom_map: dict[str, str] | None = None):
        self.path = Path(path)
        _require_file(self.path, "bigWig track")
        try:
            bw = pyBigWig.open(str(self.path))
        except RuntimeError as err:
            raise InputError(f"{self.path} is not a readable bigWig (truncated or another format): {err}") from err
        if bw is None or not bw.isBigWig():
            raise InputError(f"{self.path} is not a bigWig file (a bigBed or another format?)")
        self._bw = bw
        self.chrom_sizes: dict[str, int] = dict(bw.chroms())
        self.chrom_map = chrom_map or {}

    def file_chrom(self, chrom: str) -> str | None:
        name = self.chrom_map.get(chrom, chrom)
        return name if name in self.chrom_sizes else None

    def runs(self, chrom: str, start: int, end: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Intervals overlapping the region, clipped to it: (starts, ends, values) relative to ``start``.

        Gaps (no data) are simply absent; callers treat them as zero.
        """
        name = self.file_chrom(chrom)
        empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))
        if name is None:
            return empty
        end = min(end, self.chrom_sizes[name])
        if start >= end:
            return empty
        try:
            ivs = self._bw.intervals(name, start, end)
        except RuntimeError as err:
            raise InputError(f"cannot read {name}:{start}-{end} from bigWig {self.path}: {err}; the file may be truncated") from err
        if not ivs:
            return empty
        arr = np.asarray(ivs, dtype=np.float64)
        s = np.clip(arr[:, 0].astype(np.int64) - start, 0, end - start)
        e = np.clip(arr[:, 1].astype(np.int64) - start, 0, end - start)
        return s, e, arr[:, 2]

    def values(self, chrom: str, start: int, end: int) -> np.ndarray:
        """Per-base float32 values; NaN where the file has no data."""
        out = np.full(end - start, np.nan, dtype=np.float32)
        name = self.file_chrom(chrom)
        if name is None:
            return out
        stop = min(end, self.chrom_sizes[name])
        if start < stop:
            try:
                out[: stop - start] = self._bw.values(name, start, stop, numpy=True)
            except RuntimeError as err:
                raise InputError(f"cannot read {name}:{start}-{stop} from bigWig {self.path}: {err}; the file may be truncated") from err
        return out

    def close(self) -> None:
        self._bw.close()

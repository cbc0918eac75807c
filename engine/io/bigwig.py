"""bigWig tracks through pyBigWig, values as numpy (decoded in C)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyBigWig

from ..errors import InputError
from .files import require_file


class Track:
    """One bigWig track. ``chrom_map`` maps genome chromosome names onto the file's names."""

    def __init__(self, path: str | Path, chrom_map: dict[str, str] | None = None):
        self.path = Path(path)
        require_file(self.path, "bigWig track")
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

    def values(self, chrom: str, start: int, end: int) -> np.ndarray:
        """Per-base float32 values; NaN where the file has no data."""
        name = self.file_chrom(chrom)
        if name is None:
            return np.full(end - start, np.nan, dtype=np.float32)
        stop = min(end, self.chrom_sizes[name])
        values = np.zeros(0, dtype=np.float32)
        if start < stop:
            try:
                values = np.asarray(self._bw.values(name, start, stop, numpy=True), dtype=np.float32)
            except RuntimeError as err:
                raise InputError(f"cannot read {name}:{start}-{stop} from bigWig {self.path}: {err}; the file may be truncated") from err
        if values.size == end - start:
            return values  # the common case: no second buffer
        out = np.full(end - start, np.nan, dtype=np.float32)  # past the chromosome's end: no data
        out[: values.size] = values
        return out

    def has_data(self, chrom: str, start: int, end: int) -> bool:
        """Whether any base of the region has data (from the file's summary levels: cheap)."""
        name = self.file_chrom(chrom)
        if name is None:
            return False
        end = min(end, self.chrom_sizes[name])
        return start < end and bool(self._bw.stats(name, start, end, type="coverage")[0])

    def close(self) -> None:
        self._bw.close()

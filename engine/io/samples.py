"""samples.tsv: one row per (sample, assay) bigWig track; paths are relative to the table."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from .files import require_file

# Common spellings mapped onto the canonical assay names of the config.
ASSAY_ALIASES = {"dnase": "ATAC", "dnase-seq": "ATAC", "atac-seq": "ATAC", "atac": "ATAC", "ctcf": "CTCF"}


@dataclass
class Sample:
    name: str
    tracks: dict[str, Path] = field(default_factory=dict)  # assay -> bigWig path


def _canonical_assay(name: str, assays: list[str]) -> str | None:
    by_lower = {a.lower(): a for a in assays}
    low = name.strip().lower()
    if low in by_lower:
        return by_lower[low]
    alias = ASSAY_ALIASES.get(low)
    return alias if alias in assays else None


def read_samples(path: str | Path, assays: list[str]) -> list[Sample]:
    """Parse samples.tsv (columns sample, assay, path). Every problem names the line."""
    path = Path(path)
    require_file(path, "samples table")
    with path.open(newline="") as fh:
        rows = [r for r in csv.reader(fh, delimiter="\t") if r and not r[0].startswith("#")]
    if not rows:
        raise InputError(f"samples table {path} is empty; it needs a header 'sample<TAB>assay<TAB>path' and one row per track")
    header = [h.strip().lower() for h in rows[0]]
    missing = {"sample", "assay", "path"} - set(header)
    if missing:
        raise InputError(f"{path}, line 1: header lacks column(s) {sorted(missing)}; expected sample, assay, path")
    if len(rows) == 1:
        raise InputError(f"samples table {path} has a header but no tracks")
    col = {name: header.index(name) for name in ("sample", "assay", "path")}
    samples: dict[str, Sample] = {}
    for lineno, row in enumerate(rows[1:], 2):
        if len(row) < len(header):
            raise InputError(f"{path}, line {lineno}: expected {len(header)} tab-separated columns, found {len(row)}")
        name, assay_raw, rel = (row[col[k]].strip() for k in ("sample", "assay", "path"))
        assay = _canonical_assay(assay_raw, assays)
        if assay is None:
            raise InputError(f"{path}, line {lineno}: unknown assay {assay_raw!r}; known assays: {', '.join(assays)} "
                             "(set data.assays to change them)")
        track = (path.parent / rel).resolve() if not Path(rel).is_absolute() else Path(rel)
        require_file(track, f"{path}, line {lineno}: bigWig")
        sample = samples.setdefault(name, Sample(name))
        if assay in sample.tracks:
            raise InputError(f"{path}, line {lineno}: sample {name!r} lists assay {assay} twice")
        sample.tracks[assay] = track
    return list(samples.values())


def write_samples(path: str | Path, samples: list[Sample]) -> None:
    path = Path(path)
    with path.open("w", newline="") as fh:
        fh.write("sample\tassay\tpath\n")
        for sample in samples:
            for assay, track in sample.tracks.items():
                rel = Path(track).resolve().relative_to(path.parent.resolve())
                fh.write(f"{sample.name}\t{assay}\t{rel}\n")

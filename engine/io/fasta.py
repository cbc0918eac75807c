"""Genome FASTA access: plain or bgzipped through pysam (indexed), plain gzip loaded into memory."""

from __future__ import annotations

import gzip
from pathlib import Path

import pysam

from ..errors import InputError
from .files import require_file

_BGZF_MAGIC = b"\x1f\x8b\x08\x04"  # gzip with the FEXTRA flag, as bgzip writes it
_GZIP_MAGIC = b"\x1f\x8b"


class Genome:
    """Random access to a genome FASTA. ``fetch`` returns upper-case ASCII bytes.

    bgzip and plain FASTA are read through pysam's faidx (the index is built next to the file when
    it is missing and the folder is writable). A plain-gzip FASTA cannot be indexed, so it is read
    whole into memory; fine for small genomes, and the error for large ones says to use bgzip.
    """

    def __init__(self, path: str | Path, *, max_gzip_bytes: int = 1 << 30):
        self.path = Path(path)
        require_file(self.path, "genome FASTA")
        with self.path.open("rb") as fh:
            head = fh.read(4)
        self._fasta: pysam.FastaFile | None = None
        self._seqs: dict[str, bytes] = {}
        if head[:2] == _GZIP_MAGIC and head != _BGZF_MAGIC:
            self._load_gzip(max_gzip_bytes)
        else:
            try:
                self._fasta = pysam.FastaFile(str(self.path))
            except (OSError, ValueError) as err:
                if head[:1] != b">" and head != _BGZF_MAGIC:
                    raise InputError(f"{self.path} is not a FASTA file (it does not start with '>')") from err
                raise InputError(
                    f"cannot index genome FASTA {self.path}: {err}. If its folder is read-only, copy it or "
                    "create the index with `samtools faidx`; if it is truncated, download it again"
                ) from err
            self.lengths = dict(zip(self._fasta.references, self._fasta.lengths))
        if not self.lengths:
            raise InputError(f"genome FASTA {self.path} holds no sequence records")

    def _load_gzip(self, max_bytes: int) -> None:
        name: str | None = None
        parts: list[bytes] = []
        total = 0
        try:
            with gzip.open(self.path, "rb") as fh:
                for lineno, line in enumerate(fh, 1):
                    if line.startswith(b">"):
                        if name is not None:
                            self._seqs[name] = b"".join(parts).upper()
                        name = line[1:].split()[0].decode()
                        parts = []
                    elif line.strip():
                        if name is None:
                            raise InputError(f"{self.path}, line {lineno}: sequence before the first '>' header")
                        parts.append(line.strip())
                        total += len(parts[-1])
                        if total > max_bytes:
                            raise InputError(
                                f"{self.path} is plain gzip and larger than {max_bytes} bp; recompress it with "
                                "`bgzip` so it can be indexed instead of read into memory"
                            )
        except (EOFError, OSError, gzip.BadGzipFile) as err:
            raise InputError(f"genome FASTA {self.path} is truncated or corrupt ({err}); download it again") from err
        if name is not None:
            self._seqs[name] = b"".join(parts).upper()
        self.lengths = {k: len(v) for k, v in self._seqs.items()}

    @property
    def chroms(self) -> list[str]:
        return list(self.lengths)

    def fetch(self, chrom: str, start: int, end: int) -> bytes:
        """Upper-case bases of ``chrom:start-end`` (0-based, half-open)."""
        if chrom not in self.lengths:
            raise InputError(f"chromosome {chrom!r} is not in genome FASTA {self.path} (it has {', '.join(self.chroms[:5])} ...)")
        if start < 0 or end > self.lengths[chrom] or start >= end:
            raise InputError(f"region {chrom}:{start}-{end} lies outside {chrom} (length {self.lengths[chrom]}) in {self.path}")
        if self._fasta is None:
            return self._seqs[chrom][start:end]
        try:
            seq = self._fasta.fetch(chrom, start, end)
        except (OSError, ValueError) as err:
            raise InputError(f"cannot read {chrom}:{start}-{end} from {self.path}: {err}; the file may be truncated") from err
        if len(seq) != end - start:
            raise InputError(
                f"{self.path} returned {len(seq)} bp for {chrom}:{start}-{end} (expected {end - start}); "
                "the FASTA is truncated or its .fai index is stale: delete the .fai and retry"
            )
        return seq.upper().encode("ascii")

    def close(self) -> None:
        if self._fasta is not None:
            self._fasta.close()

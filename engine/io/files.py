"""Small file helpers shared by the readers."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path
from typing import IO

from ..errors import InputError


def is_gzip(path: Path) -> bool:
    """gzip or bgzip (both start with the gzip magic bytes)."""
    with Path(path).open("rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def open_text(path: Path) -> IO[str]:
    """A text stream of a plain or gzip/bgzip-compressed file."""
    return gzip.open(path, "rt") if is_gzip(path) else Path(path).open()


def open_binary(path: Path) -> IO[bytes]:
    """A byte stream of a plain or gzip/bgzip-compressed file (decompressed as it is read)."""
    return gzip.open(path, "rb") if is_gzip(path) else Path(path).open("rb")


def require_file(path: Path, what: str) -> None:
    """An InputError naming ``what`` and ``path`` unless it is a readable file."""
    if not path.exists():
        raise InputError(f"{what} {path} does not exist")
    if not path.is_file():
        raise InputError(f"{what} {path} is not a file")
    try:
        with path.open("rb") as fh:
            fh.read(1)
    except OSError as err:
        raise InputError(f"{what} {path} is not readable: {err}") from err


def write_tsv(path: Path, header: list[str], rows) -> None:
    """A tab-separated table with a header line."""
    with Path(path).open("w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)

"""Small file helpers shared by the readers."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import IO


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

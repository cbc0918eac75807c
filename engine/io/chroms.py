"""Chromosome-name harmonization between files (``chr1`` vs ``1``, ``chrM`` vs ``MT``)."""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import InputError

_MITO = {"chrm", "m", "mt", "chrmt"}


def canonical(name: str) -> str:
    """A comparison key: case-folded, ``chr`` prefix removed, mitochondrion spelled ``M``."""
    low = name.lower()
    if low in _MITO:
        return "M"
    return name[3:] if low.startswith("chr") else name


def harmonize(query: Iterable[str], target: Iterable[str], *, query_label: str, target_label: str) -> dict[str, str]:
    """Map each query chromosome name onto the target's spelling of the same chromosome.

    Names absent from the target are left out; if none at all can be matched the error shows
    examples from both files, since that always means the wrong genome or naming scheme.
    """
    query = list(query)
    target = list(target)
    exact = set(target)
    by_key: dict[str, str] = {}
    for name in target:
        by_key.setdefault(canonical(name), name)
    mapping: dict[str, str] = {}
    for name in query:
        if name in exact:
            mapping[name] = name
        elif canonical(name) in by_key:
            mapping[name] = by_key[canonical(name)]
    if query and not mapping:
        raise InputError(
            f"no chromosome of {query_label} ({', '.join(query[:5])}{' ...' if len(query) > 5 else ''}) "
            f"matches one of {target_label} ({', '.join(target[:5])}{' ...' if len(target) > 5 else ''}); "
            "check that both files use the same genome assembly"
        )
    return mapping

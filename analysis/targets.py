"""Therapeutic targets: given a diseased group (e.g. tumour) and a reference (normal), the master
TFs that differ between them, and every knockout ranked by how far it moves diseased cells toward
the reference (transition score, see transitions.py)."""

from __future__ import annotations

import polars as pl

from .master_tf import top_tfs


def differing_masters(masters: pl.DataFrame, disease: str, reference: str, k: int) -> dict[str, list[str]]:
    a, b = top_tfs(masters, disease, k), top_tfs(masters, reference, k)
    return {"disease_only": [t for t in a if t not in b], "reference_only": [t for t in b if t not in a], "shared": [t for t in a if t in b]}


def rank_knockouts(knockouts: pl.DataFrame) -> pl.DataFrame:
    """(rank, condition, transition_score) of the knockout rows of the transition table: rank 1 moves
    the diseased cells furthest toward the reference."""
    df = knockouts.select("condition", "transition_score")
    return df.sort("transition_score", descending=True).with_row_index("rank", offset=1)

"""Therapeutic targets: given a diseased group (e.g. tumour) and a reference (normal), the master
TFs that differ between them, and every knockout ranked by how far it moves diseased cells toward
the reference (transition score, see transitions.py)."""

from __future__ import annotations

import numpy as np
import polars as pl

from .master_tf import top_tfs
from .transitions import transition_score


def differing_masters(masters: pl.DataFrame, disease: str, reference: str, k: int) -> dict[str, list[str]]:
    a, b = top_tfs(masters, disease, k), top_tfs(masters, reference, k)
    return {"disease_only": [t for t in a if t not in b], "reference_only": [t for t in b if t not in a], "shared": [t for t in a if t in b]}


def rank_knockouts(disease_states: np.ndarray, reference_states: np.ndarray, ko_states: dict[str, np.ndarray]) -> pl.DataFrame:
    """(condition, transition_score, rank): rank 1 moves the diseased cells furthest toward the reference."""
    rows = [(name, transition_score(disease_states, reference_states, states)) for name, states in ko_states.items()]
    df = pl.DataFrame(rows, schema={"condition": pl.Utf8, "transition_score": pl.Float64}, orient="row")
    return df.sort("transition_score", descending=True).with_row_index("rank", offset=1)

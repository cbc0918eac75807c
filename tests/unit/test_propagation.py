"""Knockout propagation (analysis/propagation.py), by hand on a two-TF cascade."""

import polars as pl
import pytest

from creformer.analysis.propagation import propagate

# TF A (gene 0) halves TF B's gene (gene 1) under its knockout and doubles it under its knock-in;
# B's knockout lowers gene 2 by 2 log2 units; A does not touch gene 2 itself.
ROWS = [("A", "KO", 1, -1.0), ("B", "KO", 2, -2.0), ("A", "KI", 1, 1.0), ("B", "KI", 2, 0.5),
        ("A+B", "KO", 1, -1.0), ("A+B", "KO", 2, -2.0)]
TF_GENES = {"A": 0, "B": 1}


def effects(group="G"):
    return pl.DataFrame({"group": group, "condition": [r[0] for r in ROWS], "mode": [r[1] for r in ROWS],
                         "gene_id": pl.Series([r[2] for r in ROWS], dtype=pl.Int32), "log2fc": [r[3] for r in ROWS]})


def lfc(df, cond, mode, gene):
    row = df.filter((pl.col("condition") == cond) & (pl.col("mode") == mode) & (pl.col("gene_id") == gene))
    return float(row["log2fc_propagated"][0]) if row.height else 0.0


def test_propagation_returns_the_rows_it_was_given_and_keeps_the_one_step_read():
    out = propagate(effects(), TF_GENES, 3)
    assert out.height == effects().height and "log2fc_propagated" in out.columns
    assert sorted(out["log2fc"].to_list()) == sorted(effects()["log2fc"].to_list())
    # gene 1 (B's gene) under A's knockout: A is held and B does not regulate its own gene here
    assert lfc(out, "A", "KO", 1) == pytest.approx(-1.0)


def test_propagated_values_on_a_dense_table():
    # every (condition, gene) present, as FirstPass.effects writes for the genes a group has
    dense = pl.DataFrame([(c, m, g, dict(((r[0], r[1], r[2]), r[3]) for r in ROWS).get((c, m, g), 0.0))
                          for c, m in (("A", "KO"), ("B", "KO"), ("A", "KI"), ("B", "KI"), ("A+B", "KO")) for g in (0, 1, 2)],
                         schema=["condition", "mode", "gene_id", "log2fc"], orient="row").with_columns(
        pl.lit("G").alias("group"), pl.col("gene_id").cast(pl.Int32))
    one = propagate(dense, TF_GENES, 1)
    assert lfc(one, "A", "KO", 2) == pytest.approx((1 - 2**-1.0) * -2.0)  # −1: half of B's effect
    assert lfc(one, "A", "KI", 2) == pytest.approx(-(2**1.0 - 1) * -2.0)  # B doubles: +2, against B's knockout
    assert lfc(one, "B", "KO", 2) == pytest.approx(-2.0)  # B does not move A: nothing added
    assert lfc(one, "A+B", "KO", 2) == pytest.approx(-2.0)  # both held: B's fall is already in the direct read
    # a second step changes nothing here (gene 1's read under A's knockout has no upstream TF of its own)
    assert lfc(propagate(dense, TF_GENES, 2), "A", "KO", 2) == pytest.approx(-1.0)
    # zero steps: the one-step read, unchanged
    zero = propagate(dense, TF_GENES, 0)
    assert zero["log2fc_propagated"].to_list() == zero["log2fc"].to_list()
    # a TF is moved by at most its whole activity: a 3-log2 rise of B counts as one knockout's worth
    big = dense.with_columns(pl.when((pl.col("condition") == "A") & (pl.col("mode") == "KI") & (pl.col("gene_id") == 1))
                             .then(3.0).otherwise(pl.col("log2fc")).alias("log2fc"))
    assert lfc(propagate(big, TF_GENES, 1), "A", "KI", 2) == pytest.approx(2.0)


def test_groups_propagate_apart_and_bad_steps_are_refused():
    both = pl.concat([effects("G"), effects("H").with_columns(pl.when(pl.col("condition") == "B").then(0.0)
                                                              .otherwise(pl.col("log2fc")).alias("log2fc"))])
    out = propagate(both, TF_GENES, 1)
    assert out.filter(pl.col("group") == "G").height == out.filter(pl.col("group") == "H").height == len(ROWS)
    with pytest.raises(ValueError, match="≥ 0"):
        propagate(effects(), TF_GENES, -1)

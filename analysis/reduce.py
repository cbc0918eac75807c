"""Streaming reductions over atlas_grn's scored partitions (docs/design.md §7): everything the
driver computes from the per-(cell, gene) scores, read a few partitions at a time, so the driver's
memory follows the genes, peaks, groups and conditions, never the number of cells.

Two passes over ``partitions/{scores,perturb}``, whole partitions of up to ``ROWS_PER_READ``
samples at a time:
1. ``first_pass``: per (group, gene, peak) sums of attention, ATAC mass and ablation (the group
   attention table); per (group, gene) sums of the predicted expression (group centroids); per
   (group, condition, gene) sums of the knockout / knock-in shifts (group effects, transition
   scores); the sufficient statistics of TF–gene and region–gene correlations; each gene's
   reference cell (highest measured expression, ties to the lowest cell id) with its attention.
2. ``second_pass``: per-(cell, gene) attention features and gene activity, and per-(cell,
   condition) perturbation shifts, written to ``cells/`` and ``shifts/`` as partitioned Parquet;
   per condition the share of source cells moved toward the target centroid; the fixed-size
   seeded samples the classifier and the figures use (``analysis.driver_cells_per_group``).
A cell's rows all sit in one partition (partitions are blocks of a shard's cells), which the
passes check.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
from tqdm import tqdm

from .perturb import LN2

ROWS_PER_READ = 16_384  # (cell, gene) samples read at once (whole partitions, at least one)
COMBINE_EVERY = 32  # partial aggregates are combined after this many reads (bounded by groups x windows)
SCATTER_POINTS = 20_000  # (cell, gene) points in the prediction figure


def partition_files(out: Path) -> list[tuple[Path, Path | None]]:
    """(scores, perturb) files of every finished partition, in partition order."""
    scores = sorted((out / "partitions" / "scores").glob("part-*.parquet"))
    if not scores:
        raise FileNotFoundError(f"{out / 'partitions' / 'scores'} holds no scored partition: run the scoring stage first")
    pert = out / "partitions" / "perturb"
    return [(s, pert / s.name if (pert / s.name).exists() else None) for s in scores]


def read_groups(files: list[tuple[Path, Path | None]]) -> list[tuple[int, list[tuple[Path, Path | None]]]]:
    """(first partition index, partitions) of each read: whole partitions up to ``ROWS_PER_READ``
    samples (by their Parquet metadata), at least one, so a read's memory follows the partition size."""
    groups, start, rows = [], 0, 0
    for i, (s, _) in enumerate(files):
        n = pq.ParquetFile(s).metadata.num_rows
        if i > start and rows + n > ROWS_PER_READ:
            groups.append((start, files[start:i]))
            start, rows = i, 0
        rows += n
    if files:
        groups.append((start, files[start:]))
    return groups


def chunks(files: list[tuple[Path, Path | None]], desc: str) -> Iterator[tuple[int, pl.DataFrame, pl.DataFrame | None]]:
    """(first partition index, scores, perturbations) of each read (``read_groups``)."""
    for i, block in tqdm(read_groups(files), desc=desc, unit="read", mininterval=5, leave=False):
        sc = pl.read_parquet([s for s, _ in block])
        pts = [p for _, p in block if p is not None]
        yield i, sc, (pl.read_parquet(pts) if pts else None)


class FrameSum:
    """Partial aggregates (key columns + summed value columns), combined every ``COMBINE_EVERY``
    additions so memory stays at one aggregate's size."""

    def __init__(self, keys: list[str]):
        self.keys, self.frames = keys, []

    def add(self, df: pl.DataFrame) -> None:
        self.frames.append(df)
        if len(self.frames) >= COMBINE_EVERY:
            self.frames = [self.total()]

    def total(self) -> pl.DataFrame:
        df = pl.concat(self.frames)
        values = [c for c in df.columns if c not in self.keys]
        return df.group_by(self.keys).agg(pl.col(v).sum() for v in values)


def explode_windows(sc: pl.DataFrame, extra: list[str]) -> pl.DataFrame:
    """One row per (sample, window position): ``pos``, peak_id, attention, atac, ablation, plus
    ``extra`` sample columns; a gene with an empty window keeps one row of nulls."""
    return (sc.select(*extra, pl.int_ranges(0, pl.col("peak_ids").list.len(), dtype=pl.Int32).alias("pos"),
                      pl.col("peak_ids").alias("peak_id"), "attention", "atac", "ablation")
            .explode(["pos", "peak_id", "attention", "atac", "ablation"]))


@dataclass
class Universe:
    """The fixed orders every pass shares: groups, genes (ids index the dense columns), TF genes."""

    groups: list[str]
    cells: pl.DataFrame  # cell_id, gidx (analysed cells)
    n_genes: int  # gene ids are 0..n_genes-1
    tf_genes: np.ndarray  # distinct gene ids of the TFs (rows of the correlation cross-products)

    @staticmethod
    def of(chosen: pl.DataFrame, n_genes: int, tf_gene_ids: list[int]) -> Universe:
        groups = sorted(chosen["group"].unique().to_list())
        gidx = {g: i for i, g in enumerate(groups)}
        cells = chosen.select(pl.col("cell_id").cast(pl.Int32),
                              pl.col("group").replace_strict(gidx, return_dtype=pl.Int32).alias("gidx"))
        return Universe(groups, cells, n_genes, np.array(sorted(set(tf_gene_ids)), np.int64))


@dataclass
class FirstPass:
    gatt: pl.DataFrame  # per (group, gene, peak): mean attention and ATAC mass, n_cells, ablation (attention.py)
    windows: dict[int, np.ndarray]  # gene_id -> its window's peak ids
    genes: np.ndarray  # gene ids seen (sorted)
    cell_order: np.ndarray  # analysed cell ids in partition order
    group_cells: np.ndarray  # (groups,) analysed cells per group seen
    pred_sum: np.ndarray  # (groups, n_genes) Σ predicted expression
    pair_n: np.ndarray  # (groups, n_genes) samples
    shift_sum: dict[tuple[str, str], np.ndarray]  # (condition, mode) -> (groups, n_genes) Σ (pred' − pred)
    touched: dict[tuple[str, str], np.ndarray]  # (condition, mode) -> (groups, n_genes) touched samples
    expr_s1: np.ndarray  # (n_genes,) Σ expression over cells (missing samples are 0)
    expr_s2: np.ndarray
    expr_cross: np.ndarray  # (TF genes, n_genes) Σ x_tf x_g
    tf_rows: np.ndarray  # the TF gene id of each row of expr_cross
    region: pl.DataFrame  # gene_id, peak_id, sa, saa, say (Σ over the gene's samples)
    region_y: pl.DataFrame  # gene_id, sy, syy, n
    ref: pl.DataFrame  # gene_id, cell_id, expression, attention (the reference cell of each gene)
    pred_stats: np.ndarray  # Σ e, p, e², p², e·p, n over every sample

    @property
    def pairs(self) -> int:
        """Scored (cell, gene) samples."""
        return int(self.pred_stats[5])

    @property
    def n_genes(self) -> int:
        """Gene ids are 0..n_genes-1 (the dense columns)."""
        return self.pred_sum.shape[1]

    def centroid(self, group: str, groups: list[str]) -> np.ndarray:
        g = groups.index(group)
        return self.pred_sum[g] / max(int(self.group_cells[g]), 1)

    def effects(self, groups: list[str]) -> pl.DataFrame:
        """perturb's group effects: mean predicted log2FC per (group, condition, mode, gene) over the
        group's samples of the gene (untouched samples count 0), touched and all samples."""
        gi, gj = np.nonzero(self.pair_n)
        frames = [pl.DataFrame({"group": [groups[i] for i in gi], "condition": c, "mode": m, "gene_id": gj.astype(np.int32),
                                "log2fc": self.shift_sum[(c, m)][gi, gj] / self.pair_n[gi, gj] / LN2,
                                "n_touched": self.touched[(c, m)][gi, gj].astype(np.uint32),
                                "n_cells": self.pair_n[gi, gj].astype(np.uint32)})
                  for c, m in self.shift_sum]
        schema = {"group": pl.Utf8, "condition": pl.Utf8, "mode": pl.Utf8, "gene_id": pl.Int32, "log2fc": pl.Float64,
                  "n_touched": pl.UInt32, "n_cells": pl.UInt32}
        return pl.concat(frames).sort("group", "condition", "mode", "gene_id") if frames else pl.DataFrame(schema=schema)

    def correlation(self, tf_gene_ids: list[int | None]) -> np.ndarray:
        """(genes seen, TFs) Pearson r of each TF's gene with each gene's expression over the analysed
        cells; 0 for a TF without a gene seen, or a constant one."""
        n = max(self.cell_order.size, 1)
        mean = self.expr_s1 / n
        sd = np.sqrt(np.maximum(self.expr_s2 / n - mean**2, 0.0))
        row = {int(g): i for i, g in enumerate(self.tf_rows.tolist())}
        seen = set(self.genes.tolist())
        out = np.zeros((self.genes.size, len(tf_gene_ids)))
        for j, t in enumerate(tf_gene_ids):
            if t is None or t not in seen or sd[t] <= 1e-12 * max(abs(mean[t]), 1.0):
                continue
            cov = self.expr_cross[row[t]] / n - mean[t] * mean
            with np.errstate(invalid="ignore", divide="ignore"):
                r = np.where(sd > 0, cov / (sd * sd[t]), 0.0)
            out[:, j] = np.clip(r[self.genes], -1.0, 1.0)
        return out

    def region_correlation(self, pairs: pl.DataFrame) -> np.ndarray:
        """Pearson r over a gene's samples between a window peak's ATAC mass and the gene's measured
        expression, for each (gene_id, peak_id) row of ``pairs`` (0 where either is constant)."""
        t = (pairs.select(pl.col("gene_id").cast(pl.Int32), pl.col("peak_id").cast(pl.Int32)).with_row_index("_i")
             .join(self.region, on=["gene_id", "peak_id"], how="left").join(self.region_y, on="gene_id", how="left")
             .sort("_i"))
        n = t["n"].fill_null(0).to_numpy().astype(np.float64)
        nn = np.maximum(n, 1)
        sa, saa, say = (t[c].fill_null(0).to_numpy() for c in ("sa", "saa", "say"))
        sy, syy = (t[c].fill_null(0).to_numpy() for c in ("sy", "syy"))
        cov = say / nn - sa * sy / nn**2
        va, vy = np.maximum(saa / nn - (sa / nn) ** 2, 0), np.maximum(syy / nn - (sy / nn) ** 2, 0)
        den = np.sqrt(va * vy)
        return np.where((den > 1e-12) & (n > 1), cov / np.where(den > 0, den, 1.0), 0.0)

    def prediction_r(self) -> float:
        """Pearson r of predicted and measured expression over every scored (cell, gene) sample."""
        se, sp, see, spp, sep, n = self.pred_stats
        cov = sep / n - se * sp / n**2
        den = np.sqrt(max(see / n - (se / n) ** 2, 0) * max(spp / n - (sp / n) ** 2, 0))
        return float(cov / den) if den > 0 else 0.0


def gene_columns(genes: np.ndarray, n_genes: int) -> np.ndarray:
    """gene id -> column of a block holding ``genes`` (sorted), -1 for a gene not held."""
    cols = np.full(max(n_genes, 1), -1, np.int64)
    cols[genes] = np.arange(genes.size)
    return cols


def place(df: pl.DataFrame, col: str, rows: np.ndarray, cols: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out`` with ``df[col]`` written at (row of its cell_id in the sorted ``rows``, ``cols`` of its
    gene_id); samples of genes not held (column -1) are skipped, missing samples keep ``out``'s value."""
    r, c = np.searchsorted(rows, df["cell_id"].to_numpy()), cols[df["gene_id"].to_numpy()]
    ok = c >= 0
    out[r[ok], c[ok]] = df[col].to_numpy()[ok]
    return out


def _combine_best(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """Each gene's reference sample: the highest measured expression, ties to the lowest cell id."""
    return (pl.concat(frames).sort(["gene_id", "expression", "cell_id"], descending=[False, True, False])
            .group_by("gene_id", maintain_order=True).first())


def first_pass(out: Path, u: Universe) -> FirstPass:
    files = partition_files(out)
    n_g, n_groups = u.n_genes, len(u.groups)
    att, region, region_y = (FrameSum(["gidx", "gene_id", "peak_id"]), FrameSum(["gene_id", "peak_id"]),
                             FrameSum(["gene_id"]))
    pred_sum, pair_n = np.zeros((n_groups, n_g)), np.zeros((n_groups, n_g), np.int64)
    group_cells = np.zeros(n_groups, np.int64)
    shift_sum: dict[tuple[str, str], np.ndarray] = {}
    touched: dict[tuple[str, str], np.ndarray] = {}
    s1, s2, cross = np.zeros(n_g), np.zeros(n_g), np.zeros((u.tf_genes.size, n_g))
    pred_stats = np.zeros(6)
    windows: dict[int, np.ndarray] = {}
    best: list[pl.DataFrame] = []
    order: list[np.ndarray] = []
    seen_cells: set[int] = set()
    for _, sc, pt in chunks(files, "atlas_grn: reduce (1/2)"):
        sc = sc.join(u.cells, on="cell_id", how="inner")
        cells = np.unique(sc["cell_id"].to_numpy())  # the order of cells/ and of the h5ad rows
        again = seen_cells.intersection(cells.tolist())
        if not again and sc.select(pl.struct("cell_id", "gene_id").is_duplicated().any()).item():
            again = set(sc.filter(pl.struct("cell_id", "gene_id").is_duplicated())["cell_id"].to_list())
        if again:
            raise RuntimeError(f"cells {sorted(again)[:5]} appear in two partitions of {out / 'partitions'}: "
                               "delete the folder and run atlas_grn again")
        seen_cells.update(cells.tolist())
        order.append(cells)
        first = sc.group_by("gene_id").first()
        for g, pids in zip(first["gene_id"].to_list(), first["peak_ids"].to_list()):
            if g not in windows:
                windows[g] = np.asarray(pids, np.int64)
        long = explode_windows(sc, ["gidx", "gene_id", "expression"]).drop_nulls("pos")
        att.add(long.group_by("gidx", "gene_id", "peak_id").agg(
            pl.col("attention").cast(pl.Float64).sum().alias("att"), pl.col("atac").cast(pl.Float64).sum().alias("mass"),
            pl.col("ablation").cast(pl.Float64).sum().alias("abl"), (pl.col("atac") > 0).sum().cast(pl.Int64).alias("nsig"),
            pl.len().cast(pl.Int64).alias("n")))
        a, y = pl.col("atac").cast(pl.Float64), pl.col("expression").cast(pl.Float64)
        region.add(long.group_by("gene_id", "peak_id").agg(a.sum().alias("sa"), (a * a).sum().alias("saa"),
                                                           (a * y).sum().alias("say")))
        region_y.add(sc.group_by("gene_id").agg(y.sum().alias("sy"), (y * y).sum().alias("syy"),
                                                pl.len().cast(pl.Int64).alias("n")))
        best = [_combine_best(best + [sc.select("gene_id", "cell_id", "expression", "attention")])]
        gi, gj = sc["gidx"].to_numpy(), sc["gene_id"].to_numpy()
        e, p = sc["expression"].to_numpy().astype(np.float64), sc["pred"].to_numpy().astype(np.float64)
        np.add.at(pred_sum, (gi, gj), p)
        np.add.at(pair_n, (gi, gj), 1)
        pred_stats += [e.sum(), p.sum(), (e * e).sum(), (p * p).sum(), (e * p).sum(), e.size]
        np.add.at(group_cells, sc.group_by("cell_id").agg(pl.col("gidx").first())["gidx"].to_numpy(), 1)
        x = place(sc, "expression", cells, np.arange(n_g), np.zeros((cells.size, n_g)))
        s1 += x.sum(0)
        s2 += (x * x).sum(0)
        cross += x[:, u.tf_genes].T @ x
        if pt is not None and pt.height:
            d = (pt.join(sc.select("cell_id", "gene_id", "gidx", pl.col("pred").alias("base")), on=["cell_id", "gene_id"])
                 .group_by("condition", "mode").agg("gidx", "gene_id", (pl.col("pred") - pl.col("base")).cast(pl.Float64).alias("d")))
            for c, m, gidx, gid, dd in d.iter_rows():
                key = (c, m)
                if key not in shift_sum:
                    shift_sum[key], touched[key] = np.zeros((n_groups, n_g)), np.zeros((n_groups, n_g), np.int64)
                np.add.at(shift_sum[key], (np.asarray(gidx), np.asarray(gid)), np.asarray(dd))
                np.add.at(touched[key], (np.asarray(gidx), np.asarray(gid)), 1)
    g = att.total()
    n_signal = pl.max_horizontal(pl.col("nsig"), 1)
    gatt = (g.with_columns(pl.col("gidx").replace_strict(dict(enumerate(u.groups)), return_dtype=pl.Utf8).alias("group"))
            .select("group", "gene_id", "peak_id", (pl.col("att") / pl.col("n")).cast(pl.Float32).alias("attention"),
                    (pl.col("mass") / pl.col("n")).cast(pl.Float32).alias("atac"), pl.col("n").cast(pl.UInt32).alias("n_cells"),
                    (pl.col("abl") / n_signal).cast(pl.Float32).alias("ablation"),
                    (pl.col("abl") / pl.col("n")).cast(pl.Float32).alias("ablation_all_cells"))
            .sort("group", "gene_id", "peak_id"))
    genes = np.flatnonzero(pair_n.sum(0) > 0)
    return FirstPass(gatt, dict(sorted(windows.items())), genes, np.concatenate(order) if order else np.zeros(0, np.int64),
                     group_cells, pred_sum, pair_n, shift_sum, touched, s1, s2, cross, u.tf_genes,
                     region.total(), region_y.total(), best[0] if best else pl.DataFrame(), pred_stats)


def transition_table(fp: FirstPass, groups: list[str], src: str, tgt: str, conditions: list[tuple[str, str]]) -> pl.DataFrame:
    """(condition, mode, transition_score) for every (condition, mode): the mean shift of the source
    cells projected on the source→target centroid direction over its length² (transitions.py); 0
    for a condition that touched no sample."""
    direction = fp.centroid(tgt, groups) - fp.centroid(src, groups)
    norm2 = float(direction @ direction)
    if norm2 == 0:
        raise ValueError(f"groups {src} and {tgt} have the same predicted centroid: no direction to score against")
    s, n = groups.index(src), max(int(fp.group_cells[groups.index(src)]), 1)
    rows = [(c, m, float(fp.shift_sum[(c, m)][s] @ direction / n / norm2) if (c, m) in fp.shift_sum else 0.0)
            for c, m in conditions]
    return pl.DataFrame(rows, schema={"condition": pl.Utf8, "mode": pl.Utf8, "transition_score": pl.Float64}, orient="row")


def sample_cells(chosen: pl.DataFrame, per_group: int, seed: int) -> pl.DataFrame:
    """(cell_id, group) of at most ``per_group`` cells per group, the lowest by a seeded hash of the
    cell id: the same cells whichever partitions or workers scored them."""
    key = pl.col("cell_id").hash(seed=seed)
    return (chosen.select(pl.col("cell_id").cast(pl.Int32), "group").with_columns(key.alias("_h"))
            .sort("_h").group_by("group", maintain_order=True).head(per_group).drop("_h").sort("cell_id"))


@dataclass
class SecondPass:
    fraction_closer: dict[tuple[str, str], float]  # share of source cells each condition moves toward the target
    sample: pl.DataFrame  # (cell_id, gene_id, expression, pred, activity, attention_feature): sampled cells, TF genes
    states: dict[str, np.ndarray]  # "source" / "target" / "perturbed": (sampled cells, genes seen) predicted states
    scatter: pl.DataFrame  # (expression, pred) of a seeded ~SCATTER_POINTS samples
    ko_shift: pl.DataFrame  # (cell_id, condition, shift_norm): sampled cells' knockout shifts (cells a knockout touched)


def second_pass(out: Path, u: Universe, fp: FirstPass, sample: pl.DataFrame, src: str, tgt: str,
                best: tuple[str, str], region_bp: int, distance, seed: int) -> SecondPass:
    """Per-(cell, gene) features to ``cells/``, per-(cell, condition) shifts to ``shifts/``."""
    files = partition_files(out)
    for sub in ("cells", "shifts"):
        (out / sub).mkdir(exist_ok=True)
        for f in (out / sub).glob("part-*.parquet"):
            f.unlink()
    ref = fp.ref.select("gene_id", pl.col("attention").alias("ref"))
    ref_long = (ref.with_columns(pl.int_ranges(0, pl.col("ref").list.len(), dtype=pl.Int32).alias("pos"))
                .explode(["ref", "pos"]).drop_nulls("pos").with_columns(pl.col("ref").cast(pl.Float64)))
    ref_norm = ref_long.group_by("gene_id").agg((pl.col("ref") ** 2).sum().sqrt().alias("ref_norm"))
    near = pl.DataFrame([(g, j, bool(dd <= region_bp)) for g, w in fp.windows.items()
                         for j, dd in enumerate(distance(np.full(w.size, g), w).tolist())],
                        schema={"gene_id": pl.Int32, "pos": pl.Int32, "near": pl.Boolean}, orient="row")
    target = fp.centroid(tgt, u.groups)
    direction = target - fp.centroid(src, u.groups)
    norm2 = float(direction @ direction)
    s_idx = u.groups.index(src)
    closer = {k: 0 for k in fp.shift_sum}
    sampled_ids = sample["cell_id"].to_list()
    tf_ids = u.tf_genes.tolist()  # the classifier reads the TF genes' columns only
    src_cells = set(sample.filter(pl.col("group") == src)["cell_id"].to_list())
    tgt_cells = set(sample.filter(pl.col("group") == tgt)["cell_id"].to_list())
    src_list, tgt_list = sorted(src_cells), sorted(tgt_cells)
    modulus = max(1, fp.pairs // SCATTER_POINTS)
    kept, scatter, ko_kept, states_rows = [], [], [], {"source": [], "target": [], "perturbed": []}
    for i, sc, pt in chunks(files, "atlas_grn: reduce (2/2)"):
        sc = sc.join(u.cells, on="cell_id", how="inner")
        long = (explode_windows(sc, ["cell_id", "gene_id"]).join(ref_long, on=["gene_id", "pos"], how="left")
                .join(near, on=["gene_id", "pos"], how="left"))
        att = pl.col("attention").cast(pl.Float64)
        feat = long.group_by("cell_id", "gene_id").agg(
            (att * pl.col("ref")).sum().alias("dot"), (att * att).sum().alias("nn"),
            (pl.col("atac").cast(pl.Float64) * pl.col("near").fill_null(False).cast(pl.Float64)).sum().alias("activity"))
        feat = feat.join(ref_norm, on="gene_id", how="left").with_columns(
            pl.when((pl.col("nn") > 0) & (pl.col("ref_norm") > 0)).then(pl.col("dot") / pl.col("nn").sqrt() / pl.col("ref_norm"))
            .otherwise(0.0).alias("_cos"))
        cells_t = (sc.select("cell_id", "gene_id", "expression", "pred")
                   .join(feat.select("cell_id", "gene_id", pl.col("activity").cast(pl.Float32),
                                     (pl.col("_cos") * pl.col("activity")).cast(pl.Float32).alias("attention_feature")),
                         on=["cell_id", "gene_id"], how="left")
                   .with_columns(pl.col("activity").fill_null(0.0), pl.col("attention_feature").fill_null(0.0))
                   .sort("cell_id", "gene_id"))
        cells_t.write_parquet(out / "cells" / f"part-{i:05d}.parquet")
        kept.append(cells_t.filter(pl.col("cell_id").is_in(sampled_ids) & pl.col("gene_id").is_in(tf_ids)))
        h = (pl.col("cell_id").cast(pl.UInt64) * 1_000_003 + pl.col("gene_id").cast(pl.UInt64)).hash(seed=seed)
        scatter.append(cells_t.filter(h % modulus == 0).select("expression", "pred"))
        for label, pool in (("source", src_list), ("target", tgt_list)):
            states_rows[label].append(cells_t.filter(pl.col("cell_id").is_in(pool)).select("cell_id", "gene_id", "pred"))
        if pt is None or not pt.height:
            continue
        d = (pt.join(sc.select("cell_id", "gene_id", "gidx", pl.col("pred").alias("base")), on=["cell_id", "gene_id"])
             .with_columns((pl.col("pred") - pl.col("base")).cast(pl.Float64).alias("d")))
        gid = d["gene_id"].to_numpy()
        d = d.with_columns(pl.Series("dir", direction[gid]), pl.Series("tgt", target[gid]))
        p1, p0 = pl.col("pred").cast(pl.Float64), pl.col("base").cast(pl.Float64)
        shifts = (d.group_by("cell_id", "gidx", "condition", "mode")
                  .agg((pl.col("d") ** 2).sum().sqrt().alias("shift_norm"),
                       ((pl.col("d") * pl.col("dir")).sum() / norm2).alias("toward_target"),
                       ((p1 - pl.col("tgt")) ** 2 - (p0 - pl.col("tgt")) ** 2).sum().alias("_dclose"))
                  .with_columns((pl.col("_dclose") < 0).alias("closer")))
        shifts.drop("gidx", "_dclose").sort("cell_id", "condition", "mode").write_parquet(out / "shifts" / f"part-{i:05d}.parquet")
        ko_kept.append(shifts.filter((pl.col("mode") == "KO") & pl.col("cell_id").is_in(sampled_ids))
                       .select("cell_id", "condition", "shift_norm"))
        for c, m, n in (shifts.filter((pl.col("gidx") == s_idx) & pl.col("closer")).group_by("condition", "mode").len().iter_rows()):
            closer[(c, m)] += int(n)
        states_rows["perturbed"].append(d.filter((pl.col("condition") == best[0]) & (pl.col("mode") == best[1])
                                                 & pl.col("cell_id").is_in(src_list)).select("cell_id", "gene_id", "pred"))
    n_src = max(int(fp.group_cells[s_idx]), 1)
    src_ids = np.array(sorted(src_cells), np.int64)

    cols = gene_columns(fp.genes, u.n_genes)

    def dense(frames: list[pl.DataFrame], ids: np.ndarray, base: np.ndarray | None = None) -> np.ndarray:
        m = np.zeros((ids.size, fp.genes.size), np.float32) if base is None else base.copy()
        return place(pl.concat(frames), "pred", ids, cols, m) if frames else m

    source = dense(states_rows["source"], src_ids)
    states = {"source": source, "target": dense(states_rows["target"], np.array(sorted(tgt_cells), np.int64)),
              "perturbed": dense(states_rows["perturbed"], src_ids, source)}
    ko_schema = {"cell_id": pl.Int32, "condition": pl.Utf8, "shift_norm": pl.Float64}
    return SecondPass({k: v / n_src for k, v in closer.items()}, pl.concat(kept) if kept else pl.DataFrame(), states,
                      pl.concat(scatter) if scatter else pl.DataFrame(),
                      pl.concat(ko_kept).cast(ko_schema) if ko_kept else pl.DataFrame(schema=ko_schema))

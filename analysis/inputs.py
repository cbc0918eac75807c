"""What every analysis reads: the regulatory shard tables, cell groups, TFs, and the trained models.

All checks happen here, before any Ray work starts, so a bad input fails in seconds with a message
that names the file and says what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors import safe_open
from safetensors.torch import load_file

from creformer.config import Config, ConfigError, ModelConfig, load_config
from creformer.engine.errors import InputError, ShardError
from creformer.engine.genes import gene_digest
from creformer.engine.io.motifs import Motif, name_motifs, read_motif_table, read_motifs
from creformer.engine.shards import Manifest
from creformer.engine.tokenize import SIG_OFFSET, SIG_VOCAB
from creformer.trainer.model import Elementary
from creformer.trainer.model.regulatory import RegulatoryHead


def peak_regions(peaks: pl.DataFrame, name: str = "region") -> pl.DataFrame:
    """(peak_id, ``name``): each peak as a chrom:start-end region string, as genome browsers and
    SCENIC+ write regions."""
    return peaks.select("peak_id", pl.format("{}:{}-{}", "chrom", "start", "end").alias(name))


@dataclass
class AtlasTables:
    root: Path
    manifest: Manifest
    peaks: pl.DataFrame  # peak_id, chrom, start, end
    genes: pl.DataFrame  # gene_id, gene, name, chrom, tss, strand
    cells: pl.DataFrame  # cell_id, barcode, library_size, label
    peak_dna: np.ndarray  # (n_peaks, 1024) DNA tokens
    atac_cuts: np.ndarray  # the ATAC cut-points of the signal tokenizer

    @property
    def peak_m(self) -> int:
        return int(self.manifest.data["options"]["peak_m"])


def load_tables(manifest_path: str | Path) -> AtlasTables:
    path = Path(manifest_path)
    if path.is_dir():
        path = path / "manifest.json"
    if not path.exists():
        raise ShardError(f"no regulatory manifest at {path}; run `creformer prepare regulatory` first")
    man = Manifest(path)
    if man.kind != "regulatory":
        raise ShardError(f"{path} is a {man.kind} shard set; atlas_grn needs the regulatory shards")
    tables = man.root / "tables"
    peaks_t = pq.read_table(tables / "peaks.parquet")
    dna = peaks_t.column("dna").combine_chunks().values.to_numpy().reshape(peaks_t.num_rows, -1)
    cuts = man.data["tokenizer"]["signal"]["cutpoints"]
    atac = cuts.get("ATAC") or next(iter(cuts.values()))
    return AtlasTables(man.root, man, pl.from_arrow(peaks_t.drop_columns(["dna"])),
                       pl.read_parquet(tables / "genes.parquet"), pl.read_parquet(tables / "cells.parquet"),
                       dna, np.asarray(atac, np.float64))


def level_values(cuts: np.ndarray) -> np.ndarray:
    """Signal token id → representative per-bp value (geometric middle of its level's interval):
    [PAD]/[MASK] and level 0 → 0. Used to turn tokens back into an ATAC mass per peak."""
    values = np.zeros(SIG_VOCAB, np.float64)
    edges = np.r_[cuts[0] / 2, cuts, cuts[-1] * 1.6]
    for k in range(len(cuts) + 1):  # level 1 + k: between cuts[k-1] and cuts[k]
        values[SIG_OFFSET + 1 + k] = np.sqrt(edges[k] * edges[k + 1]) if k else cuts[0] / 2
    return values


def row_masses(tok: pa.ListArray, values: np.ndarray) -> np.ndarray:
    """The ATAC mass (sum of ``level_values``) of each sparse signal row of ``tok``; an empty row
    has mass 0 (``np.add.reduceat`` alone would give it its next row's first value)."""
    offsets = tok.offsets.to_numpy()
    flat = tok.values.to_numpy()[offsets[0]:offsets[-1]]
    if not len(flat):
        return np.zeros(len(tok), np.float64)
    mass = np.add.reduceat(np.r_[values[flat], 0.0], offsets[:-1] - offsets[0])
    return np.where(np.diff(offsets) > 0, mass, 0.0)


def cell_groups(tables: AtlasTables, groups_tsv: str, column: str, min_cells: int) -> pl.DataFrame:
    """(cell_id, barcode, group) for every cell with a group: from ``groups_tsv`` (barcode + column)
    or else the cells table's own label. Groups smaller than ``min_cells`` are an error."""
    cells = tables.cells.select("cell_id", "barcode", "label")
    if groups_tsv:
        path = Path(groups_tsv)
        if not path.exists():
            raise InputError(f"cell group table {path} does not exist")
        g = pl.read_csv(path, separator="\t")
        if "barcode" not in g.columns or column not in g.columns:
            raise InputError(f"{path} needs columns 'barcode' and '{column}' (analysis.group_column); it has {g.columns}")
        out = cells.join(g.select("barcode", pl.col(column).cast(pl.Utf8).alias("group")), on="barcode", how="inner")
        if out.height == 0:
            raise InputError(f"no barcode of {path} matches the atlas cells (e.g. {cells['barcode'][0]} vs {g['barcode'][0]})")
    else:
        out = cells.filter(pl.col("label").is_not_null()).rename({"label": "group"})
        if out.height == 0:
            raise InputError("the atlas cells carry no label; pass a cell group table (--groups barcode<TAB>group)")
    out = out.select("cell_id", "barcode", "group")
    sizes = out.group_by("group").len().sort("group")
    small = sizes.filter(pl.col("len") < min_cells)
    if small.height:
        rows = ", ".join(f"{g} ({n})" for g, n in small.iter_rows())
        raise InputError(f"cell groups with fewer than analysis.min_cells_per_group={min_cells} cells: {rows}; "
                         "merge them, drop them from the group table, or lower the minimum")
    return out


def sample_cells(groups: pl.DataFrame, per_group: int, seed: int) -> pl.DataFrame:
    """Up to ``per_group`` cells of each group (seeded), sorted by cell id."""
    parts = []
    for i, (_name, df) in enumerate(sorted(groups.group_by("group"), key=lambda kv: str(kv[0]))):
        k = min(per_group, df.height) if per_group > 0 else df.height
        parts.append(df.sample(n=k, seed=seed + i) if k < df.height else df)
    return pl.concat(parts).sort("cell_id")


@dataclass
class TF:
    name: str
    motif: int  # index into the motif list
    gene_id: int | None  # the TF's own gene in the atlas (None when it is not among the genes)


def resolve_tfs(motifs: list[Motif], genes: pl.DataFrame, wanted: list[str]) -> list[TF]:
    """TFs = motifs whose name matches an atlas gene name (case-insensitive; JASPAR dimers such as
    FOS::JUN are skipped). ``wanted`` restricts the list; an unknown name is an error."""
    by_name = {n.upper(): int(g) for g, n in genes.select("gene_id", "name").iter_rows() if n}
    tfs, seen = [], set()
    for i, m in enumerate(motifs):
        key = m.name.upper()
        if "::" in key or key in seen:
            continue
        seen.add(key)
        tfs.append(TF(m.name, i, by_name.get(key)))
    if wanted:
        index = {t.name.upper(): t for t in tfs}
        unknown = [w for w in wanted if w.upper() not in index]
        if unknown:
            raise InputError(f"unknown TF name(s) {unknown}: not among the motif names of the motif file "
                             f"(e.g. {[t.name for t in tfs[:5]]})")
        tfs = [index[w.upper()] for w in wanted]
    return tfs


def resolve_genes(genes: pl.DataFrame, wanted: list[str], root: Path) -> list[int]:
    """Gene ids for names or stable ids; a gene the shards do not hold is an error (empty: all)."""
    if not wanted:
        return []
    index = {str(n).upper(): int(g) for g, n in genes.select("gene_id", "name").iter_rows() if n}
    index.update({str(k).upper(): int(g) for g, k in genes.select("gene_id", "gene").iter_rows()})
    missing = [w for w in wanted if w.upper() not in index]
    if missing:
        raise InputError(f"genes absent from the model's shards ({root}): {missing}; the shards hold {genes.height} genes "
                         f"(e.g. {genes['name'].head(5).to_list()}); rebuild them with these genes or drop them")
    return sorted({index[w.upper()] for w in wanted})


def load_motifs(path: str, table: str = "") -> list[Motif]:
    """The motif file, named by the JASPAR metadata table when one is given."""
    if not path:
        raise ConfigError("analysis.motifs is empty: give a motif file (JASPAR's MEME, .jaspar or .pfm download, or the simulator's motifs.meme)")
    motifs = read_motifs(path)
    return name_motifs(motifs, read_motif_table(table)) if table else motifs


@dataclass
class Models:
    elementary: object
    head: object
    cfg: ModelConfig


def _export_config(weights: Path) -> Config | None:
    yaml_path = weights.parent / "config.yaml"
    return load_config(yaml_path) if yaml_path.exists() else None


def load_models(elementary_weights: str, regulatory_weights: str, cfg: Config, tables: AtlasTables) -> Models:
    """The frozen Elementary and the trained Regulatory head, from their safetensors exports.
    The model config is the one the Regulatory export was trained with; a mismatch with the shards
    (peak count, peak length) is an error before anything runs."""
    paths = {"elementary": Path(elementary_weights), "regulatory": Path(regulatory_weights)}
    keys = {"elementary": "train.regulatory.elementary_weights", "regulatory": "analysis.regulatory_weights"}
    for role, p in paths.items():
        if not p.exists():
            raise ConfigError(f"{role} weights {p} do not exist; run train_{role} first (it writes export/model.safetensors) "
                              f"or set {keys[role]}")
    trained = _export_config(paths["regulatory"]) or cfg
    mcfg, peak_m = trained.model, trained.data.regulatory.peak_m
    if peak_m != tables.peak_m or mcfg.peak_bp != tables.peak_dna.shape[1]:
        raise ConfigError(f"model artifact {paths['regulatory']} was trained with peak_m={peak_m}, peak_bp={mcfg.peak_bp} "
                          f"but the shards at {tables.root} hold peak_m={tables.peak_m}, {tables.peak_dna.shape[1]}-token peaks; "
                          "use the shards the model was trained on or retrain")
    elementary = Elementary(mcfg)
    head = RegulatoryHead(mcfg, peak_m, int(tables.manifest.data["counts"]["genes"]))
    for role, module in (("elementary", elementary), ("regulatory", head)):
        state = load_file(str(paths[role]))
        expected = module.state_dict()
        bad = [k for k in expected if k not in state or tuple(state[k].shape) != tuple(expected[k].shape)]
        if bad or set(state) - set(expected):
            raise ConfigError(f"{paths[role]} does not fit the {role} model of {paths['regulatory'].parent / 'config.yaml'} "
                              f"(d_model={mcfg.d_model}, n1/n2/n3={mcfg.n1}/{mcfg.n2}/{mcfg.n3}); first mismatches "
                              f"{(bad or sorted(set(state) - set(expected)))[:3]}")
        module.load_state_dict(state)
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
    if mcfg.gene_embedding or mcfg.gene_peak_weights:
        with safe_open(str(paths["regulatory"]), "pt") as f:
            recorded = (f.metadata() or {}).get("genes_sha256")
        if recorded != gene_digest(tables.genes.select("gene_id", "gene").to_dict(as_series=False)):
            raise ConfigError(f"model artifact {paths['regulatory']} has a learned vector per gene of the shards it was trained "
                              f"on (model.gene_embedding, model.gene_peak_weights), and the shards at {tables.root} hold "
                              f"{'another gene list' if recorded else 'genes it cannot check (its header records none)'}; "
                              "run atlas_grn on the shards the model was trained on, or retrain on these")
    return Models(elementary, head, mcfg)


def file_id(path: str | Path) -> str:
    """Identity of a model artifact for resumability: path, size and modification time."""
    st = Path(path).stat()
    return f"{Path(path).resolve()}:{st.st_size}:{st.st_mtime_ns}"

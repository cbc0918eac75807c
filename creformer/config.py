"""One typed configuration tree, loaded from YAML presets with dotted ``key=value`` overrides.

Presets live in ``configs/`` (installed as ``creformer.configs``); ``load_config("tiny")`` and
``load_config("configs/tiny.yaml")`` are equivalent. Unknown keys and wrong types are errors that
name the file, the line and the key, and suggest the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Union

import yaml

# The Elementary's tracks, in the order of the signal-token rows. Written once: the simulator writes
# these, data.assays defaults to them, and model.n_tracks must equal len(data.assays).
ASSAYS = ["ATAC", "H3K4me1", "H3K4me3", "H3K27ac", "H3K27me3", "H3K36me3", "CTCF"]
CROP_LENGTHS = [128, 1024, 2048, 4096, 8192, 16384]


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message says where and what to do."""


@dataclass
class RegulatoryDataConfig:
    """`prepare regulatory`: a 10x Multiome atlas -> cell x gene sample shards (engine/regulatory_shards.py)."""

    multiome: str = ""  # Cell Ranger ARC folder, filtered_feature_bc_matrix.h5, .h5mu, or RNA-only .h5ad (+ fragments, peaks)
    fragments: str = ""  # atac_fragments.tsv.gz when not next to the matrix / named in the h5mu
    peaks: str = ""  # BED/narrowPeak replacing the input's peaks (e.g. MACS2 per cluster; merged); required with .h5ad
    annotation: str = ""  # GTF/GFF3, BED of gene bounds, or TSS table
    shards: str = "runs/shards/regulatory"  # output folder
    genes: str = "expressed"  # "expressed", "hvg" or a file of gene ids/names (one per line)
    n_hvg: int = 2000  # genes kept by "hvg"
    min_cells_per_gene: int = 3  # "expressed": counts > 0 in at least this many cells
    min_counts: int = 1  # cells with fewer RNA counts are skipped (counted)
    cells: str = ""  # optional file of barcodes to keep
    tss_window_bp: int = 150_000  # a gene's peaks lie within +-tss_window_bp of its TSS
    peak_m: int = 150  # at most this many peaks per gene (the nearest); the Regulatory head's input width
    keep_genes_without_peaks: bool = True
    allow_missing_sequence: bool = False  # keep peaks the genome lacks, with [N] DNA tokens
    rows_per_shard: int = 1_000_000  # cell x gene samples per shard (cells per shard = this / genes)

    def options(self) -> dict[str, Any]:
        """The settings that define a shard set (hashed into its manifest); input paths are not."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in REGULATORY_INPUT_KEYS}


REGULATORY_INPUT_KEYS = ("multiome", "fragments", "peaks", "annotation", "shards")


@dataclass
class EmbeddingsConfig:
    """`prepare embeddings`: the frozen Elementary's output for every (peak, cell signal) pair of the
    Regulatory shards, written once per Elementary weights (trainer/embedding_store.py)."""

    # "auto": write the store when its estimated size fits budget_gb, else keep the online cache;
    # "store": always write it; "online": never (each job embeds what it meets, cached per run)
    mode: str = "auto"
    store: str = ""  # folder (default: <data.regulatory.shards>/embeddings); one subfolder per weights hash
    budget_gb: float = 16.0
    workers: int = 2  # Ray Data actors embedding, one CPU (or GPU with train.use_gpu) each
    pairs_per_part: int = 16384  # (peak, signal) pairs per Arrow part: the unit of work and of resume


@dataclass
class DataConfig:
    genome: str = ""  # FASTA (plain, gzip or bgzip), for both shard sets
    samples: str = ""  # samples.tsv: sample, assay, path
    shards: str = "runs/shards/elementary"  # output folder of `prepare elementary`
    assays: list[str] = field(default_factory=lambda: list(ASSAYS))
    window_bp: int = 32768  # tokens per Elementary window; a window reads window_bp + 5 bases
    windows_per_sample: int = 50000
    max_n_fraction: float = 0.1
    shard_size_mb: int = 256
    crop_length: int = 1024  # L used by training, a multiple of 128 in CROP_LENGTHS
    seed: int = 0
    executor: str = "ray"  # "ray" (Ray Data tasks) or "local" (one process, for debugging)
    regulatory: RegulatoryDataConfig = field(default_factory=RegulatoryDataConfig)
    embeddings: EmbeddingsConfig = field(default_factory=EmbeddingsConfig)


@dataclass
class SimulateConfig:
    preset: str = "tiny"
    out: str = "runs/sim"
    seed: int = 0


@dataclass
class ModelConfig:
    d_model: int = 64
    n_heads: int = 4
    ffn: int = 256
    n1: int = 2  # transformer-1 layers (inside 128-bp bins)
    n2: int = 2  # transformer-2 layers (across bins)
    n3: int = 2  # regulatory transformer layers (across peaks)
    bin_size: int = 128
    max_bins: int = 128
    peak_bp: int = 1024
    head_hidden: int = 64  # regulatory MLP width after flattening (data.regulatory.peak_m x d_model inputs)
    n_tracks: int = 7
    local_kernel: int = 11  # width (bp) of the convolution over token embeddings before transformer-1; 0 = none
    gene_embedding: bool = True  # Regulatory: a learned vector per gene of the shard set, added to every peak's input
    # Regulatory: a learned weight per (gene, TSS rank) times each peak's learned scalar activity,
    # summed into the prediction beside the head (a per-gene cis term, as the accessibility regression has)
    gene_peak_weights: bool = True
    dropout: float = 0.0
    activation_checkpointing: bool = False


@dataclass
class StageConfig:
    """What differs between the two training jobs: each has its own section, train.elementary and
    train.regulatory, so one config file describes a whole run."""

    name: str = ""  # run folder under train.storage_path (default: the stage's name)
    micro_batch: int = 4  # samples per worker step
    lr: float = 3e-4
    # AdamW's decoupled weight decay (every trainable parameter). At the science preset (lr 1e-3,
    # 1,400 steps) 0.01 shrinks a weight by ~1.4 % over the run: not a regularizer there
    weight_decay: float = 0.01
    warmup_steps: int = 50
    max_steps: int = 200
    checkpoint_every: int = 50


@dataclass
class ElementaryTrainConfig(StageConfig):
    name: str = "elementary"
    eval_motifs: str = ""  # planted motif instances (simulator truth/motif_instances.tsv) scored after training
    eval_windows: int = 8  # windows scored by that evaluation


@dataclass
class RegulatoryTrainConfig(StageConfig):
    name: str = "regulatory"
    elementary_weights: str = ""  # exported Elementary safetensors (default: <storage_path>/elementary/export)
    holdout_cells: float = 0.1  # fraction of cells never trained on, scored after training
    eval_samples: int = 4096  # at most this many held-out (cell, gene) samples scored (0: skip the evaluation)
    # learning-rate multiplier of the per-gene cis table (model.gene_peak_weights): it starts at zero
    # and Adam moves a weight at most ~lr per step
    cis_lr_scale: float = 1.0
    # after training, refit that table and a per-gene intercept in closed form on the training cells
    # (per-gene ridge on the model's own peak activities, the rest of the model fixed; trainer/cis_refit.py)
    cis_refit: bool = False


@dataclass
class TrainConfig:
    num_workers: int = 2
    use_gpu: bool = False
    grad_accum: int = 1
    clip_grad: float = 1.0
    zero_stage: int = 3  # DeepSpeed ZeRO stage; 0 is plain data parallel (the DDP baseline of benchmarks/training.py)
    # torch threads per worker (0: Ray's default, the CPUs reserved per worker). More than reserved
    # pays off where workers idle at ZeRO-3's per-layer gathers, waiting for each other (demo preset)
    torch_threads: int = 0
    # In training workers and the embedding store's actors, allocations below this many MB come from
    # the heap and stay there when freed (glibc mallopt; trainer/heap.py): no kernel zeroing of fresh
    # pages for tens of MB per batch (1.06x Regulatory steady tokens/s, docs/operations.md). 0: glibc's defaults
    malloc_heap_mb: int = 1024
    max_failures: int = 2
    storage_path: str = "runs/train"
    seed: int = 0
    log_every: int = 10
    placement_strategy: str = "PACK"  # Ray placement of the workers: PACK, SPREAD, STRICT_SPREAD (one per node)
    fail_at_step: int = 0  # fault injection for tests: raise once at this step (0: never)
    # Same batches in the same order on every run and after a restart: each worker reads the whole
    # ordered stream and takes every num_workers-th batch, skipping those consumed before the
    # checkpoint. For reproducibility checks; every worker reads all the data.
    deterministic: bool = False
    elementary: ElementaryTrainConfig = field(default_factory=ElementaryTrainConfig)
    regulatory: RegulatoryTrainConfig = field(default_factory=RegulatoryTrainConfig)

    def stage(self, name: str) -> StageConfig:
        if name not in STAGES:
            raise ConfigError(f"unknown training stage {name!r}; stages: {', '.join(STAGES)}")
        return getattr(self, name)

    def run_dir(self, name: str) -> Path:
        """<storage_path>/<stage name>: the stage's checkpoints, metrics, export and eval."""
        return Path(self.storage_path).resolve() / self.stage(name).name

    def weights(self, name: str) -> Path:
        """Where a stage's exported safetensors are written."""
        return self.run_dir(name) / "export" / "model.safetensors"


STAGES = ("elementary", "regulatory")


@dataclass
class RayConfig:
    address: str = ""  # empty: RAY_ADDRESS if set, else a local Ray on node_ip
    node_ip: str = "127.0.0.2"  # loopback, not 127.0.0.1 (Ray rewrites that to the host's address)
    gloo_socket_ifname: str = "lo"
    ds_accelerator: str = "cpu"  # DeepSpeed accelerator of the workers ("cuda" on GPU clusters)
    num_cpus: int = 0  # 0: let Ray detect
    # how often Ray Train's controller polls its workers (Ray's default: 2 s); a finished or failed
    # worker group waits up to one poll before the run moves on (a tiny run's end: ~4 s at 2 s, 1-2 s at 0.5 s)
    train_poll_s: float = 0.5


@dataclass
class AnalysisConfig:
    out: str = "runs/atlas"  # atlas_grn outputs (partitions, tables, h5ad, tracks, report)
    regulatory_weights: str = ""  # exported Regulatory safetensors (default: <storage_path>/regulatory/export)
    motifs: str = ""  # motif file: MEME, JASPAR (.jaspar) or raw PFM, as JASPAR exports them (or the simulator's motifs.meme)
    motif_table: str = ""  # JASPAR metadata TSV (matrix_id, tf_name, ...): names motifs by matrix ID
    groups: str = ""  # TSV with barcode + group_column; empty: the cells' own labels
    group_column: str = "cell_type"
    truth: str = ""  # simulator truth folder: when set, atlas_grn also writes scorecard.json
    crispri: str = ""  # EPCrisprBenchmark table to score (baselines always, the model where it covers)
    cells_per_group: int = 0  # a seeded sample of this many cells per group (0: every cell; a sample is reported)
    # cells per group the atlas_grn driver holds (seeded): the master-TF classifier's training cells and
    # the figures' points; every other output covers every analysed cell, by streaming reductions
    driver_cells_per_group: int = 1000
    min_cells_per_group: int = 20
    top_k_tfs: int = 3
    genes: list[str] = field(default_factory=list)  # restrict to these genes (names or ids; empty: all)
    tfs: list[str] = field(default_factory=list)  # restrict to these TFs (empty: every motif with a gene)
    # which TFs get a knockout and a knock-in: "expressed" (a motif and a gene among the atlas genes) or
    # "all" (every motif); TFs named in analysis.tfs always are
    perturb: str = "expressed"
    multi_tf: list[str] = field(default_factory=list)  # combined perturbations, e.g. ["TF01+TF02"]
    # PWM hit: a site at most this likely in random sequence (FIMO's rule and default); 0: use
    # motif_threshold, the fraction of the way from a motif's min to max log-odds score, instead
    motif_pvalue: float = 1e-4
    motif_threshold: float = 0.85
    # which peaks a perturbation closes (knockout) or opens (knock-in): the scan's sites, plus, when
    # > 0, sites at this looser p-value whose peak's accessibility follows the TF's motif accessibility
    # across the cells (r >= perturb_support_r; analysis/binding_support.py, docs/design.md §8: off,
    # since it failed its rule on unseen seeds 12-14); the GRN and the master-TF baselines keep the scan's sites
    perturb_support_pvalue: float = 0.0
    perturb_support_r: float = 0.1
    high_attention_peaks: int = 5  # peaks per window tested for motif enrichment
    max_edge_p: float = 0.05
    # peaks summed into gene activity / the attention feature: promoter-proximal, as Signac's and
    # ArchR's gene scores are; 50 kb summed other genes' elements in (demo master-TF top-3 0.5 vs 1.0)
    tss_region_bp: int = 2000
    ki_quantile: float = 0.9  # knock-in signal: an observed profile at this quantile of non-zero (cell, peak) ATAC masses
    # knockout / knock-in propagation steps through the model's own predicted TF changes (CellOracle's
    # n_propagation, and its default; analysis/propagation.py): the read the knockout and knock-in are
    # scored by, the one-step read reported beside it (docs/design.md §7); 0: none, both scored one-step
    ko_propagation: int = 3
    source_group: str = ""  # transition source / disease group (default: first group)
    target_group: str = ""  # transition target / reference group (default: second group)
    workers: int = 2  # Ray Data actors running the model
    threads_per_worker: int = 1
    batch_size: int = 64
    cells_per_partition: int = 16  # small partitions balance the workers and make resumes cheap
    cache: bool = True  # the frozen-Elementary embedding cache
    # each actor's in-memory LRU of embeddings (MB): a cell's peaks recur across its genes' windows within a
    # partition, not across cells, so a partition's worth suffices, and a bound keeps actor memory flat in cells
    cache_mb: int = 256
    fail_at: str = ""  # fault injection for tests: "shared:I" or "partition:I" kills the first worker starting that item
    seed: int = 0


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    simulate: SimulateConfig = field(default_factory=SimulateConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("creformer.configs").iterdir() if p.name.endswith(".yaml"))


def _resolve_source(source: str | Path) -> Path:
    path = Path(source)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; presets: {', '.join(preset_names())}")
        return path
    candidate = Path(str(resources.files("creformer.configs") / f"{source}.yaml"))
    if not candidate.is_file():
        raise ConfigError(f"unknown preset {source!r}; presets: {', '.join(preset_names())}, or give a .yaml path")
    return candidate


def _node_to_python(node: yaml.Node, prefix: str, lines: dict[str, int]) -> Any:
    """Convert a composed YAML node to Python, remembering the line of every dotted key."""
    lines[prefix] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            dotted = f"{prefix}.{key}" if prefix else key
            lines[dotted] = key_node.start_mark.line + 1
            out[key] = _node_to_python(value_node, dotted, lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_node_to_python(v, prefix, {}) for v in node.value]
    return yaml.safe_load(yaml.serialize(node))


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        errors = []
        for arm in typing.get_args(tp):
            if arm is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(value, arm, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{where}: {value!r} is not a {_type_name(tp)}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list of {_type_name(item_tp)}, got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {_coerce(k, key_tp, where): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if value is None:
            return ""
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{where}: unsupported type {tp}")


def _apply(obj: Any, values: dict[str, Any], prefix: str, origin: str, lines: dict[str, int]) -> None:
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else key
        where = f"{origin}, line {lines[dotted]}" if dotted in lines else origin
        if key not in names:
            hint = difflib.get_close_matches(key, names, n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"{where}: unknown key {dotted!r}{suggestion}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {dotted!r} is a section; give a mapping, not {value!r}")
            _apply(current, value, dotted, origin, lines)
        else:
            setattr(obj, key, _coerce(value, hints[key], f"{where}: {dotted}"))


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value (e.g. model.d_model=128)")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({err})") from err
    return key.strip(), value


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def validate(cfg: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    if cfg.data.window_bp % cfg.model.bin_size:
        raise ConfigError(f"data.window_bp={cfg.data.window_bp} must be a multiple of model.bin_size={cfg.model.bin_size}")
    if cfg.data.crop_length not in CROP_LENGTHS:
        raise ConfigError(f"data.crop_length={cfg.data.crop_length} must be one of {CROP_LENGTHS}")
    if cfg.data.crop_length > cfg.data.window_bp:
        raise ConfigError(f"data.crop_length={cfg.data.crop_length} exceeds data.window_bp={cfg.data.window_bp}")
    if not 0.0 <= cfg.data.max_n_fraction <= 1.0:
        raise ConfigError(f"data.max_n_fraction={cfg.data.max_n_fraction} must lie in [0, 1]")
    if cfg.train.placement_strategy not in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"):
        raise ConfigError(f"train.placement_strategy={cfg.train.placement_strategy!r} must be PACK, SPREAD, STRICT_PACK or STRICT_SPREAD")
    if cfg.data.executor not in ("ray", "local"):
        raise ConfigError(f"data.executor={cfg.data.executor!r} must be 'ray' or 'local'")
    if cfg.model.local_kernel < 0 or (cfg.model.local_kernel and cfg.model.local_kernel % 2 == 0):
        raise ConfigError(f"model.local_kernel={cfg.model.local_kernel} must be 0 (no convolution) or an odd width "
                          "(it is centred on each token)")
    if cfg.model.d_model % cfg.model.n_heads:
        raise ConfigError(f"model.d_model={cfg.model.d_model} must be divisible by model.n_heads={cfg.model.n_heads}")
    if len(set(cfg.data.assays)) != len(cfg.data.assays):
        raise ConfigError(f"data.assays has duplicates: {cfg.data.assays}")
    if cfg.model.n_tracks != len(cfg.data.assays):
        raise ConfigError(f"model.n_tracks={cfg.model.n_tracks} but data.assays lists {len(cfg.data.assays)} tracks "
                          f"({', '.join(cfg.data.assays)}); the Elementary reads one signal row per assay")
    r = cfg.data.regulatory
    for name in ("tss_window_bp", "peak_m", "rows_per_shard", "n_hvg"):
        if getattr(r, name) <= 0:
            raise ConfigError(f"data.regulatory.{name}={getattr(r, name)} must be positive")
    if r.genes not in ("expressed", "hvg") and not r.genes:
        raise ConfigError("data.regulatory.genes must be 'expressed', 'hvg' or a file of gene ids/names")
    for stage in STAGES:
        sc = cfg.train.stage(stage)
        for name in ("micro_batch", "max_steps", "checkpoint_every"):
            if getattr(sc, name) <= 0:
                raise ConfigError(f"train.{stage}.{name}={getattr(sc, name)} must be positive")
        if not sc.name:
            raise ConfigError(f"train.{stage}.name is empty: it names the run folder under train.storage_path")
        if sc.weight_decay < 0:
            raise ConfigError(f"train.{stage}.weight_decay={sc.weight_decay} must be 0 (none) or positive")
    for name in ("window_bp", "windows_per_sample", "shard_size_mb"):
        if getattr(cfg.data, name) <= 0:
            raise ConfigError(f"data.{name} must be positive")
    if cfg.train.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"train.zero_stage={cfg.train.zero_stage} must be 0, 1, 2 or 3")
    if cfg.train.malloc_heap_mb < 0:
        raise ConfigError(f"train.malloc_heap_mb={cfg.train.malloc_heap_mb} must be >= 0 (0: glibc's defaults)")
    if cfg.ray.train_poll_s <= 0:
        raise ConfigError(f"ray.train_poll_s={cfg.ray.train_poll_s} must be positive (seconds between Ray Train's worker polls)")
    if cfg.train.torch_threads < 0:
        raise ConfigError(f"train.torch_threads={cfg.train.torch_threads} must be >= 0 (0: the CPUs Ray reserves per worker)")
    if cfg.train.regulatory.cis_lr_scale <= 0:
        raise ConfigError(f"train.regulatory.cis_lr_scale={cfg.train.regulatory.cis_lr_scale} must be positive "
                          "(a multiplier of train.regulatory.lr)")
    if cfg.train.regulatory.cis_refit and not cfg.model.gene_peak_weights:
        raise ConfigError("train.regulatory.cis_refit=true refits the per-gene cis table, which this model lacks: "
                          "set model.gene_peak_weights=true or train.regulatory.cis_refit=false")
    if not 0 <= cfg.train.regulatory.holdout_cells < 1:
        raise ConfigError(f"train.regulatory.holdout_cells={cfg.train.regulatory.holdout_cells} must be in [0, 1) "
                          "(the fraction of cells held out)")
    e = cfg.data.embeddings
    if e.mode not in ("auto", "store", "online"):
        raise ConfigError(f"data.embeddings.mode={e.mode!r} must be 'auto' (a store within budget_gb), 'store' or 'online'")
    if e.budget_gb < 0 or e.workers <= 0 or e.pairs_per_part <= 0:
        raise ConfigError("data.embeddings.budget_gb must be >= 0, and data.embeddings.workers and pairs_per_part positive")
    a = cfg.analysis
    for name in ("workers", "threads_per_worker", "batch_size", "cells_per_partition", "high_attention_peaks", "top_k_tfs", "tss_region_bp",
                 "cache_mb"):
        if getattr(a, name) <= 0:
            raise ConfigError(f"analysis.{name}={getattr(a, name)} must be positive")
    if a.fail_at and not re.fullmatch(r"(shared|partition):\d+", a.fail_at):
        raise ConfigError(f"analysis.fail_at={a.fail_at!r} must be 'shared:I' or 'partition:I' (or empty)")
    if a.perturb not in ("expressed", "all"):
        raise ConfigError(f"analysis.perturb={a.perturb!r} must be 'expressed' (TFs with a gene in the atlas) or 'all'")
    if not 0.0 < a.motif_threshold <= 1.0:
        raise ConfigError(f"analysis.motif_threshold={a.motif_threshold} must lie in (0, 1]")
    if not 0.0 <= a.motif_pvalue < 1.0:
        raise ConfigError(f"analysis.motif_pvalue={a.motif_pvalue} must lie in [0, 1) (0: use analysis.motif_threshold)")
    if a.perturb_support_pvalue and not a.motif_pvalue:
        raise ConfigError(f"analysis.perturb_support_pvalue={a.perturb_support_pvalue} loosens the scan's p-value, but the scan "
                          "uses analysis.motif_threshold (motif_pvalue=0): set analysis.motif_pvalue (e.g. 1e-4) or turn support off (0)")
    if a.perturb_support_pvalue and not (a.motif_pvalue < a.perturb_support_pvalue < 1.0):
        raise ConfigError(f"analysis.perturb_support_pvalue={a.perturb_support_pvalue} must lie between analysis.motif_pvalue "
                          f"({a.motif_pvalue}, the scan's own sites) and 1, or be 0 (off)")
    if not -1.0 <= a.perturb_support_r <= 1.0:
        raise ConfigError(f"analysis.perturb_support_r={a.perturb_support_r} is a Pearson r: it must lie in [-1, 1]")
    if not 0.0 < a.ki_quantile < 1.0:
        raise ConfigError(f"analysis.ki_quantile={a.ki_quantile} must lie in (0, 1)")
    if a.ko_propagation < 0:
        raise ConfigError(f"analysis.ko_propagation={a.ko_propagation}: the propagation steps must be ≥ 0 (0: the one-step read)")
    if a.driver_cells_per_group < 2:
        raise ConfigError(f"analysis.driver_cells_per_group={a.driver_cells_per_group} must be >= 2 (a classifier needs cells)")
    if a.cells_per_group < 0 or a.min_cells_per_group < 2:
        raise ConfigError("analysis.cells_per_group must be >= 0 (0: all) and analysis.min_cells_per_group >= 2")


def load_config(source: str | Path = "tiny", overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a preset name or YAML path, apply ``key=value`` overrides, validate, return the tree."""
    path = _resolve_source(source)
    try:
        node = yaml.compose(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    lines: dict[str, int] = {}
    values = _node_to_python(node, "", lines) if node is not None else {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (data, model, train, ...)")
    cfg = Config()
    _apply(cfg, values, "", str(path), lines)
    for item in overrides:
        key, value = _parse_override(item)
        _apply(cfg, _nest(key, value), "", f"override {item!r}", {})
    validate(cfg)
    return cfg


def config_from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a typed Config from ``Config.to_dict()`` output (e.g. inside Ray workers)."""
    cfg = Config()
    _apply(cfg, values, "", "config dict", {})
    validate(cfg)
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

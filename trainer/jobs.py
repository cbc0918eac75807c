"""The two training jobs, ``train_elementary(cfg)`` and ``train_regulatory(cfg)`` (the CLI and the
`ray job submit` entrypoints of the same names call them; creformer/cli.py).

Each job: validates inputs before any worker starts, prepares shards when needed (same manifest
rules as `creformer prepare`), connects to Ray (RAY_ADDRESS / ray.address, else a local loopback
Ray), trains with Ray Train + DeepSpeed ZeRO-3, then exports consolidated fp32 weights as
safetensors with the resolved config, plus metrics.jsonl, a loss-curve PNG and eval.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import ray.data
import ray.train
import torch
from ray.train.torch import TorchTrainer
from safetensors import safe_open

from creformer.config import Config, ConfigError, save_config
from creformer.engine.elementary_shards import prepare_elementary
from creformer.engine.elementary_stream import elementary_dataset
from creformer.engine.errors import ShardError
from creformer.engine.genes import gene_digest
from creformer.engine.regulatory_batches import expression_mean
from creformer.engine.regulatory_shards import prepare_regulatory
from creformer.engine.regulatory_stream import regulatory_dataset
from creformer.engine.shards import Manifest
from creformer.ray_utils import ensure_ray

from .checkpoint import export_weights, latest_checkpoint, plot_losses
from .cis_refit import refit_cis
from .embedding_store import prepare_embeddings
from .evaluate import evaluate_elementary, evaluate_holdout
from .loop import train_loop_per_worker
from .model import Elementary
from .model.regulatory import measure_signal_scale
from .peak_batches import iter_peak_batches, peak_cache, split


@dataclass
class TrainResult:
    """What a training job leaves: exported weights, its run folder and its held-out checks."""

    weights: Path  # <run_dir>/export/model.safetensors
    run_dir: Path  # checkpoints, metrics.jsonl, loss_curve.png, config.yaml, eval.json
    metrics: dict[str, Any]  # eval.json's contents (empty when the evaluation was skipped)


def ensure_elementary_shards(cfg: Config) -> Path:
    manifest = Path(cfg.data.shards) / "manifest.json"
    if manifest.exists():
        Manifest(manifest)  # schema check
        return manifest
    if not (cfg.data.samples and cfg.data.genome):
        raise ShardError(f"no elementary shards at {cfg.data.shards} and no data.samples / data.genome to build them; "
                         "run `creformer prepare elementary` or set those keys")
    return prepare_elementary(cfg).manifest_path


def ensure_regulatory_shards(cfg: Config) -> Path:
    r = cfg.data.regulatory
    manifest = Path(r.shards) / "manifest.json"
    if manifest.exists():
        Manifest(manifest)
        return manifest
    if not (r.multiome and cfg.data.genome and r.annotation):
        raise ShardError(f"no regulatory shards at {r.shards} and no data.regulatory.multiome / data.genome / "
                         "data.regulatory.annotation to build them; run `creformer prepare regulatory` or set those keys")
    return prepare_regulatory(cfg).manifest_path


def elementary_weights(cfg: Config) -> Path:
    """The Elementary export train_regulatory and atlas_grn read: train.regulatory.elementary_weights,
    else where train_elementary writes it."""
    return Path(cfg.train.regulatory.elementary_weights or cfg.train.weights("elementary"))


def check_elementary_weights(cfg: Config, path: Path) -> None:
    """Fail before any worker starts when the weights are missing or do not fit the model config."""
    if not path.exists():
        raise ConfigError(f"Elementary weights {path} do not exist; run train_elementary first "
                          "(it writes <storage_path>/<train.elementary.name>/export/model.safetensors) "
                          "or set train.regulatory.elementary_weights")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Elementary(cfg.model).state_dict().items()}
    with safe_open(str(path), "pt") as f:
        got = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    if got != expected:
        diff = sorted(set(got) ^ set(expected)) or [k for k in expected if got.get(k) != expected[k]]
        raise ConfigError(f"{path} does not match the model config (d_model={cfg.model.d_model}, n1={cfg.model.n1}, "
                          f"n2={cfg.model.n2}): first mismatches {diff[:3]}; use the config it was trained with")


def _data_config(cfg: Config) -> ray.train.DataConfig:
    """Default: the stream is split between the workers as they ask (fast, order not fixed).
    ``train.deterministic``: every worker gets the whole stream in a fixed order (loop.py picks
    its share), so a restarted run sees exactly the batches an uninterrupted one would."""
    if not cfg.train.deterministic:
        return ray.train.DataConfig()
    return ray.train.DataConfig(datasets_to_split=[], execution_options=ray.data.ExecutionOptions(preserve_order=True))


# context entries written into the export's header (analyses check them before running the model)
EXPORTED_FACTS = ("n_genes", "genes_sha256")


def run_training(cfg: Config, stage: str, dataset, context: dict[str, Any]) -> Path:
    run_dir = cfg.train.run_dir(stage)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    # Ray Train restores the latest checkpoint of a run with the same storage path and name.
    resume = latest_checkpoint(run_dir)
    if resume is not None:
        print(f"[{stage}] {run_dir} has checkpoint {resume.name}; the run resumes from it")
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.to_dict(), "stage": stage, "context": {**context, "run_dir": str(run_dir)}},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=cfg.train.use_gpu,
                                               placement_strategy=cfg.train.placement_strategy),
        run_config=ray.train.RunConfig(storage_path=str(run_dir.parent), name=run_dir.name,
                                       failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
        datasets={"train": dataset},
        dataset_config=_data_config(cfg),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"[{stage}] training finished without a checkpoint; see {run_dir}")
    export = export_weights(Path(result.checkpoint.path), run_dir / "export", cfg, stage,
                            {k: context[k] for k in EXPORTED_FACTS if k in context})
    plot_losses(run_dir / "metrics.jsonl", run_dir / "loss_curve.png", stage)
    print(f"[{stage}] done: weights {export}, metrics {run_dir / 'metrics.jsonl'}, curve {run_dir / 'loss_curve.png'}")
    return export


def _start_ray(cfg: Config) -> None:
    ensure_ray(cfg.ray)
    # The loop prints its own step lines; Ray Data's per-operator bars, redrawn by the stream's
    # split coordinator, would interleave with them on every line of a job's log.
    ray.data.DataContext.get_current().enable_progress_bars = False


def train_elementary(cfg: Config) -> TrainResult:
    """Masked DNA + track pretraining of the Elementary model on the elementary shards."""
    st = cfg.train.elementary
    if st.eval_motifs and not Path(st.eval_motifs).exists():
        raise ConfigError(f"train.elementary.eval_motifs={st.eval_motifs} does not exist (the simulator writes "
                          "truth/motif_instances.tsv); leave it empty to skip the motif evaluation")
    _start_ray(cfg)
    manifest = ensure_elementary_shards(cfg)
    ds = elementary_dataset(manifest, cfg.data.crop_length, seed=cfg.data.seed)
    export = run_training(cfg, "elementary", ds, {})
    run_dir = cfg.train.run_dir("elementary")
    metrics = evaluate_elementary(cfg, manifest, export, run_dir / "eval.json")
    return TrainResult(export, run_dir, metrics)


def train_regulatory(cfg: Config) -> TrainResult:
    """Expression training of the Regulatory head on the frozen Elementary's peak embeddings."""
    st = cfg.train.regulatory
    weights = elementary_weights(cfg)
    check_elementary_weights(cfg, weights)
    _start_ray(cfg)
    manifest = ensure_regulatory_shards(cfg)
    man = Manifest(manifest)
    if man.data["options"]["peak_m"] != cfg.data.regulatory.peak_m:
        raise ConfigError(f"{manifest} holds up to {man.data['options']['peak_m']} peaks per gene but "
                          f"data.regulatory.peak_m={cfg.data.regulatory.peak_m}; rebuild the shards or set that key")
    # Held-out cells never reach the workers; they are scored after training (eval.json).
    ds = regulatory_dataset(manifest, batch_size=st.micro_batch, with_dna=False, packed=True, holdout=split(cfg, "train"),
                            shuffle_seed=cfg.train.seed)
    run_dir = cfg.train.run_dir("regulatory")
    # the embedding store (every pair computed once, for every epoch and for atlas_grn) when
    # data.embeddings says so; else each worker's online cache under the run folder
    store = prepare_embeddings(cfg, weights)
    export = run_training(cfg, "regulatory", ds, regulatory_context(cfg, man, weights, store, run_dir / "embedding_cache"))
    if st.cis_refit:
        refit_cis(cfg, manifest, weights, export, store)
    metrics = evaluate_holdout(cfg, manifest, weights, export, run_dir / "eval.json", store=store)
    return TrainResult(export, run_dir, metrics)


def regulatory_context(cfg: Config, man: Manifest, weights: Path, store: Path | None, cache_dir: Path) -> dict[str, Any]:
    """What every Regulatory worker is handed, measured once by the driver: the frozen Elementary's
    weights, the embedding store (else an online cache under ``cache_dir``), the data's mean
    expression and signal scale, and the shard set's genes (the gene table's size and digest)."""
    genes = pq.read_table(man.root / "tables" / "genes.parquet", columns=["gene_id", "gene"]).to_pydict()
    return {"elementary_weights": str(weights.resolve()), "regulatory_root": str(man.root.resolve()),
            "cache_dir": None if store else str(cache_dir.resolve()),
            "store_dir": str(store.parent.resolve()) if store else None,
            "expression_mean": expression_mean(man.root), "signal_scale": signal_scale(cfg, man, weights, store),
            "n_genes": int(man.data["counts"]["genes"]), "genes_sha256": gene_digest(genes)}


def signal_scale(cfg: Config, man: Manifest, weights: Path, store: Path | None = None, samples: int = 64) -> float:
    """1 / RMS of the cell-signal difference of peak embeddings (``measure_signal_scale``),
    measured on the first ``samples`` training samples in training's order: every worker starts
    from the same value, and it is exported with the weights."""
    cache = peak_cache(cfg, man, weights, store)
    b = next(iter_peak_batches(cfg, man, cache, "train", samples, shuffle=True))
    return measure_signal_scale(b.bins, b.mask)  # a scalar: no head is built for it (at paper size, GBs)

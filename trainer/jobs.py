"""Console scripts ``train_elementary`` and ``train_regulatory`` (also `ray job submit` entrypoints).

Each job: validates inputs before any worker starts, prepares shards when needed (same manifest
rules as `creformer prepare`), connects to Ray (RAY_ADDRESS / ray.address, else a local loopback
Ray), trains with Ray Train + DeepSpeed ZeRO-3, then exports consolidated fp32 weights as
safetensors with the resolved config, plus metrics.jsonl and a loss-curve PNG.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from creformer.config import Config, ConfigError, load_config, save_config
from creformer.engine.errors import ShardError
from creformer.engine.shards import Manifest
from creformer.ray_utils import ensure_ray

from .checkpoint import export_weights, latest_checkpoint, plot_losses
from .loop import train_loop_per_worker


def _parse(prog: str, argv: list[str] | None) -> Config:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__)
    ap.add_argument("--config", default="tiny", help="preset (tiny, small, paper) or YAML path")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=50")
    args = ap.parse_args(argv)
    return load_config(args.config, args.overrides)


def _run_dir(cfg: Config) -> Path:
    return Path(cfg.train.storage_path).resolve() / cfg.train.name


def ensure_elementary_shards(cfg: Config) -> Path:
    manifest = Path(cfg.data.shards) / "manifest.json"
    if manifest.exists():
        Manifest(manifest)  # schema check
        return manifest
    if not (cfg.data.samples and cfg.data.genome):
        raise ShardError(f"no elementary shards at {cfg.data.shards} and no data.samples / data.genome to build them; "
                         "run `creformer prepare elementary` or set those keys")
    from creformer.engine.windows import prepare_elementary

    d = cfg.data
    return prepare_elementary(d.samples, d.genome, d.shards, assays=d.assays, window_bp=d.window_bp,
                              windows_per_sample=d.windows_per_sample, max_n_fraction=d.max_n_fraction,
                              shard_size_mb=d.shard_size_mb, seed=d.seed, executor=d.executor).manifest_path


def ensure_regulatory_shards(cfg: Config) -> Path:
    manifest = Path(cfg.data.regulatory_shards) / "manifest.json"
    if manifest.exists():
        Manifest(manifest)
        return manifest
    if not (cfg.data.multiome and cfg.data.genome and cfg.data.annotation):
        raise ShardError(f"no regulatory shards at {cfg.data.regulatory_shards} and no data.multiome / data.genome / "
                         "data.annotation to build them; run `creformer prepare regulatory` or set those keys")
    from creformer.engine.cells import RegulatoryOptions, prepare_regulatory

    return prepare_regulatory(cfg.data.multiome, cfg.data.genome, cfg.data.annotation, cfg.data.regulatory_shards,
                              fragments=cfg.data.fragments or None, options=RegulatoryOptions(peak_m=cfg.model.peak_m),
                              executor=cfg.data.executor).manifest_path


def check_elementary_weights(cfg: Config, path: str) -> None:
    """Fail before any worker starts when the weights are missing or do not fit the model config."""
    from safetensors import safe_open

    from .model import Elementary

    if not path or not Path(path).exists():
        raise ConfigError(f"train.elementary_weights={path!r} does not exist; run train_elementary first "
                          "(it writes <storage_path>/<name>/export/model.safetensors)")
    import torch

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Elementary(cfg.model).state_dict().items()}
    with safe_open(path, "pt") as f:
        got = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    if got != expected:
        diff = sorted(set(got) ^ set(expected)) or [k for k in expected if got.get(k) != expected[k]]
        raise ConfigError(f"{path} does not match the model config (d_model={cfg.model.d_model}, n1={cfg.model.n1}, "
                          f"n2={cfg.model.n2}): first mismatches {diff[:3]}; use the config it was trained with")


def _data_config(cfg: Config):
    """Default: the stream is split between the workers as they ask (fast, order not fixed).
    ``train.deterministic``: every worker gets the whole stream in a fixed order (loop.py picks
    its share), so a restarted run sees exactly the batches an uninterrupted one would."""
    import ray.train

    if not cfg.train.deterministic:
        return ray.train.DataConfig()
    from ray.data import ExecutionOptions

    return ray.train.DataConfig(datasets_to_split=[], execution_options=ExecutionOptions(preserve_order=True))


def run_training(cfg: Config, stage: str, dataset, context: dict[str, Any]) -> Path:
    import ray.train
    from ray.train.torch import TorchTrainer

    run_dir = _run_dir(cfg)
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
    export = export_weights(Path(result.checkpoint.path), run_dir / "export", cfg, stage)
    plot_losses(run_dir / "metrics.jsonl", run_dir / "loss_curve.png", stage)
    print(f"[{stage}] done: weights {export}, metrics {run_dir / 'metrics.jsonl'}, curve {run_dir / 'loss_curve.png'}")
    return export


def _start_ray(cfg: Config) -> None:
    ensure_ray(cfg.ray)
    import ray.data

    # The loop prints its own step lines; Ray Data's per-operator bars, redrawn by the stream's
    # split coordinator, would interleave with them on every line of a job's log.
    ray.data.DataContext.get_current().enable_progress_bars = False


def train_elementary(argv: list[str] | None = None) -> Path:
    cfg = _parse("train_elementary", argv)
    _start_ray(cfg)
    manifest = ensure_elementary_shards(cfg)
    from creformer.engine.dataset import elementary_dataset

    per_window = max(1, cfg.data.window_bp // cfg.data.crop_length)
    ds = elementary_dataset(manifest, cfg.data.crop_length, seed=cfg.data.seed, crops_per_window=per_window)
    if cfg.train.eval_motifs and not Path(cfg.train.eval_motifs).exists():
        raise ConfigError(f"train.eval_motifs={cfg.train.eval_motifs} does not exist (the simulator writes "
                          "truth/motif_instances.tsv); leave it empty to skip the motif evaluation")
    export = run_training(cfg, "elementary", ds, {})
    from .evaluate import evaluate_elementary

    evaluate_elementary(cfg, manifest, export, _run_dir(cfg) / "eval.json")
    return export


def train_regulatory(argv: list[str] | None = None) -> Path:
    cfg = _parse("train_regulatory", argv)
    weights = cfg.train.elementary_weights
    check_elementary_weights(cfg, weights)
    _start_ray(cfg)
    manifest = ensure_regulatory_shards(cfg)
    man = Manifest(manifest)
    if man.data["options"]["peak_m"] != cfg.model.peak_m:
        raise ConfigError(f"{manifest} holds up to {man.data['options']['peak_m']} peaks per gene but model.peak_m="
                          f"{cfg.model.peak_m}; rebuild the shards or set model.peak_m")
    from creformer.engine.dataset import expression_mean, regulatory_dataset

    # Held-out cells never reach the workers; they are scored after training (eval.json).
    ds = regulatory_dataset(manifest, batch_size=cfg.train.micro_batch, with_dna=False, packed=True,
                            holdout=(cfg.train.holdout_cells, cfg.train.seed, "train") if cfg.train.holdout_cells > 0 else None,
                            shuffle_seed=cfg.train.seed)
    context = {"elementary_weights": str(Path(weights).resolve()), "regulatory_root": str(man.root.resolve()),
               "cache_dir": str((_run_dir(cfg) / "embedding_cache").resolve()),
               "expression_mean": expression_mean(man.root), "signal_scale": signal_scale(cfg, man, Path(weights))}
    export = run_training(cfg, "regulatory", ds, context)
    from .evaluate import evaluate_holdout

    evaluate_holdout(cfg, manifest, Path(weights), export, _run_dir(cfg) / "eval.json")
    return export


def signal_scale(cfg: Config, man: Manifest, weights: Path, samples: int = 64) -> float:
    """1 / RMS of the cell-signal difference of peak embeddings (``measure_signal_scale``),
    measured on the first ``samples`` training samples in training's order: every worker starts
    from the same value, and it is exported with the weights."""
    import numpy as np
    import torch

    from creformer.engine.dataset import iter_regulatory_batches

    from .model.cache import frozen_cache
    from .model.regulatory import measure_signal_scale

    cache = frozen_cache(cfg.model, weights, man.root)
    holdout = (cfg.train.holdout_cells, cfg.train.seed, "train") if cfg.train.holdout_cells > 0 else None
    batch = next(iter_regulatory_batches(man, batch_size=samples, holdout=holdout, shuffle_seed=cfg.train.seed))
    mask = torch.from_numpy(batch["mask"])
    bins = cache.peak_bins(torch.from_numpy(batch["peak_ids"].astype(np.int64)),
                           torch.from_numpy(batch["atac"].astype(np.int64)), mask)
    return measure_signal_scale(bins, mask)  # a scalar: no head is built for it (at paper size, GBs)


def main_elementary() -> int:
    from creformer.cli import run_entrypoint

    return run_entrypoint(train_elementary)


def main_regulatory() -> int:
    from creformer.cli import run_entrypoint

    return run_entrypoint(train_regulatory)


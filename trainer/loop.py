"""The Ray Train worker loop: DeepSpeed ZeRO-3, streamed data, checkpoints that resume (docs/design.md §6).

One loop serves both stages; ``Stage`` objects supply the model and the per-batch loss. On CPU:
fp32 and gloo (Ray Train's process group; DeepSpeed reuses it); on GPU: bf16 and nccl.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import deepspeed
import numpy as np
import ray.train
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from creformer.config import Config, StageConfig, TrainConfig, config_from_dict
from creformer.engine.regulatory_batches import trim_peak_columns, unpack_samples

from .heap import keep_freed_in_heap
from .masking import mask_batch
from .model import Elementary
from .model.cache import frozen_cache
from .model.regulatory import RegulatoryHead

STATE_FILE = "trainer_state.json"


CIS_TABLE = "gene_peak_w."  # the per-gene cis table's parameter name (trainer/model/regulatory.py)


def deepspeed_config(train: TrainConfig, stage: StageConfig) -> dict[str, Any]:
    """The DeepSpeed config generated from the typed config (nothing hand-written elsewhere)."""
    return {
        "train_micro_batch_size_per_gpu": stage.micro_batch,
        "gradient_accumulation_steps": train.grad_accum,
        "gradient_clipping": train.clip_grad,
        "zero_optimization": {"stage": train.zero_stage, "stage3_gather_16bit_weights_on_model_save": False},
        "bf16": {"enabled": bool(train.use_gpu)},
        "fp16": {"enabled": False},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def lr_factor(step: int, train: StageConfig) -> float:
    """Linear warm-up, then cosine decay to 10 % at max_steps."""
    if step < train.warmup_steps:
        return (step + 1) / max(1, train.warmup_steps)
    progress = min(1.0, (step - train.warmup_steps) / max(1, train.max_steps - train.warmup_steps))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


class ElementaryStage:
    name = "elementary"
    collate_fn = None  # crops stream as fixed-shape columns: iter_torch_batches' own conversion

    def __init__(self, cfg: Config, context: dict[str, Any]):
        self.cfg = cfg
        self.model = Elementary(cfg.model)

    def loss(self, engine, batch: dict[str, torch.Tensor], step: int, rank: int) -> tuple[torch.Tensor, dict[str, float]]:
        g = torch.Generator().manual_seed(self.cfg.train.seed * 1_000_003 + step * 101 + rank)
        mb = mask_batch(batch["dna"], batch["sig"], batch["present"], bin_size=self.cfg.model.bin_size, generator=g)
        out = engine(mb)
        parts = {k: float(v.detach()) for k, v in out.items() if k != "loss"}
        return out["loss"], parts

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["dna"].numel())


class RegulatoryStage:
    name = "regulatory"

    def __init__(self, cfg: Config, context: dict[str, Any]):
        self.cfg = cfg
        self.collate_fn = UnpackCollate()
        # The frozen Elementary stays outside the ZeRO-3 engine (whole on every worker), behind the cache.
        self.cache = frozen_cache(cfg.model, context["elementary_weights"], context["regulatory_root"],
                                  disk_dir=context.get("cache_dir"), store_dir=context.get("store_dir"))
        self.model = RegulatoryHead(cfg.model, cfg.data.regulatory.peak_m, context["n_genes"])
        # Start predicting the data's mean level (measured once by the driver): log expression sits
        # around 5-7, and an output bias moving lr per step under Adam would otherwise take thousands
        # of steps to get there (the rest of the head bends to fit the offset instead of the genes).
        # A resumed run loads its own.
        with torch.no_grad():
            self.model.head[-1].bias.fill_(context["expression_mean"])
            self.model.signal_scale.fill_(context["signal_scale"])  # measured once by the driver, like the mean

    def loss(self, engine, batch: dict[str, torch.Tensor], step: int, rank: int) -> tuple[torch.Tensor, dict[str, float]]:
        # the batch comes trimmed to its widest sample's peaks (UnpackCollate); its signal stays
        # uint8 (an int64 copy of 128 samples x 65 peaks x 1,024 tokens was 68 MB a step)
        bins = self.cache.peak_bins(batch["peak_ids"].long(), batch["atac"], batch["mask"])
        pred = engine(bins, batch["tss_rank"], batch["mask"], batch["gene_id"])
        loss = torch.nn.functional.mse_loss(pred, batch["expression"].float())
        stats = self.cache.stats()
        return loss, {"loss_mse": float(loss.detach()), "cache_hit_rate": stats["hit_rate"],
                      "elementary_forwards": stats["forwards"]}

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["mask"].sum()) * self.cfg.model.peak_bp


STAGES = {"elementary": ElementaryStage, "regulatory": RegulatoryStage}


class UnpackCollate(NumpyBatchCollateFn):
    """Regulatory batches arrive packed (``engine.regulatory_batches.pack_samples``: ~180x fewer bytes through
    Ray Data than the dense signal); each worker expands its own, in iter_torch_batches' prefetch
    thread, into the dense, trimmed tensors the stage reads. A dense stream passes through trimmed."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        dense = unpack_samples(batch) if "atac_packed" in batch else trim_peak_columns(batch)
        # np.require: columns Ray hands over zero-copy are read-only, which torch warns about
        return {k: torch.from_numpy(np.require(v, requirements="W")) for k, v in dense.items()}


def _say(line: str) -> None:
    """One progress line on the worker's stdout. Not ``print``: Ray Train v2 patches print in its
    workers to log each call and, because every Ray worker replaces ``sys.stdout``, also to echo it,
    so each line reached the driver twice."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _save(engine, step: int, rank: int, metrics: dict[str, float]):
    """Every rank saves its ZeRO-3 partition; Ray merges the ranks' folders into one checkpoint."""
    with tempfile.TemporaryDirectory() as tmp:
        engine.save_checkpoint(tmp, tag=f"step{step:08d}")
        if rank == 0:
            Path(tmp, STATE_FILE).write_text(json.dumps({"step": step, "tag": f"step{step:08d}"}))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _my_batches(shard, cfg: Config, st: StageConfig, rank: int, world: int, step: int, collate_fn=None):
    """This worker's batches, pass after pass over the stream. With ``train.deterministic`` the
    shard is the whole ordered stream: global batch i (counted across passes) goes to rank
    i % world, and a run resumed at ``step`` skips the step * world batches consumed before its
    checkpoint."""
    skip, i = step * world, 0
    while True:
        seen = 0
        for batch in shard.iter_torch_batches(batch_size=st.micro_batch, drop_last=True, collate_fn=collate_fn):
            seen += 1
            if not cfg.train.deterministic:
                yield batch
                continue
            if i >= skip and i % world == rank:
                yield batch
            i += 1
        if seen == 0:
            raise RuntimeError(f"the training stream holds no full batch of train.{st.name}.micro_batch={st.micro_batch} "
                               "on this worker; use fewer workers, a smaller micro batch or more data")


def param_groups(model: torch.nn.Module, st: StageConfig) -> list[dict[str, Any]]:
    """AdamW's parameter groups: every trainable parameter at the stage's lr, except the per-gene
    cis table (model.gene_peak_weights) at train.regulatory.cis_lr_scale x lr when that is not 1."""
    scale = getattr(st, "cis_lr_scale", 1.0)
    own = [(n.startswith(CIS_TABLE) and scale != 1.0, p) for n, p in model.named_parameters() if p.requires_grad]
    cis, rest = [p for apart, p in own if apart], [p for apart, p in own if not apart]
    return [{"params": rest, "lr": st.lr}] + ([{"params": cis, "lr": st.lr * scale}] if cis else [])


def optimizer(model: torch.nn.Module, st: StageConfig) -> torch.optim.AdamW:
    """The stage's AdamW over ``param_groups``, at its lr and weight decay (train.<stage>.weight_decay)."""
    # fused: one pass over each flat ZeRO partition instead of a dozen (train_regulatory ~3 % more
    # tokens/s at the science preset on CPU; the same update)
    return torch.optim.AdamW(param_groups(model, st), lr=st.lr, weight_decay=st.weight_decay, fused=True)


def skip_shm_comm_op() -> None:
    """Keep DeepSpeed from JIT-compiling its shared-memory all-reduce op (``deepspeed_shm_comm``)
    when ``deepspeed.initialize`` creates its CPU communication backend. Only tensor-parallel
    inference (``inference_all_reduce``) uses the op; ZeRO-3 training goes through
    torch.distributed (gloo). The compile took 38 s alone on this 2-core machine, ~60 s inside
    the first training run on a fresh machine (the demo from scratch, CI). DeepSpeed reads the op's
    compatibility from one module-level table (``deepspeed.ops.__compatible_ops__``) that it keeps
    so that edits to it persist; an op marked incompatible is not built."""
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def train_loop_per_worker(config: dict[str, Any]) -> None:
    # DeepSpeed 0.19's ZeRO-3 still calls the collectives torch renamed (all_gather_into_tensor,
    # reduce_scatter_tensor); the FutureWarning each call raises buried the training log
    warnings.filterwarnings("ignore", category=FutureWarning, message=r"`torch\.distributed\.\w+` is deprecated")
    cfg = config_from_dict(config["cfg"])
    context = config["context"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if cfg.train.torch_threads > 0:
        torch.set_num_threads(cfg.train.torch_threads)
    keep_freed_in_heap(cfg.train.malloc_heap_mb)
    torch.manual_seed(cfg.train.seed)
    np.random.seed(cfg.train.seed + rank)
    stage = STAGES[config["stage"]](cfg, context)
    st = cfg.train.stage(config["stage"])
    opt = optimizer(stage.model, st)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, st))
    skip_shm_comm_op()
    engine, _, _, _ = deepspeed.initialize(model=stage.model, optimizer=opt, lr_scheduler=sched,
                                           config=deepspeed_config(cfg.train, st))
    step = 0
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = json.loads(Path(d, STATE_FILE).read_text())
            engine.load_checkpoint(d, tag=state["tag"])
            step = state["step"]
        if rank == 0:
            _say(f"[{stage.name}] resumed from step {step}")
    run_dir = Path(context["run_dir"])
    fault_marker = run_dir / "fault_injected"
    shard = ray.train.get_dataset_shard("train")
    log = (run_dir / "metrics.jsonl").open("a") if rank == 0 else None
    t_last, tokens = time.perf_counter(), 0
    for batch in ([] if step >= st.max_steps else _my_batches(shard, cfg, st, rank, world, step, stage.collate_fn)):
        torch.manual_seed(cfg.train.seed * 1_000_003 + step * 101 + rank)  # dropout: the same after a resume
        if cfg.train.fail_at_step == step + 1 and not fault_marker.exists():
            fault_marker.write_text(f"fault injected at step {step + 1} on rank {rank}\n")
            raise RuntimeError(f"injected fault at step {step + 1} (train.fail_at_step)")
        loss, parts = stage.loss(engine, batch, step, rank)
        engine.backward(loss)
        engine.step()
        step += 1
        tokens += stage.tokens(batch)
        metrics = {"step": step, "loss": float(loss.detach()), "lr": sched.get_last_lr()[0], **parts}
        if step % cfg.train.log_every == 0 or step == st.max_steps:
            now = time.perf_counter()
            metrics["tokens_per_s"] = tokens * world / max(1e-9, now - t_last)
            t_last, tokens = now, 0
            if log is not None:
                log.write(json.dumps(metrics) + "\n")
                log.flush()
                _say(f"[{stage.name}] step {step}/{st.max_steps} loss {metrics['loss']:.4f} "
                     f"lr {metrics['lr']:.2e} {metrics['tokens_per_s']:.0f} tok/s")
        if step % st.checkpoint_every == 0 or step == st.max_steps:
            _save(engine, step, rank, metrics)
        if step >= st.max_steps:
            break
    if log is not None:
        log.close()

"""Checkpoint discovery, consolidated export (ZeRO-3 partitions → fp32 safetensors) and loss curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
from safetensors.torch import save_file

from creformer.config import Config, save_config
from creformer.plotting import plt

from .loop import STATE_FILE


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint folder of a run with the highest step (None when the run never saved one)."""
    best, best_step = None, -1
    for state in Path(run_dir).glob(f"**/{STATE_FILE}"):
        step = json.loads(state.read_text())["step"]
        if step > best_step:
            best, best_step = state.parent, step
    return best


def export_weights(checkpoint_dir: Path, out: Path, cfg: Config, stage: str, meta: dict[str, Any] | None = None) -> Path:
    """Gather the ZeRO-3 partitions into one fp32 state dict and write safetensors + the config.
    ``meta``: more facts for the safetensors header (as strings, all it holds) and meta.json (as
    given: the gene count stays a number).

    DeepSpeed's own checkpoint files are pickles (its format); the exported artifact that later
    stages and analyses load is safetensors only."""
    state = json.loads((checkpoint_dir / STATE_FILE).read_text())
    if cfg.train.zero_stage == 0:
        # plain data parallel: every rank holds the whole model; DeepSpeed's rank-0 file has it

        weights = torch.load(checkpoint_dir / state["tag"] / "mp_rank_00_model_states.pt", map_location="cpu",
                             weights_only=False)["module"]
        weights = {k: v.float() for k, v in weights.items()}
    else:
        weights = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=state["tag"])
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model.safetensors"
    save_file({k: v.contiguous() for k, v in weights.items()}, str(path),
              metadata={"stage": stage, "step": str(state["step"]), **{k: str(v) for k, v in (meta or {}).items()}})
    save_config(cfg, out / "config.yaml")
    (out / "meta.json").write_text(json.dumps({"stage": stage, "step": state["step"], "checkpoint": str(checkpoint_dir),
                                               "parameters": int(sum(v.numel() for v in weights.values())), **(meta or {})},
                                              indent=1))
    return path


def plot_losses(metrics: Path, png: Path, stage: str) -> Path | None:
    if not metrics.exists():
        return None

    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    if not rows:
        return None
    keys = [k for k in rows[-1] if k.startswith("loss")]
    fig, ax = plt.subplots(figsize=(7, 4))
    for k in keys:
        ax.plot([r["step"] for r in rows if k in r], [r[k] for r in rows if k in r], label=k)
    ax.set(xlabel="step", ylabel="loss", title=f"{stage} training", yscale="log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png

"""Model FLOPs utilization (MFU) of one training step of the Elementary and Regulatory models.

A single device, no Ray or DeepSpeed: this measures the model's own kernels (bf16 autocast on GPU,
fp32 on CPU) with the AdamW step included, against
- the device's bf16 dense matrix-product rate measured in the same run (8192³ products), and
- on a known GPU, its nominal dense bf16 peak (H100/H200 SXM: 989.4 TFLOP/s).

Model FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` over one forward + backward
with activation checkpointing off; the timed steps use the preset's checkpointing, whose
recomputation the MFU does not credit.

Usage: python benchmarks/mfu.py [--preset paper] [--batch 2] [--crop 16384] [--steps 10]
       python benchmarks/mfu.py --preset tiny --crop 1024 --steps 3   (CPU smoke run)
Writes one JSON line per measured part (``--out FILE`` appends them).
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

NOMINAL_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4}  # dense, SXM


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_tflops(device: torch.device, n: int, reps: int) -> float:
    """Measured dense matrix-product rate (bf16 on GPU, fp32 on CPU) in TFLOP/s."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def nominal_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in NOMINAL_BF16_TFLOPS.items() if k in name), None)


def count_flops(step, model: torch.nn.Module) -> int:
    """FLOPs of one forward + backward with checkpointing off (model FLOPs, no recomputation).
    ``step(backward=True, count=True)`` may run a smaller batch and scale: without checkpointing a
    full paper-size batch would not fit in memory."""
    encoders = [m for m in model.modules() if hasattr(m, "checkpointing")]
    saved = [e.checkpointing for e in encoders]
    for e in encoders:
        e.checkpointing = False
    try:
        with FlopCounterMode(display=False) as counter:
            scale = step(backward=True, count=True)
        model.zero_grad(set_to_none=True)
        return counter.get_total_flops() * scale
    finally:
        for e, s in zip(encoders, saved):
            e.checkpointing = s


def measure(name: str, model: torch.nn.Module, step, tokens: int, device: torch.device, steps: int, warmup: int) -> dict:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")
    flops = count_flops(step, model)
    if device.type == "cuda":  # the peak reported is the timed steps', not the counting pass's
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        step(backward=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    t = times[len(times) // 2]
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"part": name, "params": sum(p.numel() for p in params), "tokens_per_step": tokens, "step_s_median": t,
            "step_s_min": times[0], "model_tflop_per_step": flops / 1e12, "achieved_tflops": flops / t / 1e12,
            "tokens_per_s": tokens / t, "peak_gpu_mem_gib": mem}


def main(argv: list[str] | None = None) -> None:
    from creformer.config import load_config
    from creformer.engine.tokenize import DNA_OFFSET, DNA_VOCAB, SIG_OFFSET, SIG_VOCAB
    from creformer.trainer.masking import mask_batch
    from creformer.trainer.model import COUNTED_GENES, Elementary
    from creformer.trainer.model.regulatory import RegulatoryHead

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--batch", type=int, default=2, help="Elementary samples per step")
    ap.add_argument("--crop", type=int, default=16384, help="Elementary sequence length (bp tokens)")
    ap.add_argument("--cells", type=int, default=32, help="Regulatory (cell, gene) samples per step")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--checkpointing", choices=["preset", "on", "off"], default="preset")
    ap.add_argument("--matmul-n", type=int, default=8192)
    ap.add_argument("--parts", default="elementary,regulatory")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = load_config(args.preset).model
    if args.checkpointing != "preset":
        cfg.activation_checkpointing = args.checkpointing == "on"
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    peak = matmul_tflops(device, args.matmul_n if device.type == "cuda" else 1024, 10 if device.type == "cuda" else 3)
    nominal = nominal_peak(device)
    head = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__,
            "preset": args.preset, "d_model": cfg.d_model, "layers": [cfg.n1, cfg.n2, cfg.n3],
            "activation_checkpointing": cfg.activation_checkpointing, "measured_matmul_tflops": peak,
            "nominal_bf16_tflops": nominal}
    print(json.dumps(head), flush=True)
    rows = []

    if "elementary" in args.parts:
        with torch.device(device):
            model = Elementary(cfg)
        b, length, a = args.batch, args.crop, cfg.n_tracks
        dna = torch.randint(DNA_OFFSET, DNA_VOCAB, (b, length), device=device)
        sig = torch.randint(SIG_OFFSET, SIG_VOCAB, (b, a, length), device=device)
        batch = mask_batch(dna, sig, torch.ones(b, a, dtype=torch.bool, device=device), bin_size=cfg.bin_size)
        one = mask_batch(dna[:1], sig[:1], torch.ones(1, a, dtype=torch.bool, device=device), bin_size=cfg.bin_size)

        def el_step(backward: bool, count: bool = False) -> int:
            # FLOPs are counted on one sample and scaled: samples are independent
            with amp:
                loss = model(one if count else batch)["loss"]
            if backward:
                loss.backward()
            return b if count else 1

        rows.append(measure("elementary", model, el_step, b * length, device, args.steps, args.warmup))
        del model, batch, one

    if "regulatory" in args.parts:
        with torch.device(device):
            head_model = RegulatoryHead(cfg, n_genes=COUNTED_GENES)  # data.regulatory.peak_m's default peaks per gene
        c, p, nb = args.cells, head_model.peak_m, cfg.peak_bp // cfg.bin_size
        bins = torch.randn(c, p, 2, nb, cfg.d_model, device=device)
        rank = torch.arange(p, device=device).repeat(c, 1) - p // 2
        mask = torch.ones(c, p, dtype=torch.bool, device=device)
        target = torch.randn(c, device=device)
        gene = torch.randint(0, COUNTED_GENES, (c,), device=device)

        def reg_step(backward: bool, count: bool = False) -> int:
            with amp:
                loss = head_model.loss(head_model(bins, rank, mask, gene), target)
            if backward:
                loss.backward()
            return 1

        rows.append(measure("regulatory", head_model, reg_step, c * p, device, args.steps, args.warmup))

    for r in rows:
        r["mfu_vs_measured_matmul"] = r["achieved_tflops"] / peak
        r["mfu_vs_nominal"] = r["achieved_tflops"] / nominal if nominal else None
        line = json.dumps({**head, **r})
        print(line, flush=True)
        if args.out:
            with args.out.open("a") as f:
                f.write(line + "\n")
    for r in rows:
        nom = f", {r['mfu_vs_nominal']:.1%} of nominal {nominal:.0f}" if nominal else ""
        print(f"{r['part']}: {r['params'] / 1e6:.0f} M params, {r['achieved_tflops']:.3g} TFLOP/s model FLOPs, "
              f"MFU {r['mfu_vs_measured_matmul']:.1%} of the measured {peak:.3g} TFLOP/s matmul{nom}; "
              f"{r['tokens_per_s']:.0f} tokens/s, step {r['step_s_median'] * 1e3:.0f} ms")


if __name__ == "__main__":
    main()

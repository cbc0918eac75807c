"""Held-out cells: how well the trained Regulatory model predicts cells it never saw.

train_regulatory trains on every cell outside a stable held-out split (``train.regulatory.holdout_cells``,
``engine.regulatory_batches.is_holdout``); afterwards this scores up to ``train.regulatory.eval_samples`` held-out
(cell, gene) samples with the exported weights and writes ``eval.json`` beside the metrics:
Pearson r over all samples, mean within-gene r (does the model see the cell, not only the gene?),
and, as the baseline measured in the same run, the r of predicting each gene's mean expression
over the training cells.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file

from creformer.config import Config
from creformer.engine.elementary_stream import iter_manifest_records
from creformer.engine.regulatory_batches import is_holdout
from creformer.engine.shards import Manifest
from creformer.engine.tokenize import DNA_OFFSET, DNA_VOCAB, K

from .masking import IGNORE, mask_batch
from .model import Elementary
from .peak_batches import iter_peak_batches, load_head, peak_cache


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r; NaN when either side is constant (no correlation is defined)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def within_gene_r(gene: np.ndarray, pred: np.ndarray, truth: np.ndarray, min_samples: int = 5) -> float:
    """Mean over genes of the Pearson r across the gene's cells (genes with a defined r only)."""
    rs = []
    for g in np.unique(gene):
        sel = gene == g
        if sel.sum() >= min_samples:
            r = pearson(pred[sel], truth[sel])
            if np.isfinite(r):
                rs.append(r)
    return float(np.mean(rs)) if rs else float("nan")


def gene_means(manifest: Path, fraction: float, seed: int) -> tuple[np.ndarray, float]:
    """Mean expression per gene id over the training cells (outside the held-out split; NaN for
    a gene no training cell has) and the mean over all their samples."""
    man = Manifest(manifest)
    n = int(man.data["counts"]["genes"])
    total, count = np.zeros(n), np.zeros(n, np.int64)
    for entry in man.shards:
        t = pq.read_table(man.root / "shards" / entry["file"], columns=["cell_id", "gene_id", "expression"])
        cell, gene, expr = (t.column(c).to_numpy() for c in ("cell_id", "gene_id", "expression"))
        keep = ~is_holdout(cell, fraction, seed)
        total += np.bincount(gene[keep], weights=expr[keep], minlength=n)
        count += np.bincount(gene[keep], minlength=n)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan), float(total.sum() / max(1, count.sum()))


def predict_holdout(cfg: Config, manifest: Path, elementary_weights: Path, head_weights: Path,
                    max_samples: int, store: Path | None = None) -> dict[str, np.ndarray]:
    """Predicted and measured expression of up to ``max_samples`` held-out samples, cells taken in
    training's shuffled order (from all over the atlas, each with all its genes)."""
    man = Manifest(manifest)
    head = load_head(cfg, int(man.data["counts"]["genes"]), head_weights)
    cache = peak_cache(cfg, man, elementary_weights, store)
    out: dict[str, list[np.ndarray]] = {"cell_id": [], "gene_id": [], "pred": [], "expression": []}
    with torch.no_grad():
        # in training's shuffled order: the first held-out cells of the file are often one cell type
        for b in iter_peak_batches(cfg, man, cache, "holdout", cfg.train.regulatory.micro_batch * 4, shuffle=True,
                                   max_samples=max_samples):
            out["pred"].append(head(b.bins, b.rank, b.mask, b.gene).numpy().astype(np.float32))
            for k in ("cell_id", "gene_id", "expression"):
                out[k].append(b.columns[k])
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}


def evaluate_holdout(cfg: Config, manifest: Path, elementary_weights: Path, head_weights: Path, out: Path,
                     store: Path | None = None) -> dict[str, Any]:
    """Score the held-out cells and write ``out`` (eval.json)."""
    if cfg.train.regulatory.holdout_cells <= 0 or cfg.train.regulatory.eval_samples <= 0:
        return {}
    res = predict_holdout(cfg, manifest, elementary_weights, head_weights, cfg.train.regulatory.eval_samples, store)
    if res["pred"].size == 0:
        raise RuntimeError(f"no held-out sample in {manifest} (train.regulatory.holdout_cells={cfg.train.regulatory.holdout_cells}); "
                           "raise the fraction or use an atlas with more cells")
    means, overall = gene_means(manifest, cfg.train.regulatory.holdout_cells, cfg.train.seed)
    baseline = means[res["gene_id"]]
    known = np.isfinite(baseline)
    report = {
        "holdout_fraction": cfg.train.regulatory.holdout_cells,
        "holdout_cells_scored": int(np.unique(res["cell_id"]).size),
        "samples": int(res["pred"].size),
        "pearson_r": pearson(res["pred"], res["expression"]),
        "within_gene_r": within_gene_r(res["gene_id"], res["pred"], res["expression"]),
        "baseline_gene_mean_r": pearson(baseline[known], res["expression"][known]),
        "mse": float(np.mean((res["pred"] - res["expression"]) ** 2)),
        "baseline_mean_mse": float(np.mean((overall - res["expression"]) ** 2)),
        "note": "held-out cells never reach training; baselines: each gene's mean over the training cells (r), "
                "and one mean level for every sample (MSE)",
    }
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"[regulatory] held-out cells: Pearson r {report['pearson_r']:.3f} over {report['samples']} samples of "
          f"{report['holdout_cells_scored']} cells (gene-mean baseline {report['baseline_gene_mean_r']:.3f}, "
          f"within-gene r {report['within_gene_r']:.3f}); {out}")
    return report


# ---------------------------------------------------------------------------------------------
# Elementary: masked DNA at planted motif positions
# ---------------------------------------------------------------------------------------------

def kmer_baselines(dna: np.ndarray) -> tuple[int, np.ndarray]:
    """Two k-mer frequency predictors fitted on DNA tokens (any shape): the most frequent k-mer,
    and per left neighbour the most frequent next k-mer (it shares the neighbour's last 5 bases,
    so only its last base is chosen: by the frequency of the 6-mer)."""
    real = dna[dna >= DNA_OFFSET].astype(np.int64) - DNA_OFFSET
    counts = np.bincount(real, minlength=DNA_VOCAB - DNA_OFFSET)
    top = int(np.argmax(counts)) + DNA_OFFSET
    # k-mer index = 4 x (its first 5 bases) + its last base (first base most significant)
    best_last = np.argmax(counts.reshape(1024, 4), axis=1)  # per 5-base prefix, the commonest last base
    nxt = np.full(DNA_VOCAB, top, np.int64)  # left neighbour token -> predicted token
    prefix = np.arange(DNA_VOCAB - DNA_OFFSET) & 1023  # the neighbour's last 5 bases = the next k-mer's first 5
    nxt[DNA_OFFSET:] = DNA_OFFSET + prefix * 4 + best_last[prefix]
    return top, nxt


def motif_token_mask(chrom: str, start: int, length: int, instances: dict[str, np.ndarray]) -> np.ndarray:
    """Token positions of a window whose 6-mer lies inside a planted motif instance."""
    out = np.zeros(length, dtype=bool)
    spans = instances.get(chrom)
    if spans is None:
        return out
    lo, hi = spans[:, 0] - start, spans[:, 1] - start
    for s, e in zip(lo[(hi > 0) & (lo < length)], hi[(hi > 0) & (lo < length)]):
        out[max(0, s) : max(0, min(length, e - K + 1))] = True
    return out


def read_motif_instances(path: Path) -> dict[str, np.ndarray]:
    t = pl.read_csv(path, separator="\t")
    missing = {"chrom", "start", "end"} - set(t.columns)
    if missing:
        raise ValueError(f"{path}: motif instances need columns chrom, start, end (missing {sorted(missing)})")
    return {c: g.select("start", "end").to_numpy().astype(np.int64) for (c,), g in t.group_by("chrom")}


def evaluate_elementary(cfg: Config, manifest: Path, weights: Path, out: Path) -> dict[str, Any]:
    """Masked-DNA accuracy of the exported Elementary (training's masking, fixed seed) over all
    masked k-mers and over those inside planted motifs, beside the two k-mer frequency baselines
    fitted on the same windows; written to ``out`` (eval.json)."""
    if not cfg.train.elementary.eval_motifs or cfg.train.elementary.eval_windows <= 0:
        return {}
    instances = read_motif_instances(Path(cfg.train.elementary.eval_motifs))
    model = Elementary(cfg.model)
    model.load_state_dict(load_file(str(weights)))
    model.eval()
    length = cfg.data.crop_length
    records = [r for _, r in zip(range(cfg.train.elementary.eval_windows), iter_manifest_records(manifest))]
    top, nxt = kmer_baselines(np.stack([r["dna"] for r in records]))
    g = torch.Generator().manual_seed(cfg.train.seed + 12345)
    hits = {k: {"all": [0, 0], "motif": [0, 0]} for k in ("model", "kmer_frequency", "kmer_left_context")}
    assays = Manifest(manifest).data["tokenizer"]["assays"]
    for rec in records:
        meta = rec["meta"]
        in_motif = motif_token_mask(meta["chrom"], meta["start"], rec["dna"].shape[0], instances)
        n = rec["dna"].shape[0] // length
        dna = torch.from_numpy(rec["dna"][: n * length].astype(np.int64)).view(n, length)
        sig = torch.from_numpy(rec["sig"][:, : n * length].astype(np.int64)).view(-1, n, length).transpose(0, 1).contiguous()
        present = torch.tensor([a in meta["assays_present"] for a in assays])[None].expand(n, -1)  # as training's crops
        mb = mask_batch(dna, sig, present, bin_size=cfg.model.bin_size, generator=g)
        with torch.no_grad():
            tokens, _ = model.encode(mb.dna, mb.sig)
            pred = model.dna_head(tokens).argmax(-1).numpy()
        target = mb.dna_target.numpy()
        masked = target != IGNORE
        left = np.concatenate([np.full((n, 1), 0), mb.dna.numpy()[:, :-1]], axis=1)
        ctx = np.where(left >= DNA_OFFSET, nxt[np.maximum(left, 0)], top)
        motif = in_motif[: n * length].reshape(n, length) & masked
        for name, p in (("model", pred), ("kmer_frequency", np.full_like(target, top)), ("kmer_left_context", ctx)):
            for where, sel in (("all", masked), ("motif", motif)):
                hits[name][where][0] += int((p[sel] == target[sel]).sum())
                hits[name][where][1] += int(sel.sum())
    report: dict[str, Any] = {"windows": len(records), "crop_length": length}
    for name, h in hits.items():
        report[name] = {w: (c / t if t else float("nan")) for w, (c, t) in h.items()}
    report["masked_kmers"] = hits["model"]["all"][1]
    report["masked_motif_kmers"] = hits["model"]["motif"][1]
    report["note"] = ("accuracy of predicting masked DNA k-mers (training's masking, fixed seed); 'motif': k-mers inside "
                      "planted motif instances; baselines: the commonest k-mer, and the commonest k-mer extending the "
                      "left neighbour (fitted on the same windows)")
    out.write_text(json.dumps(report, indent=1) + "\n")
    m, b = report["model"]["motif"], report["kmer_frequency"]["motif"]
    print(f"[elementary] masked DNA at planted motifs: model {m:.3f}, k-mer frequency {b:.3f}, "
          f"left-context k-mer {report['kmer_left_context']['motif']:.3f} ({report['masked_motif_kmers']} k-mers); {out}")
    return report

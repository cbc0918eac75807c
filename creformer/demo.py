"""`make demo`: the end-to-end job on the embedded simulated atlas, with an HTML report.

simulate (small preset: genome, bulk tracks, 2,000-cell multiome) → `prepare elementary` and
`prepare regulatory` through Ray Data on a loopback local Ray → train_elementary → train_regulatory
(Ray Train + DeepSpeed ZeRO-3 on 2 CPU workers) → atlas_grn (the zero-shot analyses as a Ray batch
job, scored against the simulator's truth) → report.html + scorecard.json.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import time
from pathlib import Path

import numpy as np

from .config import load_config
from .ray_utils import ensure_ray

CRISPRI = "crispri/EPCrisprBenchmark_combined_data.training_K562.GRCh38.tsv.gz"


def _plot_levels(manifest_path: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from creformer.engine.dataset import iter_manifest_records

    man = json.loads(manifest_path.read_text())
    assays = man["tokenizer"]["assays"]
    hist = np.zeros((len(assays), 38), dtype=np.int64)
    example = None
    for i, rec in enumerate(iter_manifest_records(manifest_path)):
        for a in range(len(assays)):
            hist[a] += np.bincount(rec["sig"][a], minlength=38)
        if example is None and rec["meta"]["assays_present"]:
            example = rec
        if i >= 60:
            break
    fig, axes = plt.subplots(1, 2, figsize=(13, 4))
    for a, name in enumerate(assays):
        frac = hist[a, 2:] / max(1, hist[a, 2:].sum())
        axes[0].semilogy(np.arange(36), np.maximum(frac, 1e-7), label=name)
    axes[0].set(xlabel="signal level (0 = no signal)", ylabel="fraction of tokens", title="Signal level distribution per assay")
    axes[0].legend(fontsize=7)
    seg = slice(0, 8192)
    assert example is not None
    for a, name in enumerate(assays):
        axes[1].plot(np.arange(seg.stop) / 1000, example["sig"][a, seg].astype(int) - 2 + 40 * a, lw=0.6)
        axes[1].text(seg.stop / 1000, 40 * a, name, fontsize=7)
    axes[1].set(xlabel="kb", yticks=[], title=f"Signal tokens of {example['key']} (first 8 kb)")
    fig.tight_layout()
    path = out / "elementary_tokens.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _scorecard_html(card: dict | None) -> str:
    if not card:
        return ""
    from creformer.analysis.report import scorecard_table

    return ("<h2>Zero-shot scorecard (atlas_grn vs the simulator's truth)</h2>" + scorecard_table(card) +
            "<p>Full analyses, figures and tables: <a href='atlas/report.html'>atlas/report.html</a>; "
            "<code>scorecard.json</code> beside this page.</p>")


def _evals_html(evals: dict | None) -> str:
    """The training runs' own held-out checks (eval.json), each beside its baselines."""
    if not evals:
        return ""
    rows = []
    if "elementary" in evals:
        e = evals["elementary"]
        rows.append(("masked DNA accuracy at planted motif k-mers", f"{e['model']['motif']:.3f}",
                     f"k-mer frequency {e['kmer_frequency']['motif']:.3f}, left-context k-mer {e['kmer_left_context']['motif']:.3f}",
                     f"{e['masked_motif_kmers']} masked motif k-mers, {e['windows']} windows"))
        rows.append(("masked DNA accuracy, all k-mers", f"{e['model']['all']:.4f}",
                     f"k-mer frequency {e['kmer_frequency']['all']:.4f}, left-context k-mer {e['kmer_left_context']['all']:.3f}",
                     f"{e['masked_kmers']} masked k-mers"))
    if "regulatory" in evals:
        r = evals["regulatory"]
        rows.append(("expression Pearson r, held-out cells", f"{r['pearson_r']:.3f}",
                     f"gene mean over training cells {r['baseline_gene_mean_r']:.3f}",
                     f"{r['samples']} samples of {r['holdout_cells_scored']} held-out cells; within-gene r {r['within_gene_r']:.3f}"))
    body = "".join(f"<tr><td>{html.escape(a)}</td><td>{b}</td><td>{html.escape(c)}</td><td>{html.escape(d)}</td></tr>"
                   for a, b, c, d in rows)
    return ("<h2>Training checks (eval.json)</h2><table><tr><th>check</th><th>model</th><th>baselines</th><th>on</th></tr>"
            f"{body}</table>")


def write_report(out: Path, stages: list[tuple[str, str, float]], manifest_path: Path, plot: Path, stream: dict,
                 curves: list[Path] | None = None, card: dict | None = None, evals: dict | None = None) -> Path:
    man = json.loads(manifest_path.read_text())
    rows = "".join(f"<tr><td>{html.escape(n)}</td><td>done</td><td>{s:.1f} s</td><td>{html.escape(d)}</td></tr>"
                   for n, d, s in stages)
    counts = html.escape(json.dumps(man["counts"], indent=1))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>creformer demo</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}td,th{{border:1px solid #ccc;padding:4px 8px}}
table{{border-collapse:collapse}}pre{{background:#f6f6f6;padding:8px;font-size:12px}}</style></head><body>
<h1>creformer demo report</h1>
<h2>Stages</h2><table><tr><th>stage</th><th>status</th><th>time</th><th>what</th></tr>{rows}</table>
{_scorecard_html(card)}
{_evals_html(evals)}
<h2>Elementary shards</h2>
<p>{man['records']} windows of {man['record']['window_bp']:,} tokens in {len(man['shards'])} shard(s),
{man['bytes'] / 2**20:.1f} MiB, manifest <code>{html.escape(str(manifest_path))}</code>.</p>
<p>Streaming read through Ray Data: {stream['rows']} crops of {stream['length']} tokens in {stream['seconds']:.1f} s
({stream['tokens_per_s'] / 1e6:.1f} M tokens/s over 8 streams).</p>
<img src="{plot.name}" width="100%"><h3>Counts</h3><pre>{counts}</pre>
<h2>Training</h2>{"".join(f'<h3>{html.escape(c.parent.name)}</h3><img src="{html.escape(str(c.relative_to(out)))}" width="70%">' for c in (curves or []))}
</body></html>"""
    path = out / "report.html"
    path.write_text(page)
    return path


def run(out: Path, config: str = "demo", overrides: tuple[str, ...] = (), data_dir: Path | None = None,
        steps: tuple[int, int] = (100, 1000), regulatory_batch: int = 32) -> Path:
    """The whole path; ``steps`` = (Elementary, Regulatory) training steps and ``regulatory_batch``
    the Regulatory samples per worker step, sized so the small atlas finishes within ~15 minutes on
    2 CPU cores."""
    from creformer.engine.dataset import elementary_dataset
    from creformer.engine.simulate import simulate
    from creformer.engine.windows import prepare_elementary

    cfg = load_config(config, [f"simulate.out={out / 'sim'}", f"data.shards={out / 'shards' / 'elementary'}", *overrides])
    out.mkdir(parents=True, exist_ok=True)
    stages = []
    t = time.perf_counter()
    sim = Path(cfg.simulate.out)
    if not (sim / "truth" / "expression_celltype.tsv").exists():
        simulate(sim, preset=cfg.simulate.preset, seed=cfg.simulate.seed)
    stages.append(("simulate", f"{cfg.simulate.preset} preset: genome, GTF, motifs, bulk tracks, truth", time.perf_counter() - t))
    ensure_ray(cfg.ray)
    t = time.perf_counter()
    d = cfg.data
    res = prepare_elementary(sim / "samples.tsv", sim / "genome.fa", d.shards, assays=d.assays, window_bp=d.window_bp,
                             windows_per_sample=d.windows_per_sample, max_n_fraction=d.max_n_fraction,
                             shard_size_mb=d.shard_size_mb, seed=d.seed, executor=d.executor)
    stages.append(("prepare elementary", "reused (inputs unchanged)" if res.reused else f"built {res.built} shard(s) with Ray Data",
                   time.perf_counter() - t))
    t = time.perf_counter()
    per_window = d.window_bp // d.crop_length
    rows = 0
    for batch in elementary_dataset(res.manifest_path, d.crop_length, crops_per_window=per_window).iter_torch_batches(batch_size=64):
        rows += batch["dna"].shape[0]
    secs = time.perf_counter() - t
    stages.append(("stream elementary", f"{rows} crops of {d.crop_length} tokens via iter_torch_batches", secs))
    stream = {"rows": rows, "length": d.crop_length, "seconds": secs, "tokens_per_s": rows * d.crop_length * 8 / secs}
    from creformer.engine.cells import RegulatoryOptions, prepare_regulatory
    from creformer.trainer.jobs import train_elementary, train_regulatory

    t = time.perf_counter()
    reg = prepare_regulatory(sim / "multiome", sim / "genome.fa", sim / "genes.gtf", out / "shards" / "regulatory",
                             options=RegulatoryOptions(peak_m=cfg.model.peak_m), executor=d.executor)
    man = json.loads(reg.manifest_path.read_text())
    stages.append(("prepare regulatory", f"{man['records']:,} cell x gene samples, {man['counts']['cell_peak_pairs']:,} "
                   "non-empty cell x peak signal pairs", time.perf_counter() - t))
    common = ["--config", config, f"train.storage_path={out / 'train'}", *overrides]
    t = time.perf_counter()
    # Step budgets sized so the whole demo stays within ~15 minutes on 2 CPU cores. The Elementary's
    # masked-DNA accuracy is ~0.99 by step 100. The Regulatory head gains from every sample it sees
    # (measured, held-out r): 8 samples per worker step x 750 steps (12 k) 0.44, 32 x 750 (48 k)
    # 0.54, 32 x 1000 (64 k) 0.56; the packed sample stream made the 1,000 steps fit in the time
    # 750 took with the dense one (~390 s).
    el = train_elementary([*common, f"data.shards={d.shards}", "train.name=elementary", f"train.max_steps={steps[0]}",
                           f"train.checkpoint_every={max(1, steps[0] // 2)}", "train.log_every=10", "train.lr=3e-3",
                           "train.warmup_steps=20", f"train.eval_motifs={sim / 'truth' / 'motif_instances.tsv'}"])
    stages.append(("train_elementary", f"Ray Train + DeepSpeed ZeRO-3, {cfg.train.num_workers} workers -> {el}", time.perf_counter() - t))
    t = time.perf_counter()
    rg = train_regulatory([*common, f"data.regulatory_shards={reg.manifest_path.parent}", "train.name=regulatory",
                           f"train.elementary_weights={el}", f"train.micro_batch={regulatory_batch}", f"train.max_steps={steps[1]}",
                           f"train.checkpoint_every={max(1, steps[1] // 3)}", "train.log_every=10", "train.lr=1e-3", "train.warmup_steps=20"])
    stages.append(("train_regulatory", f"frozen Elementary behind the embedding cache -> {rg}", time.perf_counter() - t))
    from creformer.analysis.atlas import atlas_grn

    t = time.perf_counter()
    crispri = (data_dir or Path(os.environ.get("CREFORMER_DATA", "../shared/data"))) / CRISPRI
    atlas = atlas_grn([*common, f"data.regulatory_shards={reg.manifest_path.parent}", f"train.elementary_weights={el}",
                       f"analysis.regulatory_weights={rg}", f"analysis.out={out / 'atlas'}", f"analysis.motifs={sim / 'motifs.meme'}",
                       f"analysis.groups={sim / 'truth' / 'cells.tsv'}", f"analysis.truth={sim / 'truth'}",
                       *([f"analysis.crispri={crispri}"] if crispri.exists() else [])])
    card = json.loads((out / "atlas" / "scorecard.json").read_text())
    (out / "scorecard.json").write_text(json.dumps(card, indent=1))
    stages.append(("atlas_grn", f"zero-shot analyses over the atlas (Ray Data actors) -> {atlas}", time.perf_counter() - t))
    curves = [p for p in (out / "train" / "elementary" / "loss_curve.png", out / "train" / "regulatory" / "loss_curve.png") if p.exists()]
    plot = _plot_levels(res.manifest_path, out)
    evals = {n: json.loads(p.read_text()) for n in ("elementary", "regulatory") if (p := out / "train" / n / "eval.json").exists()}
    report = write_report(out, stages, res.manifest_path, plot, stream, curves, card, evals)
    print(f"\ndemo outputs under {out}:\n  simulated data  {sim}\n  shards          {res.manifest_path.parent.parent}\n"
          f"  training runs   {out / 'train'}\n  analyses        {out / 'atlas'}\n  scorecard       {out / 'scorecard.json'}\n"
          f"  report          {report}")
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--config", default="demo")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    run(Path(args.out), args.config, tuple(args.overrides))


if __name__ == "__main__":
    main()

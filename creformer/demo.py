"""`make demo` (`creformer demo`): the end-to-end job on the embedded simulated atlas.

simulate (small preset: genome, bulk tracks, 2,000-cell multiome) → `prepare elementary` and
`prepare regulatory` through Ray Data on a loopback local Ray → train_elementary → train_regulatory
(Ray Train + DeepSpeed ZeRO-3 on 2 CPU workers) → atlas_grn (the zero-shot analyses as a Ray batch
job, scored against the simulator's truth) → report.html + scorecard.json.

Every setting comes from the config (configs/demo.yaml by default); this module only places the
run's files under one output folder and calls the stages' typed functions in order.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from creformer.analysis.atlas import atlas_grn
from creformer.analysis.report import html_table, scorecard_table, training_checks, write_html
from creformer.engine.elementary_shards import prepare_elementary
from creformer.engine.elementary_stream import elementary_dataset, iter_manifest_records
from creformer.engine.regulatory_shards import prepare_regulatory
from creformer.engine.rulebook import VERSION as SIMULATOR_VERSION
from creformer.engine.simulate import simulate
from creformer.engine.tokenize import SIG_VOCAB
from creformer.plotting import plt
from creformer.trainer.jobs import train_elementary, train_regulatory

from .config import Config, load_config
from .ray_utils import ensure_ray

CRISPRI = "crispri/EPCrisprBenchmark_combined_data.training_K562.GRCh38.tsv.gz"


def demo_config(out: Path, config: str = "demo", overrides: tuple[str, ...] = (), data_dir: Path | None = None) -> Config:
    """The config with every path of the run under ``out``: the simulated inputs feed the shards,
    the shards the training, the exports atlas_grn."""
    sim = out / "sim"
    crispri = (data_dir or Path(os.environ.get("CREFORMER_DATA", "../shared/data"))) / CRISPRI
    paths = [f"simulate.out={sim}", f"data.genome={sim / 'genome.fa'}", f"data.samples={sim / 'samples.tsv'}",
             f"data.shards={out / 'shards' / 'elementary'}", f"data.regulatory.multiome={sim / 'multiome'}",
             f"data.regulatory.annotation={sim / 'genes.gtf'}", f"data.regulatory.shards={out / 'shards' / 'regulatory'}",
             f"train.storage_path={out / 'train'}", f"train.elementary.eval_motifs={sim / 'truth' / 'motif_instances.tsv'}",
             f"analysis.out={out / 'atlas'}", f"analysis.motifs={sim / 'motifs.meme'}",
             f"analysis.groups={sim / 'truth' / 'cells.tsv'}", f"analysis.truth={sim / 'truth'}",
             *([f"analysis.crispri={crispri}"] if crispri.exists() else [])]
    return load_config(config, [*paths, *overrides])


def plot_levels(manifest_path: Path, out: Path) -> Path:
    """Signal-level histogram per assay and one window's tokens: what the Elementary reads."""
    man = json.loads(manifest_path.read_text())
    assays = man["tokenizer"]["assays"]
    hist = np.zeros((len(assays), SIG_VOCAB), dtype=np.int64)
    example = None
    for i, rec in enumerate(iter_manifest_records(manifest_path)):
        for a in range(len(assays)):
            hist[a] += np.bincount(rec["sig"][a], minlength=SIG_VOCAB)
        if example is None and rec["meta"]["assays_present"]:
            example = rec
        if i >= 60:
            break
    fig, axes = plt.subplots(1, 2, figsize=(13, 4))
    for a, name in enumerate(assays):
        frac = hist[a, 2:] / max(1, hist[a, 2:].sum())
        axes[0].semilogy(np.arange(SIG_VOCAB - 2), np.maximum(frac, 1e-7), label=name)
    axes[0].set(xlabel="signal level (0 = no signal)", ylabel="fraction of tokens", title="Signal level distribution per assay")
    axes[0].legend(fontsize=7)
    seg = slice(0, 8192)
    if example is not None:
        for a, name in enumerate(assays):
            axes[1].plot(np.arange(seg.stop) / 1000, example["sig"][a, seg].astype(int) - 2 + 40 * a, lw=0.6)
            axes[1].text(seg.stop / 1000, 40 * a, name, fontsize=7)
        axes[1].set(xlabel="kb", yticks=[], title=f"Signal tokens of {example['key']} (first 8 kb)")
    fig.tight_layout()
    path = out / "elementary_tokens.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(out: Path, stages: list[tuple[str, str, float]], manifest_path: Path, plot: Path, stream: dict,
                 curves: list[Path], card: dict | None, evals: dict) -> Path:
    man = json.loads(manifest_path.read_text())
    sections = ["<h1>creformer demo report</h1>",
                "<h2>Stages</h2>" + html_table(["stage", "status", "time", "what"], [[n, "done", f"{s:.1f} s", d] for n, d, s in stages])]
    if card:
        sections.append("<h2>Zero-shot scorecard (atlas_grn vs the simulator's truth)</h2>" + scorecard_table(card)
                        + "<p>Full analyses, figures and tables: <a href='atlas/report.html'>atlas/report.html</a>; "
                        "<code>scorecard.json</code> beside this page.</p>")
    checks = training_checks(evals)
    if checks:
        sections.append("<h2>Training checks (eval.json)</h2>" + html_table(["check", "model", "baselines", "on"], checks))
    sections.append(f"<h2>Elementary shards</h2><p>{man['records']} windows of {man['record']['window_bp']:,} tokens in "
                    f"{len(man['shards'])} shard(s), {man['bytes'] / 2**20:.1f} MiB, manifest "
                    f"<code>{html.escape(str(manifest_path))}</code>.</p>"
                    f"<p>Streaming read through Ray Data: {stream['rows']} crops of {stream['length']} tokens in "
                    f"{stream['seconds']:.1f} s ({stream['tokens_per_s'] / 1e6:.1f} M tokens/s over 8 streams).</p>"
                    f"<img src='{plot.name}' width='100%'><h3>Counts</h3><pre>{html.escape(json.dumps(man['counts'], indent=1))}</pre>")
    sections.append("<h2>Training</h2>" + "".join(f"<h3>{html.escape(c.parent.name)}</h3><img src='{html.escape(str(c.relative_to(out)))}' "
                                                  "width='70%'>" for c in curves))
    return write_html(out / "report.html", "creformer demo", sections)


def run(out: Path, config: str = "demo", overrides: tuple[str, ...] = (), data_dir: Path | None = None) -> Path:
    """The whole path, each stage as its typed function; returns the report's path."""
    out = out.resolve()
    cfg = demo_config(out, config, overrides, data_dir)
    out.mkdir(parents=True, exist_ok=True)
    stages = []
    t = time.perf_counter()
    sim = Path(cfg.simulate.out)
    version = sim / "truth" / "VERSION"
    if not (version.exists() and version.read_text().strip() == str(SIMULATOR_VERSION)):
        # absent, or from another simulator version: what was built from the old one (shards,
        # checkpoints a training would resume from, atlas partitions) goes with it
        for derived in (Path(cfg.data.shards).parent, Path(cfg.train.storage_path), Path(cfg.analysis.out)):
            if derived.is_relative_to(out) and derived.exists():
                shutil.rmtree(derived)
        simulate(sim, preset=cfg.simulate.preset, seed=cfg.simulate.seed)
    stages.append(("simulate", f"{cfg.simulate.preset} preset: genome, GTF, motifs, bulk tracks, multiome, truth",
                   time.perf_counter() - t))
    ensure_ray(cfg.ray)
    t = time.perf_counter()
    res = prepare_elementary(cfg)
    stages.append(("prepare elementary", "reused (inputs unchanged)" if res.reused else f"built {res.built} shard(s) with Ray Data",
                   time.perf_counter() - t))
    t = time.perf_counter()
    rows = 0
    for batch in elementary_dataset(res.manifest_path, cfg.data.crop_length).iter_torch_batches(batch_size=64):
        rows += batch["dna"].shape[0]
    secs = time.perf_counter() - t
    stages.append(("stream elementary", f"{rows} crops of {cfg.data.crop_length} tokens via iter_torch_batches", secs))
    stream = {"rows": rows, "length": cfg.data.crop_length, "seconds": secs,
              "tokens_per_s": rows * cfg.data.crop_length * 8 / secs}
    t = time.perf_counter()
    reg = prepare_regulatory(cfg)
    man = json.loads(reg.manifest_path.read_text())
    stages.append(("prepare regulatory", f"{man['records']:,} cell x gene samples, {man['counts']['cell_peak_pairs']:,} "
                   "non-empty cell x peak signal pairs", time.perf_counter() - t))
    t = time.perf_counter()
    el = train_elementary(cfg)
    stages.append(("train_elementary", f"Ray Train + DeepSpeed ZeRO-3, {cfg.train.num_workers} workers -> {el.weights}",
                   time.perf_counter() - t))
    t = time.perf_counter()
    rg = train_regulatory(cfg)  # reads the Elementary export where train_elementary wrote it
    stages.append(("train_regulatory", f"frozen Elementary via the embedding store or cache ({cfg.data.embeddings.mode}) -> {rg.weights}", time.perf_counter() - t))
    t = time.perf_counter()
    atlas = atlas_grn(cfg)
    card = atlas.scorecard
    (out / "scorecard.json").write_text(json.dumps(card, indent=1))
    stages.append(("atlas_grn", f"zero-shot analyses over the atlas (Ray Data actors) -> {atlas.report}", time.perf_counter() - t))
    curves = [r.run_dir / "loss_curve.png" for r in (el, rg) if (r.run_dir / "loss_curve.png").exists()]
    plot = plot_levels(res.manifest_path, out)
    report = write_report(out, stages, res.manifest_path, plot, stream, curves, card,
                          {"elementary": el.metrics, "regulatory": rg.metrics})
    print(f"\ndemo outputs under {out}:\n  simulated data  {sim}\n  shards          {res.manifest_path.parent.parent}\n"
          f"  training runs   {out / 'train'}\n  analyses        {atlas.out}\n  scorecard       {out / 'scorecard.json'}\n"
          f"  report          {report}")
    return report

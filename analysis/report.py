"""The atlas_grn HTML report: every figure a PNG beside the page, every claim next to its baseline."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from creformer.plotting import plt

from .inputs import peak_regions
from .validate import scored_tasks


def plot_prediction(points: pl.DataFrame, r: float, path: Path) -> Path:
    """Measured vs predicted expression: a seeded sample of (cell, gene) points; ``r`` over every pair."""
    x, y = points["expression"].to_numpy(), points["pred"].to_numpy()
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ax.scatter(x, y, s=3, alpha=0.3)
    lim = [min(x.min(), y.min()), max(x.max(), y.max())]
    ax.plot(lim, lim, c="grey", lw=0.8)
    ax.set(xlabel="measured log1p(CP10k)", ylabel="predicted",
           title=f"Expression, {len(x):,} sampled pairs (Pearson r {r:.2f}, all pairs)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_attention_loci(gatt: pl.DataFrame, genes: pl.DataFrame, peaks: pl.DataFrame, path: Path,
                        n_genes: int = 2) -> Path:
    """Group-mean attention (bars) and ATAC mass (line) along the TSS window of the genes whose
    predicted expression differs most between groups."""
    var = (gatt.group_by("gene_id", "group").agg(pl.col("atac").sum()).group_by("gene_id").agg(pl.col("atac").std())
           .sort("atac", descending=True, nulls_last=True))
    chosen = var["gene_id"].head(n_genes).to_list()
    groups = sorted(gatt["group"].unique().to_list())
    fig, axes = plt.subplots(len(chosen), 1, figsize=(11, 3.2 * len(chosen)), squeeze=False)
    mid = dict(zip(peaks["peak_id"].to_list(), ((peaks["start"] + peaks["end"]) // 2).to_list()))
    for ax, gid in zip(axes[:, 0], chosen):
        g = genes.filter(pl.col("gene_id") == gid).row(0, named=True)
        width = 0.8 / len(groups)
        twin = ax.twinx()
        for k, grp in enumerate(groups):
            df = gatt.filter((pl.col("gene_id") == gid) & (pl.col("group") == grp)).sort("peak_id")
            pos = np.array([(mid[pp] - g["tss"]) / 1000 for pp in df["peak_id"].to_list()])
            order = np.argsort(pos)
            xs = np.arange(len(pos))
            bars = ax.bar(xs + k * width, df["attention"].to_numpy()[order], width=width, label=grp)
            twin.plot(xs + 0.4, df["atac"].to_numpy()[order], c=bars.patches[0].get_facecolor(), lw=0.8, marker=".", ms=3)
            if k == 0:
                ax.set_xticks(xs + 0.4, [f"{v:+.0f}" for v in pos[order]], fontsize=6, rotation=90)
        ax.axhline(1.0, c="grey", lw=0.6, ls="--")
        twin.set_ylabel("mean ATAC mass (lines)")
        ax.set(title=f"{g['name']} ({g['chrom']}:{g['tss']:,} {g['strand']}): attention per peak by group",
               xlabel="peak position relative to the TSS (kb)", ylabel="attention (1 = average)")
        ax.legend(fontsize=7, ncol=len(groups))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_master_dotplot(masters: pl.DataFrame, path: Path) -> Path:
    methods = [m for m in ("model", "gene_activity") if m in masters["method"].unique().to_list()]
    fig, axes = plt.subplots(1, len(methods), figsize=(6.5 * len(methods), 3.8), squeeze=False)
    for ax, m in zip(axes[0], methods):
        t = masters.filter(pl.col("method") == m)
        groups = sorted(t["group"].unique().to_list())
        tfs = sorted(t["tf"].unique().to_list())
        lim = max(float(t["coef"].abs().max() or 0.0), 1e-9)  # the two rankings' scores differ in scale
        for gi, g in enumerate(groups):
            sub = t.filter(pl.col("group") == g)
            coef = dict(zip(sub["tf"].to_list(), sub["coef"].to_list()))
            rank = dict(zip(sub["tf"].to_list(), sub["rank"].to_list()))
            xs = np.arange(len(tfs))
            sizes = [max(10.0, 220.0 / rank[tf]) for tf in tfs]
            sc = ax.scatter(xs, [gi] * len(tfs), s=sizes, c=[coef[tf] for tf in tfs], cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_xticks(np.arange(len(tfs)), tfs, rotation=90, fontsize=7)
        ax.set_yticks(np.arange(len(groups)), groups)
        ax.set_title(f"master TFs: {'knockout shifts (model)' if m == 'model' else 'gene activity (baseline)'}")
        fig.colorbar(sc, ax=ax, label="group mean − all cells' mean (knockout shift)" if m == "model" else "one-vs-rest coefficient")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_network(edges: pl.DataFrame, path: Path, top: int = 60) -> Path:
    """TFs on an inner circle, targets on an outer one; one arrow per (TF, target), width = best
    score, colour = the group where it scores best (grey when every group has it)."""
    n_groups = edges["group"].n_unique()
    e = (edges.sort("score", descending=True)
         .group_by("tf", "target", maintain_order=True)
         .agg(pl.col("group").first(), pl.col("score").first(), pl.col("group").n_unique().alias("n_groups"))
         .head(top))
    fig, ax = plt.subplots(figsize=(8, 8))
    if e.height == 0:
        ax.text(0.5, 0.5, "no edge passed the enrichment threshold", ha="center")
    else:
        tfs = sorted(e["tf"].unique().to_list())
        tg = sorted(set(e["target"].to_list()) - set(tfs))
        pos = {t: (0.45 * np.cos(2 * np.pi * i / len(tfs)), 0.45 * np.sin(2 * np.pi * i / len(tfs))) for i, t in enumerate(tfs)}
        pos.update({t: (np.cos(2 * np.pi * i / max(1, len(tg))), np.sin(2 * np.pi * i / max(1, len(tg)))) for i, t in enumerate(tg)})
        groups = sorted(e["group"].unique().to_list())
        cmap = plt.get_cmap("tab10")
        smax = float(e["score"].max())
        for tf, target, grp, s, k in e.select("tf", "target", "group", "score", "n_groups").iter_rows():
            (x0, y0), (x1, y1) = pos[tf], pos[target]
            color = "grey" if k == n_groups > 1 else cmap(groups.index(grp) % 10)
            ax.annotate("", (x1, y1), (x0, y0), arrowprops={"arrowstyle": "-|>", "color": color,
                                                            "lw": 0.5 + 2.5 * s / smax, "alpha": 0.6})
        for t, (x, y) in pos.items():
            ax.scatter([x], [y], s=300 if t in tfs else 80, c="gold" if t in tfs else "lightgrey", edgecolors="k", zorder=3)
            ax.text(x, y, t, fontsize=7 if t in tfs else 6, ha="center", va="center", zorder=4)
        for i, g in enumerate(groups):
            ax.plot([], [], c=cmap(i % 10), label=f"best in {g}")
        ax.plot([], [], c="grey", label=f"in all {n_groups} groups")
        ax.legend(fontsize=8, loc="lower right")
    ax.set(title=f"GRN: top {e.height} attention-enriched TF→target pairs ({edges.height} edges over {n_groups} groups)",
           xticks=[], yticks=[])
    ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_ko_heatmap(effects: pl.DataFrame, gene_names: dict[int, str], path: Path, n_genes: int = 30) -> Path:
    ko = effects.filter(pl.col("mode") == "KO")
    if ko.height == 0:  # e.g. no motif hit in any peak (peaks without sequence): say so instead of an empty grid
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.text(0.5, 0.5, "no knockout touched any analysed gene:\nno TF motif hit in the peaks of their windows",
                ha="center", va="center")
        ax.set_axis_off()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path
    groups = sorted(ko["group"].unique().to_list())
    conds = sorted(ko["condition"].unique().to_list())
    top = (ko.group_by("gene_id").agg(pl.col("log2fc").abs().max()).sort("log2fc", descending=True)["gene_id"].head(n_genes).to_list())
    fig, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups) + 1, 0.3 * len(conds) + 2.5), squeeze=False, sharey=True)
    vmax = max(1e-3, float(ko.filter(pl.col("gene_id").is_in(top))["log2fc"].abs().max() or 1e-3))
    for ax, g in zip(axes[0], groups):
        m = np.zeros((len(conds), len(top)))
        sub = ko.filter(pl.col("group") == g)
        ci, gi = {c: i for i, c in enumerate(conds)}, {x: j for j, x in enumerate(top)}
        for c, gid, v in sub.select("condition", "gene_id", "log2fc").iter_rows():
            if gid in gi:
                m[ci[c], gi[gid]] = v
        im = ax.imshow(m, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
        ax.set_xticks(np.arange(len(top)), [gene_names[x] for x in top], rotation=90, fontsize=5)
        ax.set_yticks(np.arange(len(conds)), [f"{c} KO" for c in conds], fontsize=7)
        ax.set_title(g)
    fig.colorbar(im, ax=axes[0].tolist(), label="predicted log2FC")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _f(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def plot_scorecard(card: dict, path: Path) -> Path:
    """One panel per scored task: the model's readout, its variants and every baseline, the best
    baseline's value dashed."""
    tasks = scored_tasks(card)
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.6), squeeze=False)
    for ax, (name, t) in zip(axes[0], tasks.items()):
        variants = {k: v for k, v in t["variants"].items() if v is not None}
        base = {k: v for k, v in t["baselines"].items() if v is not None}
        keys = ["model", *variants, *base]
        vals = [t["model"], *variants.values(), *base.values()]
        ax.bar(keys, vals, color=["tab:red"] + ["salmon"] * len(variants) + ["tab:grey"] * len(base), edgecolor="k", linewidth=0.4)
        if t["best_baseline"]["value"] is not None:
            ax.axhline(t["best_baseline"]["value"], c="k", ls="--", lw=0.8, label=f"best baseline {t['best_baseline']['value']:.2f}")
            ax.legend(fontsize=7)
        ax.set_title(f"{name.replace('_', ' ')} ({'met' if t['met'] else 'not met'})", fontsize=9)
        ax.tick_params(axis="x", rotation=40, labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_enhancer_per_gene(per_gene: pl.DataFrame, path: Path, baseline: str = "accessibility_regression") -> Path:
    """Each gene's own enhancer AUPRC: the model's |ablation| against ``baseline``, one panel per
    task (all pairs, distal), the diagonal where they tie."""
    tasks = per_gene["task"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 4.0), squeeze=False)
    for ax, name in zip(axes[0], tasks):
        sub = per_gene.filter(pl.col("task") == name)
        x, y = sub[baseline].to_numpy(), sub["ablation_abs"].to_numpy()
        ax.scatter(x, y, s=14, alpha=0.7, c="tab:red", edgecolor="k", linewidth=0.3)
        ax.plot([0, 1], [0, 1], c="k", lw=0.8, ls="--")
        ax.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel=f"{baseline.replace('_', ' ')} AUPRC", ylabel="model |ablation| AUPRC",
               title=f"{name.replace('_', ' ')}: {sub.height} genes, model above in {(y > x).sum()}, below in {(y < x).sum()}\n"
                     f"mean {y.mean():.3f} vs {x.mean():.3f}")
        ax.title.set_fontsize(8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def scorecard_table(card: dict) -> str:
    """The scorecard as an HTML table: each task's fixed model readout beside its best baseline and
    margin, with its variants and every baseline."""
    rows = []
    for name, t in card.items():
        if name.startswith("_"):
            continue
        if "model" not in t:
            rows.append([name, "not scored", "", "", "", t.get("not_scored", "")])
            continue
        best = t["best_baseline"]
        rows.append([f"{name} ({t['metric']})", f"{t['model']:.3f} ({t['readout']})", f"{best['name']} {_f(best['value'])}",
                     f"{t['margin']:+.3f} {'met' if t['met'] else 'NOT met'}",
                     ", ".join(f"{k} {_f(v)}" for k, v in t["variants"].items()),
                     ", ".join(f"{k} {_f(v)}" for k, v in t["baselines"].items())])
    return html_table(["task", "model", "best baseline", "margin", "variants", "all baselines"], rows)


def _table(df: pl.DataFrame, n: int = 15) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(f'{v:.3g}' if isinstance(v, float) else str(v))}</td>" for v in row) + "</tr>"
                   for row in df.head(n).iter_rows())
    return f"<table><tr>{head}</tr>{body}</table>"


def top_mediators(effects: pl.DataFrame, mediators: pl.DataFrame, gene_names: dict[int, str], peaks: pl.DataFrame,
                  n: int = 15) -> pl.DataFrame:
    """The ``n`` strongest single-TF knockout effects, each with the touched peak whose own
    knockout moves the gene most in the same direction (its main mediator)."""
    ko = (effects.filter((pl.col("mode") == "KO") & ~pl.col("condition").str.contains(r"\+", literal=False))
          .with_columns(pl.col("log2fc").abs().alias("size")).sort("size", descending=True).head(n))
    med = (mediators.join(ko.select("group", "condition", "gene_id", pl.col("log2fc").alias("ko")), on=["group", "condition", "gene_id"])
           .with_columns((pl.col("log2fc") * pl.col("ko").sign()).alias("along"))
           .sort("along", descending=True).group_by("group", "condition", "gene_id", maintain_order=True).first()
           .join(peak_regions(peaks, "peak"), on="peak_id"))
    return (ko.join(med.select("group", "condition", "gene_id", "peak", pl.col("log2fc").alias("peak_log2fc")),
                    on=["group", "condition", "gene_id"], how="left")
            .with_columns(pl.col("gene_id").replace_strict(gene_names, default="?", return_dtype=pl.Utf8).alias("gene"))
            .sort("size", descending=True)
            .select("group", pl.col("condition").alias("knockout"), "gene", "log2fc", pl.col("peak").alias("main_peak"), "peak_log2fc"))


def write_report(out: Path, p, view: dict[str, Any], gatt, masters, edges, effects, trans, card, curves: list[Path], results: dict[str, Any],
                 mediators: pl.DataFrame | None = None) -> Path:
    figs = out / "figures"
    tables = p.tables
    gene_names = dict(zip(tables.genes["gene_id"].to_list(), tables.genes["name"].to_list()))
    r = view["r"]
    pred_png = plot_prediction(view["scatter"], r, figs / "prediction.png")
    parts = [f"<h1>atlas_grn report</h1><p>{view['cells']:,} cells in {p.chosen['group'].n_unique()} "
             f"groups × {view['genes']} genes ({view['pairs']:,} cell × gene pairs); {len(p.tfs)} TFs; "
             f"{len(p.conditions)} perturbations ({p.knock_in.describe()})"
             + (f" ({len(p.not_perturbed)} TFs with a motif but no gene among the atlas genes not perturbed: analysis.perturb="
                f"{p.cfg.analysis.perturb})" if p.not_perturbed else "")
             + f". Model: <code>{html.escape(p.regulatory_weights)}</code>. "
             f"Scoring: {results['stats']['seconds']:.1f} s ({results['stats']['pairs_per_s']:.1f} pairs/s, "
             f"{results['stats']['reused']}/{results['stats']['partitions']} partitions reused); total {results['seconds']:.1f} s.</p>"]
    san = results.get("sanity", {})
    if san.get("pairs"):
        verdict = f"<b>Warning:</b> {html.escape(san['note'])}." if san["weak"] else "Both are visible to the Regulatory model."
        parts.append(f"<h2>Model sanity</h2><p>Frozen Elementary bins of {san['pairs']} real (cell, peak) inputs change by "
                     f"{100 * san['atac_relative_change']:.3f} % when their ATAC is zeroed and by {100 * san['dna_relative_change']:.3f} % "
                     f"when the DNA is another peak's. {verdict}</p>")
    if card:
        parts.append(f"<h2>Scorecard (against the simulator's planted truth)</h2>{scorecard_table(card)}<img src='figures/{plot_scorecard(card, figs / 'scorecard.png').name}' width='100%'>"
                     "<p>scorecard.json holds the definitions and per-group values.</p>")
        if (out / "enhancer_per_gene.parquet").exists():
            per_gene = pl.read_parquet(out / "enhancer_per_gene.parquet")
            if per_gene.height:
                parts.append("<h3>Enhancer–gene, gene by gene</h3><p>Each gene's own AUPRC (genes with a causal and a "
                             "non-causal candidate): ranking a gene's peaks, apart from putting every gene's scores on "
                             "one scale, which the global AUPRC also asks. Values: <code>enhancer_per_gene.parquet</code>.</p>"
                             f"<img src='figures/{plot_enhancer_per_gene(per_gene, figs / 'enhancer_per_gene.png').name}' width='70%'>")
    if curves:
        parts.append("<h2>Training</h2>" + "".join(f"<img src='figures/{c.name}' width='48%'>" for c in curves))
    parts.append(f"<h2>Expression prediction</h2><img src='figures/{pred_png.name}' width='40%'><p>Pearson r {r:.3f} over the analysed cells.</p>")
    parts.append(f"<h2>Attention at example loci</h2><img src='figures/{plot_attention_loci(gatt, tables.genes, tables.peaks, figs / 'attention_loci.png').name}' width='100%'>"
                 "<p>Genome tracks per group: <code>tracks/attention.&lt;group&gt;.bw</code> and <code>.bedGraph</code>; "
                 "features per cell: <code>features.h5ad</code> (X = gene activity, layer attention_feature).</p>")
    if masters is not None:
        top = (masters.filter(pl.col("rank") <= p.cfg.analysis.top_k_tfs).group_by("method", "group")
               .agg(pl.col("tf").sort_by("rank").str.join(", ")).sort("method", "group"))
        parts.append(f"<h2>Master TFs</h2><img src='figures/{plot_master_dotplot(masters, figs / 'master_tfs.png').name}' width='100%'>{_table(top, 50)}")
    parts.append(f"<h2>GRN</h2><img src='figures/{plot_network(edges, figs / 'grn.png').name}' width='60%'>"
                 f"<p>{edges.height} edges (p ≤ {p.cfg.analysis.max_edge_p}) in grn/edges.parquet. For other tools: "
                 f"grn/celloracle_base_grn.parquet (CellOracle's <code>import_TF_data</code>), grn/scenicplus_eregulons.tsv "
                 f"(SCENIC+'s eRegulon table) and atlas.h5mu (MuData: RNA and peak modalities).</p>{_table(edges.sort('score', descending=True).drop('peaks'))}")
    parts.append(f"<h2>Knockouts</h2><img src='figures/{plot_ko_heatmap(effects, gene_names, figs / 'ko_heatmap.png').name}' width='100%'>")
    if mediators is not None and mediators.height:
        parts.append("<p>The strongest knockout effects and the peak each acts through most (its own knockout's log2FC "
                     "in that group; every touched peak: <code>ko_mediators.parquet</code>):</p>"
                     + _table(top_mediators(effects, mediators, gene_names, tables.peaks)))
    tr = results["transition"]
    parts.append(f"<h2>Cell-state transition</h2><p>Source {html.escape(tr['source'])} → target {html.escape(tr['target'])}; "
                 f"the perturbation moving the source furthest toward the target is {html.escape(tr['best']['condition'])} "
                 f"{tr['best']['mode']} (transition score {tr['best']['transition_score']:.3f}; 1 = reaches the target centroid).</p>"
                 f"<img src='figures/transition.png' width='90%'>{_table(trans)}")
    tg = results["targets"]
    parts.append(f"<h2>Therapeutic targets</h2><p>Disease {html.escape(tg['disease'])} vs reference {html.escape(tg['reference'])}: "
                 f"master TFs that differ <code>{html.escape(json.dumps(tg['masters']))}</code>; knockouts ranked by how far they "
                 f"move disease cells toward the reference:</p>{_table(pl.DataFrame(tg['knockouts']))}")
    if "crispri" in results:
        cr = results["crispri"]
        rows = [[name, f"{v['auprc']:.3f}", "" if v["average_precision"] is None else f"{v['average_precision']:.3f}",
                 f"{v['precision_at_70_recall']:.3f}"] for name, v in cr["scores"].items()]
        c = cr["counts"]
        parts.append(f"<h2>CRISPRi benchmark</h2><p>{html.escape(Path(cr['table']).name)}: {c['valid_pairs']:,} valid pairs, "
                     f"{c['positives']} positives; AUPRC as CRISPR_comparison computes it (crispri.json has the definitions"
                     f"{', coverage' if cr['coverage'] else ''} and notes).</p>"
                     + html_table(["predictor", "AUPRC", "average precision", "precision at 70 % recall"], rows)
                     + "".join(f"<p>{html.escape(n)}</p>" for n in cr["notes"]))
    return write_html(out / "report.html", "atlas_grn report", parts)


def write_html(path: Path, title: str, sections: list[str]) -> Path:
    """The one HTML page writer of the project's reports (atlas_grn's and the demo's)."""
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;max-width:1150px;margin:2em auto}td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px}"
            "table{border-collapse:collapse;margin:8px 0}pre{background:#f6f6f6;padding:8px;font-size:12px}</style></head><body>"
            + "\n".join(sections) + "</body></html>")
    path.write_text(page)
    return path


def html_table(header: list[str], rows: list[list[str]]) -> str:
    """A table of already formatted cells (escaped here)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def training_checks(evals: dict[str, dict]) -> list[list[str]]:
    """The training runs' own held-out checks (eval.json), each beside its baselines, as table rows."""
    rows = []
    if "elementary" in evals and evals["elementary"]:
        e = evals["elementary"]
        rows.append(["masked DNA accuracy at planted motif k-mers", f"{e['model']['motif']:.3f}",
                     f"k-mer frequency {e['kmer_frequency']['motif']:.3f}, left-context k-mer {e['kmer_left_context']['motif']:.3f}",
                     f"{e['masked_motif_kmers']} masked motif k-mers, {e['windows']} windows"])
        rows.append(["masked DNA accuracy, all k-mers", f"{e['model']['all']:.4f}",
                     f"k-mer frequency {e['kmer_frequency']['all']:.4f}, left-context k-mer {e['kmer_left_context']['all']:.3f}",
                     f"{e['masked_kmers']} masked k-mers"])
    if "regulatory" in evals and evals["regulatory"]:
        r = evals["regulatory"]
        rows.append(["expression Pearson r, held-out cells", f"{r['pearson_r']:.3f}",
                     f"gene mean over training cells {r['baseline_gene_mean_r']:.3f}",
                     f"{r['samples']} samples of {r['holdout_cells_scored']} held-out cells; within-gene r {r['within_gene_r']:.3f}"])
    return rows

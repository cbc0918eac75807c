"""The ``creformer`` command. Argument parsing lives here and only here: every subcommand loads
the config tree (a preset or YAML file, then dotted ``key=value`` overrides, then the flags it
names), calls one plain library function with it, and prints what it left.

The console scripts ``train_elementary``, ``train_regulatory`` and ``atlas_grn`` (the names
``ray job submit`` uses) are aliases of ``creformer train elementary`` and so on.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import Config, ConfigError, load_config, preset_names
from .engine.errors import InputError, ShardError

# The stage modules pull in torch, Ray and DeepSpeed (seconds to import); each subcommand imports
# what it runs, so `creformer --help` and `creformer validate` start at once.


def _config(args: argparse.Namespace, flags: dict[str, Any] | None = None) -> Config:
    """The config tree: --config, then the positional overrides, then the subcommand's flags
    (each flag is the config key it names; unset flags change nothing)."""
    extra = [f"{key}={json.dumps(value)}" for key, value in (flags or {}).items() if value is not None]
    return load_config(args.config, [*args.overrides, *extra])


def cmd_simulate(args: argparse.Namespace) -> None:
    from .engine.simulate import simulate

    cfg = _config(args, {"simulate.out": args.out, "simulate.preset": args.preset, "simulate.seed": args.seed})
    out = simulate(cfg.simulate.out, preset=cfg.simulate.preset, seed=cfg.simulate.seed)
    print(f"simulated data written to {out} (genome.fa, genes.gtf, motifs.meme, samples.tsv, tracks/, multiome/, truth/)")


def _print_build(result, counts: str) -> None:
    state = "reused (inputs unchanged)" if result.reused else f"built {result.built} shard(s), resumed {result.resumed}"
    print(f"{result.manifest_path}: {state}; {counts}")


def cmd_prepare_elementary(args: argparse.Namespace) -> None:
    from .engine.elementary_shards import prepare_elementary

    cfg = _config(args, {"data.samples": args.samples, "data.genome": args.genome, "data.shards": args.out})
    result = prepare_elementary(cfg, overwrite=args.overwrite)
    man = json.loads(result.manifest_path.read_text())
    _print_build(result, f"{man['records']} windows in {len(man['shards'])} shard(s), {man['bytes'] / 2**20:.1f} MiB")


def regulatory_flags(args: argparse.Namespace) -> dict[str, Any]:
    """`prepare regulatory`'s flags as the config keys they set."""
    r = "data.regulatory."
    return {r + "multiome": args.multiome, r + "fragments": args.fragments, r + "peaks": args.peaks, "data.genome": args.genome,
            r + "annotation": args.annotation, r + "shards": args.out, r + "genes": args.genes, r + "n_hvg": args.n_hvg,
            r + "min_counts": args.min_counts, r + "cells": args.cells,
            r + "keep_genes_without_peaks": False if args.skip_genes_without_peaks else None,
            r + "allow_missing_sequence": True if args.allow_missing_sequence else None}


def cmd_prepare_regulatory(args: argparse.Namespace) -> None:
    from .engine.regulatory_shards import prepare_regulatory

    cfg = _config(args, regulatory_flags(args))
    result = prepare_regulatory(cfg, overwrite=args.overwrite)
    man = json.loads(result.manifest_path.read_text())
    c = man["counts"]
    _print_build(result, f"{man['records']:,} samples ({c['cells']:,} cells x {c['genes']:,} genes), "
                 f"{man['bytes'] / max(1, man['records']):.0f} bytes/sample; {c['cell_peak_pairs']:,} non-empty cell x peak pairs")


def cmd_prepare_embeddings(args: argparse.Namespace) -> None:
    from .trainer.embedding_store import prepare_embeddings
    from .trainer.jobs import check_elementary_weights, elementary_weights

    cfg = _config(args, {"train.regulatory.elementary_weights": args.weights, "data.regulatory.shards": args.shards,
                         "data.embeddings.store": args.out})
    weights = elementary_weights(cfg)
    check_elementary_weights(cfg, weights)
    folder = prepare_embeddings(cfg, weights, force=args.force)
    print(f"embedding store: {folder}" if folder else "no store written: train_regulatory and atlas_grn use the online cache")


def cmd_train(args: argparse.Namespace) -> None:
    from .trainer.jobs import train_elementary, train_regulatory

    cfg = _config(args)
    result = (train_elementary if args.stage == "elementary" else train_regulatory)(cfg)
    print(f"train {args.stage}: weights {result.weights}; run folder {result.run_dir}")


def cmd_analyze(args: argparse.Namespace) -> None:
    from .analysis.atlas import atlas_grn

    result = atlas_grn(_config(args))
    print(f"atlas_grn: outputs {result.out}; report {result.report}")


def cmd_model_info(args: argparse.Namespace) -> None:
    from .trainer.model import COUNTED_GENES, parameter_counts

    cfg = _config(args)
    counts = parameter_counts(cfg.model, cfg.data.regulatory.peak_m)
    m = cfg.model
    print(f"{args.config}: d_model {m.d_model}, heads {m.n_heads}, FFN {m.ffn}, layers {m.n1}/{m.n2}/{m.n3} "
          f"(built on the meta device; a gene table of {COUNTED_GENES:,} genes)")
    for part, n in counts.items():
        print(f"  {part:<28} {n:>15,}")


def cmd_validate(args: argparse.Namespace) -> None:
    from .analysis.validate import scorecard

    card = scorecard(Path(args.atlas), Path(args.truth))
    for name, t in card.items():
        if name.startswith("_"):
            continue
        if "model" not in t:
            print(f"{name:<22} not scored: {t.get('not_scored', '')}")
            continue
        best = t["best_baseline"]
        print(f"{name:<22} model {t['model']:.3f} | best baseline {best['name']} {best['value']:.3f} | "
              f"margin {t['margin']:+.3f} {'met' if t['met'] else 'NOT met'}")
    print(f"written {Path(args.atlas) / 'scorecard.json'}")


def cmd_crispri(args: argparse.Namespace) -> None:
    from .analysis.crispri import score_crispri

    res = score_crispri(args.table, predictions=args.predictions, weight_column=args.weight_column or "")
    print(json.dumps(res, indent=1))


def cmd_run(args: argparse.Namespace) -> None:
    from .pipeline import run_pipeline

    res = run_pipeline(_config(args, {}))
    print("\n".join([f"creformer run finished ({sum(s for _, s in res.stages):.0f} s):",
                      *[f"  {name:<20} {secs:7.0f} s" for name, secs in res.stages],
                      f"  Elementary weights   {res.elementary_weights}", f"  Regulatory weights   {res.regulatory_weights}",
                      f"  analyses             {res.atlas.out}", f"  report               {res.atlas.report}"]))


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run

    run(Path(args.out), args.config, tuple(args.overrides), Path(args.data) if args.data else None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="creformer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str, func: Callable, parent=sub, config: str = "tiny") -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help_, description=help_)
        p.add_argument("--config", default=config, help=f"preset ({', '.join(preset_names())}) or a YAML path")
        p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.window_bp=16384 train.regulatory.lr=1e-3")
        p.set_defaults(func=func)
        return p

    p = add("simulate", "write a synthetic genome, tracks, multiome atlas and truth with planted regulatory rules", cmd_simulate)
    p.add_argument("--preset", choices=["tiny", "small", "large"], help="simulator size (simulate.preset)")
    p.add_argument("--out", help="output folder (simulate.out)")
    p.add_argument("--seed", type=int, help="simulate.seed")

    prep = sub.add_parser("prepare", help="build token shards").add_subparsers(dest="what", required=True)
    p = add("elementary", "FASTA + bigWig tracks -> WebDataset token shards", cmd_prepare_elementary, prep)
    p.add_argument("--samples", help="samples.tsv: sample, assay, path (data.samples)")
    p.add_argument("--genome", help="genome FASTA, plain, gzip or bgzip (data.genome)")
    p.add_argument("--out", help="output folder (data.shards)")
    p.add_argument("--overwrite", action="store_true", help="replace a shard set built from other inputs")
    p = add("regulatory", "10x Multiome (Cell Ranger ARC folder/h5, .h5mu, or RNA .h5ad + fragments) -> cell x gene Arrow shards",
            cmd_prepare_regulatory, prep)
    p.add_argument("--multiome", "--rna", dest="multiome",
                   help="Cell Ranger ARC output folder, filtered_feature_bc_matrix.h5, .h5mu, or an RNA-only .h5ad "
                   "(raw counts in layers['counts'], raw.X or X; needs --fragments and --peaks) (data.regulatory.multiome)")
    p.add_argument("--fragments", help="atac_fragments.tsv.gz, when not next to the matrix / named in the h5mu "
                   "(data.regulatory.fragments)")
    p.add_argument("--peaks", help="BED or narrowPeak (gzip ok) replacing the input's peaks, merged like bedtools merge "
                   "(data.regulatory.peaks)")
    p.add_argument("--genome", help="genome FASTA (data.genome)")
    p.add_argument("--annotation", help="GTF/GFF3, BED of gene bounds, or TSS table (data.regulatory.annotation)")
    p.add_argument("--out", help="output folder (data.regulatory.shards)")
    p.add_argument("--genes", help="'expressed', 'hvg' or a file of gene ids/names (data.regulatory.genes)")
    p.add_argument("--n-hvg", type=int, help="data.regulatory.n_hvg")
    p.add_argument("--min-counts", type=int, help="skip cells with fewer RNA counts (data.regulatory.min_counts)")
    p.add_argument("--cells", help="file of barcodes to keep (data.regulatory.cells)")
    p.add_argument("--skip-genes-without-peaks", action="store_true",
                   help="drop genes with no peak in their window (data.regulatory.keep_genes_without_peaks=false)")
    p.add_argument("--allow-missing-sequence", action="store_true",
                   help="keep peaks the genome lacks, with [N] tokens (data.regulatory.allow_missing_sequence=true)")
    p.add_argument("--overwrite", action="store_true", help="replace a shard set built from other inputs")

    p = add("embeddings", "frozen Elementary outputs for every (peak, cell signal) pair of the Regulatory shards, "
            "once per weights (Ray Data); train_regulatory runs it when the store is missing", cmd_prepare_embeddings, prep)
    p.add_argument("--weights", help="Elementary safetensors (train.regulatory.elementary_weights)")
    p.add_argument("--shards", help="Regulatory shard folder (data.regulatory.shards)")
    p.add_argument("--out", help="store folder (data.embeddings.store; default <shards>/embeddings)")
    p.add_argument("--force", action="store_true", help="write the store even beyond data.embeddings.budget_gb")

    train = sub.add_parser("train", help="Ray Train + DeepSpeed ZeRO-3 training jobs").add_subparsers(dest="stage", required=True)
    add("elementary", "masked DNA + track pretraining of the Elementary model (train_elementary)", cmd_train, train)
    add("regulatory", "expression training of the Regulatory head on frozen Elementary embeddings (train_regulatory)",
        cmd_train, train)
    add("analyze", "the zero-shot analyses over the atlas as a Ray batch job (atlas_grn)", cmd_analyze)

    p = sub.add_parser("validate", help="score atlas_grn outputs against the simulator's truth -> scorecard.json")
    p.add_argument("--atlas", required=True, help="atlas_grn output folder (analysis.out)")
    p.add_argument("--truth", required=True, help="the simulator's truth folder (simulate --out DIR -> DIR/truth)")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("crispri", help="score enhancer-gene predictors on a CRISPRi table the published way "
                       "(distance and ABC baselines, and any predictions file)")
    p.add_argument("table", help="EPCrisprBenchmark_*.tsv(.gz)")
    p.add_argument("--predictions", help="TSV with chrom, start, end, gene, score: matched by overlap and gene symbol")
    p.add_argument("--weight-column", help="a column of per-pair weights, e.g. direct_vs_indirect_negative")
    p.set_defaults(func=cmd_crispri)
    add("model-info", "parameter count of each model part (no memory: meta device)", cmd_model_info)
    add("run", "the whole path on your data from one config: prepare -> train_elementary (skipped when "
        "train.regulatory.elementary_weights is set) -> train_regulatory -> atlas_grn -> report "
        "(templates: docs/templates/)", cmd_run)
    p = add("demo", "the whole path on the simulated atlas -> report.html + scorecard.json (make demo)", cmd_demo,
            config="demo")
    p.add_argument("--out", default="runs/demo", help="output folder (every path of the run lies under it)")
    p.add_argument("--data", help="the real data folder (default: CREFORMER_DATA or ../shared/data), for the CRISPRi table")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, InputError, ShardError) as err:
        print(f"creformer: error: {err}", file=sys.stderr)
        return 2
    return 0


def _alias(*words: str) -> Callable[[], int]:
    def entry() -> int:
        return main([*words, *sys.argv[1:]])

    return entry


train_elementary_main = _alias("train", "elementary")
train_regulatory_main = _alias("train", "regulatory")
atlas_grn_main = _alias("analyze")


if __name__ == "__main__":
    sys.exit(main())

"""The ``creformer`` command: subcommands are thin layers over plain functions."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from .config import ConfigError, load_config


def _config(args: argparse.Namespace):
    return load_config(args.config, args.overrides)


def cmd_simulate(args: argparse.Namespace) -> None:
    from creformer.engine.simulate import simulate

    cfg = _config(args)
    out = simulate(args.out or cfg.simulate.out, preset=args.preset or cfg.simulate.preset,
                   seed=cfg.simulate.seed if args.seed is None else args.seed)
    print(f"simulated data written to {out} (genome.fa, genes.gtf, motifs.meme, samples.tsv, tracks/, truth/)")


def cmd_prepare_elementary(args: argparse.Namespace) -> None:
    from creformer.engine.windows import prepare_elementary

    from .ray_utils import ensure_ray

    cfg = _config(args)
    d = cfg.data
    samples = args.samples or d.samples
    genome = args.genome or d.genome
    if not samples or not genome:
        raise ConfigError("prepare elementary needs --samples and --genome (or data.samples / data.genome in the config)")
    if d.executor == "ray":
        ensure_ray(cfg.ray)
    result = prepare_elementary(samples, genome, args.out or d.shards, assays=d.assays, window_bp=d.window_bp,
                                windows_per_sample=d.windows_per_sample, max_n_fraction=d.max_n_fraction,
                                shard_size_mb=d.shard_size_mb, seed=d.seed, executor=d.executor, overwrite=args.overwrite)
    man = json.loads(result.manifest_path.read_text())
    state = "reused (inputs unchanged)" if result.reused else f"built {result.built} shard(s), resumed {result.resumed}"
    print(f"{result.manifest_path}: {state}; {man['records']} windows in {len(man['shards'])} shard(s), "
          f"{man['bytes'] / 2**20:.1f} MiB")


def cmd_prepare_regulatory(args: argparse.Namespace) -> None:
    from creformer.engine.cells import RegulatoryOptions, prepare_regulatory

    from .ray_utils import ensure_ray

    cfg = _config(args)
    opts = RegulatoryOptions(genes=args.genes, n_hvg=args.n_hvg, min_counts=args.min_counts, cells=args.cells or "",
                             keep_genes_without_peaks=not args.skip_genes_without_peaks,
                             allow_missing_sequence=args.allow_missing_sequence, peak_m=cfg.model.peak_m)
    if cfg.data.executor == "ray":
        ensure_ray(cfg.ray)
    result = prepare_regulatory(args.multiome, args.genome, args.annotation, args.out, fragments=args.fragments,
                                options=opts, executor=cfg.data.executor, overwrite=args.overwrite)
    man = json.loads(result.manifest_path.read_text())
    state = "reused (inputs unchanged)" if result.reused else f"built {result.built} shard(s), resumed {result.resumed}"
    c = man["counts"]
    print(f"{result.manifest_path}: {state}; {man['records']:,} samples ({c['cells']:,} cells x {c['genes']:,} genes), "
          f"{man['bytes'] / max(1, man['records']):.0f} bytes/sample; {c['cell_peak_pairs']:,} non-empty cell x peak pairs")


def cmd_model_info(args: argparse.Namespace) -> None:
    from creformer.trainer.model import parameter_counts

    cfg = _config(args)
    counts = parameter_counts(cfg.model)
    m = cfg.model
    print(f"{args.config}: d_model {m.d_model}, heads {m.n_heads}, FFN {m.ffn}, layers {m.n1}/{m.n2}/{m.n3} "
          "(built on the meta device)")
    for part, n in counts.items():
        print(f"  {part:<28} {n:>15,}")


def cmd_validate(args: argparse.Namespace) -> None:
    from creformer.analysis.validate import BASELINES, scorecard

    card = scorecard(Path(args.atlas), Path(args.truth))
    for name, entry in card.items():
        if name.startswith("_"):
            continue
        base = ", ".join(f"{k} {entry[k]:.3f}" for k in BASELINES if k in entry)
        print(f"{name:<26} model {entry['model']:.3f} | {base} | target {entry['target']:.3f} {'met' if entry['met'] else 'NOT met'}")
    print(f"written {Path(args.atlas) / 'scorecard.json'}")


def cmd_crispri(args: argparse.Namespace) -> None:
    import json

    from creformer.analysis.enhancers import score_crispri

    print(json.dumps(score_crispri(args.table), indent=1))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="creformer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str, parent=sub) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help_)
        p.add_argument("--config", default="tiny", help="preset name (tiny, small, paper) or a YAML path")
        p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.window_bp=16384")
        return p

    p = add("simulate", "write a synthetic genome, tracks and truth with planted regulatory rules")
    p.add_argument("--preset", choices=["tiny", "small", "large"], help="simulator size (default: simulate.preset)")
    p.add_argument("--out", help="output folder (default: simulate.out)")
    p.add_argument("--seed", type=int)
    p.set_defaults(func=cmd_simulate)

    prep = sub.add_parser("prepare", help="build token shards").add_subparsers(dest="what", required=True)
    p = add("elementary", "FASTA + bigWig tracks -> WebDataset token shards", prep)
    p.add_argument("--samples", help="samples.tsv (sample, assay, path)")
    p.add_argument("--genome", help="genome FASTA (plain, gzip or bgzip)")
    p.add_argument("--out", help="output folder (default: data.shards)")
    p.add_argument("--overwrite", action="store_true", help="replace a shard set built from other inputs")
    p.set_defaults(func=cmd_prepare_elementary)
    p = add("regulatory", "10x Multiome (Cell Ranger ARC folder/h5 or .h5mu) -> cell x gene Arrow shards", prep)
    p.add_argument("--multiome", required=True, help="Cell Ranger ARC output folder, filtered_feature_bc_matrix.h5 or .h5mu")
    p.add_argument("--fragments", help="atac_fragments.tsv.gz (default: next to the matrix / named in the h5mu)")
    p.add_argument("--genome", required=True, help="genome FASTA")
    p.add_argument("--annotation", required=True, help="GTF/GFF3, BED of gene bounds, or TSS table")
    p.add_argument("--out", required=True)
    p.add_argument("--genes", default="expressed", help="'expressed', 'hvg' or a file of gene ids/names")
    p.add_argument("--n-hvg", type=int, default=2000)
    p.add_argument("--min-counts", type=int, default=1, help="skip cells with fewer RNA counts (counted)")
    p.add_argument("--cells", help="file of barcodes to keep")
    p.add_argument("--skip-genes-without-peaks", action="store_true", help="drop genes with no peak in their window (counted)")
    p.add_argument("--allow-missing-sequence", action="store_true", help="continue when the genome lacks some peaks")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_prepare_regulatory)

    p = sub.add_parser("validate", help="score atlas_grn outputs against the simulator's truth -> scorecard.json")
    p.add_argument("--atlas", required=True, help="atlas_grn output folder (analysis.out)")
    p.add_argument("--truth", required=True, help="the simulator's truth folder (simulate --out DIR -> DIR/truth)")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("crispri", help="distance and ABC-like baselines on an EPCrisprBenchmark CRISPRi table")
    p.add_argument("table", help="EPCrisprBenchmark_*.tsv(.gz)")
    p.set_defaults(func=cmd_crispri)

    p = add("model-info", "parameter count of each model part (no memory: meta device)")
    p.set_defaults(func=cmd_model_info)
    return parser


def run_entrypoint(fn: Callable[[list[str]], object]) -> int:
    """A console script over a plain function: input errors print one line and exit 2, no traceback."""
    from creformer.engine.errors import InputError, ShardError

    try:
        fn(sys.argv[1:])
    except (ConfigError, InputError, ShardError) as err:
        print(f"{fn.__name__}: error: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    from creformer.engine.errors import InputError, ShardError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, InputError, ShardError) as err:
        print(f"creformer: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The science benchmark: the whole path on the small simulated atlas for several seeds, each task's
fixed model readout beside its strongest simple baseline, as mean ± spread over the seeds.

Per seed: simulate (simulate.seed) → shards → train_elementary → embedding store →
train_regulatory → atlas_grn → scorecard (creformer.demo.run, with the science preset's larger
training budget than the demo's; train.seed and analysis.seed follow the seed too). Then per task:
the model's score, the best baseline (the baseline with the highest mean over the seeds, and each
seed's own best), the margin (model − that seed's best baseline), each as mean ± sample standard
deviation, and the held-out expression r beside the gene-mean baseline. Results go to
``<out>/science.json``; `make results` renders docs/results.md from it (never copied by hand).

Usage: python benchmarks/science.py [--preset science] [--seeds 0 1 2] [--out runs/science]
       [--override KEY=VALUE ...]
       python benchmarks/science.py --rescore --out runs/science
       python benchmarks/science.py --pool runs/science_a runs/science_b --out runs/science_pooled
`make science` runs the default (≤ 60 min on 2 cores is the target) and regenerates the results page.
``--rescore`` scores a finished run's seeds again with this code's referee (analysis/validate.py on
each seed's atlas outputs, no training or atlas_grn) and rewrites science.json; the run's own
timings and commit stay, and ``rescored`` records when and with which commit.
``--pool`` aggregates the seeds of several finished runs as one (more seeds, a tighter spread; each
run stays within the 60-minute budget); it refuses runs that share a seed, differ in preset or
overrides, or score a task by a different readout (``--rescore`` the older run first), and records
each run's commit, date and time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("DS_ACCELERATOR", "cpu")

TASKS = ["master_tfs", "grn", "enhancer_gene", "enhancer_gene_distal", "knockout", "knock_in", "transition",
         "therapeutic_target"]


def spread(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min and max."""
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def aggregate(cards: dict[int, dict[str, Any]], evals: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Per task over the seeds' scorecards: the model, every baseline, the best baseline (highest
    mean), the margin against each seed's own best baseline, and how many seeds the model won."""
    tasks: dict[str, Any] = {}
    for task in TASKS:
        scored = {s: c[task] for s, c in cards.items() if task in c and "model" in c[task]}
        if not scored:
            continue
        names = sorted({b for t in scored.values() for b in t.get("baselines", {})})
        baselines = {b: spread([t["baselines"][b] for t in scored.values() if b in t["baselines"]]) for b in names}
        best = max(baselines, key=lambda b: baselines[b]["mean"]) if baselines else None
        margins = [t["model"] - t["best_baseline"]["value"] for t in scored.values() if t.get("best_baseline")]
        tasks[task] = {"metric": next(iter(scored.values()))["metric"], "readout": next(iter(scored.values()))["readout"],
                       "model": spread([t["model"] for t in scored.values()]), "baselines": baselines,
                       "best_baseline": {"name": best, **baselines[best]} if best else None,
                       "margin": spread(margins) if margins else None,
                       "seeds_won": sum(m > 0 for m in margins),
                       "variants": {v: spread([t["variants"][v] for t in scored.values() if v in t.get("variants", {})])
                                    for v in sorted({v for t in scored.values() for v in t.get("variants", {})})},
                       "per_seed": {str(s): {"model": t["model"], "best_baseline": t.get("best_baseline")} for s, t in scored.items()}}
        per_gene = [t["per_gene_auprc"] for t in scored.values() if "per_gene_auprc" in t]
        if per_gene:  # enhancer tasks: each readout's mean AUPRC within a gene
            tasks[task]["per_gene_auprc"] = {k: spread([g[k] for g in per_gene if g.get(k) is not None])
                                             for k in per_gene[0] if any(g.get(k) is not None for g in per_gene)}
            tasks[task]["per_gene_best_baseline"] = best_per_gene(tasks[task])
        if task in ("knockout", "knock_in"):
            direct = [t["direct"]["model"] for t in scored.values() if "direct" in t]
            if direct:
                tasks[task]["direct_model"] = spread(direct)
    held = [e for e in evals.values() if "pearson_r" in e]
    heldout = {"pearson_r": spread([e["pearson_r"] for e in held]),
               "baseline_gene_mean_r": spread([e["baseline_gene_mean_r"] for e in held])} if held else None
    return {"tasks": tasks, "heldout_expression": heldout}


def best_per_gene(t: dict[str, Any]) -> str | None:
    """The baseline with the highest mean per-gene AUPRC (enhancer tasks; None elsewhere)."""
    g = t.get("per_gene_auprc") or {}
    names = [b for b in t["baselines"] if b in g]
    return max(names, key=lambda b: g[b]["mean"]) if names and "ablation_abs" in g else None


def _pm(s: dict[str, float] | None) -> str:
    return "—" if s is None else f"{s['mean']:.3f} ± {s['sd']:.3f}"


def table(result: dict[str, Any]) -> str:
    lines = [f"{'task':<22} {'model':>15} {'best baseline':>36} {'margin':>17} {'won':>5}"]
    for task, t in result["tasks"].items():
        b = t["best_baseline"]
        base = f"{b['name']} {_pm(b)}" if b else "—"
        lines.append(f"{task:<22} {_pm(t['model']):>15} {base:>36} {_pm(t['margin']):>17} {t['seeds_won']:>3}/{t['model']['n']}")
    for task, t in result["tasks"].items():
        g, name = t.get("per_gene_auprc"), t.get("per_gene_best_baseline")
        if name:
            lines.append(f"{'  ' + task + ' per gene':<22} {_pm(g['ablation_abs']):>15} {name + ' ' + _pm(g[name]):>36}")
    for task, t in result["tasks"].items():
        if t.get("direct_model"):
            lines.append(f"{'  ' + task + ' direct':<22} {_pm(t['direct_model']):>15}")
    h = result.get("heldout_expression")
    if h:
        lines.append(f"{'held-out expression r':<22} {_pm(h['pearson_r']):>15} {'gene mean ' + _pm(h['baseline_gene_mean_r']):>36}")
    return "\n".join(lines)


def _heldout_eval(folder: Path) -> dict[str, Any]:
    """A seed's held-out expression check (train_regulatory's eval.json), {} when it has none."""
    ev = folder / "train" / "regulatory" / "eval.json"
    return json.loads(ev.read_text()) if ev.exists() else {}


def run_science(out: Path, preset: str, seeds: list[int], overrides: tuple[str, ...] = (),
                data_dir: Path | None = None) -> dict[str, Any]:
    """Run every seed (a finished seed is reused stage by stage, as the demo does), aggregate, write
    ``out/science.json`` and return it."""
    from creformer.demo import run
    from creformer.provenance import code_version

    out = out.resolve()
    cards, evals, seconds, forwards = {}, {}, {}, {}
    for seed in seeds:
        folder = out / f"seed{seed}"
        t0 = time.perf_counter()
        run(folder, config=preset, data_dir=data_dir,
            overrides=(f"simulate.seed={seed}", f"train.seed={seed}", f"analysis.seed={seed}", *overrides))
        seconds[seed] = round(time.perf_counter() - t0, 1)
        cards[seed] = json.loads((folder / "scorecard.json").read_text())
        evals[seed] = _heldout_eval(folder)
        atlas = json.loads((folder / "atlas" / "atlas.json").read_text())
        forwards[seed] = atlas.get("stats", {}).get("observed_forwards")
    result = {"preset": preset, "seeds": seeds, "overrides": list(overrides), "commit": code_version(), "seconds_per_seed": seconds,
              "seconds_total": round(sum(seconds.values()), 1), "cpu_cores": os.cpu_count(),
              "atlas_observed_forwards": forwards, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              **aggregate(cards, evals)}
    (out / "science.json").write_text(json.dumps(result, indent=1))
    return result


def rescore(out: Path) -> dict[str, Any]:
    """Score each seed of a finished run (``out/science.json``) again with this code's referee and
    aggregate; the seeds' models and atlas outputs are untouched, the run's timings and commit kept."""
    from creformer.analysis.validate import scorecard
    from creformer.provenance import code_version

    out = out.resolve()
    path = out / "science.json"
    if not path.exists():
        raise SystemExit(f"{path} does not exist: --rescore scores a finished run again; run the benchmark first")
    run = json.loads(path.read_text())
    cards, evals = {}, {}
    for seed in run["seeds"]:
        folder = out / f"seed{seed}"
        cards[seed] = scorecard(folder / "atlas", folder / "sim" / "truth")
        (folder / "scorecard.json").write_text(json.dumps(cards[seed], indent=1, default=float))
        evals[seed] = _heldout_eval(folder)
    kept = {k: v for k, v in run.items() if k not in ("tasks", "heldout_expression")}
    result = {**kept, "rescored": {"commit": code_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
              **aggregate(cards, evals)}
    path.write_text(json.dumps(result, indent=1))
    return result


def pool(runs: list[Path], out: Path) -> dict[str, Any]:
    """Aggregate the seeds of finished runs (each ``run/science.json`` and its seeds' scorecards, as
    last scored) as one run, written to ``out/science.json``. Pooling only means something when the
    seeds were scored alike, so it refuses overlapping seeds, a different preset or overrides, and a
    task whose readout differs between seeds."""
    from creformer.provenance import code_version

    target = out.resolve() / "science.json"
    if target.exists() and "pooled_from" not in json.loads(target.read_text()):
        raise SystemExit(f"{target} is a run's own result: pool into another folder (--out)")
    cards: dict[int, dict[str, Any]] = {}
    evals: dict[int, dict[str, Any]] = {}
    origin: dict[int, Path] = {}
    done: list[tuple[Path, dict[str, Any]]] = []
    for folder in (r.resolve() for r in runs):
        path = folder / "science.json"
        if not path.exists():
            raise SystemExit(f"{path} does not exist: --pool takes the folders of finished science runs")
        run = json.loads(path.read_text())
        if done and (run["preset"], run.get("overrides", [])) != (done[0][1]["preset"], done[0][1].get("overrides", [])):
            raise SystemExit(f"{folder} ran preset {run['preset']!r} with overrides {run.get('overrides', [])}, "
                             f"{done[0][0]} preset {done[0][1]['preset']!r} with {done[0][1].get('overrides', [])}: "
                             "pool only runs of the same preset and overrides")
        for seed in run["seeds"]:
            if seed in origin:
                raise SystemExit(f"seed {seed} is in both {origin[seed]} and {folder}: a seed counts once")
            origin[seed] = folder
            cards[seed] = json.loads((folder / f"seed{seed}" / "scorecard.json").read_text())
            evals[seed] = _heldout_eval(folder / f"seed{seed}")
        done.append((folder, run))
    for task in TASKS:
        readouts: dict[str, list[int]] = {}
        for seed, c in cards.items():
            if "readout" in c.get(task, {}):
                readouts.setdefault(c[task]["readout"], []).append(seed)
        if len(readouts) > 1:
            raise SystemExit(f"{task} is scored by different readouts across the seeds ("
                             + "; ".join(f"seeds {seeds}: {r!r}" for r, seeds in readouts.items())
                             + "): score the older run again with this code first (--rescore --out RUN)")
    first = done[0][1]
    result = {"preset": first["preset"], "seeds": list(cards), "overrides": first.get("overrides", []),
              "pooled_from": [{"out": str(folder), "seeds": run["seeds"], "commit": run.get("commit"),
                               "created": run.get("created"), "seconds_total": run["seconds_total"],
                               "rescored": run.get("rescored")} for folder, run in done],
              "pooled": {"commit": code_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
              "seconds_per_seed": {s: t for _, run in done for s, t in run["seconds_per_seed"].items()},
              "seconds_total": round(sum(run["seconds_total"] for _, run in done), 1), "cpu_cores": first.get("cpu_cores"),
              "atlas_observed_forwards": {s: f for _, run in done for s, f in run.get("atlas_observed_forwards", {}).items()},
              "created": max(run.get("created") or "" for _, run in done), **aggregate(cards, evals)}
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=1))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="science", help="config preset or YAML (default: configs/science.yaml)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="runs/science")
    ap.add_argument("--override", action="append", default=[], help="dotted KEY=VALUE, repeatable")
    ap.add_argument("--rescore", action="store_true", help="score the finished run under --out again with this code's "
                    "referee (no training, no atlas_grn); keeps its timings")
    ap.add_argument("--pool", nargs="+", metavar="RUN", help="aggregate the seeds of these finished runs as one, "
                    "written to --out (no training, no scoring)")
    args = ap.parse_args()
    if args.pool:
        result = pool([Path(r) for r in args.pool], Path(args.out))
        print(f"\nscience benchmark pooled: seeds {result['seeds']} from "
              + ", ".join(f"{m['out']} ({m['commit']}, {m['seconds_total'] / 60:.1f} min)" for m in result["pooled_from"]) + "\n")
        print(table(result))
        print(f"\n{Path(args.out) / 'science.json'}", file=sys.stderr)
        return
    if args.rescore:
        result = rescore(Path(args.out))
        print(f"\nscience benchmark rescored: seeds {result['seeds']} of {result.get('commit')} with {result['rescored']['commit']}\n")
        print(table(result))
        return
    result = run_science(Path(args.out), args.preset, args.seeds, tuple(args.override))
    print(f"\nscience benchmark: preset {args.preset}, seeds {args.seeds}, {result['seconds_total'] / 60:.1f} min "
          f"on {result['cpu_cores']} cores (mean ± sd over seeds; margin = model − that seed's best baseline)\n")
    print(table(result))
    print(f"\n{Path(args.out) / 'science.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()

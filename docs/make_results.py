"""Generate docs/results.md from a run's own JSON: the demo's scorecard.json, the training runs'
eval.json and atlas.json, and any benchmark result files. Figures are never copied by hand into
the docs; rerun this after a run (`make results`) and commit the page.

    python docs/make_results.py --demo runs/demo [--bench runs/bench/atlas_grn/result.json ...] --out docs/results.md
"""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path
from typing import Any

from creformer.analysis.report import training_checks
from creformer.provenance import code_version


def _cell(text: str) -> str:
    """Text for a markdown table cell: a metric's own "|" (R-precision's |masters|) would end the cell."""
    return str(text).replace("|", "\\|")


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def scorecard_section(card: dict) -> list[str]:
    lines = ["| task | metric | model | best baseline | margin | met | variants | all baselines |",
             "|---|---|---|---|---|---|---|---|"]
    for name, t in card.items():
        if name.startswith("_"):
            continue
        if "model" not in t:
            lines.append(f"| {name} | not scored: {t.get('not_scored', '')} | | | | | | |")
            continue
        best = t["best_baseline"]
        lines.append(f"| {name} | {_cell(t['metric'])} | {_fmt(t['model'])} | {best['name']} {_fmt(best['value'])} | "
                     f"{t['margin']:+.3f} | {'yes' if t['met'] else 'no'} | "
                     + ", ".join(f"{k} {_fmt(v)}" for k, v in t["variants"].items()) + " | "
                     + ", ".join(f"{k} {_fmt(v)}" for k, v in t["baselines"].items()) + " |")
    return lines


def _pm(s: dict | None) -> str:
    return "–" if s is None else f"{s['mean']:.3f} ± {s['sd']:.3f}"


def science_section(sci: dict) -> list[str]:
    """benchmarks/science.py's science.json: per task, mean ± sd over the seeds."""
    # per seed too: a seed science.py reused from an earlier run (stage by stage) takes far less
    per_seed = ", ".join(f"seed {k} {v:,.0f} s" for k, v in sci.get("seconds_per_seed", {}).items())
    per_seed = f" ({per_seed})" if per_seed else ""
    again = sci.get("rescored")
    rescored = (f" Scored again on {again['created']} with commit {again['commit']}'s referee (`science.py --rescore`: "
                "same models and atlas outputs).") if again else ""
    if runs := sci.get("pooled_from"):  # science.py --pool: several runs' seeds as one
        ran = "; ".join(f"seeds {r['seeds']} in {r['seconds_total'] / 60:.1f} min ({r['created']}, commit {r['commit']}"
                        + (f", scored again with {r['rescored']['commit']}" if r.get("rescored") else "") + ")" for r in runs)
        head = (f"Preset `{sci['preset']}`, seeds {sci['seeds']}, pooled from {len(runs)} runs (`science.py --pool`, "
                f"each task scored by one readout over all the seeds): {ran}; on {sci['cpu_cores']} cores.")
    else:
        head = (f"Preset `{sci['preset']}`, seeds {sci['seeds']}, {sci['seconds_total'] / 60:.1f} min in all{per_seed} on "
                f"{sci['cpu_cores']} cores ({sci['created']}{', commit ' + sci['commit'] if sci.get('commit') else ''}).{rescored}")
    lines = [head + " Mean ± sample s.d. over the seeds; the margin is the model "
             "minus that seed's best baseline; *won* counts the seeds with a positive margin.", "",
             "| task | metric | model | best baseline (highest mean) | margin | won | variants |", "|---|---|---|---|---|---|---|"]
    for name, t in sci["tasks"].items():
        b = t["best_baseline"]
        lines.append(f"| {name} | {_cell(t['metric'])} | {_pm(t['model'])} | {b['name'] + ' ' + _pm(b) if b else '–'} | "
                     f"{_pm(t['margin'])} | {t['seeds_won']}/{t['model']['n']} | "
                     + ", ".join(f"{k} {_pm(v)}" for k, v in t["variants"].items()) + " |")
    per_gene = [f"{name}: model {_pm(t['per_gene_auprc']['ablation_abs'])}, best baseline {b} {_pm(t['per_gene_auprc'][b])}"
                for name, t in sci["tasks"].items() if (b := t.get("per_gene_best_baseline"))]
    if per_gene:
        lines += ["", "Enhancer–gene within each gene (mean per-gene AUPRC over the genes with both classes; "
                  "a diagnostic, not a score): " + "; ".join(per_gene) + "."]
    direct = [f"{name} {_pm(t['direct_model'])}" for name, t in sci["tasks"].items() if t.get("direct_model")]
    if direct:
        lines += ["", "Direction accuracy on direct responders (the genes with a planted site of the TF; the knockout's "
                  "target is 0.9, design §8): " + "; ".join(direct) + "."]
    if len(sci["seeds"]) > 3:  # enough seeds for the reader to ask whether a margin is more than seed noise
        se = [f"{name} {t['margin']['mean'] / (t['margin']['sd'] / t['margin']['n'] ** 0.5):.1f}"
              for name, t in sci["tasks"].items() if t["margin"]["sd"] > 0]
        lines += ["", "Mean margin over its standard error (s.d./√n; about 2 or more says the margin is more than "
                  "seed-to-seed noise): " + ", ".join(se) + "."]
    h = sci.get("heldout_expression")
    if h:
        lines += ["", f"Held-out expression r {_pm(h['pearson_r'])} (gene-mean baseline {_pm(h['baseline_gene_mean_r'])}). "
                  f"Elementary forwards atlas_grn made for the cells' own signal: {sci['atlas_observed_forwards']}."]
    return lines


def eval_section(demo: Path) -> list[str]:
    """The training runs' eval.json as the report shows them (analysis.report.training_checks)."""
    evals = {n: json.loads(p.read_text()) for n in ("elementary", "regulatory")
             if (p := demo / "train" / n / "eval.json").exists()}
    rows = training_checks(evals)
    return ["| check | model | baselines | on |", "|---|---|---|---|"] + [f"| {' | '.join(r)} |" for r in rows] if rows else []


def flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(obj, dict):
        return [kv for k, v in obj.items() for kv in flatten(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(obj, list) and len(obj) > 8:
        return [(prefix, f"[{len(obj)} values]")]
    return [(prefix, obj)]


SCIENCE_HEADING = "## Science benchmark (`make science`)"


def previous_section(page: Path, heading: str) -> list[str]:
    """The lines of ``heading``'s section in an earlier results page, up to the next ``## ``
    heading (none when the page or the section is missing): a science run takes over an hour and
    its JSON stays under runs/, so regenerating the page after a demo keeps the last science table
    rather than dropping it."""
    if not page.exists():
        return []
    lines = page.read_text().splitlines()
    if heading not in lines:
        return []
    start = lines.index(heading) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", default="runs/demo", help="a `creformer demo` output folder")
    ap.add_argument("--bench", nargs="*", default=[], help="benchmark result JSON files")
    ap.add_argument("--science", default="runs/science/science.json", help="benchmarks/science.py's output (when present)")
    ap.add_argument("--out", default="docs/results.md")
    args = ap.parse_args()
    demo = Path(args.demo)
    commit = code_version()
    lines = ["# Results", "", f"Generated by `docs/make_results.py` on {date.today()} from commit {commit or '?'}: "
             "do not edit by hand; rerun `make results` after `make demo` (and pass benchmark JSON files with `--bench`).", ""]
    sci = Path(args.science)
    if sci.exists():
        lines += [SCIENCE_HEADING, "", f"From `{sci}`.", ""]
        lines += science_section(json.loads(sci.read_text())) + [""]
    elif kept := [x for x in previous_section(Path(args.out), SCIENCE_HEADING) if not x.startswith("Kept from the previous")]:
        while kept and not kept[0]:
            kept.pop(0)
        lines += [SCIENCE_HEADING, "", f"Kept from the previous {args.out} (no `{sci}` in this checkout; "
                  "the run's own line below gives its date and commit).", "", *kept]
    card_path = demo / "scorecard.json"
    if card_path.exists():
        lines += ["## Demo scorecard (smoke-level: the demo's 15-minute budget)", "",
                  f"From `{card_path}`: every task's fixed model readout beside its best baseline (computed in the same run), "
                  "the margin, the variants and every baseline.", ""]
        lines += scorecard_section(json.loads(card_path.read_text())) + [""]
    ev = eval_section(demo)
    if ev:
        lines += ["## Training checks (eval.json)", ""] + ev + [""]
    atlas = demo / "atlas" / "atlas.json"
    if atlas.exists():
        a = json.loads(atlas.read_text())
        s = a["stats"]
        lines += ["## atlas_grn run", "", f"{a['cells']} cells in {len(a['groups'])} groups x {a['genes']} genes, "
                  f"{a['conditions']} perturbations; {s['samples']:,} cell x gene pairs scored in {s['seconds']:.1f} s "
                  f"({s['pairs_per_s']:.1f} pairs/s), total {a['seconds']:.1f} s.", ""]
    for path in map(Path, args.bench):
        lines += [f"## Benchmark: {path}", "", "| key | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in flatten(json.loads(path.read_text()))] + [""]
    Path(args.out).write_text("\n".join(lines))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()

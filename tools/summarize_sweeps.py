"""Each sweep variant at its own best learning rate, with paired per-seed differences to dense.

`tools/sweep_amgp.py` runs one learning rate per invocation; a fair comparison (issue 12) runs
every variant at every rate of a grid and reports each at its best. This reads the sweep files of
all rates, picks each variant's best rate (highest mean test AUC over seeds; the same held-out rows
choose and score, for every variant alike), pairs its seeds with dense's at dense's best rate, does
the same for the recurring-training stage where the runs have one (the recurring stage is scored at
the offline run's best rate), and writes the merged records, a markdown table and a plot of AUC
against training FLOPs (variants named NAME-80 are a lower FLOPs level of the same method).

    python tools/summarize_sweeps.py docs/results/sweep_lr*.json --out docs/results/amgp_fair_cpu_proxy.json \\
        --plot docs/results/amgp_auc_vs_flops_cpu_proxy.png
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from amgp_fx.amgp_report import best_per_method, plot_auc_vs_flops  # noqa: E402
from amgp_fx.fileio import atomic_write_json  # noqa: E402
from amgp_fx.paired_stats import describe_interval, paired_differences  # noqa: E402

# the plot's series: sweep_amgp's variants by the method they run, a FLOPs level per point
# (NAME-80: 80% of the steps pruned instead of 60%)
SERIES = {"grow-late-lossless": "AMGP (amgp-grow-late)", "grow-late-80": "AMGP (amgp-grow-late)",
          "base": "AMGP (amgp-half)", "small-dense-80": "small-dense", "prune-only-80": "prune-only"}


def load_records(paths: list[str]) -> list[dict[str, Any]]:
    """Every sweep record of ``paths``, keyed for best_per_method by its variant (as ``method``)."""
    chosen: dict[tuple, dict[str, Any]] = {}
    for path in paths:
        for record in json.loads(Path(path).read_text()):
            key = (record["model"], record["variant"], record["lr"])
            # the same runs twice (a reference rerun beside other variants): keep the one with more seeds,
            # then the one that also has the recurring stage
            rank = (len(record["per_seed"]), "recurring_auc_mean" in record)
            if key not in chosen or rank > chosen[key][0]:
                chosen[key] = (rank, {**record, "method": record["variant"], "kind": record["method"]})
    return [record for _, record in chosen.values()]


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """best_per_method's choice per variant, plus recurring-stage pairs, FLOPs relative to dense
    and whether the grid brackets the chosen rate (a best rate at either end of the grid is not)."""
    best = best_per_method(records)
    dense = next((r for r in best if r["method"] == "dense"), None)
    for record in best:
        rates = [g["lr"] for g in record["lr_grid"]]
        record["lr_bracketed"] = len(rates) >= 3 and min(rates) < record["lr"] < max(rates)
        if dense is None:
            continue
        record["flops_vs_dense"] = record["train_flops"] / dense["train_flops"]
        if record is not dense and "recurring_auc" in record["per_seed"][0] and "recurring_auc" in dense["per_seed"][0]:
            ours = {run["seed"]: run["recurring_auc"] for run in record["per_seed"]}
            base = {run["seed"]: run["recurring_auc"] for run in dense["per_seed"]}
            record["recurring_paired_vs_dense"] = paired_differences(ours, base)
            record["recurring_flops_vs_dense"] = (statistics.fmean(run["recurring_flops"] for run in record["per_seed"])
                                                  / statistics.fmean(run["recurring_flops"] for run in dense["per_seed"]))
    return best


def final_size(record: dict[str, Any]) -> str:
    """What offline training hands on: full-size (dense, AMGP), compact (prune-only) or small."""
    kind = record["kind"]
    if kind == "prune_only":
        return f"compact ({record['per_seed'][0]['width_final']:.2f} width)"
    if kind == "small_dense":
        return f"small ({record.get('width_scale', float('nan')):.2f} width)"
    return "full-size"


def table(best: list[dict[str, Any]]) -> str:
    """The markdown table of docs/benchmarks.md."""
    from tabulate import tabulate

    rows = []
    for r in best:
        grid = ", ".join(f"{g['lr']:g}: {g['auc_mean']:.4f}" for g in r["lr_grid"])
        pair = r.get("paired_vs_dense")
        vs = (f"{pair['mean']:+.4f} +- {pair['std']:.4f} ({', '.join(f'{d:+.4f}' for d in pair['per_seed'])})"
              if pair else "0")
        wins = f"{pair['wins']}/{pair['seeds']}, {describe_interval(pair)}" if pair else ""
        rec = r.get("recurring_paired_vs_dense")
        recurring = (f"{rec['mean']:+.4f} ({', '.join(f'{d:+.4f}' for d in rec['per_seed'])})" if rec
                     else (f"{r['recurring_auc_mean']:.4f}" if "recurring_auc_mean" in r else ""))
        rows.append([r["method"], f"{r['lr']:g}{'' if r['lr_bracketed'] else ' (edge)'}", grid,
                     f"{r['auc_mean']:.4f} +- {r['auc_std']:.4f}", vs, wins,
                     f"{r.get('flops_vs_dense', float('nan')):.2f}", recurring,
                     f"{r['recurring_flops_vs_dense']:.2f}" if "recurring_flops_vs_dense" in r else "", final_size(r)])
    headers = ["variant", "best lr", "mean AUC per lr", "test AUC", "paired vs dense (per seed)", "wins, verdict",
               "FLOPs vs dense", "recurring stage vs dense (per seed)", "recurring FLOPs vs dense", "model after"]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def plot(best: list[dict[str, Any]], path: str, title: str) -> None:
    """AUC against FLOPs, a variant's FLOPs levels joined as one series."""
    series = [{**r, "method": SERIES.get(r["method"], r["method"])} for r in best]
    plot_auc_vs_flops(series, path, title=title)


def main(argv=None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="sweep_amgp.py output files, one or more learning rates each")
    parser.add_argument("--out", required=True, help="merged JSON: each variant at its best rate")
    parser.add_argument("--plot", default=None, help="PNG of AUC against training FLOPs")
    parser.add_argument("--title", default="CPU proxy of the DLRM benchmark, each variant at its best lr")
    args = parser.parse_args(argv)
    best = summarize(load_records(args.files))
    atomic_write_json(Path(args.out), best)
    print(table(best))
    if args.plot:
        plot(best, args.plot, args.title)
        print(f"wrote {args.plot}")
    return best


if __name__ == "__main__":
    main()

"""Result files of a run: results.json, results.md (the tables), cases.csv (one line per row and
case, and per structure); and, for --all-sources, the paper's Table 1 layout (rows x source
domain, then the average).

Numbers in the Markdown tables are Dice in percent.
"""
from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

from sammed_fast.atomic import write_text_atomic
from sammed_fast.experiment.run_folder import RunPaths

__all__ = ["results_table", "write_results", "all_sources_table", "write_all_sources", "seeds_summary",
           "write_seeds_summary"]

CASE_FIELDS = ("row", "split", "domain", "case_id", "dice3d", "dice2d_mean", "slices")
#: a run with C > 1 structures adds this column: "mean" on the lines results.json averages (the
#: mean over the structures), a structure's name on that structure's own lines
STRUCTURE_FIELD = "structure"


def _count_word(n: int) -> str:
    return {5: "five"}.get(n, str(n))


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def results_table(results: dict, metric: str = "dice3d") -> str:
    """Markdown table: one line per row, one column per domain (source = its test split), then the
    mean over the target domains."""
    source, columns = results["source"], results["columns"]
    header = ["method", *(f"{d} (source test)" if d == source else d for d in columns), "target avg"]
    body = [[entry["label"], *(_pct(entry[metric][d]) for d in columns), _pct(entry[metric]["target_mean"])]
            for entry in results["rows"].values()]
    return _table(header, body)


def structures_table(results: dict, metric: str = "dice3d") -> str:
    """Markdown table of a multi-structure run: one line per row and structure, one column per
    domain, then the target mean (the rows' own numbers are the mean over the structures)."""
    source, columns = results["source"], results["columns"]
    header = ["method", "structure", *(f"{d} (source test)" if d == source else d for d in columns),
              "target avg"]
    body = [[entry["label"], name, *(_pct(s[metric][d]) for d in columns), _pct(s[metric]["target_mean"])]
            for entry in results["rows"].values() for name, s in entry.get("structures", {}).items()]
    return _table(header, body)


def _sweep_table(results: dict) -> str:
    columns = results["columns"]
    header = ["theta2", *columns, "target avg (3D)", "target avg (2D)"]
    body = [[theta, *(_pct(s["dice3d"][d]) for d in columns), _pct(s["dice3d"]["target_mean"]),
             _pct(s["dice2d"]["target_mean"])] for theta, s in results["theta2_sweep"].items()]
    return _table(header, body)


def _fraction(value: float) -> str:
    return "n/a" if value != value else f"{value:.2f}"


def _structure(results: dict) -> str:
    """What the labels mark: "prostate" for the six-site preset, else "foreground"."""
    return "foreground" if "labels" in results else "prostate"


def boxes_table(results: dict) -> str:
    """Markdown table of the box diagnostics: one line per split and prompt kind."""
    marked = _structure(results)
    header = ["split", "domain", "boxes", "IoU with GT box", "area / GT area", f"{marked} slices without box",
              f"boxes on slices without {marked}"]
    body = []
    for split, entry in results["boxes"].items():
        for kind, d in entry.items():
            if kind == "domain":
                continue
            body.append([split, entry["domain"], kind, _fraction(d["iou"]), _fraction(d["area_ratio"]),
                         f"{_fraction(d['missed'])} of {d['prostate_slices']}",
                         f"{_fraction(d['boxes_without_prostate'])} of {d['boxes']}"])
    return _table(header, body)


def results_markdown(results: dict) -> str:
    src = results["source"]
    case = "image" if results.get("case_unit") == "image" else "3D volume"  # 2D data: one image per case
    selection = results.get("selection", {})
    lines = [
        f"# sammed_fast results: source domain {src}, targets {', '.join(results['targets'])}",
        "",
        f"SAM: {results['sam']} with {results.get('sam_scaling', 'sam')} input scaling, tile "
        f"{results['tile_size']} px (2x2 canvas), segmenter "
        f"{results['segmenter']}, theta1 {results['theta1']}, downscale {results['downscale']}, "
        f"theta2 {results['theta2']}, empty-box policy '{results['empty_box']}', seed {results['seed']}; "
        f"the decoder was fine-tuned with {results.get('decoder_prompts', 'filtered')} boxes.",
    ]
    if "data_form" in results:  # a dataset description (the six-site release and synthetic set: prostate)
        lines.append(f"Data: {results['data']} ({results['data_form']} description); structures "
                     f"{results['labels']}.")
    lines += [f"**Note:** {note}." for note in results.get("notes", [])]
    for name, info in selection.items():
        lines.append(f"{name} selected on source val: epoch {info['best_epoch'] + 1}, "
                     f"val Dice {_pct(info['val_dice'])}.")
    lines += ["", f"## Dice per {case} (%), primary", "", results_table(results, "dice3d"), "",
              "## Dice per 2D slice (%), pooled over each domain's slices where truth or "
              f"prediction has {_structure(results)}", "",
              results_table(results, "dice2d"), "",
              *([f"## Dice per {case} (%) of each structure (the tables above average them)", "",
                 structures_table(results, "dice3d"), ""]
                if all("structures" in e for e in results["rows"].values()) else []),
              *(["## Dice per 2x2 mosaic (%), the paper's own metric (secondary; not comparable "
                 "to the 3D Dice)", "", results_table(results, "dice_mosaic"), ""]
                if all("dice_mosaic" in e for e in results["rows"].values()) else []),
              f"## theta2 sweep of SAM + filtered boxes (Dice per {case}, %)", "",
              _sweep_table(results), ""]
    if "boxes" in results:
        lines += ["## Box prompts against the ground-truth box (tile frame; IoU and area over slices "
                  f"with {_structure(results)} and a box)", "", boxes_table(results), ""]
    return "\n".join(lines)


def write_results(paths: RunPaths, results: dict, cases: list[dict]) -> None:
    """Writes a run's results.json, results.md and cases.csv."""
    write_text_atomic(paths.results_json, json.dumps(results, indent=2) + "\n")
    write_text_atomic(paths.results_md, results_markdown(results))
    buffer = io.StringIO()
    fields = CASE_FIELDS + ((STRUCTURE_FIELD,) if any(STRUCTURE_FIELD in case for case in cases) else ())
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for case in cases:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in case.items()})
    write_text_atomic(paths.cases_csv, buffer.getvalue())


def all_sources_table(per_source: dict[str, dict], metric: str = "dice3d") -> str:
    """The paper's Table 1: each row's target-mean Dice per source domain, then their average."""
    sources = list(per_source)
    first = next(iter(per_source.values()))
    body = []
    for row, entry in first["rows"].items():
        values = [per_source[s]["rows"][row][metric]["target_mean"] for s in sources]
        body.append([entry["label"], *map(_pct, values), _pct(sum(values) / len(values))])
    return _table(["method", *sources, "avg"], body)


def write_all_sources(out: Path, per_source: dict[str, dict]) -> None:
    summary = {
        "sources": list(per_source),
        "rows": {row: {"label": entry["label"],
                       **{m: {s: per_source[s]["rows"][row][m]["target_mean"] for s in per_source}
                          for m in ("dice3d", "dice2d")}}
                 for row, entry in next(iter(per_source.values()))["rows"].items()},
    }
    for entry in summary["rows"].values():
        for m in ("dice3d", "dice2d"):
            entry[m]["avg"] = sum(entry[m].values()) / len(per_source)
    write_text_atomic(out / "results.json", json.dumps(summary, indent=2) + "\n")
    text = ["# sammed_fast: every source domain (the paper's Table 1 layout)", "",
            f"Each column trains on that domain and reports the mean Dice over the other "
            f"{_count_word(len(per_source) - 1)}.", "",
            "## Dice per 3D volume (%)", "", all_sources_table(per_source, "dice3d"), "",
            "## Dice per 2D slice (%)", "", all_sources_table(per_source, "dice2d"), ""]
    write_text_atomic(out / "results.md", "\n".join(text))


def _mean_std(values: list[float]) -> dict:
    """Mean and sample standard deviation (n - 1; 0 for a single value)."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def seeds_summary(per_seed: dict[int, dict]) -> dict:
    """results.json of a --seeds run: per row, metric and column (every domain and target_mean), the
    per-seed values with their mean and sample std; and the method's gain over the segmenter."""
    first = next(iter(per_seed.values()))
    columns = [*first["columns"], "target_mean"]
    rows = {}
    for row, entry in first["rows"].items():
        rows[row] = {"label": entry["label"]}
        for metric in ("dice3d", "dice2d"):
            rows[row][metric] = {}
            for column in columns:
                values = [per_seed[seed]["rows"][row][metric][column] for seed in per_seed]
                rows[row][metric][column] = {"per_seed": values, **_mean_std(values)}
    gains = [r["rows"]["sam_filtered"]["dice3d"]["target_mean"] - r["rows"]["segmenter"]["dice3d"]["target_mean"]
             for r in per_seed.values()]
    return {"source": first["source"], "targets": first["targets"], "columns": first["columns"],
            "seeds": list(per_seed), "std": "sample standard deviation over the seeds (n - 1)",
            "rows": rows, "method_gain_over_segmenter": {"per_seed": gains, **_mean_std(gains)}}


def write_seeds_summary(out: Path, per_seed: dict[int, dict]) -> dict:
    """Writes results.json and results.md of a --seeds run (see :func:`seeds_summary`)."""
    summary = seeds_summary(per_seed)
    seeds, columns = summary["seeds"], [*summary["columns"], "target_mean"]
    write_text_atomic(out / "results.json", json.dumps(summary, indent=2) + "\n")

    def cell(stats: dict) -> str:
        return f"{_pct(stats['mean'])} ± {_pct(stats['std'])}"

    per_seed_table = _table(["method", *(f"seed {s}" for s in seeds), "mean ± std"],
                            [[e["label"], *map(_pct, e["dice3d"]["target_mean"]["per_seed"]),
                              cell(e["dice3d"]["target_mean"])] for e in summary["rows"].values()])
    source = summary["source"]
    domain_table = _table(["method", *(f"{c} (source test)" if c == source else
                                       ("target avg" if c == "target_mean" else c) for c in columns)],
                          [[e["label"], *(cell(e["dice3d"][c]) for c in columns)]
                           for e in summary["rows"].values()])
    gain = summary["method_gain_over_segmenter"]
    text = [f"# sammed_fast: source {source}, seeds {', '.join(map(str, seeds))}", "",
            "Dice per 3D volume (%), mean over the target domains; mean ± sample std over the seeds.", "",
            per_seed_table, "",
            "The method (SAM + filtered boxes) against the segmenter alone, target average: "
            + ", ".join(f"seed {s}: {100 * g:+.2f}" for s, g in zip(seeds, gain["per_seed"]))
            + f"; mean {100 * gain['mean']:+.2f} ± {100 * gain['std']:.2f} points.", "",
            "## Per domain (Dice per 3D volume, %, mean ± std over the seeds)", "", domain_table, ""]
    write_text_atomic(out / "results.md", "\n".join(text))
    return summary

"""Result files of a run: results.json, results.md (the tables), cases.csv (one line per row and
case); and, for --all-sources, the paper's Table 1 layout (rows x source domain, then the average).

Numbers in the Markdown tables are Dice in percent.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from sammed_fast.atomic import write_text_atomic

__all__ = ["results_table", "write_results", "all_sources_table", "write_all_sources"]

CASE_FIELDS = ("row", "split", "domain", "case_id", "dice3d", "dice2d_mean", "slices")


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


def _sweep_table(results: dict) -> str:
    columns = results["columns"]
    header = ["theta2", *columns, "target avg (3D)", "target avg (2D)"]
    body = [[theta, *(_pct(s["dice3d"][d]) for d in columns), _pct(s["dice3d"]["target_mean"]),
             _pct(s["dice2d"]["target_mean"])] for theta, s in results["theta2_sweep"].items()]
    return _table(header, body)


def results_markdown(results: dict) -> str:
    src = results["source"]
    selection = results.get("selection", {})
    lines = [
        f"# sammed_fast results: source domain {src}, targets {', '.join(results['targets'])}",
        "",
        f"SAM: {results['sam']}, tile {results['tile_size']} px (2x2 canvas), segmenter "
        f"{results['segmenter']}, theta1 {results['theta1']}, downscale {results['downscale']}, "
        f"theta2 {results['theta2']}, empty-box policy '{results['empty_box']}', seed {results['seed']}; "
        f"the decoder was fine-tuned with {results.get('decoder_prompts', 'filtered')} boxes.",
    ]
    for name, info in selection.items():
        lines.append(f"{name} selected on source val: epoch {info['best_epoch'] + 1}, "
                     f"val Dice {_pct(info['val_dice'])}.")
    lines += ["", "## Dice per 3D volume (%), primary", "", results_table(results, "dice3d"), "",
              "## Dice per 2D slice (%), pooled over each domain's slices where truth or "
              "prediction has prostate", "",
              results_table(results, "dice2d"), "",
              "## theta2 sweep of SAM + filtered boxes (Dice per 3D volume, %)", "",
              _sweep_table(results), ""]
    return "\n".join(lines)


def write_results(run_path: Path, results: dict, cases: list[dict]) -> list[str]:
    """Writes results.json, results.md and cases.csv; returns their names."""
    write_text_atomic(run_path / "results.json", json.dumps(results, indent=2) + "\n")
    write_text_atomic(run_path / "results.md", results_markdown(results))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CASE_FIELDS, lineterminator="\n")
    writer.writeheader()
    for case in cases:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in case.items()})
    write_text_atomic(run_path / "cases.csv", buffer.getvalue())
    return ["results.json", "results.md", "cases.csv"]


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
            "Each column trains on that domain and reports the mean Dice over the other five.", "",
            "## Dice per 3D volume (%)", "", all_sources_table(per_source, "dice3d"), "",
            "## Dice per 2D slice (%)", "", all_sources_table(per_source, "dice2d"), ""]
    write_text_atomic(out / "results.md", "\n".join(text))

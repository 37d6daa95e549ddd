"""One table from a pytest-benchmark JSON file: case, ours, best peer, ratio, target, notes.

    python -m pytest benchmarks --benchmark-json RESULT.json
    python -m benchmarks.report RESULT.json [--stat median|min|mean]

One row per benchmark group (an op at one size and input), ordered by op, device and size. "ours"
is the case with role "ours", "best peer" the fastest case with role "peer"; ratio = best peer's
time / ours (above 1: ours is faster). A "floor" case (a plain copy of the output's bytes) is shown
in the notes as ours / floor. Targets are the project's goals, read from ours' extra_info, and are
reported as met or short, never asserted. Prints markdown.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

OP_ORDER = ("largest_component", "boxes_from_probs", "merge_tiles", "unmerge_tiles", "pipeline", "decoder_epoch")
STATS = ("median", "min", "mean")


def load(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark result not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not JSON: {error}") from error
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise ValueError(f"{path} is not pytest-benchmark output (no 'benchmarks' list); "
                         "write it with `pytest benchmarks --benchmark-json FILE`")
    return data


def fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds * 1e9:.3g} ns"


def fmt_ratio(ratio: float) -> str:
    return f"{ratio:.3g}x" if math.isfinite(ratio) else "-"


def sort_key(row: dict) -> tuple:
    info = row["ours"]["extra_info"] if row["ours"] else row["cases"][0]["extra_info"]
    op = info.get("op", "")
    return (OP_ORDER.index(op) if op in OP_ORDER else len(OP_ORDER), info.get("device", ""),
            info.get("pixels", 0), info.get("side", 0), info.get("tile", 0), row["group"])


def groups(data: dict, stat: str) -> list[dict]:
    by_group: dict[str, list[dict]] = {}
    for case in data["benchmarks"]:
        case = dict(case, time=float(case["stats"][stat]))
        by_group.setdefault(case.get("group") or case["name"], []).append(case)
    rows = []
    for group, cases in by_group.items():
        def role(name):
            return [c for c in cases if c.get("extra_info", {}).get("role") == name]
        ours, peers, floors = role("ours"), role("peer"), role("floor")
        rows.append(dict(group=group, cases=cases, ours=ours[0] if ours else None,
                         peer=min(peers, key=lambda c: c["time"]) if peers else None,
                         peers=peers, floor=floors[0] if floors else None))
    return sorted(rows, key=sort_key)


def impl_name(case: dict) -> str:
    return str(case.get("extra_info", {}).get("impl") or case["name"])


def target_text(row: dict) -> str:
    ours = row["ours"]
    if ours is None:
        return ""
    info, parts = ours["extra_info"], []
    want = info.get("target_ratio")
    if want is not None:
        name = info.get("target_peer", "best")
        peer = row["peer"] if name == "best" else next((c for c in row["peers"] if impl_name(c) == name), None)
        label = "best peer" if name == "best" else name
        if peer is None:
            parts.append(f">= {want:g}x {label}: no peer measured")
        else:
            ratio = peer["time"] / ours["time"]
            parts.append(f">= {want:g}x {label}: {'met' if ratio >= want else 'short'} ({fmt_ratio(ratio)})")
    if info.get("target_max_s") is not None:
        limit = float(info["target_max_s"])
        parts.append(f"< {fmt_time(limit)}: {'met' if ours['time'] < limit else 'short'}")
    if info.get("target_max_outside_share") is not None and "outside_encoder_share" in info:
        limit, share = float(info["target_max_outside_share"]), float(info["outside_encoder_share"])
        parts.append(f"outside encoder < {100 * limit:g}%: {'met' if share < limit else 'short'} ({100 * share:.1f}%)")
    if info.get("target_floor_ratio") is not None and row["floor"] is not None:
        limit, ratio = float(info["target_floor_ratio"]), ours["time"] / row["floor"]["time"]
        parts.append(f"<= {limit:g}x copy: {'met' if ratio <= limit else 'short'} ({fmt_ratio(ratio)})")
    return "; ".join(parts)


def notes_text(row: dict) -> str:
    ours = row["ours"]
    if ours is None:
        return "no 'ours' case"
    info, notes = ours["extra_info"], []
    if info.get("ours_impl") and info["ours_impl"] != "compiled":
        notes.append(f"ours = {info['ours_impl']}")
    if info.get("pixels"):
        notes.append(f"{info['pixels'] / ours['time'] / 1e6:.3g} Mpx/s")
    if info.get("slices"):
        rate = info["slices"] / ours["time"]
        text = f"{rate:.3g} slices/s"
        if row["peer"] is not None:
            text += f" vs {info['slices'] / row['peer']['time']:.3g} ({impl_name(row['peer'])})"
        notes.append(text)
    if row["floor"] is not None:
        notes.append(f"copy floor {fmt_time(row['floor']['time'])}")
    if "box_shift_mean_px" in info:
        notes.append(f"boxes vs d1: mean {info['box_shift_mean_px']:g} px, max {info['box_shift_max_px']:g} px, "
                     f"{100 * info['boxes_changed']:.0f}% changed")
    for case in ([ours] + ([row["peer"]] if row["peer"] is not None else [])):
        extra = case["extra_info"]
        who = impl_name(case)
        if "outside_encoder_share" in extra:
            notes.append(f"{who}: {100 * extra['outside_encoder_share']:.1f}% outside encoder")
        if "peak_mem_mb" in extra:
            notes.append(f"{who}: peak GPU mem {extra['peak_mem_mb']:g} MB")
        if "peak_rss_above_start_mb" in extra:
            notes.append(f"{who}: peak RSS +{extra['peak_rss_above_start_mb']:g} MB")
    if "cache_build_s" in info:
        notes.append(f"cache build {fmt_time(float(info['cache_build_s']))}")
    return "; ".join(notes)


def table(data: dict, stat: str = "median") -> str:
    if stat not in STATS:
        raise ValueError(f"stat must be one of {STATS}, got {stat!r}")
    lines = ["| case | ours | best peer | ratio | target | notes |", "|---|---|---|---|---|---|"]
    for row in groups(data, stat):
        ours, peer = row["ours"], row["peer"]
        ours_text = fmt_time(ours["time"]) if ours else "-"
        peer_text = f"{fmt_time(peer['time'])} ({impl_name(peer)})" if peer else "-"
        ratio = peer["time"] / ours["time"] if ours and peer else float("nan")
        case = row["group"].replace("|", "\\|")
        lines.append(f"| {case} | {ours_text} | {peer_text} | {fmt_ratio(ratio)} | "
                     f"{target_text(row)} | {notes_text(row)} |")
    return "\n".join(lines)


def header(data: dict, stat: str) -> str:
    machine = data.get("machine_info", {})
    cpu = machine.get("cpu", {})
    brand = cpu.get("brand_raw") or machine.get("processor") or "unknown CPU"
    threads = sorted({b.get("extra_info", {}).get("threads") for b in data["benchmarks"]} - {None})
    return (f"{data.get('datetime', 'unknown date')}, {brand} ({cpu.get('count', '?')} logical CPUs), "
            f"python {machine.get('python_version', '?')}, torch threads {threads or '?'}; "
            f"{stat} of the timed rounds; ratio = best peer / ours (above 1: ours faster)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("result", help="JSON written by `pytest benchmarks --benchmark-json FILE`")
    parser.add_argument("--stat", choices=STATS, default="median", help="statistic of the rounds (default median)")
    args = parser.parse_args(argv)
    try:
        data = load(args.result)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(header(data, args.stat))
    print()
    print(table(data, args.stat))
    return 0


if __name__ == "__main__":
    sys.exit(main())

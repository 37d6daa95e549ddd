"""The main job as Python calls it: :func:`train` (one run, one run per seed, or one run per source)
and :func:`evaluate` (a finished run re-evaluated). The commands of ``sammed_fast.cli`` parse
arguments and call these."""
from __future__ import annotations

import json
from pathlib import Path

from sammed_fast.experiment import distributed
from sammed_fast.experiment.config import STAGES, TrainConfig
from sammed_fast.experiment.devices import resolve_device
from sammed_fast.experiment.pipeline import evaluate_run, preflight, run_pipeline
from sammed_fast.experiment.report import write_all_sources, write_seeds_summary
from sammed_fast.experiment.run_folder import RunPaths, check_writable_run_folder, mark_run_folder

__all__ = ["train", "evaluate", "finished"]


def train(config: TrainConfig) -> Path:
    """Runs the whole job described by ``config``; returns the run folder (for --all-sources, the
    folder holding one run per source and the summary table). Under torchrun every process calls
    it with the same config: they share the work and rank 0 writes."""
    with distributed.session(resolve_device(config.device)):
        if config.all_sources:
            return _train_all_sources(config)
        if config.seeds is not None:
            return _train_seeds(config)
        return run_pipeline(config)


def _claim_folder(out: Path) -> None:
    """Marks ``out``, which holds several runs and their summary, as ours (never a foreign folder)."""
    def claim() -> None:
        check_writable_run_folder(out, option="--out")
        mark_run_folder(out)

    distributed.main_only(claim)


def finished(config: TrainConfig) -> bool:
    return config.stop_after is None or config.stop_after == STAGES[-1]


def _train_seeds(config: TrainConfig) -> Path:
    out = config.resolved().out
    _claim_folder(out)
    runs = {seed: config.for_seed(seed, out / f"seed_{seed}") for seed in config.seeds}
    for run in runs.values():
        preflight(run)
    per_seed = {}
    for seed, run in runs.items():
        path = run_pipeline(run)
        if finished(config):
            per_seed[seed] = json.loads(RunPaths(path).results_json.read_text())
    if per_seed and distributed.is_main():
        write_seeds_summary(out, per_seed)
    return out


def _train_all_sources(config: TrainConfig) -> Path:
    out = config.resolved().out
    _claim_folder(out)
    sources = list(config.domains)
    for source in sources:  # every bad input is reported before the first run starts
        preflight(config.for_source(source, out / f"source_{source}"))
    per_source = {}
    for source in sources:
        path = run_pipeline(config.for_source(source, out / f"source_{source}"))
        if not finished(config):
            continue
        per_source[source] = json.loads(RunPaths(path).results_json.read_text())
    if len(per_source) == len(sources) and distributed.is_main():
        write_all_sources(out, per_source)
    return out


def evaluate(run: str | Path, *, device: str = "auto", progress: bool = True) -> dict:
    """The results of re-evaluating run folder ``run`` (also written into it: results.json,
    results.md, cases.csv, figure.png); the numbers equal the run's own evaluation."""
    return evaluate_run(run, device=device, progress=progress)

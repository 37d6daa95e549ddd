"""The run folder: config.json, state.json (finished stages, for --resume), atomic checkpoints
(latest and best), a log file and TensorBoard scalars.

Layout::

    config.json            the TrainConfig, resolved
    state.json             {"stages": {name: {"finished": iso time, "outputs": [...], "info": {...}}}}
    train.log              timestamped messages
    checkpoints/           <name>_latest.pt (resume) and <name>_best.pt (selected on source val)
    tensorboard/           event files
    predictions/ boxes/ cache/ results.json results.md cases.csv figure.png   (written by stages)

Every file is written to a temporary name in its folder and renamed into place, so an interrupted
write never leaves a complete-looking file; a stage counts as finished only once state.json says so
and its outputs exist.

Under torchrun every rank holds a RunFolder of the same folder, but only rank 0 writes (``writes``):
on the other ranks the writing methods keep the state in memory and touch no file, and starting or
finishing a stage is a barrier, so a stage's files are complete before any rank reads them.
"""
from __future__ import annotations

import datetime as _dt
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sammed_fast.atomic import save_torch_atomic, write_text_atomic
from sammed_fast.engine import distributed
from sammed_fast.engine.config import STAGES, ConfigError, TrainConfig

__all__ = ["RunFolder", "load_torch"]

#: Everything a run writes; removed when a run folder is started over (never anything else).
MANAGED = ("config.json", "state.json", "train.log", "checkpoints", "predictions", "boxes", "cache",
           "tensorboard", "results.json", "results.md", "cases.csv", "figure.png", "sam_base.pth",
           "sam_base.json")


def load_torch(path: Path) -> Any:
    """torch.load with weights_only=True onto the CPU; a damaged file names itself."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zips, foreign pickles
        raise ConfigError(f"cannot read {path} ({type(error).__name__}: {error}); delete it and "
                          "run again with --resume to recompute it") from error


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="milliseconds")


class RunFolder:
    """One run folder (see module docs). Build it with :meth:`open`."""

    def __init__(self, *, path: Path, config: TrainConfig) -> None:
        self.path = Path(path)
        self.config = config
        self.writes = distributed.is_main()  # False on the other ranks of a torchrun launch
        self._writer = None
        self._state = self._read_state()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, config: TrainConfig) -> "RunFolder":
        """Creates, resumes (config.resume) or starts over the folder ``config.out`` (rank 0; the
        other ranks open it once rank 0 is done).

        Resuming checks that the stored config matches in everything that changes results. A
        folder that exists but was not written by a run is never touched.
        """
        verb = distributed.main_only(lambda: cls._prepare(config))
        run = cls(path=Path(config.out), config=config)
        run.log(f"{verb} {run.path}")
        return run

    @staticmethod
    def _prepare(config: TrainConfig) -> str:
        """Checks, clears or creates the folder and writes config.json; returns what was done."""
        path = Path(config.out)
        if path.exists() and not path.is_dir():
            raise ConfigError(f"--out {path} exists and is not a folder")
        ours = (path / "config.json").is_file() or (path / "state.json").is_file()
        if path.is_dir() and any(path.iterdir()) and not ours:
            raise ConfigError(f"--out {path} exists, is not empty and is not a sammed_fast run folder; "
                              "choose another --out")
        if ours and config.resume:
            old = TrainConfig.read(path / "config.json")
            diffs = config.differences(old)
            if diffs:
                raise ConfigError(f"--resume: run folder {path} was made with other settings "
                                  f"({'; '.join(diffs)}); run without --resume to start over, or "
                                  "choose another --out")
        elif ours:
            for name in MANAGED:
                target = path / name
                if target.is_dir():
                    shutil.rmtree(target)
                else:
                    target.unlink(missing_ok=True)
        path.mkdir(parents=True, exist_ok=True)
        config.write(path / "config.json")
        return "resuming" if ours and config.resume else ("starting over in" if ours else "new run in")

    # ------------------------------------------------------------------ stage state
    def _read_state(self) -> dict:
        try:
            state = json.loads((self.path / "state.json").read_text())
        except (OSError, ValueError):
            return {"stages": {}}
        return state if isinstance(state.get("stages"), dict) else {"stages": {}}

    def _write_state(self) -> None:
        if self.writes:
            write_text_atomic(self.path / "state.json", json.dumps(self._state, indent=2) + "\n")

    def is_finished(self, stage: str) -> bool:
        """True when ``stage`` finished and every output it listed still exists."""
        record = self._state["stages"].get(stage)
        return bool(record) and all((self.path / rel).exists() for rel in record.get("outputs", []))

    def stage_info(self, stage: str) -> dict:
        record = self._state["stages"].get(stage)
        if record is None:
            raise ConfigError(f"{self.path}: stage {stage!r} has not finished; run "
                              f"`python -m sammed_fast.train --out {self.path} --resume` first")
        return record.get("info", {})

    def start_stage(self, stage: str, *, may_resume: bool) -> None:
        """Forgets ``stage`` and every later stage: their outputs will be rewritten. Checkpoints of
        later stages are deleted (their inputs change); this stage's own are kept when
        ``may_resume`` (an interrupted fit continues from its latest epoch)."""
        for later in STAGES[STAGES.index(stage):]:
            self._state["stages"].pop(later, None)
            if self.writes and (later != stage or not may_resume):
                for kind in ("latest", "best"):
                    self.checkpoint_path(later, kind).unlink(missing_ok=True)
        self._write_state()
        self.log(f"stage {stage}: running")
        distributed.barrier()

    def finish_stage(self, stage: str, *, outputs: list[str], info: dict | None = None) -> None:
        self._state["stages"][stage] = {"finished": _now(), "outputs": list(outputs), "info": info or {}}
        self._write_state()
        self.log(f"stage {stage}: finished")
        distributed.barrier()

    def finished_at(self, stage: str) -> str | None:
        record = self._state["stages"].get(stage)
        return record["finished"] if record else None

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_path(self, name: str, kind: str) -> Path:
        if kind not in ("latest", "best"):
            raise ValueError(f"kind must be 'latest' or 'best', got {kind!r}")
        return self.path / "checkpoints" / f"{name}_{kind}.pt"

    def save_checkpoint(self, name: str, kind: str, payload: dict) -> Path:
        path = self.checkpoint_path(name, kind)
        if self.writes:
            save_torch_atomic(path, payload)
        return path

    def load_checkpoint(self, name: str, kind: str) -> dict | None:
        path = self.checkpoint_path(name, kind)
        return load_torch(path) if path.is_file() else None

    # ------------------------------------------------------------------ log and scalars
    def log(self, message: str, *, echo: bool = True) -> None:
        if not self.writes:
            return
        line = f"{_now()} {message}"
        with open(self.path / "train.log", "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
        if echo:
            tqdm.write(message)

    def scalar(self, tag: str, value: float, step: int) -> None:
        """One TensorBoard scalar (the writer is created on first use)."""
        if not self.writes:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.path / "tensorboard"))
        self._writer.add_scalar(tag, float(value), step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

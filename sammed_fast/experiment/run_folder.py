"""The run folder: config.json, state.json (finished stages, for --resume), atomic checkpoints
(latest and best), a log file and TensorBoard scalars.

The layout is owned by :class:`RunPaths` (every path of a run folder comes from it, and the list of
entries a run manages derives from it)::

    .sammed_fast_run       marker: this folder is a sammed_fast run folder (JSON: tool, format, created)
    .lock                  held (fcntl.flock) by the one process that writes the folder
    config.json            the TrainConfig, resolved
    state.json             {"stages": {name: {"finished": iso time, "outputs": [...], "info": {...}}}}
    train.log              timestamped messages
    checkpoints/           <name>_latest.pt (resume) and <name>_best.pt (selected on source val)
    tensorboard/           event files
    predictions/<split>.pt coarse probabilities (float16) of every slice of a split
    boxes/<split>.pt       box prompts of every kind
    cache/embeddings_<split>.pt   canvas embeddings of the frozen SAM encoder (float16)
    sam_base.pth/.json     SAM base weights made for this run (compact_pretrain_steps only)
    results.json results.md cases.csv figure.png   the evaluation

Only a folder with the marker is ever cleared or rewritten: ``--out`` naming a non-empty folder
without it (another tool's, or a run of a sammed_fast version older than the marker) is refused and
left untouched. Starting over deletes exactly the entries listed in ``MANAGED``. A run, and a
re-evaluation, hold the lock from the moment they open the folder until they close it; a second
process that tries to open a locked folder is refused at once with the holder's pid.

Every file is written to a temporary name in its folder and renamed into place, so an interrupted
write never leaves a complete-looking file; a stage counts as finished only once state.json says so
and its outputs exist.

Under torchrun every rank holds a RunFolder of the same folder, but only rank 0 writes (``writes``):
on the other ranks the writing methods keep the state in memory and touch no file, and starting or
finishing a stage is a barrier, so a stage's files are complete before any rank reads them.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sammed_fast.atomic import save_torch_atomic, write_text_atomic
from sammed_fast.experiment import distributed
from sammed_fast.errors import ConfigError
from sammed_fast.experiment.config import STAGES, TrainConfig

__all__ = ["RunFolder", "RunLock", "RunPaths", "load_torch", "is_run_folder", "MARKER", "LOCK"]

#: The file that marks a folder as a sammed_fast run folder, and the lock file.
MARKER, LOCK = ".sammed_fast_run", ".lock"
MARKER_FORMAT = 1
CHECKPOINT_KINDS = ("latest", "best")


@dataclasses.dataclass(frozen=True)
class RunPaths:
    """Every path of the run folder ``root`` (see the module docs for the layout)."""

    root: Path

    @property
    def marker(self) -> Path:
        return self.root / MARKER

    @property
    def lock(self) -> Path:
        return self.root / LOCK

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def log(self) -> Path:
        return self.root / "train.log"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    def checkpoint(self, name: str, kind: str) -> Path:
        """checkpoints/<name>_<kind>.pt; kind "latest" (resume) or "best" (selected on source val)."""
        if kind not in CHECKPOINT_KINDS:
            raise ValueError(f"kind must be one of {CHECKPOINT_KINDS}, got {kind!r}")
        return self.root / "checkpoints" / f"{name}_{kind}.pt"

    def predictions(self, split: str) -> Path:
        return self.root / "predictions" / f"{split}.pt"

    def boxes(self, split: str) -> Path:
        return self.root / "boxes" / f"{split}.pt"

    @property
    def embeddings_dir(self) -> Path:
        return self.root / "cache"

    def embeddings(self, split: str) -> Path:
        return self.embeddings_dir / f"embeddings_{split}.pt"

    @property
    def sam_base(self) -> Path:
        """The SAM base weights a run made for itself (``compact_pretrain_steps``); the sidecar of
        a pretrained one sits next to it with the suffix .json."""
        return self.root / "sam_base.pth"

    @property
    def results_json(self) -> Path:
        return self.root / "results.json"

    @property
    def results_md(self) -> Path:
        return self.root / "results.md"

    @property
    def cases_csv(self) -> Path:
        return self.root / "cases.csv"

    @property
    def figure(self) -> Path:
        return self.root / "figure.png"

    @property
    def evaluation(self) -> tuple[Path, ...]:
        """What the evaluate stage writes."""
        return self.results_json, self.results_md, self.cases_csv, self.figure

    def relative(self, path: Path) -> str:
        return str(Path(path).relative_to(self.root))

    @classmethod
    def managed(cls) -> tuple[str, ...]:
        """The top-level entries a run writes (never the marker or the lock): exactly what starting
        a run folder over removes."""
        paths = cls(Path("."))
        every = [paths.config, paths.state, paths.log, paths.tensorboard, paths.checkpoint("x", "best"),
                 paths.predictions("x"), paths.boxes("x"), paths.embeddings("x"), paths.sam_base,
                 paths.sam_base.with_suffix(".json"), *paths.evaluation]
        return tuple(dict.fromkeys(path.parts[0] for path in every))


#: Everything a run writes; removed when a run folder is started over (never anything else).
MANAGED = RunPaths.managed()


def load_torch(path: Path) -> Any:
    """torch.load with weights_only=True onto the CPU; a damaged file names itself."""
    from sammed_fast.files import load_torch_file

    return load_torch_file(path, error=ConfigError, message="cannot read {path} ({reason}); delete it and "
                                                            "run again with --resume to recompute it")


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="milliseconds")


def is_run_folder(path: Path) -> bool:
    """True when ``path`` carries the sammed_fast run-folder marker."""
    try:
        marker = json.loads(RunPaths(Path(path)).marker.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("tool") == "sammed_fast"


def check_writable_run_folder(path: Path, *, option: str) -> None:
    """Refuses (ConfigError) a ``path`` that sammed_fast must not write into: a file, or a
    non-empty folder without the run-folder marker."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} exists and is not a folder")
    if path.is_dir() and not is_run_folder(path) and any(path.iterdir()):
        raise ConfigError(
            f"{option} {path} exists, is not empty and is not a sammed_fast run folder (it has no "
            f"{MARKER} marker), so nothing in it is touched; choose another {option} or an empty "
            "folder (run folders of sammed_fast versions before the marker must be rerun elsewhere)")


def mark_run_folder(path: Path) -> None:
    """Creates ``path`` if needed and writes the run-folder marker into it."""
    path.mkdir(parents=True, exist_ok=True)
    marker = {"tool": "sammed_fast", "format": MARKER_FORMAT, "created": _now()}
    write_text_atomic(RunPaths(path).marker, json.dumps(marker) + "\n")


class RunLock:
    """An exclusive, non-blocking lock on a run folder (``fcntl.flock`` on its ``.lock`` file).

    The kernel drops it when the process ends, however it ends, so a killed run never leaves a
    stale lock behind; the file itself stays and records the last holder's pid."""

    def __init__(self, handle) -> None:
        self._handle = handle

    @classmethod
    def acquire(cls, folder: Path) -> "RunLock":
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(RunPaths(folder).lock, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise ConfigError(f"run folder {folder} is in use by another process (pid {holder}); "
                              "wait for it to finish, or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return cls(handle)

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


class RunFolder:
    """One run folder (see module docs). Build it with :meth:`open`."""

    def __init__(self, *, path: Path, config: TrainConfig) -> None:
        self.path = Path(path)
        self.paths = RunPaths(self.path)
        self.config = config
        self.writes = distributed.is_main()  # False on the other ranks of a torchrun launch
        self._writer = None
        self._lock: RunLock | None = None
        self._state = self._read_state()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, config: TrainConfig) -> "RunFolder":
        """Creates, resumes (config.resume) or starts over the folder ``config.out`` (rank 0; the
        other ranks open it once rank 0 is done), holding its lock until :meth:`close`.

        Resuming checks that the stored config matches in everything that changes results. A
        folder that exists but is not marked as a run folder is never touched.
        """
        lock = None

        def prepare() -> str:
            nonlocal lock
            check_writable_run_folder(Path(config.out), option="--out")
            lock = RunLock.acquire(Path(config.out))
            try:
                return cls._prepare(config)
            except BaseException:
                lock.release()
                raise

        verb = distributed.main_only(prepare)
        run = cls(path=Path(config.out), config=config)
        run._lock = lock
        run.log(f"{verb} {run.path}")
        return run

    @staticmethod
    def _prepare(config: TrainConfig) -> str:
        """Checks, clears or creates the (locked) folder and writes config.json; returns what was done."""
        path = Path(config.out)
        ours = is_run_folder(path)
        if ours and config.resume:
            if not RunPaths(path).config.is_file():
                raise ConfigError(f"--resume: run folder {path} has no config.json (its run was "
                                  "interrupted while starting); run without --resume to start over")
            old = TrainConfig.read(RunPaths(path).config)
            diffs = config.differences(old)
            if diffs:
                raise ConfigError(f"--resume: run folder {path} was made with other settings "
                                  f"({'; '.join(diffs)}); run without --resume to start over, or "
                                  "choose another --out")
        elif ours:
            for name in MANAGED:
                target = path / name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                else:
                    target.unlink(missing_ok=True)
        else:
            mark_run_folder(path)
        config.write(RunPaths(path).config)
        return "resuming" if ours and config.resume else ("starting over in" if ours else "new run in")

    @classmethod
    def open_existing(cls, path: Path, config: TrainConfig) -> "RunFolder":
        """An existing run folder opened to rewrite its evaluation; rank 0 holds its lock until
        :meth:`close`."""
        lock = None

        def acquire() -> None:
            nonlocal lock
            lock = RunLock.acquire(path)

        distributed.main_only(acquire)
        run = cls(path=path, config=config)
        run._lock = lock
        return run

    # ------------------------------------------------------------------ stage state
    def _read_state(self) -> dict:
        try:
            state = json.loads(self.paths.state.read_text())
        except (OSError, ValueError):
            return {"stages": {}}
        return state if isinstance(state.get("stages"), dict) else {"stages": {}}

    def _write_state(self) -> None:
        if self.writes:
            write_text_atomic(self.paths.state, json.dumps(self._state, indent=2) + "\n")

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

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_path(self, name: str, kind: str) -> Path:
        return self.paths.checkpoint(name, kind)

    def save_checkpoint(self, name: str, kind: str, payload: dict) -> Path:
        path = self.checkpoint_path(name, kind)
        if self.writes:
            save_torch_atomic(path, payload)
        return path

    def load_checkpoint(self, name: str, kind: str) -> dict | None:
        path = self.checkpoint_path(name, kind)
        return load_torch(path) if path.is_file() else None

    def load_best_weights(self, name: str, module: torch.nn.Module) -> None:
        """Loads ``checkpoints/<name>_best.pt`` into ``module``. A missing file, or one that holds
        another model's weights (e.g. a segmenter's where the decoder's belong), is a ConfigError
        naming the file."""
        path = self.checkpoint_path(name, "best")
        best = self.load_checkpoint(name, "best")
        if best is None:
            raise ConfigError(f"{path} is missing; finish the run with "
                              f"`python -m sammed_fast.train --out {self.path} --resume`")
        weights = best.get("model") if isinstance(best, dict) else None
        if not isinstance(weights, dict):
            raise ConfigError(f"{path}: not a sammed_fast {name} checkpoint (no 'model' weights)")
        try:
            module.load_state_dict(weights)
        except (RuntimeError, KeyError, TypeError, ValueError) as error:
            summary = " ".join(str(error).split())[:300]
            raise ConfigError(f"{path}: does not hold the weights of this run's {name} ({summary}); "
                              "was the file replaced? Rerun the stage with --resume after deleting "
                              "it") from error

    # ------------------------------------------------------------------ log and scalars
    def log(self, message: str, *, echo: bool = True) -> None:
        if not self.writes:
            return
        line = f"{_now()} {message}"
        with open(self.paths.log, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
        if echo:
            tqdm.write(message)

    def scalar(self, tag: str, value: float, step: int) -> None:
        """One TensorBoard scalar (the writer is created on first use)."""
        if not self.writes:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.paths.tensorboard))
        self._writer.add_scalar(tag, float(value), step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

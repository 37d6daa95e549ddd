"""torchrun entry of tests/test_distributed.py: runs a module as ``python -m`` would and records every
file this rank creates, changes, renames or removes under a watched folder.

    python -m torch.distributed.run --nproc_per_node=2 tests/torchrun_audit.py \\
        WATCHED RECORDS MODULE [ARGS...]

Each rank writes RECORDS/rank<RANK>.json at exit: a list of [event, path] (paths under WATCHED
only), from Python's audit hooks (``open`` for writing, ``os.rename``/``os.replace``,
``os.remove``, ``os.rmdir``, ``os.mkdir``).
"""
from __future__ import annotations

import atexit
import json
import os
import runpy
import sys

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
PATH_EVENTS = {"os.remove": 0, "os.rmdir": 0, "os.mkdir": 0, "os.rename": 1}


def main() -> None:
    watched, records, module, *args = sys.argv[1:]
    watched = os.path.realpath(watched)
    seen: list[list[str]] = []

    def under_watched(path) -> str | None:
        if not isinstance(path, (str, bytes, os.PathLike)):
            return None  # a file descriptor
        full = os.path.realpath(os.fsdecode(path))
        return full if full == watched or full.startswith(watched + os.sep) else None

    def hook(event: str, event_args: tuple) -> None:
        if event == "open" and event_args[2] & WRITE_FLAGS:
            path = under_watched(event_args[0])
        elif event in PATH_EVENTS:
            path = under_watched(event_args[PATH_EVENTS[event]])
        else:
            return
        if path is not None:
            seen.append([event, path])

    def dump() -> None:
        os.makedirs(records, exist_ok=True)
        with open(os.path.join(records, f"rank{os.environ.get('RANK', '0')}.json"), "w") as handle:
            json.dump(seen, handle)

    atexit.register(dump)
    sys.addaudithook(hook)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()

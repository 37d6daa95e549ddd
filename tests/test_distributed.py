"""The main job under torchrun: two CPU processes (gloo) against one.

A tiny run (3 cases per domain, targets B and C, tile 32) with a compact SAM pretrained for a few
steps by the module fixture (so that SAM's masks are not empty and the numbers can differ) runs once
in this process and once as `torchrun --nproc_per_node=2`, interrupted after the predict stage and
resumed. Both must write the same files, and rank 1 none of them (recorded by
tests/torchrun_audit.py). The two-process `python -m sammed_fast.evaluate` of a finished run must
give exactly the numbers (and recompute exactly the SAM embeddings) of the one-process evaluation.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sammed_fast
from sammed_fast.experiment import distributed
from sammed_fast.errors import ConfigError
from sammed_fast.experiment.devices import resolve_device
from sammed_fast.experiment.fitting import shuffled_batches
from sammed_fast.cli.evaluate import main as evaluate_main
from sammed_fast.experiment.pretraining import PretrainConfig, pretrain_compact_sam
from sammed_fast.cli.train import main as train_main

AUDIT = Path(__file__).with_name("torchrun_audit.py")
TORCHRUN_TIMEOUT = 300  # seconds; a two-process run of the tiny job takes about 10 s


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("distributed")


@pytest.fixture(scope="module")
def tiny_args(work) -> list[str]:
    """A tiny job whose numbers are not all zero: a compact SAM pretrained for 400 steps, boxes
    from a low theta1."""
    sam = work / "compact_sam_tile32.pth"
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        pretrain_compact_sam(config=PretrainConfig(tile_size=32, steps=400, lr=1e-3, canvases_per_step=2,
                                                   warmup_steps=20, heldout_slices=8),
                             out=sam, progress=False)
    finally:
        torch.set_num_threads(threads)
    return ["--cache-dir", str(work / "cache"), "--synthetic-cases", "3", "--targets", "BC",
            "--tile-size", "32", "--segmenter-epochs", "6", "--segmenter-lr", "0.01", "--theta1", "0.3",
            "--decoder-epochs", "2", "--box-jitter", "2", "--sam-checkpoint", str(sam),
            "--device", "cpu", "--no-progress"]


def torchrun(module: str, args: list[str], *, watched: Path, records: Path) -> dict[int, list]:
    """Runs ``module`` in two gloo processes; returns each rank's file writes under ``watched``."""
    package_parent = str(Path(sammed_fast.__file__).resolve().parents[1])
    # The package under test, also when CI runs the installed one through plain `pytest`.
    python_path = os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=python_path)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    shutil.rmtree(records, ignore_errors=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(AUDIT), str(watched), str(records), module, *args]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=TORCHRUN_TIMEOUT)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return {rank: json.loads((records / f"rank{rank}.json").read_text()) for rank in (0, 1)}


def run_files(path: Path) -> set[str]:
    """The run folder's files, relative; TensorBoard event files named by their folder only."""
    return {str(p.parent.relative_to(path) / "events") if p.name.startswith("events.out.tfevents")
            else str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def runs(work, tiny_args) -> dict[str, Path]:
    """The same job in one process and, interrupted after `predict` and resumed, in two."""
    one, two = work / "runs" / "one", work / "runs" / "two"
    train_main(tiny_args + ["--out", str(one)])
    first = torchrun("sammed_fast.train", tiny_args + ["--out", str(two), "--stop-after", "predict"],
                     watched=work / "runs", records=work / "records_first")
    second = torchrun("sammed_fast.train", tiny_args + ["--out", str(two), "--resume"],
                      watched=work / "runs", records=work / "records_second")
    return {"one": one, "two": two, "writes": {"first": first, "second": second}}


def test_two_process_training_completes_and_only_rank_0_writes(runs):
    one, two = runs["one"], runs["two"]
    assert run_files(two) == run_files(one)
    assert len(list((two / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one per launch
    state = json.loads((two / "state.json").read_text())["stages"]
    assert list(state) == ["segmenter", "predict", "boxes", "decoder", "evaluate"]
    assert state["segmenter"]["info"]["processes"] == 2 and state["decoder"]["info"]["processes"] == 2
    results = json.loads((two / "results.json").read_text())
    assert results["rows"]["sam_gt"]["dice3d"]["target_mean"] > 0.3, "SAM must produce masks here"

    for launch, writes in runs["writes"].items():
        assert writes[1] == [], f"rank 1 wrote files ({launch} launch): {writes[1][:5]}"
        written = {Path(path).name for _, path in writes[0]}
        assert "state.json" in written and "train.log" in written, launch  # the audit sees writes
    assert "predictions" in {Path(path).parent.name for _, path in runs["writes"]["first"][0]}
    assert "results.json" in {Path(path).name for _, path in runs["writes"]["second"][0]}

    log = (two / "train.log").read_text().splitlines()
    messages = [line.split(" ", 1)[1] for line in log]
    assert messages.count("stage segmenter: running") == 1 and messages.count("stage evaluate: finished") == 1
    assert any("2 processes (torchrun)" in m for m in messages)
    assert any(m == "stage segmenter: already finished, skipped" for m in messages)
    epochs = [m for m in messages if m.startswith("segmenter epoch ")]
    assert len(epochs) == 6, "each epoch is logged once, by rank 0"


def test_two_process_evaluation_equals_one_process_evaluation(runs, work):
    """Both evaluations recompute the SAM embeddings (cache deleted): encoder, decoder and scoring
    all run sharded in the two-process one."""
    single, double = work / "eval_one", work / "eval_two"
    for copy in (single, double):
        shutil.copytree(runs["two"], copy)
        shutil.rmtree(copy / "cache")
        (copy / "results.json").unlink()
    assert evaluate_main(["--run", str(single), "--device", "cpu", "--no-progress"]) == 0
    results = json.loads((single / "results.json").read_text())
    # --run-dir: torchrun's own parser takes --run for an abbreviation of its --run-path.
    writes = torchrun("sammed_fast.evaluate", ["--run-dir", str(double), "--device", "cpu", "--no-progress"],
                      watched=double, records=work / "records_eval")
    assert writes[1] == [] and writes[0]

    assert json.loads((double / "results.json").read_text()) == results
    for name in ("results.json", "results.md", "cases.csv"):
        assert (double / name).read_bytes() == (single / name).read_bytes(), name
    assert results == json.loads((runs["two"] / "results.json").read_text())
    for split in ("test", "B", "C"):
        ours = torch.load(double / "cache" / f"embeddings_{split}.pt", weights_only=True)
        reference = torch.load(single / "cache" / f"embeddings_{split}.pt", weights_only=True)
        assert ours["key"] == reference["key"]
        assert torch.equal(ours["embeddings"], reference["embeddings"]), split
    dice3d = [float(line.split(",")[4]) for line in (double / "cases.csv").read_text().splitlines()[1:]]
    assert any(0 < value < 1 for value in dice3d), "the compared numbers must not all be 0 or 1"


# --------------------------------------------------------------------------- small parts
@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("n", [0, 1, 2, 5, 13, 64])
def test_shards_cover_every_item_exactly_once(n, world_size):
    contiguous = [distributed.shard_indices(n, rank=r, world_size=world_size) for r in range(world_size)]
    assert [i for part in contiguous for i in part] == list(range(n))  # rank order = item order
    assert max(map(len, contiguous)) - min(map(len, contiguous)) <= 1
    strided = [distributed.shard_indices(n, strided=True, rank=r, world_size=world_size)
               for r in range(world_size)]
    assert sorted(i for part in strided for i in part) == list(range(n))
    padded = [distributed.shard_indices(n, strided=True, pad=True, rank=r, world_size=world_size)
              for r in range(world_size)]
    assert len({len(part) for part in padded}) == 1, "every rank gets as many items"
    flat = [i for part in padded for i in part]
    assert set(flat) == set(range(n)) and len(flat) == (-(-n // world_size) * world_size if n else 0)
    items = [f"item {i}" for i in range(n)]
    for r in range(world_size):
        assert distributed.shard(items, rank=r, world_size=world_size) == [items[i] for i in contiguous[r]]


def test_shard_arguments_are_checked():
    with pytest.raises(ValueError, match="rank"):
        distributed.shard_indices(4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="strided"):
        distributed.shard_indices(4, pad=True, rank=0, world_size=2)


def test_epoch_batches_split_between_ranks():
    """One rank: the permutation cut into batches. Two ranks: the same permutation, shared out,
    as many batches on each rank, every slice trained on."""
    def batches(world_size: int, rank: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(3)
        return [b.tolist() for b in shuffled_batches(21, 4, generator, rank=rank, world_size=world_size)]

    permutation = torch.randperm(21, generator=torch.Generator().manual_seed(3)).tolist()
    single = batches(1, 0)
    assert [i for b in single for i in b] == permutation
    assert [len(b) for b in single] == [4, 4, 4, 4, 5]  # a last batch of one joins the previous one
    ranks = [batches(2, r) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1])
    assert [i for b in ranks[0] for i in b] == permutation[0::2]
    assert set(i for part in ranks for b in part for i in b) == set(range(21))


def test_single_process_helpers_need_no_process_group():
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    assert distributed.map_sharded(lambda x: x * x, range(5)) == [0, 1, 4, 9, 16]
    assert distributed.main_only(lambda: "done") == "done"
    assert distributed.mean_over_ranks(0.25) == 0.25 and distributed.all_ranks(True)
    module = torch.nn.Linear(2, 2)
    assert distributed.wrap(module, torch.device("cpu")) is module
    with distributed.session(torch.device("cpu")):
        assert not torch.distributed.is_initialized()


def test_gpu_per_rank_and_its_errors(monkeypatch):
    """Under torchrun a CUDA run gives each rank cuda:LOCAL_RANK, and says so when there are too
    few GPUs (simulated: the check needs no GPU)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("auto") == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(ConfigError, match=r"LOCAL_RANK 2.*only 2 CUDA device\(s\).*--nproc_per_node=2"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="pass --device cuda"):
        resolve_device("cuda:0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)

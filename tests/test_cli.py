"""The commands: the ``sammed-fast`` entry point, parsers built from the config fields, and the one
error convention (``error: <message>`` and exit 2 for bad input, tracebacks only for bugs)."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import sammed_fast
import sammed_fast.cli
from sammed_fast.cli import COMMANDS, command
from sammed_fast.cli import main as dispatch
from sammed_fast.cli.train import build_parser, config_from_args
from sammed_fast.cli.train import main as train_main
from sammed_fast.errors import ConfigError
from sammed_fast.experiment.config import TrainConfig
from sammed_fast.options import option_fields

REPO = Path(__file__).resolve().parents[1]
#: The folder holding the package under test: subprocesses import the same one.
PACKAGE_ROOT = Path(sammed_fast.__file__).resolve().parents[1]

#: `python -m sammed_fast.train --help` before its parser was generated from TrainConfig, and
#: --labels (a dataset description's label table).
TRAIN_FLAGS = {
    "--data", "--source", "--targets", "--labels", "--all-sources", "--tile-size", "--cache-dir", "--synthetic-cases",
    "--segmenter", "--segmenter-weights", "--segmenter-epochs", "--segmenter-batch", "--segmenter-lr",
    "--theta1", "--filter-cells", "--downscale", "--empty-box", "--precision", "--compile", "--sam",
    "--sam-checkpoint", "--sam-scaling", "--decoder-epochs", "--decoder-batch", "--decoder-lr",
    "--decoder-prompts", "--crossfit-folds", "--box-jitter", "--box-noise", "--embedding-cache", "--theta2",
    "--compact-pretrain-steps", "--out", "--resume", "--seed", "--seeds", "--device", "--threads",
    "--stop-after", "--no-progress",
}


def run_module(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


# --------------------------------------------------------------------------- the entry point
def test_pyproject_declares_the_dispatcher_as_the_script():
    tomllib = pytest.importorskip("tomllib")
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, attribute = scripts["sammed-fast"].partition(":")
    target = getattr(importlib.import_module(module), attribute)
    assert callable(target) and target is dispatch


def test_help_lists_every_command_on_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        dispatch(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: sammed-fast")
    for name in COMMANDS:
        summary = importlib.import_module(f"sammed_fast.cli.{name}").SUMMARY
        assert any(line.split() == [name, *summary.split()] for line in out.splitlines()), name


def test_python_m_sammed_fast_runs_a_command(tmp_path):
    proc = run_module("sammed_fast", "train", "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m sammed_fast train ") and "--decoder-prompts" in proc.stdout


# --------------------------------------------------------------------------- parsers from config fields
def test_train_flags_are_those_of_before():
    parser = build_parser()
    assert parser.prog == "python -m sammed_fast.train"
    assert {flag for action in parser._actions for flag in action.option_strings} - {"-h", "--help"} == TRAIN_FLAGS
    assert {action.dest for action in parser._actions} - {"help"} == {f.name for f in option_fields(TrainConfig)}


def test_every_train_option_defaults_to_the_config_default(monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # progress bars stay on, as on a terminal
    parsed, default = config_from_args(build_parser().parse_args([])), TrainConfig()
    for field in option_fields(TrainConfig):
        assert getattr(parsed, field.name) == getattr(default, field.name), field.name


def test_train_options_keep_their_types_and_nargs():
    config = config_from_args(build_parser().parse_args(
        ["--seeds", "0", "1", "2", "--targets", "BCD", "--no-progress", "--box-noise", "0.1", "--compile"]))
    assert config.seeds == (0, 1, 2) and config.targets == ("B", "C", "D")
    assert config.progress is False and config.box_noise == 0.1 and config.compile is True


# --------------------------------------------------------------------------- one error convention
@pytest.mark.parametrize("argv", [
    ["train", "--source", "Q"],
    ["evaluate", "--run", "/nonexistent"],
    ["predict", "--run", "/nonexistent", "--input", "x", "--output", "y"],
    ["pretrain", "--steps", "0"],
    ["pretrain", "--targets-per-image", "0"],
    ["synthetic", "--out", "set", "--cases", "0"],
], ids=lambda argv: argv[0])
def test_bad_input_is_one_error_line_and_exit_2(argv, tmp_path):
    proc = run_module("sammed_fast", *argv, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert any(line.startswith("error: ") for line in proc.stderr.splitlines()), proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_other_ranks_exit_2_without_a_message(monkeypatch, capsys):
    monkeypatch.setattr(sammed_fast.cli, "is_main", lambda: False)
    assert train_main(["--source", "Q"]) == 2
    assert capsys.readouterr().err == ""


def test_interrupts_exit_130_and_bugs_keep_their_traceback(capsys):
    def interrupted() -> int:
        raise KeyboardInterrupt

    def bug() -> int:
        raise RuntimeError("a bug")

    def bad_input() -> int:
        raise ConfigError("--thing: bad")

    assert command(resumable=True)(interrupted)() == 130
    assert "plus --resume" in capsys.readouterr().err
    assert command()(bad_input)() == 2
    assert capsys.readouterr().err == "error: --thing: bad\n"
    with pytest.raises(RuntimeError, match="a bug"):
        command()(bug)()

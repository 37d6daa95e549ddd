"""The commands: ``sammed-fast train | evaluate | predict | pretrain | synthetic`` (also
``python -m sammed_fast <command>`` and ``python -m sammed_fast.<command>``). Each parses its
arguments and calls one typed function.

Every command's ``main(argv, prog) -> int`` follows one error convention (:func:`command`): bad
input (ConfigError) prints ``error: <message>`` and exits 2, as argparse's usage errors do; Ctrl-C
exits 130; any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import sys
from typing import Callable, Sequence

from sammed_fast.errors import ConfigError
from sammed_fast.experiment.distributed import is_main

__all__ = ["COMMANDS", "command", "main"]

#: The commands, each a module sammed_fast.cli.<name> with SUMMARY and main(argv, prog).
COMMANDS = ("train", "evaluate", "predict", "pretrain", "synthetic")

Main = Callable[..., int]


def command(*, resumable: bool = False) -> Callable[[Main], Main]:
    """Decorates a command's main with the error convention: a ConfigError prints ``error:
    <message>`` on stderr (rank 0 only under torchrun) and returns 2; Ctrl-C prints a short note
    (how to resume, for a ``resumable`` command) and returns 130."""
    interrupted = "interrupted; continue with the same command plus --resume" if resumable else "interrupted"

    def decorate(main: Main) -> Main:
        @functools.wraps(main)
        def main_with_exit_codes(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except ConfigError as error:
                if is_main():  # rank 0 prints the message for every rank
                    print(f"error: {error}", file=sys.stderr)
                return 2
            except KeyboardInterrupt:
                print(f"\n{interrupted}", file=sys.stderr)
                return 130

        return main_with_exit_codes

    return decorate


def main(argv: Sequence[str] | None = None, prog: str = "sammed-fast") -> int:
    """``sammed-fast <command> [args]``: runs the command's main on the remaining arguments."""
    modules = {name: importlib.import_module(f"sammed_fast.cli.{name}") for name in COMMANDS}
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="SAM-based single-source domain generalisation for medical image segmentation.",
        epilog="commands (each has its own --help):\n" + "\n".join(
            f"  {name:<10} {module.SUMMARY}" for name, module in modules.items()))
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                        help="one of the commands below")
    for name in COMMANDS:
        subcommands.add_parser(name, add_help=False)  # the command parses its own arguments
    args, command_argv = parser.parse_known_args(argv)
    return modules[args.command].main(command_argv, prog=f"{prog} {args.command}")

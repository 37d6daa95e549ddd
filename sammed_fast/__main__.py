"""``python -m sammed_fast <command> [args]``: the same as ``sammed-fast <command> [args]``."""
import sys

from sammed_fast.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m sammed_fast"))

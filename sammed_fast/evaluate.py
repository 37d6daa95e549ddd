"""``python -m sammed_fast.evaluate``: re-evaluate a finished run (the command lives in ``sammed_fast.cli.evaluate``;
``sammed-fast evaluate`` is the same command)."""
import sys

from sammed_fast.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())

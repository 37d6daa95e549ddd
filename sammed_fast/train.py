"""``python -m sammed_fast.train``: the main job (the command lives in ``sammed_fast.cli.train``;
``sammed-fast train`` is the same command)."""
import sys

from sammed_fast.cli.train import main

if __name__ == "__main__":
    sys.exit(main())

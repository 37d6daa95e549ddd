"""``python -m sammed_fast.predict``: apply a finished run to new volumes (the command lives in ``sammed_fast.cli.predict``;
``sammed-fast predict`` is the same command)."""
import sys

from sammed_fast.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())

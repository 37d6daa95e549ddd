"""``python -m sammed_fast.pretrain``: pretrain the compact SAM (the command lives in ``sammed_fast.cli.pretrain``;
``sammed-fast pretrain`` is the same command)."""
import sys

from sammed_fast.cli.pretrain import main

if __name__ == "__main__":
    sys.exit(main())

"""The commands: ``sammed-fast train | evaluate | predict | pretrain | synthetic`` (also
``python -m sammed_fast.<command>``). Each parses its arguments and calls one typed function."""

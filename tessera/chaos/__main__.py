"""`python -m tessera.chaos`: a chaos run of any length, or a saved history checked again."""

from __future__ import annotations

import argparse
import sys

from tessera.chaos.command import add_arguments, run_from_arguments


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tessera.chaos", description=__doc__)
    add_arguments(parser)
    return run_from_arguments(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

"""The `tessera` command."""

from __future__ import annotations

import argparse
import platform
import sys

import tessera
from native import codec, crc, walframe


def build_info() -> dict[str, str]:
    """What this installation runs on: versions and the compiled hot path's choices."""
    return {
        "tessera": tessera.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "crc32c kernel": crc.KERNEL,
        "native modules": ", ".join(module.__name__ for module in (crc, codec, walframe)),
    }


def command_version(_: argparse.Namespace) -> int:
    for name, value in build_info().items():
        print(f"{name}: {value}")
    return 0


def command_up(args: argparse.Namespace) -> int:
    command_version(args)
    # The local cluster (meta group, data groups, router) is not built yet: say so
    # plainly instead of pretending to serve.
    print(
        "tessera up: the local cluster and router are not available in this build yet; "
        "the native hot path and write-ahead log above are installed and working.",
        file=sys.stderr,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tessera", description=tessera.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("version", help="print version and native build info").set_defaults(
        run=command_version
    )
    commands.add_parser("up", help="start a local cluster and router on 127.0.0.1").set_defaults(
        run=command_up
    )
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

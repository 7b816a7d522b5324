"""The ``geo4d`` command. Each subcommand group lives in its own module of this package and
exposes ``register(subparsers)``; heavy imports (torch, prefect, …) happen inside the handlers."""

from __future__ import annotations

import argparse
import importlib
import sys

from geo4d.errors import Geo4DError

# Modules providing subcommands, in help order.
COMMAND_MODULES = (
    "geo4d_cli.synth",        # synth
    "geo4d_cli.reconstruct",  # reconstruct, fuse, demo
    "geo4d_cli.model",        # check-fixture, context
    "geo4d_cli.metrics",      # metrics poses|depth, evaluate
    "geo4d_cli.archive",      # archive, status
    "geo4d_cli.export",       # export
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geo4d", description="Geo4D: monocular video → 4D geometry")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except Geo4DError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``geo4d`` command. Each subcommand group lives in its own module of this package and
exposes ``register(subparsers)``; heavy imports (torch, prefect, …) happen inside the handlers."""

from __future__ import annotations

import argparse
import importlib
import sys

from geo4d.errors import Geo4DError, LeaseHeldError
from tasks.progress import close_console

# Modules providing subcommands, in help order.
COMMAND_MODULES = (
    "geo4d_cli.synth",        # synth
    "geo4d_cli.reconstruct",  # reconstruct, fuse, demo
    "geo4d_cli.model",        # check-fixture, context
    "geo4d_cli.metrics",      # metrics poses|depth, evaluate
    "geo4d_cli.archive",      # archive, status
    "geo4d_cli.export",       # export
    "geo4d_cli.verify",       # verify
    "geo4d_cli.report",       # report
    "geo4d_cli.view",         # view
    "geo4d_cli.train",        # train
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geo4d", description="Geo4D: monocular video → 4D geometry")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    _show_defaults(parser)
    return parser


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Every (sub)command: its one-line help as its description, and each option's default shown."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                sub.formatter_class = argparse.ArgumentDefaultsHelpFormatter
                sub.description = sub.description or helps.get(name)
                _show_defaults(sub)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = _run(args)
    except LeaseHeldError as exc:  # another writer has the video (`geo4d reconstruct --no-wait`)
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except Geo4DError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `geo4d … | head`: the reader is gone; stop quietly (the store stays consistent)
        _silence_stdout()
        return 141
    except OSError as exc:  # permission denied, disk full, read-only store …: one line, not a traceback
        print(f"error: {os_error_line(exc, getattr(args, 'store', None))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


def _run(args: argparse.Namespace) -> int | None:
    """The subcommand, with any open progress line closed (and its heartbeat stopped) when it ends."""
    try:
        return args.func(args)
    finally:
        close_console()


def os_error_line(exc: OSError, store: str | None = None) -> str:
    """``<path>: <problem>`` of an operating-system error: the path it names, else the store the command
    writes (a write deep inside Zarr names no file), else its message."""
    path = exc.filename if exc.filename is not None else store
    if path is not None and exc.strerror:
        return f"{path}: {exc.strerror[0].lower()}{exc.strerror[1:]}"
    return str(exc)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot raise again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

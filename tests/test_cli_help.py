"""Every ``geo4d`` subcommand and option explains itself in ``--help``."""

from __future__ import annotations

import argparse

from geo4d_cli import build_parser


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("geo4d",)):
    """(command path, parser) for the parser and every nested subcommand."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, path + (name,))


def _undocumented(parser: argparse.ArgumentParser) -> list[str]:
    missing = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if not action.help or action.help == argparse.SUPPRESS:
            missing.append("/".join(action.option_strings) or action.dest)
    return missing


def test_every_subcommand_has_a_description():
    bare = [" ".join(path) for path, parser in list(_walk(build_parser()))[1:] if not parser.description]
    assert bare == [], f"subcommands without a help line: {bare}"


def test_every_option_and_argument_has_help():
    missing = {" ".join(path): m for path, parser in _walk(build_parser()) if (m := _undocumented(parser))}
    assert missing == {}, f"options without help text: {missing}"


def test_help_shows_defaults():
    parsers = {" ".join(path): parser for path, parser in _walk(build_parser())}
    text = parsers["geo4d reconstruct"].format_help()
    assert "--resize" in text and "(default:" in text


def test_walk_reaches_nested_subcommands():
    names = {" ".join(path) for path, _ in _walk(build_parser())}
    assert {"geo4d metrics poses", "geo4d metrics depth", "geo4d export", "geo4d archive"} <= names

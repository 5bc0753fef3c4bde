"""The ``otf2d`` command: a dispatcher that finds subcommands without importing them.

Each subcommand is a module registered in the ``otf2d.commands`` entry-point group of
``pyproject.toml``. The module provides ``add_args(parser)`` and ``main(args) -> int``; its
docstring's first line is the one-line help and the whole docstring is the ``--help`` text.
Only the module of the subcommand that runs is imported, so ``otf2d stream`` never imports torch.
Command modules keep heavy imports (torch) inside ``main``.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

from otf2d.core import __version__
from otf2d.core.errors import Otf2dError
from otf2d.core.logsetup import LOG_FORMATS, configure_logging

GROUP = "otf2d.commands"


def _commands() -> dict[str, str]:
    """Subcommand name → module path, from the installed entry points."""
    return {ep.name: ep.value for ep in entry_points(group=GROUP)}


def _load(module_path: str) -> ModuleType:
    module = importlib.import_module(module_path)
    if not hasattr(module, "add_args") or not hasattr(module, "main"):
        raise RuntimeError(f"command module {module_path} lacks add_args() or main()")
    return module


def _summary(module_path: str) -> str:
    """First line of a command module's docstring, read from its source without importing it."""
    try:
        spec = importlib.util.find_spec(module_path)
        origin = spec.origin if spec is not None else None
        if origin is None or not origin.endswith(".py"):
            return ""
        doc = ast.get_docstring(ast.parse(Path(origin).read_text(encoding="utf-8"))) or ""
    except (ImportError, OSError, SyntaxError, ValueError):
        return ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _top_parser(commands: dict[str, str]) -> argparse.ArgumentParser:
    width = max((len(name) for name in commands), default=0)
    listing = "\n".join(f"  {name:<{width}}  {_summary(commands[name])}".rstrip() for name in sorted(commands))
    parser = argparse.ArgumentParser(
        prog="otf2d",
        description="Streaming, on-the-fly 2D classification of cryo-EM particles.",
        epilog=f"commands:\n{listing}\n\nRun 'otf2d COMMAND --help' for the options of one command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"otf2d {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="auto",
        help="text, json (one object per line) or auto (default: text, without timestamps under journald)",
    )
    parser.add_argument("command", choices=sorted(commands), metavar="COMMAND", help="what to run")
    return parser


def _command_index(argv: Sequence[str]) -> int:
    """Index of the subcommand in ``argv``: the first word that is neither an option nor its value."""
    i = 0
    while i < len(argv):
        if argv[i] == "--log-format":
            i += 2
        elif argv[i].startswith("-"):
            i += 1
        else:
            return i
    return len(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``otf2d`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = _commands()
    # Split global options from the subcommand and its own arguments.
    split = _command_index(argv)
    top = _top_parser(commands)
    ns = top.parse_args(argv[: split + 1])
    configure_logging(logging.WARNING - 10 * min(ns.verbose + 1, 2), ns.log_format)
    module = _load(commands[ns.command])
    doc = (module.__doc__ or "").strip()
    parser = argparse.ArgumentParser(
        prog=f"otf2d {ns.command}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_args(parser)
    args = parser.parse_args(argv[split + 1 :])
    args.command_line = list(argv)  # the whole command line, for a command that starts copies of itself
    try:
        return int(module.main(args) or 0)
    except Otf2dError as exc:
        print(f"otf2d {ns.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"otf2d {ns.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

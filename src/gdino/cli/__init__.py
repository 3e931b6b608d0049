"""``gdino <command>``: argument parsing and error reporting only.

Each module of this package registers one command through ``register(subparsers)``; handlers
are short and import their heavy dependencies lazily so that ``gdino --help`` stays fast. A :class:`gdino.errors.GdinoError` (or a missing file, or an
interrupted job) ends the process with a one-line message and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from gdino.cli import convert, detect, export, label, segment, serve, track, train
from gdino.cli import eval as evaluate
from gdino.errors import GdinoError

#: modules whose ``register(subparsers)`` adds a command, in help order
COMMANDS = (detect, label, segment, track, evaluate, train, convert, export, serve)


def build_parser() -> argparse.ArgumentParser:
    """The full ``gdino`` parser with every registered sub-command."""
    parser = argparse.ArgumentParser(
        prog="gdino",
        description="Grounding DINO in pure PyTorch: detect, label, segment, track, evaluate, train, convert, export, serve.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        code = args.func(args)
    except GdinoError as err:
        print(f"gdino {args.command}: error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"gdino {args.command}: error: file not found: {err.filename or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gdino {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

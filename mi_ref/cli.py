"""The ``mi-ref`` command. Thin: it parses arguments, calls the library and prints results.

Every subcommand is a function ``_cmd_NAME(args) -> exit code`` registered in :func:`build_parser`.
A ``ValueError`` or ``FileNotFoundError`` raised by the library becomes a one-line message on stderr and
exit code 2; nothing is written before the inputs are validated.
"""

import argparse
import sys

from . import __version__


class CLIError(Exception):
    """A user error found by the CLI itself (reported like ValueError, exit code 2)."""


def build_parser():
    parser = argparse.ArgumentParser(
        prog="mi-ref",
        description="Reference implementation of 'On Mutual Information Maximization for Representation "
                    "Learning' (Tschannen et al., ICLR 2020).")
    parser.add_argument("--version", action="version", version=f"mi-ref {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CLIError, ValueError, FileNotFoundError) as err:
        print(f"mi-ref {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mi-ref {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

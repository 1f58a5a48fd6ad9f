"""What the commands of :mod:`mi_ref.cli` share: the error a command raises for a user's mistake, and the
notes it prints on stderr."""

import sys


class CLIError(Exception):
    """A user error found by the CLI itself (reported like ValueError, exit code 2)."""


def _warn(message):
    print(f"mi-ref: note: {message}", file=sys.stderr)

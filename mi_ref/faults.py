"""Fault injection for the tests: simulate a crash at a named point of a training loop or of a write.

``HOOK`` is None in normal use. A test sets it to a callable ``hook(point)`` that may raise (for example
``KeyboardInterrupt``) or kill the process (``os.kill(os.getpid(), SIGKILL)``) when ``point`` is reached:
"update" (before an optimizer step), "metrics" (inside a metrics append, before the line is written),
"metrics-torn" (in the middle of writing the line: half of it is on disk), "checkpoint", "arrays" and
"final" (before those files are written: a finished variant's final state is the last), "done" (before a
variant is recorded finished, after its final state is written) and "replace" (in an atomic write, after
the temporary file is complete and before it replaces the target).
"""

HOOK = None


def point(name):
    """Call :data:`HOOK` (if set) at the named point."""
    if HOOK is not None:
        HOOK(name)

"""Record the findings of the committed runs in the package, for ``mi-ref list``.

``mi-ref list`` shows, for every experiment and preset, whether its findings hold as last measured. This
script judges the run directories given (by default every run under ``figures/runs/``) with
:func:`mi_ref.verdicts.judge` and writes ``mi_ref/recorded_findings.json``. ``tests/test_figures.py``
judges the same runs again and fails if the recorded file differs, so it cannot go stale.

Usage::

    python scripts/record_findings.py                      # every run in figures/runs
    python scripts/record_findings.py figures/runs/critics-quick/seed-*
"""

import argparse
import sys
from pathlib import Path

from mi_ref.verdicts import RECORDED, record

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="*", help="run directories (default: figures/runs/*/seed-*)")
    parser.add_argument("--out", default=str(RECORDED), help=f"where to write (default {RECORDED})")
    args = parser.parse_args(argv)
    # sorted by path parts, in the order tests/test_figures.py judges them
    run_dirs = args.run_dirs or [str(p) for p in sorted((ROOT / "figures" / "runs").glob("*/seed-*"))]
    path = record(run_dirs, args.out)
    print(f"recorded the verdicts of {len(run_dirs)} runs in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

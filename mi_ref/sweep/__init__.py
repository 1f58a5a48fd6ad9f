"""Sweeps: many seeds of one experiment, each (seed, variant) an independent task, run by local worker
processes or on a Dask cluster, with the numbers of a serial ``mi-ref run``.

Layout. A sweep writes the run directories of ``mi-ref run`` (``OUT/RUN_NAME/seed-S``, one per seed, see
:mod:`mi_ref.results`). Every task (one unit of :attr:`mi_ref.experiments.Experiment.units` of one seed: a
variant, or the pixel-baseline row) runs in a task directory of its own,
``OUT/RUN_NAME/.tasks/seed-S/UNIT`` (a run directory holding that unit only, with its checkpoints; its log
beside it as ``UNIT.log`` for local workers, and a ``heartbeat.json`` saying the step its training is at,
rewritten every 10 s, from which the sweep's progress lines count the steps between evaluations). When the
task is finished, the sweep's driver (the process that runs ``mi-ref sweep``) merges it into the seed's run
directory under that directory's lock: the seed's metrics.jsonl is rewritten atomically with the unit's rows
in the experiment's order of units, the unit is marked done, the task directory is removed. A seed directory
therefore only ever holds finished units; once all are merged it is the directory a serial run writes (row
for row, wall times aside).

Faults. A task that dies (its process killed, its Dask worker lost) is run again and resumes from its last
checkpoint in its task directory; a finished task waiting for its merge is merged, not run again; a
finished unit is skipped. So an interrupted sweep continues with the same command, and a unit computed
twice (two sweeps at once) is written once: a task directory is locked by the process running it, and a
second task on it waits for the lock and then finds the unit finished.

Determinism. A unit's random streams depend on (seed, its index among the experiment's units) only
(:mod:`mi_ref.loop`), so a task computes the same rows as the serial run of that seed with the same number
of BLAS threads. Each task runs with its BLAS and numba threads pinned (threadpoolctl; ``threads``).

Executors. ``jobs`` local worker processes (``spawn``ed, each running one task at a time handed to it by
the driver, so the task of a dead worker is known exactly and retried), or a Dask cluster:
``scheduler="tcp://HOST:PORT"`` (or a ``dask.distributed.Client``) whose workers share the output
directory's filesystem and have mi-ref installed. Dask is imported only then (``pip install "mi-ref[dask]"``).

The modules:

* :mod:`mi_ref.sweep.tasks`: what a task is (its key, directories and order), running one, merging it,
  and the driver's progress lines and bookkeeping, which every executor shares;
* :mod:`mi_ref.sweep.local`: the local pool of worker processes;
* :mod:`mi_ref.sweep.cluster`: the Dask path;
* :mod:`mi_ref.sweep.driver`: :func:`sweep` and :func:`sweep_grid`, which check, plan, run and merge a
  sweep, and the tables that end one.

This package holds the names that the CLI and the README use; the rest is imported from its module.
"""

from .driver import format_grid, format_sweep, parse_seeds, sweep, sweep_grid
from .local import available_cores
from .tasks import Terminated

__all__ = ["Terminated", "available_cores", "format_grid", "format_sweep", "parse_seeds", "sweep", "sweep_grid"]

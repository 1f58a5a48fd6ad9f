"""The Dask path: a sweep's tasks on a Dask cluster.

:func:`run_dask` submits every task to the cluster (a scheduler's address or a ``dask.distributed.Client``)
as a call of :func:`mi_ref.sweep.tasks.run_task` and follows the futures; the workers share the output
directory's filesystem with the driver and have mi-ref installed. Dask is imported only here, and only
when a sweep is given a scheduler (``pip install "mi-ref[dask]"``).
"""

import os
import time

from ..files import DamagedFileError
from ..results import RunDirError
from .tasks import run_task

CONNECT_TIMEOUT = "30s"  # how long a sweep tries to reach its Dask scheduler


def run_dask(tasks, scheduler, threads, retries, report):
    """Submit ``tasks`` to a Dask cluster (an address or a ``Client``) and follow them. A worker that dies
    is replaced by the cluster and its task run again (resuming; Dask gives up after its
    ``distributed.scheduler.allowed-failures``); a task that raises is retried ``retries`` times."""
    try:
        from dask.distributed import Client
    except ImportError:
        raise ValueError('--scheduler needs Dask\'s distributed scheduler: pip install "mi-ref[dask]"') from None
    try:
        client = scheduler if isinstance(scheduler, Client) else Client(scheduler, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as err:
        raise ValueError(f"cannot reach the Dask scheduler at {scheduler}: {err}; check the address, that `dask "
                         "scheduler` runs there and that this machine can connect to it") from None
    token = os.urandom(4).hex()
    futures = {client.submit(run_task, t, threads, False, key=f"mi-ref-{t.key}-{token}", pure=False,
                             retries=retries): t for t in tasks}
    by_key = {f.key: t for f, t in futures.items()}
    try:
        while futures:
            time.sleep(0.5)
            busy = {k for keys in client.processing().values() for k in keys}
            for key, task in by_key.items():
                if key in busy and task not in report.progress.running:
                    report.started(task)
            for future, task in list(futures.items()):
                if future.status == "finished":
                    report.finished(task)
                elif future.status in ("error", "cancelled", "lost"):
                    damaged = False
                    try:
                        err = future.exception()
                        why = f"{type(err).__name__}: {err}"
                        damaged = isinstance(err, (RunDirError, DamagedFileError))
                    except Exception as exc:          # cancelled futures raise instead
                        why = f"{type(exc).__name__}: {exc}"
                    report.failed(task, f"its directory is damaged ({why})" if damaged else why, damaged=damaged)
                else:
                    continue
                del futures[future]
            report.tick()
    except BaseException:
        client.cancel(list(futures))
        raise
    finally:
        if client is not scheduler:
            client.close()



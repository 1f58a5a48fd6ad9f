"""The local pool: a sweep's tasks on worker processes of this machine.

:func:`run_local` starts ``jobs`` ``spawn``ed worker processes, each kept for many tasks and handed one task
at a time over a pipe; a worker runs it with :func:`mi_ref.sweep.tasks.run_task`, its output in the task's
log. The driver therefore knows which task a dead worker was running and runs it again. :func:`available_cores`
is what the local pool may use.
"""

import os
import signal
import sys

from ..files import DamagedFileError
from ..plugins import PluginError
from ..results import RunDirError
from .tasks import Terminated, load_plugins, run_task


def available_cores():
    """The CPU cores this process may use (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:      # macOS, Windows
        return os.cpu_count() or 1




def run_local(tasks, jobs, threads, retries, report):
    """Run ``tasks`` on ``jobs`` local worker processes (``spawn``ed, kept for many tasks, so imports and
    compiled kernels are paid once per worker). The driver hands each worker one task at a time over a
    pipe and so knows which task a dead worker was running: that task is run again (resuming from its
    checkpoint) on a new worker, up to ``retries`` times; a task that raises is retried the same way, unless
    its directory is damaged or its worker cannot load its plugins (running it again would fail the same
    way). However the driver stops (an error, Ctrl-C, SIGTERM: :class:`Terminated`), its workers stop with
    it: a busy one at once, by SIGTERM, its task resuming from its last checkpoint when it runs again."""
    import multiprocessing
    from collections import deque
    from multiprocessing.connection import wait
    ctx = multiprocessing.get_context("spawn")
    pending = deque((t, 1) for t in tasks)
    idle, busy = [], {}                 # busy: worker -> (task, attempt)

    def settle(task, attempt, why):
        if attempt <= retries:
            report.retry(task, why, attempt + 1, retries + 1)
            pending.append((task, attempt + 1))
        else:
            report.failed(task, why)

    try:
        while pending or busy:
            while pending and len(idle) + len(busy) < jobs:
                idle.append(_LocalWorker(ctx, threads))
            while pending and idle:
                worker = idle.pop()
                task, attempt = pending.popleft()
                worker.send(task)
                busy[worker] = (task, attempt)
                report.started(task)
            ready = wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=1.0)
            for worker, (task, attempt) in list(busy.items()):
                if worker.conn in ready or worker.proc.sentinel in ready:
                    try:
                        status, detail = worker.conn.recv() if worker.conn.poll() else ("died", None)
                    except (EOFError, OSError):
                        status, detail = "died", None
                    del busy[worker]
                    if status == "done":
                        idle.append(worker)
                        report.finished(task)
                    elif status == "error":
                        idle.append(worker)
                        settle(task, attempt, f"it failed ({detail}); see {task.log}")
                    elif status == "damaged":
                        idle.append(worker)
                        report.failed(task, f"its directory is damaged ({detail})", damaged=True)
                    elif status == "plugin":                # running it again would fail the same way
                        idle.append(worker)
                        report.failed(task, f"its worker could not load its plugins ({detail})")
                    else:
                        worker.proc.join()
                        code = worker.proc.exitcode
                        why = (f"its worker process was killed by signal {-code}" if code is not None and code < 0
                               else f"its worker process ended (exit code {code})")
                        settle(task, attempt, why)
            report.tick()
    finally:
        for worker in idle:
            worker.stop()
        for worker in busy:
            worker.stop(busy=True)


class _LocalWorker:
    """One local worker process and the driver's end of its pipe."""

    def __init__(self, ctx, threads):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_local_worker_main, args=(child, threads), name="mi-ref sweep worker",
                                daemon=True)
        self.proc.start()
        child.close()

    def send(self, task):
        self.conn.send(task)

    def stop(self, busy=False):
        """End the worker: an idle one is told to (None), a ``busy`` one gets SIGTERM, which stops its task
        at once (it resumes from its last checkpoint); SIGKILL if it has not ended a minute later."""
        if self.proc.is_alive():
            if busy:
                self.proc.terminate()
            else:
                try:
                    self.conn.send(None)
                except OSError:
                    pass
            self.proc.join(timeout=60 if busy else 5)
            if self.proc.is_alive():
                if busy:
                    self.proc.kill()
                else:
                    self.proc.terminate()
                self.proc.join()
        self.conn.close()


def _local_worker_main(conn, threads):
    """A local worker: receive a task, load its plugins, run it with its output in the task's log, answer
    ("done", seconds), ("plugin", message) for plugins it cannot load, ("damaged", message) for a damaged
    task directory or ("error", message); None ends the worker, and so does SIGTERM (its task stops where it
    is, exit code 143)."""
    import traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # Ctrl-C stops the driver, which then stops the workers

    def stop(signum, frame):
        raise Terminated()
    signal.signal(signal.SIGTERM, stop)
    try:
        _serve(conn, threads, traceback)
    except Terminated:
        print("stopped by SIGTERM (the sweep was stopped); the task resumes from its last checkpoint when it runs "
              "again", file=sys.stderr, flush=True)
        sys.exit(143)


def _serve(conn, threads, traceback):
    while True:
        task = conn.recv()
        if task is None:
            return
        try:            # before the task's paths, which name its config, which may name a plugin's kinds
            load_plugins(task.plugins)
        except PluginError as err:
            conn.send(("plugin", str(err)))
            continue
        task.log.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(task.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        try:
            info = run_task(task, threads, progress=True)
            sys.stderr.flush()
            conn.send(("done", info["seconds"]))
        except (RunDirError, DamagedFileError) as err:
            print(f"{type(err).__name__}: {err}", file=sys.stderr, flush=True)
            conn.send(("damaged", str(err)))
        except Exception as err:
            traceback.print_exc()
            sys.stderr.flush()
            conn.send(("error", f"{type(err).__name__}: {err}"))

"""Sweeps: many seeds of one experiment, each (seed, variant) an independent task, run by local worker
processes or on a Dask cluster, with the numbers of a serial ``mi-ref run``.

Layout. A sweep writes the run directories of ``mi-ref run`` (``OUT/RUN_NAME/seed-S``, one per seed, see
:mod:`mi_ref.results`). Every task (one unit of :attr:`mi_ref.experiments.Experiment.units` of one seed: a
variant, or the pixel-baseline row) runs in a task directory of its own,
``OUT/RUN_NAME/.tasks/seed-S/UNIT`` (a run directory holding that unit only, with its checkpoints; its log
beside it as ``UNIT.log`` for local workers). When the task is finished, the sweep's driver (the process
that runs ``mi-ref sweep``) merges it into the seed's run directory under that directory's lock: the seed's
metrics.jsonl is rewritten atomically with the unit's rows in the experiment's order of units, the unit is
marked done, the task directory is removed. A seed directory therefore only ever holds finished units;
once all are merged it is the directory a serial run writes (row for row, wall times aside).

Faults. A task that dies (its process killed, its Dask worker lost) is run again and resumes from its last
checkpoint in its task directory; a finished task waiting for its merge is merged, not run again; a
finished unit is skipped. So an interrupted sweep continues with the same command, and a unit computed
twice (two sweeps at once) is written once: a task directory is locked by the process running it, and a
second task on it waits for the lock and then finds the unit finished.

Determinism. A unit's random streams depend on (seed, its index among the experiment's units) only
(:mod:`mi_ref.loop`), so a task computes the same rows as the serial run of that seed with the same number
of BLAS threads. Each task runs with its BLAS and numba threads pinned (threadpoolctl; ``threads``).

Executors. ``jobs`` local worker processes (``spawn``ed, each running one task at a time handed to it by
the driver, so the task of a dead worker is known exactly and retried), or a Dask cluster: ``scheduler="tcp://HOST:PORT"`` (or a ``dask.distributed.Client``)
whose workers share the output directory's filesystem and have mi-ref installed. Dask is imported only
then (``pip install "mi-ref[dask]"``).
"""

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .files import DamagedFileError
from .progress import duration
from .results import (TASKS_DIR, RunDir, RunDirError, RunLockedError, atomic_write_json, format_summary,
                      serial_order, summarize, write_summary)

MAX_SEEDS = 10_000      # the most seeds one sweep takes (more: another sweep into the same --out)
CONNECT_TIMEOUT = "30s"  # how long a sweep tries to reach its Dask scheduler


class Terminated(BaseException):
    """SIGTERM reached the sweep's driver or one of its local workers: raised where the process is, so that
    the driver stops its workers and a worker leaves its task (which resumes from its last checkpoint)."""


@contextlib.contextmanager
def _terminated_by_sigterm():
    """While the block runs, SIGTERM raises :class:`Terminated` in the main thread (elsewhere the block runs
    as it is: only the main thread receives signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Terminated()
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def parse_seeds(text):
    """Seeds from ``0-19``, ``3`` or ``0,2,5-7`` (each >= 0, in the order given, duplicates dropped), at most
    :data:`MAX_SEEDS` of them; ``ValueError`` saying what is expected otherwise."""
    seeds, seen = [], set()
    for part in str(text).split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                lo, hi = int(lo), int(hi)
                if hi < lo:
                    raise ValueError
                values = range(lo, hi + 1)
            else:
                values = [int(part)]
        except ValueError:
            raise ValueError(f"--seeds {text!r}: expected seeds >= 0 as a list and ranges, e.g. 0-19 or "
                             "0,2,5-7") from None
        if len(values) > MAX_SEEDS or len(seen) + len(values) > MAX_SEEDS and len(seen | set(values)) > MAX_SEEDS:
            total = len(values) if len(values) > MAX_SEEDS else len(seen | set(values))
            raise ValueError(f"--seeds {text!r} asks for {total} seeds; a sweep takes at most {MAX_SEEDS} (run "
                             "the others in another sweep into the same --out)")
        for s in values:
            if s < 0:
                raise ValueError(f"--seeds {text!r}: seeds are >= 0")
            if s not in seen:
                seen.add(s)
                seeds.append(s)
    return seeds


def available_cores():
    """The CPU cores this process may use (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:      # macOS, Windows
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Task:
    """One unit of one seed of one experiment, as a sweep runs it. Picklable (it travels to workers)."""

    experiment: str
    preset: str
    seed: int
    unit: str
    overrides: tuple            # ((setting, value), ...): the config's changes to the preset
    out: str
    data_dir: str = None
    repair: bool = False        # recompute the unit from its start if its task directory is damaged
    keep_state: bool = None     # keep the unit's final state (None: the preset's default; run_experiment)

    def config(self):
        from . import experiments
        return experiments.get(self.experiment).config(self.preset, **dict(self.overrides))

    @property
    def run_name(self):
        from .experiments import run_name
        return run_name(self.experiment, self.preset, self.config())

    @property
    def run_dir(self):
        """The seed's run directory (what ``mi-ref run`` writes)."""
        return Path(self.out) / self.run_name / f"seed-{self.seed}"

    @property
    def dir(self):
        """The task's own run directory."""
        return Path(self.out) / self.run_name / TASKS_DIR / f"seed-{self.seed}" / self.unit

    @property
    def log(self):
        return self.dir.parent / f"{self.unit}.log"

    @property
    def key(self):
        return f"{self.run_name}/seed-{self.seed}/{self.unit}"

    def header(self):
        return {"experiment": self.experiment, "preset": self.preset, "seed": self.seed,
                "config": dataclasses.asdict(self.config())}


def plan(experiment, preset, seeds, overrides, out, data_dir=None, repair=False, keep_state=None):
    """Every task of the sweep, seed by seed in the experiment's order of units."""
    from . import experiments
    exp = experiments.get(experiment)
    config = exp.config(preset, **overrides)
    frozen = tuple((k, v) for k, v in overrides.items() if v is not None)
    return [Task(experiment, preset, int(seed), unit, frozen, str(out), data_dir, repair, keep_state)
            for seed in seeds for unit in exp.units(config)]


def _unit_done(path, unit):
    store = RunDir(path)
    return store.progress_path.exists() and unit in store.done_variants()


def merged(task):
    """True if the task's unit is finished in its seed's run directory."""
    return _unit_done(task.run_dir, task.unit)


def finished(task):
    """True if the task's own directory holds its unit finished (it waits for :func:`merge`)."""
    return _unit_done(task.dir, task.unit)


def _pinned(threads):
    """A context manager pinning BLAS (threadpoolctl) and numba to ``threads`` threads."""
    import contextlib

    from threadpoolctl import threadpool_limits

    @contextlib.contextmanager
    def pin():
        import numba
        before = numba.get_num_threads()
        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
        try:
            with threadpool_limits(limits=threads):
                yield
        finally:
            numba.set_num_threads(before)
    return pin()


def run_task(task, threads=1, progress=False):
    """Run one task into its task directory (resuming it if it holds a checkpoint) with ``threads`` BLAS and
    numba threads; returns ``{"task", "seconds"}``. If another process holds the task directory, waits for
    it to finish first. This is what a worker executes."""
    from .accel import configure_malloc
    from .experiments import run_experiment
    # a worker is a training process: keep freed heap memory resident. Dask's nanny starts workers with
    # MALLOC_TRIM_THRESHOLD_=65536, which returns memory to the OS after nearly every step; mallopt overrides it
    configure_malloc()
    start = time.perf_counter()
    waited = False
    with _pinned(threads):
        while True:
            try:
                run_experiment(task.experiment, task.preset, task.seed, task.out, resume=True,
                               data_dir=task.data_dir, progress=progress, repair=task.repair, only=[task.unit],
                               run_dir=task.dir, keep_state=task.keep_state, **dict(task.overrides))
                break
            except RunLockedError:
                if not waited:
                    print(f"{task.key}: another process is running this task; waiting for it", file=sys.stderr)
                    waited = True
                time.sleep(2.0)
    return {"task": task.key, "seconds": time.perf_counter() - start}


def merge(task, units):
    """Move the finished unit of ``task`` into its seed's run directory (see the module docstring): its rows,
    its arrays and its final state if it kept one; ``units`` is the experiment's order of units. Returns False, changing nothing, if another process holds the seed
    directory (try again later)."""
    seed_store, task_store = RunDir(task.run_dir, units=units), RunDir(task.dir)
    try:
        seed_store.prepare(task.header(), resume=True)
    except RunLockedError:
        return False
    try:
        if task.unit not in seed_store.done_variants():
            rows = [r for r in task_store.read_metrics() if r["variant"] == task.unit]
            arrays = task_store.arrays_path(task.unit)
            if arrays.exists():
                seed_store.arrays_path(task.unit).parent.mkdir(exist_ok=True)
                from .files import write_bytes
                write_bytes(seed_store.arrays_path(task.unit), arrays.read_bytes())
            final = task_store.final_path(task.unit)
            if final.exists():                      # before the done mark, which records its SHA-256
                from .files import copy
                copy(final, seed_store.final_path(task.unit), seed_store._check_lock)
            kept = [r for r in seed_store.read_metrics() if r["variant"] != task.unit]
            seed_store.rewrite_metrics(serial_order(kept + rows, units))
            seed_store.mark_done(task.unit, order=units)
        shutil.rmtree(task.dir, ignore_errors=True)
        if task.log.exists():
            task.log.unlink()
    finally:
        seed_store.unlock()
    return True


def _steps_done(task, steps):
    """How far a running task is: the step of its last metric row (0 if it has none yet)."""
    try:
        rows = RunDir(task.dir).read_metrics()
    except (OSError, ValueError):
        return 0
    return min(max((r["step"] for r in rows if r["variant"] == task.unit), default=0), steps)


class SweepProgress:
    """The sweep's state and its plain-text lines: tasks done / running / failed, retries, and the ETA of
    the whole sweep from the training steps done since it (re)started (read from the task directories)."""

    def __init__(self, label, tasks, steps_of, enabled=True, stream=None, interval=30.0, clock=time.monotonic):
        self.label, self.enabled, self.interval, self.clock = label, enabled, interval, clock
        self.stream = stream or sys.stderr
        self.steps_of = steps_of
        self.total = len(tasks)
        self.total_steps = sum(steps_of(t) for t in tasks)
        self.done, self.failed, self.running, self.retried = [], [], set(), 0
        self.skipped = 0
        self.started = self.clock()
        self.base_steps = None
        self.last_line = self.started

    def say(self, text):
        if self.enabled:
            print(f"[{self.label}] {text}", file=self.stream, flush=True)

    def steps_done(self):
        steps = sum(self.steps_of(t) for t in self.done)
        return steps + sum(_steps_done(t, self.steps_of(t)) for t in self.running)

    def line(self):
        steps = self.steps_done()
        if self.base_steps is None:
            self.base_steps = steps
        elapsed = self.clock() - self.started
        rate = (steps - self.base_steps) / elapsed if elapsed > 0 else 0
        left = self.total_steps - steps
        eta = "0s" if left <= 0 else (duration(left / rate) if rate > 0 else "?")
        pct = 100 * steps // max(self.total_steps, 1)
        retried = f", {self.retried} retried" if self.retried else ""
        return (f"tasks {len(self.done)}/{self.total} done, {len(self.running)} running, {len(self.failed)} "
                f"failed{retried} | steps {pct}%, {rate:.1f} steps/s, ETA {eta}")

    def tick(self, force=False):
        if force or self.clock() - self.last_line >= self.interval:
            self.say(self.line())
            self.last_line = self.clock()


def _run_local(tasks, jobs, threads, retries, report):
    """Run ``tasks`` on ``jobs`` local worker processes (``spawn``ed, kept for many tasks, so imports and
    compiled kernels are paid once per worker). The driver hands each worker one task at a time over a
    pipe and so knows which task a dead worker was running: that task is run again (resuming from its
    checkpoint) on a new worker, up to ``retries`` times; a task that raises is retried the same way, unless
    its directory is damaged (running it again would fail the same way). However the driver stops (an
    error, Ctrl-C, SIGTERM: :class:`Terminated`), its workers stop with it: a busy one at once, by SIGTERM,
    its task resuming from its last checkpoint when it runs again."""
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
    """A local worker: receive a task, run it with its output in the task's log, answer ("done", seconds),
    ("damaged", message) for a damaged task directory or ("error", message); None ends the worker, and so
    does SIGTERM (its task stops where it is, exit code 143)."""
    import traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # Ctrl-C stops the driver, which then stops the workers

    def stop(signum, frame):
        raise Terminated()
    signal.signal(signal.SIGTERM, stop)
    from . import plugins
    plugins.load_entry_points()
    plugins.load_from_env()                          # the driver's --plugin files and modules
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


def _run_dask(tasks, scheduler, threads, retries, report):
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


class _Report:
    """The driver's bookkeeping: progress lines, merges of finished tasks, failures."""

    def __init__(self, progress, units, tag=None):
        """``units``: the experiment's order of units, or a function task -> that order (tasks of several
        experiments, as ``mi-ref reproduce`` runs them); ``tag(task)``: what names the task's config in the
        progress lines (a grid's values), if anything."""
        self.progress = progress
        self.units_of = units if callable(units) else (lambda task: units)
        self.tag = tag or (lambda task: "")
        self.unmerged, self.failures, self.started_at, self.ended_at, self.damaged = [], {}, {}, {}, set()

    def started(self, task):
        self.progress.running.add(task)
        self.started_at.setdefault(task, time.monotonic())

    def finished(self, task):
        self.progress.running.discard(task)
        self.progress.done.append(task)
        self.ended_at[task] = time.monotonic()
        took = self.ended_at[task] - self.started_at.get(task, self.ended_at[task])
        self.progress.say(f"{self.tag(task)}seed {task.seed} {task.unit} done ({duration(took)})")
        if not merge(task, self.units_of(task)):
            self.unmerged.append(task)

    def retry(self, task, why, attempt, attempts):
        self.progress.running.discard(task)
        self.progress.retried += 1
        self.progress.say(f"{self.tag(task)}seed {task.seed} {task.unit}: {why}; running it again from its last checkpoint (attempt {attempt} of "
                          f"{attempts})")

    def failed(self, task, why, damaged=False):
        self.progress.running.discard(task)
        self.progress.failed.append(task)
        self.failures[task] = why
        if damaged:
            self.damaged.add(task.key)
        self.progress.say(f"{self.tag(task)}seed {task.seed} {task.unit} FAILED: {why}")

    def tick(self):
        for task in list(self.unmerged):
            if merge(task, self.units_of(task)):
                self.unmerged.remove(task)
        self.progress.tick()


def sweep(experiment, preset, seeds, overrides=None, out="runs", data_dir=None, jobs=None, threads=1,
          scheduler=None, retries=2, progress=True, stream=None, interval=30.0, repair=False, keep_state=None):
    """Run ``seeds`` of ``experiment`` (see the module docstring): every (seed, unit) not finished yet is a
    task, run by ``jobs`` local processes with ``threads`` BLAS threads each (default: as many as the cores
    allow, at most one per task), or on the Dask cluster ``scheduler``. Returns ``{"run_dirs", "failed",
    "damaged", "summaries"}``: the seeds' run directories, ``{task key: why}`` of the tasks that failed for
    good, the keys of those whose directory is damaged, and the summaries (:func:`mi_ref.results.summarize`)
    of the seeds that are complete. Writes ``OUT/RUN_NAME/sweep.json`` (the sweep's seeds, tasks and the
    summary over seeds).

    Every setting and ``OUT`` itself (a file is written there and removed) are checked before any task runs.
    The seed directories are audited as a resumed run's; with ``repair`` the damaged units of seed and task
    directories are recomputed from their start (:meth:`mi_ref.results.RunDir.audit`). SIGTERM stops the
    sweep and its workers (:class:`Terminated`); the same command continues it. ``keep_state``: whether each
    unit keeps its final state (``final/UNIT.npz``, merged into the seed's directory with its rows; None: the
    preset's default, :meth:`mi_ref.experiments.Experiment.keeps_state`)."""
    result = sweep_grid(experiment, preset, seeds, [dict(overrides or {})], out, data_dir, jobs, threads, scheduler,
                        retries, progress, stream, interval, repair, keep_state)
    (one,) = result["configs"]
    return {"run_dirs": one["run_dirs"], "failed": result["failed"], "damaged": result["damaged"],
            "summaries": one["summaries"]}


def sweep_grid(experiment, preset, seeds, configs, out="runs", data_dir=None, jobs=None, threads=1,
               scheduler=None, retries=2, progress=True, stream=None, interval=30.0, repair=False, keep_state=None):
    """:func:`sweep` over several configs at once: ``configs`` is a list of overrides of the preset (one per
    config, e.g. the product of ``mi-ref sweep --grid`` values), each config its own ``RUN_NAME`` with its
    own ``sweep.json``, and the tasks of all of them share one pool of workers. Every config is checked
    before any task runs; two that are the same config are an error. Returns ``{"configs": [{"overrides",
    "run_name", "run_dirs", "failed", "summaries"}, ...], "failed", "damaged"}`` (see :func:`sweep`)."""
    from . import experiments
    from .checks import positive_int
    from .datasets import DATA_ENV, load, reads_data_dir
    exp = experiments.get(experiment)
    configs = [dict(c or {}) for c in configs]
    if not configs:
        raise ValueError("no configs given")
    built = [exp.config(preset, **c) for c in configs]        # unknown settings fail here
    names = [experiments.run_name(experiment, preset, c) for c in built]
    for i, name in enumerate(names):
        if name in names[:i]:
            j = names.index(name)
            raise ValueError(f"the configs {configs[j]} and {configs[i]} are the same config ({name}); give each value "
                             "once")
    seeds = [positive_int(s, "seed", minimum=0) for s in seeds]
    if not seeds:
        raise ValueError("no seeds given")
    threads = positive_int(threads, "threads")
    retries = positive_int(retries, "retries", minimum=0)
    varying = [k for k in dict.fromkeys(k for c in configs for k in c)
               if len({json.dumps(c.get(k), default=list) for c in configs}) > 1]
    if any(hasattr(c, "dataset") and reads_data_dir(c.dataset) for c in built):
        data_dir = data_dir or os.environ.get(DATA_ENV)
        if data_dir is not None:
            data_dir = str(Path(data_dir).resolve())
    loaded = {}
    for overrides, config in zip(configs, built):
        dataset = None
        if hasattr(config, "dataset"):
            if config.dataset not in loaded:
                loaded[config.dataset] = load(config.dataset, data_dir)      # fails before anything runs
            dataset = loaded[config.dataset]
        elif data_dir is not None:
            raise ValueError(f"{experiment} uses synthetic data and reads no --data-dir (drop it)")
        try:
            if exp.check_data is not None:
                exp.check_data(config, dataset)              # so do sizes that do not fit the data
        except ValueError as err:
            if len(configs) == 1:
                raise
            label = ", ".join(f"{k}={experiments.describe_value(overrides.get(k))}" for k in varying)
            raise ValueError(f"the grid's config {label}: {err}") from None
    if scheduler is None:              # the local workers' threads fit the cores (the default jobs: see below)
        least = 1 if jobs is None else positive_int(jobs, "jobs")
        if least * threads > available_cores():
            raise ValueError(f"--jobs {least} x --threads {threads} = {least * threads} threads exceed the "
                             f"{available_cores()} cores here; choose jobs x threads <= {available_cores()}")
    plans = [plan(experiment, preset, seeds, c, out, data_dir, repair, keep_state) for c in configs]
    units_of = {name: exp.units(config) for name, config in zip(names, built)}
    steps_of_config = {name: getattr(config, "n_iters", 0) for name, config in zip(names, built)}
    all_tasks = [t for tasks in plans for t in tasks]
    for tasks in plans:
        _check_writable(tasks[0].run_dir.parent)
    # the seed directories: audited like a resumed run (interruption leftovers repaired, damage an error);
    # the rows of a unit whose merge was interrupted are the merge's to write again
    for name, tasks in zip(names, plans):
        for seed in seeds:
            store = RunDir(tasks[0].run_dir.parent / f"seed-{seed}", units=units_of[name])
            if store.config_path.exists():
                store.prepare(tasks[0].header() | {"seed": seed}, resume=True)
                merging = [t.unit for t in tasks if t.seed == seed and finished(t)]
                try:
                    for note in store.audit(repair, merging=merging):
                        print(f"{store.path}: {note}", file=sys.stderr)
                finally:
                    store.unlock()
    name_of = {t: name for name, tasks in zip(names, plans) for t in tasks}
    steps_of = lambda t: 0 if t.unit == "baseline" else steps_of_config[name_of[t]]  # noqa: E731
    label = f"sweep {names[0]}" if len(names) == 1 else f"sweep {experiment}-{preset}, {len(names)} configs"
    bar = SweepProgress(label, all_tasks, steps_of, enabled=progress, stream=stream, interval=interval)
    tags = {name: ", ".join(f"{k}={experiments.describe_value(c.get(k, getattr(b, k, None)))}" for k in varying) + ": "
            for name, c, b in zip(names, configs, built)} if len(names) > 1 else {}
    report = _Report(bar, lambda task: units_of[name_of[task]], lambda task: tags.get(name_of[task], ""))
    todo = []
    for task in all_tasks:
        if merged(task):
            bar.done.append(task)
            bar.skipped += 1
        elif finished(task):                     # finished by an interrupted sweep, not merged yet
            bar.done.append(task)
            bar.skipped += 1
            if not merge(task, units_of[name_of[task]]):
                report.unmerged.append(task)
        else:
            todo.append(task)
    if scheduler is None:
        if jobs is None:
            jobs = max(1, min(len(todo), available_cores() // threads))
        where = f"{jobs} local worker process{'es' if jobs > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}"
    else:
        where = f"the Dask cluster {scheduler if isinstance(scheduler, str) else 'of the given client'}"
    shape = f"{len(seeds)} seed(s) x {len(units_of[names[0]])} units" if len(names) == 1 else \
        f"{len(names)} configs x {len(seeds)} seed(s) x their units"
    output = plans[0][0].run_dir.parent if len(names) == 1 else Path(out)
    bar.say(f"{len(all_tasks)} tasks ({shape}): {bar.skipped} finished before, {len(todo)} to run on {where}; "
            f"output in {output}")
    if todo:
        bar.tick(force=True)
        with _terminated_by_sigterm():
            if scheduler is None:
                _run_local(todo, jobs, threads, retries, report)
            else:
                _run_dask(todo, scheduler, threads, retries, report)
    for task in list(report.unmerged):            # a seed directory held by another process: wait for it
        bar.say(f"waiting for {task.run_dir} (held by another process) to merge {task.unit}")
        RunDir(task.run_dir).lock(wait=True)
        RunDir(task.run_dir).unlock()
        if merge(task, units_of[name_of[task]]):
            report.unmerged.remove(task)
    if todo:
        bar.tick(force=True)
    results = []
    for name, overrides, tasks in zip(names, configs, plans):
        tasks_dir = tasks[0].run_dir.parent / TASKS_DIR
        for empty in sorted(tasks_dir.glob("seed-*")) + [tasks_dir]:     # what merges emptied
            try:
                empty.rmdir()
            except OSError:
                pass
        run_dirs = sorted({t.run_dir for t in tasks}, key=lambda p: int(p.name.split("-")[1]))
        complete = [d for d in run_dirs if all(merged(t) for t in tasks if t.run_dir == d)]
        summaries = [write_summary(d) for d in complete]
        failed = {t.key: why for t, why in report.failures.items() if name_of[t] == name}
        record = {"experiment": experiment, "preset": preset, "seeds": seeds, "overrides": overrides,
                  "units": units_of[name], "complete_seeds": [int(d.name.split("-")[1]) for d in complete],
                  "failed": failed, "summary": summary_over_seeds(summaries)}
        atomic_write_json(run_dirs[0].parent / "sweep.json", json.loads(json.dumps(record, default=list)))
        results.append({"overrides": overrides, "run_name": name, "run_dirs": run_dirs, "failed": failed,
                        "summaries": summaries})
    return {"configs": results, "failed": {t.key: why for t, why in report.failures.items()},
            "damaged": sorted(report.damaged)}


def _check_writable(folder):
    """Create ``folder`` (OUT/RUN_NAME) and write and remove a file in it, so that an --out that cannot be
    written fails here, with an ``OSError`` naming the path, before any worker starts."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):
        pass


def summary_over_seeds(summaries):
    """``{variant: {field: {"mean", "sd", "n"}}}`` of the final numbers of each seed's summary (sd: the
    sample standard deviation over the seeds, ddof = 1, as the figures' bands)."""
    import numpy as np

    from .stats import sample_sd
    values = {}
    for s in summaries:
        for rec in s["variants"]:
            for k, v in rec.items():
                if k not in ("variant", "step") and isinstance(v, (int, float)) and v is not None:
                    values.setdefault(rec["variant"], {}).setdefault(k, []).append(float(v))
    return {variant: {k: {"mean": float(np.mean(v)), "sd": float(sample_sd(v)), "n": len(v)}
                      for k, v in fields.items()} for variant, fields in values.items()}


def format_sweep(result):
    """The summary table over the sweep's complete seeds, and the failures if any."""
    lines = []
    if result["summaries"]:
        lines.append(format_summary(result["summaries"]))
    else:
        lines.append("no seed is complete yet")
    for key, why in result["failed"].items():
        lines.append(f"FAILED {key}: {why}")
    return "\n".join(lines)



GRID_FIELDS = ("bound", "bound_test", "bound_smoothed", "true_mi", "accuracy", "vs_pixels")


def compare_configs(result, keys):
    """One record per (variant, config) of a grid sweep's result (:func:`sweep_grid`), variant by variant so
    that a variant's configs are adjacent: ``{"variant", "config": {key: value} for the grid's ``keys``,
    "run_name", "seeds": the complete seeds, FIELD: {"mean", "sd", "n"}}`` over the complete seeds of the
    config (:func:`summary_over_seeds`; sd the sample sd, ddof = 1, :func:`mi_ref.stats.sample_sd`)."""
    records = []
    variants = []
    for c in result["configs"]:
        for v in summary_over_seeds(c["summaries"]):
            if v not in variants:
                variants.append(v)
    for v in variants:
        for c in result["configs"]:
            stats = summary_over_seeds(c["summaries"]).get(v)
            if stats is None:
                continue
            seeds = [int(Path(s["run"]).name.split("-")[1]) for s in c["summaries"]]
            records.append({"variant": v, "config": {k: c["overrides"].get(k) for k in keys},
                            "run_name": c["run_name"], "seeds": seeds,
                            **{f: stats[f] for f in GRID_FIELDS if f in stats}})
    return records


def format_grid(result, keys):
    """The table that ends a grid sweep: the last evaluation of every variant of every config, mean ± sd
    over its complete seeds (the sample sd), one column per grid setting; then the configs without a
    complete seed and the failures, if any."""
    from .experiments import describe_value
    records = compare_configs(result, keys)
    fields = [f for f in GRID_FIELDS if any(f in r for r in records)]
    header = ["variant"] + list(keys) + ["seeds"] + fields
    lines = []
    for r in records:
        cells = [r["variant"]] + [describe_value(r["config"][k]) for k in keys] + [str(len(r["seeds"]))]
        for f in fields:
            if f not in r:
                cells.append("-")
            elif r[f]["n"] == 1:
                cells.append(f"{r[f]['mean']:+.4f}" if f == "vs_pixels" else f"{r[f]['mean']:.4f}")
            else:
                cells.append(f"{r[f]['mean']:.4f} ± {r[f]['sd']:.4f}")
        lines.append(cells)
    seeds = sorted({s for r in records for s in r["seeds"]})
    title = (f"{len(result['configs'])} configs compared: the last evaluation of each variant, mean ± sd over the "
             f"complete seeds (sd: the sample sd, ddof = 1; seeds {', '.join(map(str, seeds))})")
    if not records:
        out = [title, "no config has a complete seed yet"]
    else:
        widths = [max(len(row[i]) for row in [header] + lines) for i in range(len(header))]
        out = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
        previous = None
        for row in lines:
            if previous is not None and row[0] != previous:
                out.append("")
            out.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
            previous = row[0]
    for c in result["configs"]:
        if not c["summaries"]:
            out.append(f"{c['run_name']}: no complete seed yet")
    for key, why in result["failed"].items():
        out.append(f"FAILED {key}: {why}")
    return "\n".join(out)

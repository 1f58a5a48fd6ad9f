"""What a sweep's task is, and what every executor of tasks shares.

* :class:`Task`: one unit of one seed of one experiment, keyed by :attr:`Task.key`, with its task directory
  :attr:`Task.dir` beside the seed's run directory :attr:`Task.run_dir`; :func:`plan` lists a sweep's tasks
  seed by seed in the experiment's order of units.
* :func:`run_task`: what a worker executes (a local worker process or a Dask worker alike): the task's
  plugins loaded first (:func:`load_plugins`), then the unit, resumed from its checkpoint if it has one,
  with its BLAS and numba threads pinned (:func:`pinned`), so that it computes the rows of the serial run
  (see :mod:`mi_ref.sweep`, "Determinism").
* :func:`merge`, :func:`merged`, :func:`finished`: a finished unit moved into its seed's run directory in
  the experiment's order of units, and where a task stands.
* :class:`SweepProgress` and :class:`Report`: the driver's progress lines and bookkeeping (tasks started,
  finished and merged, retried, failed), whichever executor runs the tasks.
* :class:`Terminated`: SIGTERM, raised where the driver or a local worker is.
"""

import contextlib
import dataclasses
import json
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..progress import duration
from ..results import TASKS_DIR, RunDir, RunLockedError, serial_order


class Terminated(BaseException):
    """SIGTERM reached the sweep's driver or one of its local workers: raised where the process is, so that
    the driver stops its workers and a worker leaves its task (which resumes from its last checkpoint)."""


@contextlib.contextmanager
def terminated_by_sigterm():
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
    plugins: tuple = ()         # the plugins its worker loads first: absolute .py paths, module names (load_plugins)

    def config(self):
        from .. import experiments
        return experiments.get(self.experiment).config(self.preset, **dict(self.overrides))

    @property
    def run_name(self):
        from ..experiments import run_name
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


def plan(experiment, preset, seeds, overrides, out, data_dir=None, repair=False, keep_state=None, plugins=None):
    """Every task of the sweep, seed by seed in the experiment's order of units. ``plugins``: the plugins
    every task carries to its worker (:attr:`Task.plugins`); None: those this process loaded by name
    (:func:`mi_ref.plugins.given`, e.g. the CLI's ``--plugin``), so that a worker knows every kind the
    driver knows."""
    from .. import experiments
    from ..plugins import given
    exp = experiments.get(experiment)
    config = exp.config(preset, **overrides)
    frozen = tuple((k, v) for k, v in overrides.items() if v is not None)
    plugins = given() if plugins is None else tuple(str(p) for p in plugins)
    return [Task(experiment, preset, int(seed), unit, frozen, str(out), data_dir, repair, keep_state, plugins)
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


def pinned(threads):
    """A context manager pinning BLAS (threadpoolctl) and numba to ``threads`` threads."""
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


def load_plugins(specs):
    """Load the plugins ``specs`` (a task's :attr:`Task.plugins`) and the entry points of the group
    ``mi_ref.plugins`` in this process, each once (:mod:`mi_ref.plugins`): a worker process knows the kinds
    that its driver registered from outside the package. A plugin that cannot be loaded here is a
    :class:`mi_ref.plugins.PluginError` naming it and this host."""
    import socket

    from .. import plugins
    plugins.load_entry_points()
    for spec in specs:
        try:
            plugins.load(spec)
        except plugins.PluginError as err:
            raise plugins.PluginError(f"{err} (on the worker host {socket.gethostname()}: a plugin file must be at "
                                      "the same path there as for the sweep, a plugin module importable "
                                      "there)") from None


def run_task(task, threads=1, progress=False):
    """Run one task into its task directory (resuming it if it holds a checkpoint) with ``threads`` BLAS and
    numba threads, after loading its plugins (:func:`load_plugins`); returns ``{"task", "seconds"}``. If
    another process holds the task directory, waits for it to finish first. This is what a worker executes."""
    from ..accel import configure_malloc
    from ..experiments import run_experiment
    load_plugins(task.plugins)
    # a worker is a training process: keep freed heap memory resident. Dask's nanny starts workers with
    # MALLOC_TRIM_THRESHOLD_=65536, which returns memory to the OS after nearly every step; mallopt overrides it
    configure_malloc()
    start = time.perf_counter()
    waited = False
    with pinned(threads):
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
    """Move the finished unit of ``task`` into its seed's run directory (see :mod:`mi_ref.sweep`, "Layout"):
    its rows, its arrays and its final state if it kept one; ``units`` is the experiment's order of units.
    Returns False, changing nothing, if another process holds the seed directory (try again later)."""
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
                from ..files import write_bytes
                write_bytes(seed_store.arrays_path(task.unit), arrays.read_bytes())
            final = task_store.final_path(task.unit)
            if final.exists():                      # before the done mark, which records its SHA-256
                from ..files import copy
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
    """How far a running task is: the step its training last reported in the task's ``heartbeat.json``
    (:meth:`mi_ref.results.RunDir.heartbeat`), or the step of its last metric row if that is further
    (0 if it has neither yet); at most ``steps``."""
    store = RunDir(task.dir)
    try:
        rows = store.read_metrics()
    except (OSError, ValueError):
        rows = []
    done = max((r["step"] for r in rows if r["variant"] == task.unit), default=0)
    try:
        beat = json.loads(store.heartbeat_path.read_text(encoding="utf-8"))
        if beat.get("variant") == task.unit and isinstance(beat.get("step"), int):
            done = max(done, beat["step"])
    except (OSError, ValueError, AttributeError):
        pass                              # not written yet, or (never by mi-ref) unreadable: the rows say
    return min(done, steps)


class SweepProgress:
    """The sweep's state and its plain-text lines: tasks done / running / failed, retries, and the ETA of
    the whole sweep (read from the task directories).

    The ETA prices each unit's steps at its own measured speed: the seconds per step of the tasks of that
    unit (a unit of every seed has the same model) that have run in this sweep, or, for a unit that has not
    run yet, the speed of all the tasks that have. A ConvNet step costs ~15 MLP steps, so a single rate
    for every step would misjudge a sweep that mixes them. The work left is spread over the most tasks seen
    running at once (the workers), and no ETA is shorter than the longest task left, which one worker
    must run alone."""

    def __init__(self, label, tasks, steps_of, enabled=True, stream=None, interval=30.0, clock=time.monotonic,
                 steps_done=None):
        self.label, self.enabled, self.interval, self.clock = label, enabled, interval, clock
        self.stream = stream or sys.stderr
        self.steps_of = steps_of
        self.tasks = list(tasks)
        self.total = len(self.tasks)
        self.total_steps = sum(steps_of(t) for t in self.tasks)
        self.done, self.failed, self.running, self.retried = [], [], set(), 0
        self.skipped = 0
        self.started = self.clock()
        self.base_steps = None
        self.last_line = self.started
        self._done_of = steps_done or _steps_done      # (task, steps) -> the steps the task has done
        self.opened = {}                                # running task -> (clock, steps done) when it started
        self.spent = {}                                 # unit -> [seconds, steps] of its tasks' closed runs
        self.workers = 0

    def say(self, text):
        if self.enabled:
            print(f"[{self.label}] {text}", file=self.stream, flush=True)

    def start(self, task):
        """``task`` started running (again, after a retry)."""
        self.running.add(task)
        self.workers = max(self.workers, len(self.running))
        self.opened[task] = (self.clock(), self._done_of(task, self.steps_of(task)))

    def stop(self, task, finished=False):
        """``task`` stopped running: finished (its steps all done), or to be retried, or failed."""
        self.running.discard(task)
        if task in self.opened:
            began, steps = self.opened.pop(task)
            end = self.steps_of(task) if finished else self._done_of(task, self.steps_of(task))
            spent = self.spent.setdefault(task.unit, [0.0, 0])
            spent[0] += self.clock() - began
            spent[1] += max(end - steps, 0)
        if finished:
            self.done.append(task)

    def steps_done(self):
        steps = sum(self.steps_of(t) for t in self.done)
        return steps + sum(self._done_of(t, self.steps_of(t)) for t in self.running)

    def seconds_left(self):
        """The estimated seconds until every task not done or failed has finished (None before any task
        has done a step)."""
        now, spent = self.clock(), {u: list(v) for u, v in self.spent.items()}
        left = {}
        for task in self.tasks:
            if task in self.done or task in self.failed:
                continue
            done = self._done_of(task, self.steps_of(task))
            left[task] = self.steps_of(task) - done
            if task in self.opened:
                began, steps = self.opened[task]
                unit = spent.setdefault(task.unit, [0.0, 0])
                unit[0] += now - began
                unit[1] += max(done - steps, 0)
        seconds = sum(s for s, n in spent.values() if n > 0)
        steps = sum(n for s, n in spent.values() if n > 0)
        if steps == 0:
            return None if any(left.values()) else 0.0
        per_step = {u: s / n for u, (s, n) in spent.items() if n > 0}
        cost = [n * per_step.get(t.unit, seconds / steps) for t, n in left.items()]
        return max(sum(cost) / max(self.workers, 1), max(cost, default=0.0))

    def line(self):
        steps = self.steps_done()
        if self.base_steps is None:
            self.base_steps = steps
        elapsed = self.clock() - self.started
        rate = (steps - self.base_steps) / elapsed if elapsed > 0 else 0
        left = self.seconds_left()
        eta = "?" if left is None else ("0s" if left <= 0 else duration(left))
        pct = 100 * steps // max(self.total_steps, 1)
        retried = f", {self.retried} retried" if self.retried else ""
        return (f"tasks {len(self.done)}/{self.total} done, {len(self.running)} running, {len(self.failed)} "
                f"failed{retried} | steps {pct}%, {rate:.1f} steps/s, ETA {eta}")

    def tick(self, force=False):
        if force or self.clock() - self.last_line >= self.interval:
            self.say(self.line())
            self.last_line = self.clock()


class Report:
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
        self.progress.start(task)
        self.started_at.setdefault(task, time.monotonic())

    def finished(self, task):
        self.progress.stop(task, finished=True)
        self.ended_at[task] = time.monotonic()
        took = self.ended_at[task] - self.started_at.get(task, self.ended_at[task])
        self.progress.say(f"{self.tag(task)}seed {task.seed} {task.unit} done ({duration(took)})")
        if not merge(task, self.units_of(task)):
            self.unmerged.append(task)

    def retry(self, task, why, attempt, attempts):
        self.progress.stop(task)
        self.progress.retried += 1
        self.progress.say(f"{self.tag(task)}seed {task.seed} {task.unit}: {why}; running it again from its last "
                          f"checkpoint (attempt {attempt} of {attempts})")

    def failed(self, task, why, damaged=False):
        self.progress.stop(task)
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

"""``mi-ref reproduce``: every experiment, then every figure and the findings, on all the cores here.

With one job the experiments run one after another in this process, each as ``mi-ref run`` would run it.
With several jobs every (experiment, seed, unit) is a task of the sweep engine (:mod:`mi_ref.sweep`): single-
threaded tasks on local worker processes, the longest first (by :attr:`mi_ref.experiments.Experiment.cost`),
each task written to its own task directory and merged into the seed's run directory when it ends. The run
directories are then those of the serial run, and so are the numbers at the same number of BLAS threads
(a unit's random streams depend on its seed and its index only; ``tests/test_cli.py`` checks it). Timings:
each experiment's wall-clock span (from its first task's start to its last task's end) and its core-seconds
(the sum of its tasks' durations).
"""

import sys

from .progress import count
from .results import TASKS_DIR, RunDir, RunExistsError


def plan_all(names, preset, seeds, overrides_of, out, data_dir=None, keep_state=None):
    """The tasks of every experiment and seed, and ``{experiment: its order of units}``. Every config and
    dataset is checked here, before anything is written."""
    from . import experiments
    from .datasets import data_dir_for, load
    from .sweep.tasks import plan
    tasks, units = [], {}
    loaded = set()
    for name in names:
        exp = experiments.get(name)
        overrides = overrides_of(name)
        config = exp.config(preset, **overrides)
        dataset = getattr(config, "dataset", None)
        reads = data_dir_for(dataset, data_dir) if dataset is not None else None     # the directory it reads
        if dataset is not None and dataset not in loaded:
            load(dataset, reads)
            loaded.add(dataset)
        units[name] = exp.units(config)
        tasks += plan(name, preset, seeds, overrides, out, reads, keep_state=keep_state)
    return tasks, units


def task_cost(task):
    """The task's estimated cost, for ordering only (:attr:`mi_ref.experiments.Experiment.cost`)."""
    from . import experiments
    return experiments.get(task.experiment).estimated_cost(task.config(), task.unit)


def run_parallel(names, preset, seeds, overrides_of, out, data_dir=None, jobs=None, threads=1, resume=False,
                 retries=2, progress=True, stream=None, interval=30.0, keep_state=None):
    """Run every unit of every experiment and seed on ``jobs`` local worker processes of ``threads`` threads
    (default: one single-threaded worker per core), the costliest tasks first. Returns
    ``{"run_dirs": [...], "timings": {experiment: {"span", "core_seconds", "tasks"}}, "failed": {...}}``.

    Without ``resume`` a seed directory that exists already is an error (as for ``mi-ref run``); with it,
    finished units are kept and started ones continue from their checkpoints. ``keep_state``: as for
    :func:`mi_ref.sweep.sweep`.
    """
    from .checks import positive_int
    from .sweep.local import available_cores, run_local
    from .sweep.tasks import Report, SweepProgress, finished, merge, merged
    stream = stream or sys.stderr
    threads = positive_int(threads, "threads")
    tasks, units = plan_all(names, preset, seeds, overrides_of, out, data_dir, keep_state)
    for seed_dir in dict.fromkeys(t.run_dir for t in tasks):
        store = RunDir(seed_dir)
        if store.config_path.exists():
            if not resume:
                raise RunExistsError(f"{seed_dir} already holds a run; pass --resume to continue it, or choose "
                                     "another --out directory (nothing was overwritten)")
            header = next(t for t in tasks if t.run_dir == seed_dir).header()
            store.prepare(header, resume=True)
            try:
                for note in store.audit():
                    print(f"{store.path}: {note}", file=stream)
            finally:
                store.unlock()
    todo = []
    bar = SweepProgress("reproduce", tasks, lambda t: 0 if t.unit == "baseline" else getattr(t.config(), "n_iters", 0),
                        enabled=progress, stream=stream, interval=interval)
    report = Report(bar, lambda task: units[task.experiment])
    for task in tasks:
        if merged(task):
            bar.done.append(task)
            bar.skipped += 1
        elif finished(task):
            bar.done.append(task)
            bar.skipped += 1
            if not merge(task, units[task.experiment]):
                report.unmerged.append(task)
        else:
            todo.append(task)
    if jobs is None:
        jobs = max(1, min(len(todo), available_cores() // threads))
    jobs = positive_int(jobs, "jobs")
    if jobs * threads > available_cores():
        raise ValueError(f"--jobs {jobs} x --threads {threads} = {jobs * threads} threads exceed the "
                         f"{available_cores()} cores here; choose jobs x threads <= {available_cores()}")
    todo.sort(key=task_cost, reverse=True)                 # the longest first: the best finish on few workers
    bar.say(f"{len(tasks)} tasks of {count(len(names), 'experiment')} x {count(len(seeds), 'seed')}: {bar.skipped} "
            f"finished before, {len(todo)} to run on {count(jobs, 'worker process', 'worker processes')} x "
            f"{count(threads, 'thread')}")
    if todo:
        bar.tick(force=True)
        run_local(todo, jobs, threads, retries, report)
        bar.tick(force=True)
    for task in list(report.unmerged):
        RunDir(task.run_dir).lock(wait=True)
        RunDir(task.run_dir).unlock()
        if merge(task, units[task.experiment]):
            report.unmerged.remove(task)
    timings = {}
    for name in names:
        mine = [t for t in todo if t.experiment == name and t in report.ended_at]
        if mine:
            start = min(report.started_at[t] for t in mine)
            timings[name] = {"span": max(report.ended_at[t] for t in mine) - start,
                             "core_seconds": sum(report.ended_at[t] - report.started_at[t] for t in mine),
                             "tasks": len(mine)}
    run_dirs = list(dict.fromkeys(t.run_dir for t in tasks))
    for d in run_dirs:
        tasks_dir = d.parent / TASKS_DIR
        for empty in sorted(tasks_dir.glob("seed-*")) + [tasks_dir]:
            try:
                empty.rmdir()
            except OSError:
                pass
    failed = {t.key: why for t, why in report.failures.items()}
    return {"run_dirs": run_dirs, "timings": timings, "failed": failed}

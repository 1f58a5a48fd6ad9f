"""The sweep's driver: :func:`sweep` and :func:`sweep_grid` check a sweep, plan its tasks, run those not
finished yet on the local pool (:mod:`mi_ref.sweep.local`) or on a Dask cluster (:mod:`mi_ref.sweep.cluster`),
merge them and write ``OUT/RUN_NAME/sweep.json``; :func:`format_sweep` and :func:`format_grid` are the tables
that end a sweep, and :func:`parse_seeds` reads ``--seeds``.
"""

import json
import os
import sys
import tempfile
from pathlib import Path

from ..progress import count
from ..results import TASKS_DIR, RunDir, atomic_write_json, format_summary, write_summary
from .cluster import run_dask
from .local import available_cores, run_local
from .tasks import Report, SweepProgress, finished, merge, merged, plan, terminated_by_sigterm

MAX_SEEDS = 10_000      # the most seeds one sweep takes (more: another sweep into the same --out)


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




def sweep(experiment, preset, seeds, overrides=None, out="runs", data_dir=None, jobs=None, threads=1,
          scheduler=None, retries=2, progress=True, stream=None, interval=30.0, repair=False, keep_state=None,
          plugins=None):
    """Run ``seeds`` of ``experiment`` (see :mod:`mi_ref.sweep`): every (seed, unit) not finished yet is a
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
    preset's default, :meth:`mi_ref.experiments.Experiment.keeps_state`).

    ``plugins``: plugin files or modules (as ``--plugin``) loaded here first, before the settings are
    checked. Every plugin this process has loaded by name, these and any before them (the CLI's
    ``--plugin``), travels with each task, and the worker running it loads them first
    (:func:`mi_ref.sweep.tasks.load_plugins`): a plugin file must be at the same path on the workers (a
    shared filesystem, as ``OUT``), a plugin module importable there."""
    result = sweep_grid(experiment, preset, seeds, [dict(overrides or {})], out, data_dir, jobs, threads, scheduler,
                        retries, progress, stream, interval, repair, keep_state, plugins)
    (one,) = result["configs"]
    return {"run_dirs": one["run_dirs"], "failed": result["failed"], "damaged": result["damaged"],
            "summaries": one["summaries"]}


def sweep_grid(experiment, preset, seeds, configs, out="runs", data_dir=None, jobs=None, threads=1,
               scheduler=None, retries=2, progress=True, stream=None, interval=30.0, repair=False, keep_state=None,
               plugins=None):
    """:func:`sweep` over several configs at once: ``configs`` is a list of overrides of the preset (one per
    config, e.g. the product of ``mi-ref sweep --grid`` values), each config its own ``RUN_NAME`` with its
    own ``RUN_NAME/sweep.json``, and the tasks of all of them share one pool of workers. Every config is
    checked before any task runs; two that are the same config are an error. Returns ``{"configs":
    [{"overrides", "run_name", "run_dirs", "failed", "summaries"}, ...], "failed", "damaged"}`` (see
    :func:`sweep`, also for ``plugins``)."""
    from .. import experiments
    from ..checks import positive_int
    from ..datasets import DATA_ENV, load, reads_data_dir
    from ..plugins import given
    from ..plugins import load as load_plugin
    if isinstance(plugins, (str, os.PathLike)):
        plugins = [plugins]
    for spec in plugins or ():
        load_plugin(spec)                                    # the kinds it registers are known from here on
    plugins = given()
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
    plans = [plan(experiment, preset, seeds, c, out, data_dir, repair, keep_state, plugins) for c in configs]
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
    report = Report(bar, lambda task: units_of[name_of[task]], lambda task: tags.get(name_of[task], ""))
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
        where = f"{count(jobs, 'local worker process', 'local worker processes')} x {count(threads, 'thread')}"
    else:
        where = f"the Dask cluster {scheduler if isinstance(scheduler, str) else 'of the given client'}"
    shape = f"{count(len(seeds), 'seed')} x {count(len(units_of[names[0]]), 'unit')}" if len(names) == 1 else \
        f"{len(names)} configs x {count(len(seeds), 'seed')} x their units"
    output = plans[0][0].run_dir.parent if len(names) == 1 else Path(out)
    bar.say(f"{len(all_tasks)} tasks ({shape}): {bar.skipped} finished before, {len(todo)} to run on {where}; "
            f"output in {output}")
    if todo:
        bar.tick(force=True)
        with terminated_by_sigterm():
            if scheduler is None:
                run_local(todo, jobs, threads, retries, report)
            else:
                run_dask(todo, scheduler, threads, retries, report)
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

    from ..stats import sample_sd
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
    from ..experiments import describe_value
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

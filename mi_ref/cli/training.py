"""The commands that train: ``mi-ref run`` (one experiment, seed after seed), ``mi-ref sweep`` (many seeds as
tasks on local workers or a Dask cluster, or a grid of configs) and ``mi-ref reproduce`` (every experiment,
then its figures and findings), with the settings they share (the preset's settings changed on the command
line, and the adjustments mi-ref makes on its own)."""

import sys

from .common import CLIError, _warn


def _overrides(exp, args):
    """The preset's settings changed on the command line: ``--set key=value`` (any field of the experiment's
    config), and the shortcuts --dataset, --steps (n_iters) and --evals (n_evals); a shortcut and a --set of
    the same setting are an error. Every adjustment mi-ref makes on its own (:func:`_adjusted`) is said on
    stderr, never silent, once every value is known to be valid."""
    overrides, notes = _adjusted(exp, args.preset, _given(exp, args))
    exp.config(args.preset, **overrides)          # every value is valid before a note says what was adjusted
    for note in notes:
        _warn(note)
    return overrides


def _given(exp, args):
    """The settings given on the command line, as they are (``--set`` and the shortcuts)."""
    import dataclasses

    from .. import experiments
    fields = {f.name for f in dataclasses.fields(exp.presets[args.preset])}
    overrides = experiments.parse_sets(exp, args.preset, args.set or [])
    for flag, value, key in (("--dataset", args.dataset, "dataset"), ("--evals", args.evals, "n_evals"),
                             ("--steps", args.steps, "n_iters")):
        if value is not None and key in overrides:
            raise CLIError(f"{flag} {value} and --set {key}={overrides[key]} both set {key}; give one of them")
    if args.dataset is not None:
        overrides["dataset"] = args.dataset
    if args.evals is not None:
        if "n_evals" not in fields:
            raise CLIError(f"{exp.name} takes no --evals (it has no evaluation schedule of that kind)")
        overrides["n_evals"] = args.evals
    if args.steps is not None:
        overrides["n_iters"] = args.steps
    return overrides


def _adjusted(exp, preset, overrides):
    """``(overrides, notes)``: the settings ``overrides`` with the adjustments mi-ref makes on its own, and a
    note for each:

    * more evaluations than steps: one evaluation per step (n_evals = n_iters);
    * a paper preset whose schedule is changed (steps or evaluations): it also evaluates after its last step
      (eval_final), so that the last point of its curves is the trained model, unless --set eval_final=false.
    """
    import dataclasses
    base = exp.presets[preset]
    fields = {f.name for f in dataclasses.fields(base)}
    overrides, notes = dict(overrides), []
    steps = overrides.get("n_iters", getattr(base, "n_iters", None))
    if "n_evals" in fields and isinstance(steps, int) and isinstance(overrides.get("n_evals", base.n_evals), int) \
            and overrides.get("n_evals", base.n_evals) > steps > 0:
        notes.append(f"{overrides.get('n_evals', base.n_evals)} evaluations asked for {steps} steps: evaluating at "
                     f"every step instead (n_evals = {steps})")
        overrides["n_evals"] = steps
    schedule_changed = any(overrides.get(k, getattr(base, k, None)) != getattr(base, k, None)
                           for k in ("n_iters", "n_evals"))
    if "eval_final" in fields and not base.eval_final and schedule_changed and "eval_final" not in overrides:
        notes.append("the paper's schedule ends one evaluation interval before the last step; this shortened run "
                     "also evaluates after its last step (--set eval_final=false to skip that)")
        overrides["eval_final"] = True
    return overrides, notes


def _threads(args):
    """A context pinning BLAS and numba threads to ``--threads`` (no change without it)."""
    import contextlib
    threads = getattr(args, "threads", None)
    if threads is None:
        return contextlib.nullcontext()
    from ..sweep import available_cores
    from ..sweep.tasks import pinned
    if threads > available_cores():
        raise CLIError(f"--threads {threads} exceeds the {available_cores()} cores here")
    return pinned(threads)


def _run_seeds(name, args, continuing=False):
    """Run the seeds of ``args`` of experiment ``name``; with ``continuing`` (``mi-ref run``), ``--resume``
    also continues a finished shorter run to a larger ``--steps`` (:mod:`mi_ref.extend`), and is an error
    where there is no run to continue."""
    from .. import experiments
    from ..accel import configure_malloc
    configure_malloc()   # a training process: keep freed heap memory resident (see its docstring)
    exp = experiments.get(name)
    if args.dataset is not None and not hasattr(exp.presets[args.preset], "dataset"):
        raise CLIError(f"{name} uses synthetic data and takes no --dataset")
    if args.repair and not args.resume:
        raise CLIError("--repair goes with --resume (it repairs a run being resumed)")
    overrides = _overrides(exp, args)
    paths = []
    config = exp.config(args.preset, **overrides)            # fails here, before anything is written
    seeds = list(range(args.seed, args.seed + args.runs))
    sources = {}
    if continuing and args.resume:
        from .. import extend
        given = {item.partition("=")[0].strip() for item in args.set or []}
        given |= {key for key, flag in (("n_evals", args.evals), ("n_iters", args.steps)) if flag is not None}
        overrides, plans = extend.plan(name, args.preset, seeds, args.out, overrides, given)
        config = exp.config(args.preset, **overrides)
        for p in plans:                                      # every shorter run is checked before anything runs
            if p.source is not None:
                extend.check(p.source, name, args.preset, overrides)
                sources[p.seed] = p.source
        for p in plans:
            for note in p.notes:
                _warn(note)
    for seed in seeds:
        path = experiments.run_dir_for(args.out, name, args.preset, seed, config)
        try:
            if seed in sources:
                from ..extend import extend as continue_run
                for note in continue_run(sources[seed], path, name, args.preset, seed, overrides):
                    _warn(note)
            with _threads(args):
                paths.append(experiments.run_experiment(name, args.preset, seed, args.out, args.resume,
                                                        args.data_dir, not args.quiet, repair=args.repair,
                                                        keep_state=args.keep_state, **overrides))
        except KeyboardInterrupt:
            if (path / "config.json").exists():
                print(f"interrupted: everything up to the last evaluation is saved in {path}; continue with the "
                      "same command and --resume", file=sys.stderr)
            else:
                print(f"interrupted before anything was written for {name} seed {seed}: run the same command to "
                      "start it", file=sys.stderr)
            raise
        print(f"{name} seed {seed}: results in {path}")
    from ..results import format_summary, write_summary
    print(format_summary([write_summary(p) for p in paths]))
    return paths


def _cmd_run(args):
    """``mi-ref run EXPERIMENT``: train every variant of one experiment for --runs seeds."""
    from .. import experiments
    experiments.get(args.experiment)        # unknown names fail before anything runs
    paths = _run_seeds(args.experiment, args, continuing=True)
    print(f"plot with: mi-ref plot {' '.join(str(p) for p in paths)} --out figures")
    return 0


def _sweep_or_stop(run_sweep, *args, **kwargs):
    """``run_sweep(*args, **kwargs)``, or None after SIGTERM (the workers are stopped, every task keeps its last
    checkpoint); Ctrl-C says the same and propagates."""
    from ..sweep import Terminated
    try:
        return run_sweep(*args, **kwargs)
    except Terminated:
        print("mi-ref sweep: terminated (SIGTERM): the workers were stopped and every task keeps its last "
              "checkpoint; continue with the same command", file=sys.stderr)
        return None
    except KeyboardInterrupt:
        print("interrupted: every task keeps its last checkpoint; continue with the same command",
              file=sys.stderr)
        raise


def _cmd_sweep(args):
    """``mi-ref sweep EXPERIMENT --seeds 0-19 [--jobs N | --scheduler ADDRESS]``: many seeds, each (seed,
    variant) a task of its own (:mod:`mi_ref.sweep`)."""
    from .. import experiments
    from ..sweep import format_sweep, parse_seeds, sweep
    exp = experiments.get(args.experiment)
    if args.dataset is not None and not hasattr(exp.presets[args.preset], "dataset"):
        raise CLIError(f"{args.experiment} uses synthetic data and takes no --dataset")
    if args.jobs is not None and args.scheduler is not None:
        raise CLIError("--jobs runs local workers and --scheduler a Dask cluster's: give one of them")
    seeds = parse_seeds(args.seeds)
    if args.grid:
        return _sweep_grid(exp, args, seeds)
    overrides = _overrides(exp, args)
    result = _sweep_or_stop(sweep, args.experiment, args.preset, seeds, overrides, args.out, args.data_dir,
                            args.jobs, args.threads, args.scheduler, args.retries, progress=not args.quiet,
                            repair=args.repair, keep_state=args.keep_state)
    if result is None:
        return 143
    print(format_sweep(result))
    if result["failed"]:
        damaged = len(result["damaged"])
        print(f"{len(result['failed'])} task(s) failed; run the same command again to retry them"
              + (f" ({damaged} with a damaged directory: add --repair to recompute them from their start)"
                 if damaged else ""), file=sys.stderr)
        return 2
    top = result["run_dirs"][0].parent
    print(f"plot with: mi-ref plot {top} --out figures; judge with: mi-ref findings {top}")
    return 0


def _sweep_grid(exp, args, seeds):
    """``mi-ref sweep EXPERIMENT --grid KEY=V1,V2 ...``: the product of the grid's values, each config a sweep
    of its own RUN_NAME over the seeds, all in one pool of workers, then a table comparing the configs."""
    from .. import experiments
    from ..sweep import format_grid, sweep_grid
    grid = experiments.parse_grid(exp, args.preset, args.grid)
    given = _given(exp, args)
    for key, _ in grid:
        flag = {"n_iters": "--steps", "n_evals": "--evals", "dataset": "--dataset"}.get(key)
        if key in given:
            source = f"--set {key}=..." if any(i.partition("=")[0].strip() == key for i in args.set or []) else flag
            raise CLIError(f"{source} and --grid {key}=... both set {key}; give one of them")
    configs, notes = [], []
    for combination in experiments.grid_configs(given, grid):
        adjusted, more = _adjusted(exp, args.preset, combination)
        try:
            exp.config(args.preset, **adjusted)
        except ValueError as err:
            label = ", ".join(f"{k}={experiments.describe_value(combination[k])}" for k, _ in grid)
            raise CLIError(f"the grid's config {label}: {err}") from None
        configs.append(adjusted)
        notes += [n for n in more if n not in notes]
    for note in notes:
        _warn(note)
    result = _sweep_or_stop(sweep_grid, args.experiment, args.preset, seeds, configs, args.out, args.data_dir,
                            args.jobs, args.threads, args.scheduler, args.retries, progress=not args.quiet,
                            repair=args.repair, keep_state=args.keep_state)
    if result is None:
        return 143
    print(format_grid(result, [k for k, _ in grid]))
    if result["failed"]:
        for key, why in result["failed"].items():
            print(f"FAILED {key}: {why}", file=sys.stderr)
        damaged = len(result["damaged"])
        print(f"{len(result['failed'])} task(s) failed; run the same command again to retry them"
              + (f" ({damaged} with a damaged directory: add --repair to recompute them from their start)"
                 if damaged else ""), file=sys.stderr)
        return 2
    folders = " ".join(str(c["run_dirs"][0].parent) for c in result["configs"])
    print(f"compare with: mi-ref plot {folders} --separate --out figures; judge with: mi-ref findings {folders}")
    return 0


def _cmd_reproduce(args):
    """``mi-ref reproduce``: every experiment of the registry, then every figure and the findings. With
    ``--jobs 1`` the experiments run one after another in this process; otherwise every (experiment, seed,
    variant) is a single-threaded task on local workers (:mod:`mi_ref.reproduce`), the same numbers as the
    serial run with ``--threads 1``."""
    import time
    from pathlib import Path

    from .. import experiments
    from ..accel import configure_malloc
    from ..figures import plot_runs
    from ..results import format_summary, write_summary
    from ..sweep import available_cores
    names = args.only or experiments.names()
    for name in names:
        experiments.get(name)                 # an unknown name fails before anything runs
    if args.repair and not args.resume:
        raise CLIError("--repair goes with --resume (it repairs a run being resumed)")
    jobs = args.jobs if args.jobs is not None else max(1, available_cores() // (args.threads or 1))
    start_all = time.perf_counter()
    timings = {}
    if jobs == 1:
        all_paths = []
        for name in names:
            start = time.perf_counter()
            all_paths += _run_seeds(name, _for_experiment(args, name))
            timings[name] = {"span": time.perf_counter() - start}
    else:
        if args.repair:
            raise CLIError("--repair runs with --jobs 1 (it recomputes damaged variants in this process)")
        from ..reproduce import run_parallel
        configure_malloc()
        overrides = {name: _overrides(experiments.get(name), _for_experiment(args, name)) for name in names}
        result = run_parallel(names, args.preset, list(range(args.seed, args.seed + args.runs)), overrides.get,
                              args.out, args.data_dir, jobs, args.threads or 1, args.resume,
                              progress=not args.quiet, keep_state=args.keep_state)
        if result["failed"]:
            for key, why in result["failed"].items():
                print(f"FAILED {key}: {why}", file=sys.stderr)
            raise CLIError(f"{len(result['failed'])} task(s) failed; run the same command with --resume to "
                           "retry them")
        all_paths = result["run_dirs"]
        timings = result["timings"]
        for name in names:
            mine = [p for p in all_paths if p.parent.name.startswith(f"{name}-")]
            print(format_summary([write_summary(p) for p in mine]))
    training = time.perf_counter() - start_all
    for path in plot_runs(all_paths, args.figures, args.format):
        print(f"wrote {path}")
    from ..verdicts import format_table, judge, output_path, write_json
    verdicts = judge(all_paths)
    print("\nThe paper's findings, judged on these runs:\n" + format_table(verdicts))
    path, note = output_path(all_paths, folder=Path(args.out))
    print(f"wrote {write_json(verdicts, path, all_paths)}" + (f" ({note})" if note else ""))
    print(f"\n{'experiment':13s} {'wall s':>8s} {'core-s':>8s}")
    for name, t in timings.items():
        core = f"{t['core_seconds']:8.1f}" if "core_seconds" in t else f"{'':8s}"
        print(f"{name:13s} {t['span']:8.1f} {core}")
    print(f"{'training':13s} {training:8.1f}   ({jobs} job{'s' if jobs > 1 else ''})")
    print(f"{'all':13s} {time.perf_counter() - start_all:8.1f}   (training, figures and findings)")
    return 0


def _for_experiment(args, name):
    """``args`` as ``mi-ref run`` would see them for experiment ``name`` (``--dataset`` is dropped for the
    experiments on synthetic data, which have no dataset)."""
    import copy

    from .. import experiments
    if args.dataset is not None and not hasattr(experiments.get(name).presets[args.preset], "dataset"):
        args = copy.copy(args)
        args.dataset = None
    return args

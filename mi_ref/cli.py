"""The ``mi-ref`` command. Thin: it parses arguments, calls the library and prints results.

Every subcommand is a function ``_cmd_NAME(args) -> exit code`` registered in :func:`build_parser`.
A ``ValueError`` or ``FileNotFoundError`` raised by the library becomes a one-line message on stderr and
exit code 2; nothing is written before the inputs are validated.
"""

import argparse
import sys

from . import __version__


class CLIError(Exception):
    """A user error found by the CLI itself (reported like ValueError, exit code 2)."""


def _cmd_download(args):
    """``mi-ref download mnist --to DIR [--mirror URL ...]``: fetch and verify the MNIST IDX files."""
    from .download import DEFAULT_MIRRORS, download_mnist

    mirrors = args.mirror if args.mirror else DEFAULT_MIRRORS
    download_mnist(args.to, mirrors, timeout=args.timeout, deadline=args.deadline, min_rate=args.min_rate,
                   log=print)
    print(f"MNIST is ready in {args.to}: pass --data-dir {args.to} or set MI_REF_DATA={args.to}")
    return 0


def _cmd_baseline(args):
    """``mi-ref baseline --dataset digits|mnist``: the linear probe on raw top-half pixels."""
    import numpy as np

    from .data import load
    from .probe import pixel_baseline

    if not args.noise_std >= 0:
        raise CLIError(f"--noise-std must be >= 0, got {args.noise_std}")
    dataset = load(args.dataset, args.data_dir)
    accuracy = pixel_baseline(dataset, args.noise_std, np.random.default_rng(args.seed), seed=args.seed)
    print(f"pixel baseline ({args.dataset}, top-half pixels, noise std {args.noise_std:g}, seed {args.seed}): "
          f"test accuracy {accuracy:.4f}")
    return 0


def _nonnegative(text):
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _positive(text):
    """argparse type: an integer >= 1 (:func:`mi_ref.checks.positive_int`)."""
    from .checks import positive_int
    try:
        return positive_int(int(text), "the value")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None


def _cmd_list(args):
    """``mi-ref list``: every experiment, the paper figure it reproduces, its presets and, for each preset,
    whether the paper's findings hold as last measured (the verdicts recorded in the package)."""
    from . import experiments
    from .findings import load_recorded, quick_scale_note, seeds_text
    recorded = load_recorded()
    for name in experiments.names():
        exp = experiments.get(name)
        print(f"{name:13s} {exp.figure:16s} {exp.summary}")
        for preset in experiments.PRESETS:
            cfg = exp.presets[preset]
            steps = getattr(cfg, "n_iters", None)
            dataset = getattr(cfg, "dataset", "synthetic")
            print(f"{'':13s}   --preset {preset:6s} {dataset}, {steps} steps")
            if args.settings:
                import dataclasses
                values = ", ".join(f"{f.name}={getattr(cfg, f.name)!r}" for f in dataclasses.fields(cfg))
                print(f"{'':13s}       settings (change with --set KEY=VALUE): {values}")
            entries = [e for e in recorded if e["experiment"] == name and e["preset"] == preset]
            if not entries:
                print(f"{'':13s}       findings: not measured yet")
            for e in entries:
                each = (" (" + ", ".join(f"seed {k}: {v}" for k, v in e["per_seed"].items()) + ")"
                        if e["per_seed"] else "")
                print(f"{'':13s}       {e['finding']}: {e['verdict']}{each}; last measured on {e['dataset']}, "
                      f"{e['steps']} steps, {seeds_text(e['seeds'])}")
                note = quick_scale_note(e["finding"], preset, e["verdict"])
                if note:
                    print(f"{'':13s}         not shown at this scale: {note}")
    return 0


def _warn(message):
    print(f"mi-ref: note: {message}", file=sys.stderr)


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

    from . import experiments
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
    from .sweep import _pinned, available_cores
    if threads > available_cores():
        raise CLIError(f"--threads {threads} exceeds the {available_cores()} cores here")
    return _pinned(threads)


def _run_seeds(name, args, continuing=False):
    """Run the seeds of ``args`` of experiment ``name``; with ``continuing`` (``mi-ref run``), ``--resume``
    also continues a finished shorter run to a larger ``--steps`` (:mod:`mi_ref.extend`), and is an error
    where there is no run to continue."""
    from . import experiments
    from .accel import configure_malloc
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
        from . import extend
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
                from .extend import extend as continue_run
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
    from .results import format_summary, write_summary
    print(format_summary([write_summary(p) for p in paths]))
    return paths


def _cmd_run(args):
    """``mi-ref run EXPERIMENT``: train every variant of one experiment for --runs seeds."""
    from . import experiments
    experiments.get(args.experiment)        # unknown names fail before anything runs
    paths = _run_seeds(args.experiment, args, continuing=True)
    print(f"plot with: mi-ref plot {' '.join(str(p) for p in paths)} --out figures")
    return 0


def _sweep_or_stop(run_sweep, *args, **kwargs):
    """``run_sweep(*args, **kwargs)``, or None after SIGTERM (the workers are stopped, every task keeps its last
    checkpoint); Ctrl-C says the same and propagates."""
    from .sweep import Terminated
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
    from . import experiments
    from .sweep import format_sweep, parse_seeds, sweep
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
    from . import experiments
    from .sweep import format_grid, sweep_grid
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


def _cmd_plot(args):
    """``mi-ref plot RUN_DIR... --out DIR``: figures from saved results."""
    from .plots import plot_runs
    from .runs import expand_run_dirs
    for path in plot_runs(expand_run_dirs(args.run_dirs), args.out, args.format, args.separate, args.partial):
        print(f"wrote {path}")
    return 0


def _cmd_reproduce(args):
    """``mi-ref reproduce``: every experiment of the registry, then every figure and the findings. With
    ``--jobs 1`` the experiments run one after another in this process; otherwise every (experiment, seed,
    variant) is a single-threaded task on local workers (:mod:`mi_ref.reproduce`), the same numbers as the
    serial run with ``--threads 1``."""
    import time
    from pathlib import Path

    from . import experiments
    from .accel import configure_malloc
    from .plots import plot_runs
    from .results import format_summary, write_summary
    from .sweep import available_cores
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
        from .reproduce import run_parallel
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
    from .findings import format_table, judge, output_path, write_json
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

    from . import experiments
    if args.dataset is not None and not hasattr(experiments.get(name).presets[args.preset], "dataset"):
        args = copy.copy(args)
        args.dataset = None
    return args


def _cmd_findings(args):
    """``mi-ref findings RUN_DIR...``: judge the paper's findings on saved runs; write their JSON beside the runs
    (or to --out), never over a file that is not an earlier judgement of the same runs without saying so."""
    from .findings import format_markdown, format_table, judge, output_path, write_json
    from .runs import expand_run_dirs
    run_dirs = expand_run_dirs(args.run_dirs)
    path, note = output_path(run_dirs, args.out)          # a bad --out fails before anything is judged
    verdicts = judge(run_dirs, partial=args.partial)
    print(format_markdown(verdicts) if args.markdown else format_table(verdicts))
    write_json(verdicts, path, run_dirs)
    print(f"wrote {path}" + (f" ({note})" if note else ""))
    return 0


def _cmd_vectors(args):
    """``mi-ref vectors --out DIR [--seed S]``: golden vectors for checking other implementations."""
    from .vectors import generate

    if args.seed < 0:
        raise CLIError(f"--seed must be >= 0, got {args.seed}")
    manifest = generate(args.out, args.seed)
    n_arrays = sum(len(entry["arrays"]) for entry in manifest["components"].values())
    print(f"wrote {len(manifest['components'])} component files ({n_arrays} arrays) and manifest.json to "
          f"{args.out} (seed {args.seed}, mi-ref {__version__})")
    print(f"array names, shapes, meanings and conventions: {args.out}/manifest.json; check your outputs with: "
          f"mi-ref verify {args.out} RESULTS.npz")
    for line in _golden_notes():
        _warn(line)
    return 0


def _golden_notes():
    """One line per registered critic, estimator or encoder that the golden vectors do not check (a plugin's):
    never left out silently."""
    from .declarations import golden_gaps
    from .vectors.components import WITHOUT_GOLDEN_SPEC
    lines = [f"{kind} {name!r} has no golden vectors: no component checks it (add one to COMPONENTS in "
             f"mi_ref/vectors/components.py, or say why it has none in WITHOUT_GOLDEN_SPEC['{kind}'] there)"
             for kind, name in golden_gaps()]
    lines += [f"{kind} {name!r} has no golden vectors (declared none: {why})"
              for kind, names in WITHOUT_GOLDEN_SPEC.items() for name, why in names.items()]
    return lines


def _cmd_verify(args):
    """``mi-ref verify DIR RESULTS.npz``: compare an implementation's outputs with the golden vectors."""
    from pathlib import Path

    from .files import load_npz
    from .verify import all_passed, compare_results, format_reports, unchecked_components

    path = Path(args.results)
    if not path.is_file():
        raise FileNotFoundError(f"results file {path} does not exist")
    if path.read_bytes()[:6] == b"\x93NUMPY":
        raise CLIError(f"{path} holds a single array (.npy); save a dict of arrays with numpy.savez(path, "
                       "**{'COMPONENT/ARRAY': array, ...})")
    results = load_npz(path, "results file")
    reports = compare_results(args.vectors, results, args.component, args.precision, args.allow_missing)
    unchecked = unchecked_components(args.vectors, reports)
    print(format_reports(reports, unchecked, args.require_all, args.show_skipped, args.show_unchecked))
    return 0 if all_passed(reports, unchecked, args.require_all) else 1


def _add_run_options(p, sweep=False, run=False):
    from .data import DATASETS
    p.add_argument("--preset", choices=["quick", "paper"], default="quick",
                   help="quick: laptop scale on the embedded MNIST subset (default); paper: the paper's settings "
                        "on MNIST")
    p.add_argument("--dataset", choices=list(DATASETS), default=None,
                   help="override the preset's dataset")
    p.add_argument("--data-dir", metavar="DIR", default=None,
                   help="directory of the MNIST IDX files (default: $MI_REF_DATA)")
    if not sweep:
        p.add_argument("--runs", type=_positive, default=1, metavar="N", help="number of seeds (default 1)")
        p.add_argument("--seed", type=_nonnegative, default=0, metavar="S", help="first seed (default 0)")
    p.add_argument("--out", default="runs", metavar="DIR", help="where run directories go (default runs/)")
    if not sweep:
        p.add_argument("--resume", action="store_true",
                       help="continue runs already in --out from their last evaluation (after checking their "
                            "files)" + ("; with a larger --steps, continue a finished shorter run of the same "
                                        "settings (it is kept; the longer run is a folder of its own, its rows "
                                        "those of a fresh run where the evaluation schedules coincide). No run to "
                                        "continue is an error" if run else ""))
        p.add_argument("--repair", action="store_true",
                       help="with --resume: recompute from their start the variants whose files were damaged")
    else:
        p.add_argument("--repair", action="store_true",
                       help="recompute from their start the units whose seed or task directories were damaged")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="change any setting of the experiment's config (repeatable), e.g. --set lr=1e-3 "
                        "--set estimators=infonce,nwj; `mi-ref list --settings` shows them")
    p.add_argument("--steps", type=_positive, default=None, metavar="N",
                   help="override the number of training steps (iterations for adversarial)")
    p.add_argument("--evals", type=_positive, default=None, metavar="N",
                   help="override the number of evaluations (one every steps // N steps, from step 0)")
    p.add_argument("--keep-state", action=argparse.BooleanOptionalAction, default=None,
                   help="keep each finished variant's trained state in final/VARIANT.npz (its parameters, Adam's "
                        "moments and stream positions: 24 bytes per parameter), from which a longer run continues "
                        "(`mi-ref run ... --steps N --resume`) and the parameters can be probed again. Default: "
                        "kept, except by the paper presets of invertible (672 MB per variant, 1.3 GB per seed) "
                        "and adversarial (407 MB per seed); every other preset's state is at most 52 MB per "
                        "variant (quick invertible; critics: 73 MB per seed)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    _add_plugin_option(p)
    if not sweep:
        p.add_argument("--threads", type=_positive, default=None, metavar="T",
                       help="BLAS and numba threads (default: the libraries' own, all cores; `reproduce` with "
                            "several jobs: 1 per task)")


def _add_plugin_option(p):
    p.add_argument("--plugin", action="append", metavar="FILE.py|MODULE", default=[],
                   help="load a plugin first: a Python file or an importable module that registers critics, "
                        "estimators or activations (repeatable); see README, 'Plugins'")


def _load_plugins(args):
    """The entry points of the group mi_ref.plugins, then every --plugin (a failure: one line, exit 2)."""
    from . import plugins
    plugins.load_entry_points()
    for spec in getattr(args, "plugin", None) or []:
        plugins.load(spec)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="mi-ref",
        description="Reference implementation of 'On Mutual Information Maximization for Representation "
                    "Learning' (Tschannen et al., ICLR 2020).")
    parser.add_argument("--version", action="version", version=f"mi-ref {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("download", help="download and verify a dataset (MNIST)",
                       description="Fetch the four MNIST IDX files from public mirrors, verify the SHA-256 of "
                                   "their uncompressed contents, write them atomically; files already present "
                                   "and valid are skipped.")
    p.add_argument("dataset", choices=["mnist"], help="the dataset to download")
    p.add_argument("--to", required=True, metavar="DIR", help="target directory (created if missing)")
    p.add_argument("--mirror", action="append", metavar="URL",
                   help="base URL serving NAME.gz (repeat for fallbacks; replaces the default mirrors)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="network timeout of any single operation (default 60)")
    p.add_argument("--deadline", type=float, default=900.0, metavar="SECONDS",
                   help="the most one file's transfer may take (default 900)")
    p.add_argument("--min-rate", type=float, default=10_000, metavar="BYTES_PER_S",
                   help="the slowest average transfer accepted after 30 s (default 10000)")
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser("baseline", help="linear-probe accuracy on raw top-half pixels",
                       description="Train the paper's linear probe on the raw top-half pixels (with optional "
                                   "shared Gaussian noise) and print its test accuracy.")
    p.add_argument("--dataset", choices=["mnist-subset", "digits", "mnist"], default="mnist-subset",
                   help="mnist-subset (embedded, default), digits (embedded 8x8) or mnist (needs --data-dir or "
                        "MI_REF_DATA)")
    p.add_argument("--data-dir", metavar="DIR", default=None,
                   help="directory of the MNIST IDX files (default: $MI_REF_DATA)")
    p.add_argument("--noise-std", type=float, default=0.0, metavar="S",
                   help="std of the Gaussian noise added to every image (default 0)")
    p.add_argument("--seed", type=int, default=0, metavar="N",
                   help="seed of the noise and of the probe's saga solver (default 0)")
    p.set_defaults(func=_cmd_baseline)

    p = sub.add_parser("list", help="the experiments, the figures they reproduce, their presets")
    p.add_argument("--settings", action="store_true", help="also every setting of every preset")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("run", help="run one experiment",
                       description="Train every variant of one experiment (one run directory per seed: "
                                   "OUT/RUN_NAME/seed-S, where RUN_NAME is EXPERIMENT-PRESET followed by the "
                                   "settings changed with --set, --steps, ...). Interrupt with Ctrl-C and continue "
                                   "with --resume: the finished metrics equal those of an uninterrupted run.")
    p.add_argument("experiment", help="experiment name (see `mi-ref list`)")
    _add_run_options(p, run=True)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("sweep", help="run many seeds of one experiment, locally or on a Dask cluster",
                       description="Run the given seeds of one experiment, every (seed, variant) as a task of its "
                                   "own: on --jobs local worker processes, or on the Dask cluster at --scheduler "
                                   "(pip install \"mi-ref[dask]\"). Output: the run directories of `mi-ref run`. "
                                   "A task whose worker dies runs again from its last checkpoint; finished tasks "
                                   "are skipped, so an interrupted sweep continues with the same command. Each "
                                   "task's metrics equal the serial run's at the same number of BLAS threads.")
    p.add_argument("experiment", help="experiment name (see `mi-ref list`)")
    p.add_argument("--seeds", required=True, metavar="SEEDS", help="seeds as ranges and lists, e.g. 0-19 or 0,2,5-7")
    p.add_argument("--grid", action="append", metavar="KEY=V1,V2",
                   help="run every combination of these values (repeatable: the product of all --grid options, "
                        "as Hydra's multirun), each config a RUN_NAME of its own, and end with a table comparing "
                        "the configs (mean +- sd over the seeds). Values are read as --set reads them; a "
                        "tuple-valued setting takes each value in brackets, e.g. --grid "
                        "critics=[bilinear,concat],[separable] (a plain critics=bilinear,concat is two configs of "
                        "one critic each). --set and the shortcuts apply to every config; a setting may not be "
                        "given both ways")
    _add_run_options(p, sweep=True)
    p.add_argument("--jobs", type=_positive, default=None, metavar="N",
                   help="local worker processes (default: the cores here divided by --threads, at most one per "
                        "task)")
    p.add_argument("--threads", type=_positive, default=1, metavar="T",
                   help="BLAS and numba threads per task (default 1; locally jobs x threads <= cores)")
    p.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="run on the Dask cluster of this scheduler, e.g. tcp://10.0.0.5:8786 (its workers need "
                        "mi-ref and the --out directory on a shared filesystem)")
    p.add_argument("--retries", type=_nonnegative, default=2, metavar="R",
                   help="how often a failed task is run again, resuming (default 2)")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("plot", help="figures from run directories",
                       description="Pool the runs of an experiment that differ only in their seed (mean +- sd) "
                                   "and write its figure. Runs with different configs are not averaged: that "
                                   "is an error naming the settings that differ, unless --separate.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run directories, or directories holding them (a sweep's RUN_NAME folder, an --out dir)")
    p.add_argument("--out", default="figures", metavar="DIR", help="output directory (default figures/)")
    p.add_argument("--format", choices=["png", "pdf", "svg"], default="png", help="figure format (default png)")
    p.add_argument("--separate", action="store_true",
                   help="runs of one experiment with different configs: draw each config's curves separately")
    p.add_argument("--partial", action="store_true",
                   help="also draw unfinished runs (e.g. a run in progress; the title says which); without it an "
                        "unfinished run is an error")
    _add_plugin_option(p)
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser("findings", help="judge the paper's findings on saved runs",
                       description="For every experiment among the run directories (runs that differ only in "
                                   "their seed are pooled: mean +- sd), print each finding of the paper, the "
                                   "paper's numbers, the measured numbers and whether its criterion holds; "
                                   "also write them as JSON beside the runs: findings.json in the common folder "
                                   "of the run directories (or --out). An earlier findings.json there is "
                                   "replaced only if it judged the same runs; otherwise it is kept and the "
                                   "verdicts go to findings-2.json (-3, ...).")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run directories, or directories holding them (a sweep's RUN_NAME folder, an --out dir)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="where to write the JSON (default: findings.json beside the runs, see above); an existing "
                        "FILE must be a findings file of mi-ref, and is replaced")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table instead of text")
    p.add_argument("--partial", action="store_true",
                   help="judge only the finished seeds, leaving out (and naming) unfinished runs; without it an "
                        "unfinished run is an error")
    _add_plugin_option(p)
    p.set_defaults(func=_cmd_findings)

    p = sub.add_parser("reproduce", help="run every experiment and write every figure",
                       description="Run all registered experiments with one preset, then plot them.")
    _add_run_options(p)
    p.add_argument("--figures", default="figures", metavar="DIR", help="where figures go (default figures/)")
    p.add_argument("--format", choices=["png", "pdf", "svg"], default="png", help="figure format (default png)")
    p.add_argument("--only", nargs="+", metavar="EXPERIMENT", help="run only these experiments")
    p.add_argument("--jobs", type=_positive, default=None, metavar="N",
                   help="local worker processes, each running one (experiment, seed, variant) at a time (default: "
                        "the cores here divided by --threads); --jobs 1 runs the experiments one after another "
                        "in this process")
    p.set_defaults(func=_cmd_reproduce)

    p = sub.add_parser("vectors", help="write golden vectors for checking another implementation",
                       description="Write one COMPONENT.npz per component (inputs, params, outputs, cotangents, "
                                   "gradients; float64) and manifest.json (every array's shape and meaning, the "
                                   "layout conventions, the tolerances). The same seed gives identical files.")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (created if missing)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of all random numbers (default 0)")
    _add_plugin_option(p)
    p.set_defaults(func=_cmd_vectors)

    p = sub.add_parser("verify", help="compare an implementation's outputs with the golden vectors",
                       description="Compare RESULTS.npz (arrays named COMPONENT/ARRAY, e.g. dense/output/y, "
                                   "dense/grad/param/W; or plain ARRAY names with --component) with the golden "
                                   "vectors in DIR and print a table per component and how many components "
                                   "were checked (K of N). When arrays fail, the common slips of a port "
                                   "(a logsumexp over the other axis, a permutation's direction, the padding "
                                   "side, ...) are tried on the stored inputs, and the one that reproduces "
                                   "the given numbers is named. Exit code 0 if every checked component "
                                   "passes, 1 if any fails (or, with --require-all, if any is unchecked), 2 "
                                   "for bad input.")
    p.add_argument("vectors", metavar="DIR", help="a directory written by `mi-ref vectors`")
    p.add_argument("results", metavar="RESULTS.npz", help="your outputs and gradients")
    p.add_argument("--component", metavar="NAME", default=None,
                   help="check only this component: RESULTS.npz holds its plain array names, or COMPONENT/ARRAY "
                        "keys of which only NAME's are checked")
    p.add_argument("--precision", choices=["float64", "float32"], default=None,
                   help="tolerances to use (default: float32 if any given array is float32, else float64)")
    p.add_argument("--allow-missing", action="store_true",
                   help="do not fail for outputs or gradients that RESULTS.npz does not hold")
    p.add_argument("--require-all", action="store_true",
                   help="fail (exit 1) unless RESULTS.npz checks every component of the manifest")
    p.add_argument("--show-skipped", action="store_true",
                   help="also list the optional aux/ arrays that RESULTS.npz does not hold")
    p.add_argument("--show-unchecked", action="store_true",
                   help="list the components that RESULTS.npz does not check (by default only their number)")
    p.set_defaults(func=_cmd_verify)
    return parser


def _os_error_text(err):
    """One line for an ``OSError``: the path it concerns and what to do about it."""
    import errno
    where = f" {err.filename}" if getattr(err, "filename", None) else ""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"cannot write{where}: {err.strerror}; free some space (or raise the quota), then run the same "
                "command again (with --resume for a run: nothing saved so far is lost)")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST):
        return f"cannot use{where}: {err.strerror}; choose another path or fix its permissions"
    return f"cannot use{where}: {err.strerror or err}"


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _load_plugins(args)
        return int(args.func(args) or 0)
    except BrokenPipeError:          # the reader of stdout went away (e.g. `mi-ref list | head`): not an error
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (CLIError, ValueError, FileNotFoundError, FloatingPointError) as err:
        print(f"mi-ref {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:          # a path that cannot be read or written: read-only, a file, no permission, full
        print(f"mi-ref {args.command}: error: {_os_error_text(err)}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"mi-ref {args.command}: error: out of memory; free memory or raise the limit (ulimit -v), or choose "
              "smaller settings, then run the same command again", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mi-ref {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The ``mi-ref`` command. Thin: it parses arguments, calls the library and prints results.

Every subcommand is a function ``_cmd_NAME(args) -> exit code`` registered in :func:`build_parser`.
A ``ValueError`` or ``FileNotFoundError`` raised by the library becomes a one-line message on stderr and
exit code 2; nothing is written before the inputs are validated.

This module holds the parser and :func:`main`; the subcommands are grouped by kind in
:mod:`mi_ref.cli.training` (run, sweep, reproduce), :mod:`mi_ref.cli.analysis` (list, plot, findings),
:mod:`mi_ref.cli.golden` (vectors, verify) and :mod:`mi_ref.cli.inputs` (download, baseline), and
:mod:`mi_ref.cli.common` holds what they share.
"""

import argparse
import sys

from .. import __version__
from .analysis import _cmd_findings, _cmd_list, _cmd_plot
from .common import CLIError
from .inputs import _cmd_baseline, _cmd_download
from .golden import _cmd_verify, _cmd_vectors
from .training import _cmd_reproduce, _cmd_run, _cmd_sweep


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
    from ..checks import positive_int
    try:
        return positive_int(int(text), "the value")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None


def _add_run_options(p, sweep=False, run=False):
    from ..datasets import DATASETS
    p.add_argument("--preset", choices=["quick", "paper"], default="quick",
                   help="quick: laptop scale on the embedded MNIST subset (default); paper: the paper's settings "
                        "on MNIST")
    p.add_argument("--dataset", choices=DATASETS.names(), default=None,
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
                        "estimators, encoders, activations or datasets (repeatable); see README, 'Plugins'")


def _load_plugins(args):
    """The entry points of the group mi_ref.plugins, then every --plugin (a failure: one line, exit 2)."""
    from .. import plugins
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
    from ..datasets import DATASETS
    p.add_argument("--dataset", choices=DATASETS.names(), default="mnist-subset",
                   help="default mnist-subset; " + "; ".join(f"{name}: {DATASETS.meta(name, 'description')}"
                                                             for name in DATASETS))
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


def _preload_plugins(argv):
    """Load the plugins named on the command line before the parser is built, so that the kinds they register
    (a dataset for ``--dataset``) are among its choices. A plugin that fails here is loaded again after
    parsing, which reports the failure with the command's name."""
    import argparse

    from .. import plugins
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--plugin", action="append", default=[])
    specs = pre.parse_known_args(argv)[0].plugin
    try:
        plugins.load_entry_points()
        for spec in specs:
            plugins.load(spec)
    except Exception:            # noqa: BLE001 - reported by _load_plugins after parsing
        pass


def main(argv=None):
    _preload_plugins(sys.argv[1:] if argv is None else argv)
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

"""Saved runs, read back: every reader of run directories (figures, findings, analysis) goes through
:func:`load_run` or :func:`load_records`, which check a run (:meth:`mi_ref.results.RunDir.verify`, with the
units its experiment writes) before anything of it is read, so that no figure or finding is made from a
damaged or edited run directory; :func:`expand_run_dirs` finds the run directories a path stands for. (This
module sits above :mod:`mi_ref.results` and :mod:`mi_ref.experiments`, which need nothing of it.)"""

import os
from pathlib import Path

from .audit import RunDirError
from .experiments import units_of_run
from .files import load_npz
from .results import RunDir


def checked_run(path):
    """``(run, config)``: the :class:`~mi_ref.results.RunDir` at ``path``, with the units of its experiment, and
    its config, once :meth:`~mi_ref.results.RunDir.verify` found nothing wrong. An experiment or preset this
    mi-ref does not know is a :class:`~mi_ref.audit.RunDirError` naming config.json."""
    run = RunDir(path)
    config = run.read_config()
    try:
        run.units = units_of_run(config)
    except ValueError as err:
        raise RunDirError(f"run config {run.config_path}: {err}") from None
    run.verify()
    return run, config


def load_run(path):
    """``{"path", "config", "metrics", "arrays": {variant: {...}}}`` of a finished or partial run, checked
    first (:func:`checked_run`)."""
    run, config = checked_run(path)
    arrays = {}
    if (run.path / "arrays").is_dir():
        for f in sorted((run.path / "arrays").glob("*.npz")):
            arrays[f.stem] = load_npz(f, "arrays")
    return {"path": str(run.path), "config": config, "metrics": run.read_metrics(), "arrays": arrays}


def load_records(runs):
    """Every metric row of the runs as flat records, ready for ``pandas.DataFrame(records)`` (pandas is not
    needed): the row's fields (README, "Metrics"), plus ``run`` (the directory), ``experiment``,
    ``preset``, ``seed`` and every setting of the run's config as ``config.NAME`` (tuples as lists). Each
    run is checked first (:func:`checked_run`).

    ``runs`` is what ``mi-ref plot`` takes: one path (a string or a ``pathlib.Path``) or a list of them,
    each a run directory or a folder holding runs (a run's ``RUN_NAME`` folder of ``seed-S`` directories,
    or an ``--out`` folder of such folders; :func:`expand_run_dirs`). Anything else is a
    ``TypeError`` saying what is expected (a string is never read character by character).

        import pandas as pd
        df = pd.DataFrame(mi_ref.runs.load_records("runs"))
        df[df.step == df.step.max()].groupby(["config.lr", "variant"]).accuracy.agg(["mean", "std"])
    """
    records = []
    for d in expand_run_dirs(run_paths(runs)):
        run, cfg = checked_run(d)
        fixed = {"run": str(run.path), "experiment": cfg["experiment"], "preset": cfg["preset"], "seed": cfg["seed"]}
        fixed.update({f"config.{k}": v for k, v in cfg["config"].items()})
        records += [dict(fixed, **row) for row in run.read_metrics()]
    return records


def run_paths(runs):
    """``runs`` as a list of paths: one path (``str`` or ``os.PathLike``) becomes a list of one; a list, tuple
    or other iterable of paths is listed as it is. ``TypeError`` for anything else, or for an item that is
    not a path."""
    if isinstance(runs, (str, os.PathLike)):
        return [runs]
    if isinstance(runs, bytes) or not hasattr(runs, "__iter__"):
        raise TypeError(f"expected a run directory, a folder holding runs, or a list of them, got {runs!r}")
    paths = list(runs)
    bad = [p for p in paths if not isinstance(p, (str, os.PathLike))]
    if bad:
        raise TypeError(f"expected paths of run directories or of folders holding runs, got {bad[0]!r} among them")
    return paths


def expand_run_dirs(paths):
    """Run directories from ``paths``: a run directory (it holds config.json) stands for itself; any other
    directory for the run directories below it: ``DIR/seed-S`` (a run's folder, e.g. a sweep's) and
    ``DIR/RUN_NAME/seed-S`` (an --out directory), seeds in numeric order. A path that is neither is an
    error."""
    out = []
    for given in paths:
        path = Path(given)
        if (path / "config.json").exists():
            out.append(path)
            continue
        if not path.is_dir():
            raise FileNotFoundError(f"{path} does not exist" if not path.exists() else
                                    f"{path} is not a run directory (it is a file)")
        seed_of = lambda p: (str(p.parent), int(p.name.split("-", 1)[1]) if p.name.split("-", 1)[1].isdigit() else -1)  # noqa: E731
        found = [c.parent for pattern in ("seed-*/config.json", "*/seed-*/config.json") for c in path.glob(pattern)
                 if not any(part.startswith(".") for part in c.relative_to(path).parts)]
        if not found:
            raise FileNotFoundError(f"{path} holds no run directory (no config.json in it, nor in seed-*/ or "
                                    "*/seed-*/ below it)")
        out += sorted(found, key=seed_of)
    return out

"""Continuing runs: a finished run made longer, with the numbers of a fresh run of that length.

``mi-ref run EXPERIMENT --steps M --resume`` where the run of M steps does not exist yet, but a finished run
of N < M steps with otherwise the same settings does (same experiment, preset, seed and every setting but
those of the run's length and schedule, ``config.LENGTH``: ``n_iters``, ``n_evals`` and ``eval_final`` for
the MI experiments, ``n_iters`` and ``record_every`` for sampling, ``n_iters`` and ``probe_every`` for
adversarial), continues that run from its last step:

* **Folders.** A run's folder name (``RUN_NAME``) encodes the settings changed from the preset, its length
  among them, so the longer run is another folder. The shorter run is left as it is; the longer one starts
  as a copy of it (:func:`extend`: its rows, arrays and config.json with ``extended_from``, which records
  where it came from and which rows equal a fresh run's), each variant's final state
  (``final/VARIANT.npz``, :meth:`mi_ref.loop.Loop.finish`) becoming the checkpoint it resumes from. Large
  files are hard links where the filesystem allows (mi-ref never changes them in place).
* **Numbers.** The training never reads the evaluations' random streams, and a final state holds the
  training streams where step N of a longer run takes its batch, so the parameters after every step equal
  those of a fresh run of M steps. A row depends on the parameters and, through the evaluations' own
  streams and ``train_loss`` (the mean loss since the previous row), on the evaluations before it. So the
  longer run's rows equal a fresh M-step run's (wall times aside) at every step up to which the two runs
  evaluated at the same steps (:func:`coinciding`), and a note says where they do not.
* **Schedules.** The MI experiments evaluate every ``n_iters // n_evals`` steps: the same ``n_evals`` over
  a longer run is a longer interval. Unless ``n_evals`` is given, the longer run keeps the shorter run's
  interval (``config.keeping_interval``: ``n_evals = M // interval`` where that gives the interval back),
  so that the schedules coincide, and a note says so; the preset's ``eval_final`` evaluation after the last
  step of the shorter run then is a scheduled evaluation of the longer one. Sampling and adversarial give
  their interval directly (``record_every``, ``probe_every``).

``--resume`` where neither the run nor a shorter one exists is an error (:class:`NoRunError`) naming the
directory looked for and listing the runs of the experiment under ``--out`` with their settings.
"""

import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import experiments
from .checkpoints import json_to_array, rows_sha256
from .files import copy, read_json
from .results import RunDir, atomic_savez, atomic_write_json, atomic_write_text, environment

EXTENDED_FROM = "extended_from"       # the key of config.json that records the shorter run
_MARK = ".extending"                  # a file in the folder an extension builds (so that a leftover is known)


class NoRunError(ValueError):
    """``--resume`` found no run to continue (nor a shorter one to extend)."""


def _canon(value):
    return json.loads(json.dumps(value))


def find_runs(out, name):
    """``[(run directory, its config.json)]`` of every run of experiment ``name`` under ``out``
    (``OUT/RUN_NAME/seed-S``), sorted by path; unreadable configs are skipped."""
    found = []
    out = Path(out)
    if not out.is_dir():
        return found
    for path in sorted(out.glob("*/seed-*/config.json")):
        if any(part.startswith(".") for part in path.relative_to(out).parts):
            continue
        try:
            config = read_json(path, dict, "run config")
        except (OSError, ValueError):
            continue
        if config.get("experiment") == name and isinstance(config.get("config"), dict):
            found.append((path.parent, config))
    return found


def runs_text(out, name, limit=12):
    """The runs of ``name`` under ``out``, one entry per run folder: its name, its seeds and its settings
    changed from the preset (for error messages)."""
    folders = {}
    for path, config in find_runs(out, name):
        folders.setdefault(path.parent.name, [config, []])[1].append(config.get("seed"))
    if not folders:
        return f"{out} holds no run of {name}" if Path(out).is_dir() else f"{out} does not exist"
    entries = []
    for folder, (config, seeds) in sorted(folders.items()):
        try:
            changed = experiments.describe_overrides(name, config["preset"], config["config"])
        except (KeyError, ValueError):
            changed = "settings unknown to this mi-ref"
        seeds = ", ".join(str(s) for s in sorted(seeds, key=lambda s: (not isinstance(s, int), s)))
        entries.append(f"{folder} (seed{'s' if ',' in seeds else ''} {seeds}; preset {config.get('preset')}"
                       + (f" with {changed})" if changed else ", its own settings)"))
    more = f"; and {len(entries) - limit} more" if len(entries) > limit else ""
    return f"the runs of {name} in {out}: " + "; ".join(entries[:limit]) + more


def _steps_text(steps):
    """``0, 100, ..., 2000`` for a long even list, else the steps (at most eight shown)."""
    steps = list(steps)
    if len(steps) > 4 and len({b - a for a, b in zip(steps, steps[1:])}) == 1:
        return f"{steps[0]}, {steps[1]}, ..., {steps[-1]}"
    if len(steps) > 8:
        return ", ".join(str(s) for s in steps[:6]) + f", ... ({len(steps)} steps)"
    return ", ".join(str(s) for s in steps)


def coinciding(old_steps, old_n, new_steps):
    """Where a run of ``old_n`` steps whose variant has rows at ``old_steps``, continued to a config whose
    fresh runs have rows at ``new_steps``, equals a fresh run: ``(equal, unequal, missing)``, the steps of the
    continued run's rows that equal a fresh run's (those up to which both evaluated at the same steps), the
    steps of its other rows, and the steps of a fresh run's rows it does not have. (It keeps the shorter run's
    rows, evaluates step ``old_n`` if the shorter run did not and the longer schedule has it, and then
    follows the longer schedule.)"""
    new_steps = sorted(new_steps)
    continued = sorted(set(old_steps) | {s for s in new_steps if s >= old_n})
    i = 0
    while i < min(len(continued), len(new_steps)) and continued[i] == new_steps[i]:
        i += 1
    return continued[:i], continued[i:], [s for s in new_steps if s not in set(continued)]


def _length(config):
    return tuple(getattr(config, "LENGTH", ("n_iters",)))


def _shorter(name, preset, seed, config, found):
    """The runs among ``found`` that ``config`` (of ``seed``) may continue: same preset and seed, the same
    settings but those of the length and schedule, fewer steps."""
    length = _length(config)
    mine = {k: v for k, v in _canon(dataclasses.asdict(config)).items() if k not in length}
    out = []
    for path, cfg in found:
        if cfg.get("preset") != preset or cfg.get("seed") != seed:
            continue
        theirs = {k: v for k, v in cfg["config"].items() if k not in length}
        steps = cfg["config"].get("n_iters")
        if theirs == mine and isinstance(steps, int) and steps < config.n_iters:
            out.append((path, cfg))
    return out


def _best(candidates, config):
    """The candidate to continue: the longest, then the one whose rows equal a fresh run's the longest."""
    def key(item):
        path, cfg = item
        old = experiments.config_of_run(cfg)
        equal = coinciding(old.row_steps(), old.n_iters, config.row_steps())[0]
        return (-old.n_iters, -len(equal), str(path))
    return sorted(candidates, key=key)[0]


@dataclass
class Plan:
    """What ``--resume`` does for one seed: continue ``target`` (it exists), create it from the shorter run
    ``source`` and continue it, or (neither) start it afresh."""

    seed: int
    target: Path
    source: Path = None
    exists: bool = False
    notes: list = field(default_factory=list)


def plan(name, preset, seeds, out, overrides, fixed=()):
    """``(overrides, plans)``: what ``mi-ref run NAME --resume`` does for each of ``seeds`` with the settings
    ``overrides`` (``fixed``: the settings given on the command line, which are never adjusted), one
    :class:`Plan` per seed, and the overrides to run with: those given, or, where no run of that config
    exists yet and a shorter one is continued, with the shorter run's evaluation interval kept
    (``config.keeping_interval``). :class:`NoRunError` naming the directory looked for and listing the runs
    nearby if no seed has a run to continue, nor a shorter one. Nothing is written."""
    exp = experiments.get(name)
    config = exp.config(preset, **overrides)
    targets = {s: experiments.run_dir_for(out, name, preset, s, config) for s in seeds}
    found = find_runs(out, name)
    notes = []
    if not any((t / "config.json").exists() for t in targets.values()):
        sources = [_shorter(name, preset, s, config, found) for s in seeds]
        first = next((c for c in sources if c), None)
        if first is not None:
            path, cfg = _best(first, config)
            adjust = {k: v for k, v in config.keeping_interval(experiments.config_of_run(cfg)).items()
                      if k not in fixed}
            if adjust:
                overrides = dict(overrides, **adjust)
                config = exp.config(preset, **overrides)
                shorter = experiments.config_of_run(cfg)
                notes.append(f"continuing a {shorter.n_iters}-step run that evaluated every {shorter.eval_every} "
                             f"steps: the {config.n_iters}-step run keeps that interval ("
                             + ", ".join(f"{k} = {v}" for k, v in adjust.items()) + "), so that its rows equal a "
                             "fresh run's; give --evals to choose another")
                targets = {s: experiments.run_dir_for(out, name, preset, s, config) for s in seeds}
    plans = []
    for seed in seeds:
        target = targets[seed]
        if (target / "config.json").exists():
            plans.append(Plan(seed, target, exists=True))
            continue
        candidates = _shorter(name, preset, seed, config, found)
        plans.append(Plan(seed, target, source=_best(candidates, config)[0] if candidates else None))
    if not any(p.exists or p.source for p in plans):
        where = targets[seeds[0]] if len(seeds) == 1 else \
            f"{targets[seeds[0]].parent}/seed-{{{','.join(str(s) for s in seeds)}}}"
        nearby = runs_text(out, name)
        raise NoRunError(f"--resume: there is no run to continue at {where}, nor a shorter run of the same settings; "
                         f"{nearby}. Run without --resume to start it"
                         + (", or give the settings of one of those runs" if nearby.startswith("the runs") else ""))
    for p in plans:
        if not p.exists and not p.source:
            p.notes.append(f"seed {p.seed} has no run to continue at {p.target}: it starts afresh")
    if plans:
        plans[0].notes[:0] = notes
    return overrides, plans


def _source(source, name, preset, overrides):
    """``(store, old config dict, old config, config, units)`` of the shorter run ``source`` and the longer
    config; ``ValueError`` if their variants differ."""
    exp = experiments.get(name)
    config = exp.config(preset, **overrides)
    old_cfg = RunDir(source).read_config()
    old = experiments.config_of_run(old_cfg)
    units = exp.units(config)
    if exp.units(old) != units:
        raise ValueError(f"{source} has the variants {exp.units(old)}, the longer run {units}; it cannot be continued")
    return RunDir(source, units=units, last_step=old.n_iters), old_cfg, old, config, units


def _check(store, old, config, units, source):
    """The checks of :func:`check`, on the locked ``store``."""
    store.verify()
    progress = store.read_progress()
    missing = [u for u in units if u not in progress["done"]]
    if missing:
        raise ValueError(f"{source} is not finished (it lacks {', '.join(missing)}), so it cannot be continued yet: "
                         f"finish it with the command that started it and --resume (its {old.n_iters} steps), then "
                         "continue it")
    for unit in units:
        if unit != "baseline" and (progress["final"].get(unit) is None or not store.final_path(unit).exists()):
            why = ("it kept no final state (it ran with --no-keep-state)" if progress["final"].get(unit) is None
                   else f"its final state {store.final_path(unit)} was deleted")
            raise ValueError(f"{source}: {unit} has no final state to continue from: {why}; so the run cannot be "
                             f"continued: run the {config.n_iters}-step run afresh (without --resume), with "
                             "--keep-state if it is to be continued later")


def check(source, name, preset, overrides):
    """Check, changing nothing, that the shorter run ``source`` can be continued as the config ``overrides``:
    it is undamaged (as ``mi-ref plot`` checks a run), finished, and kept the final state of every trained
    variant; else a ``ValueError`` that says why and what to do."""
    store, _, old, config, units = _source(source, name, preset, overrides)
    store.lock()
    try:
        _check(store, old, config, units, source)
    finally:
        store.unlock()


def extend(source, target, name, preset, seed, overrides):
    """Create the run directory ``target`` of the config ``overrides`` (of ``name``'s ``preset``, ``seed``) from
    the finished shorter run ``source``, to be resumed (:func:`mi_ref.experiments.run_experiment` with
    ``resume=True``), and return the notes to print: which rows equal a fresh run's.

    The shorter run is checked as ``mi-ref plot`` checks a run, locked while it is read and never changed. It
    must be finished and have kept the final state of every trained variant (else a ``ValueError`` saying
    why and what to do; nothing is written). The new directory is built in a temporary folder beside
    ``target`` and renamed into place, so an interruption leaves no half-made run (a leftover folder is
    removed by the next attempt)."""
    source, target = Path(source), Path(target)
    store, old_cfg, old, config, units = _source(source, name, preset, overrides)
    store.lock()
    try:
        _check(store, old, config, units, source)
        rows = store.read_metrics()
        states = {u: store.load_final(u) for u in units if u != "baseline"}       # their SHA-256 checked
        _remove_leftovers(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        try:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)            # a folder as mkdir makes it (mkdtemp's is private)
            notes = _build(tmp, store, rows, states, old_cfg, old, config, name, preset, seed, units, source)
            try:
                os.rename(tmp, target)
            except OSError:
                if not (target / "config.json").exists():      # not another process's continuation of the same run
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        store.unlock()
    return notes


def _build(tmp, store, rows, states, old_cfg, old, config, name, preset, seed, units, source):
    """Write the continued run into the empty folder ``tmp`` (see :func:`extend`); returns the notes."""
    (tmp / _MARK).write_text("")
    kept = [config.continued_row(r) if r["variant"] != "baseline" else r for r in rows]
    trained = [u for u in units if u != "baseline"]
    first = trained[0]
    old_steps = [r["step"] for r in rows if r["variant"] == first]
    equal, unequal, missing = coinciding(old_steps, old.n_iters, config.row_steps())
    header = {"experiment": name, "preset": preset, "seed": seed, "config": dataclasses.asdict(config)}
    record = {"run": str(source), "n_iters": old.n_iters,
              "settings": {k: _canon(getattr(old, k)) for k in _length(old)},
              "rows_equal_to_a_fresh_run": equal, "rows_unlike_a_fresh_run": unequal,
              "rows_of_a_fresh_run_missing": missing}
    atomic_write_json(tmp / "config.json", dict(_canon(header), environment=environment(), **{EXTENDED_FROM: record}))
    atomic_write_text(tmp / "metrics.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
    progress = store.read_progress()
    untrained = [u for u in units if u == "baseline"]
    atomic_write_json(tmp / "progress.json", {
        "done": untrained, "rows": {u: progress["rows"][u] for u in untrained if u in progress["rows"]},
        "sha256": {u: rows_sha256([r for r in kept if r["variant"] == u]) for u in untrained},
        "arrays": {}, "final": {}})
    for unit in trained:
        if store.arrays_path(unit).exists():
            copy(store.arrays_path(unit), tmp / "arrays" / f"{unit}.npz")
        arrays, meta = states[unit]
        own = {r["step"]: r for r in kept if r["variant"] == unit}
        pins = [rows_sha256([own[s]]) for s in meta.get("row_steps", []) if s in own]
        if meta.get("row_sha256") is None or pins == meta["row_sha256"]:
            copy(store.final_path(unit), tmp / "checkpoints" / f"{unit}.npz")
        else:                             # a row changed (continued_row): the checkpoint pins the new one
            atomic_savez(tmp / "checkpoints" / f"{unit}.npz", dict(arrays, __meta__=json_to_array(dict(meta, row_sha256=pins))))
    (tmp / _MARK).unlink()
    text = (f"continuing {source} ({old.n_iters} steps) as a {config.n_iters}-step run (the shorter run is kept as "
            "it is)")
    if not unequal and not missing:
        return [f"{text}: its rows equal those of a fresh {config.n_iters}-step run (the evaluation schedules "
                "coincide)"]
    return [f"{text}. The evaluation schedules differ: the shorter run has rows at steps {_steps_text(old_steps)}, a "
            f"fresh {config.n_iters}-step run at {_steps_text(config.row_steps())}. "
            + (f"The rows at {_at(equal)} equal a fresh run's; those at {_at(unequal)} do not" if equal else
               f"No row after the pixel baseline's equals a fresh run's (at {_at(unequal)})")
            + " (the parameters after every step do)"
            + (f", and it has none at {_at(missing)}" if missing else "")
            + "; config.json records this under extended_from"]


def _at(steps):
    return ("step " if len(steps) == 1 else "steps ") + _steps_text(steps)


def _remove_leftovers(target):
    """Remove the folders that interrupted extensions of ``target`` left (named as :func:`extend` names them
    and holding its mark, nothing else)."""
    for path in target.parent.glob(f".{target.name}.*.tmp") if target.parent.is_dir() else []:
        if path.is_dir() and not path.is_symlink() and (path / _MARK).exists():
            shutil.rmtree(path, ignore_errors=True)


__all__ = ["EXTENDED_FROM", "NoRunError", "Plan", "check", "coinciding", "extend", "find_runs", "plan", "runs_text"]

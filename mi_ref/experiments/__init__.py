"""The paper's experiments: a registry of :class:`Experiment` objects and the runner behind ``mi-ref run``.

Each experiment module defines a frozen config dataclass with the paper's values as defaults, two presets
(``paper``: exactly the paper's settings, see README "The paper's settings"; ``quick``: the same
mechanisms at laptop scale), a ``run(config, store, seed, dataset, progress, only=None)`` function that trains
every variant of the experiment (e.g. one per estimator) into one run directory per seed (``dataset`` is
None for synthetic experiments, whose configs have no ``dataset`` field; ``only``: a subset of the units to
run) and ``units(config)``: the names of what ``run`` writes, in order (the variants, and "baseline" for the
pixel-baseline row). A unit depends on nothing but (config, seed): :mod:`mi_ref.sweep` runs each one as a
task of its own. ``check_data(config, dataset)`` finds, before anything is written, the settings that cannot
run on the data: a batch larger than the data, sizes from which no model can be built.
"""

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path

from ..registry import Registry
from ..results import RunDir

PRESETS = ("quick", "paper")


@dataclass(frozen=True)
class Experiment:
    name: str
    figure: str                 # the paper's figure(s) it reproduces
    summary: str                # one line: what it shows
    presets: dict               # preset name -> config instance
    run: object                 # run(config, store, seed, dataset, progress, only=None) -> None
    units: object               # units(config) -> the names run() writes, in order (variants, "baseline")
    order: int = 100            # position in the paper (listings and `reproduce` follow it)
    check_data: object = None   # check_data(config, dataset) raises ValueError for settings that cannot run on
                                # that data (dataset None: synthetic): sizes, and the models the variants build
    cost: object = None         # cost(config, unit) -> estimated core-seconds of one unit (orders tasks only)
    keep_state: object = True   # whether a finished variant keeps its final state (final/VARIANT.npz) unless told:
                                # a bool, or {preset: bool} (see keeps_state)

    def estimated_cost(self, config, unit):
        """The estimated core-seconds of ``unit`` (``cost``, or else its number of steps), used only to start
        the longest tasks first when ``mi-ref reproduce`` spreads units over workers."""
        if self.cost is not None:
            return float(self.cost(config, unit))
        return 0.0 if unit == "baseline" else float(getattr(config, "n_iters", 1))

    def keeps_state(self, preset):
        """Whether a run of ``preset`` keeps each finished variant's final state (its parameters, Adam's
        moments and stream positions: 24 bytes per parameter; :meth:`mi_ref.loop.Loop.finish`) when not told
        otherwise (``mi-ref run --keep-state / --no-keep-state``)."""
        if isinstance(self.keep_state, dict):
            return bool(self.keep_state.get(preset, True))
        return bool(self.keep_state)

    def config(self, preset, **overrides):
        """The preset's config with overrides (None values are ignored); unknown names are an error."""
        if preset not in self.presets:
            raise ValueError(f"unknown preset {preset!r} for {self.name}; expected one of {sorted(self.presets)}")
        base = self.presets[preset]
        fields = {f.name for f in dataclasses.fields(base)}
        overrides = {k: v for k, v in overrides.items() if v is not None}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"{self.name} has no setting {unknown}; its settings are {sorted(fields)}")
        cfg = dataclasses.replace(base, **overrides)
        check = getattr(cfg, "check", None)
        if check is not None:
            check()
        return cfg


def parse_value(text, default, key):
    """The value of ``--set key=text``, parsed to the type of the field's current value ``default``:
    int, float, bool (true/false, yes/no, 1/0), str, or a tuple (comma-separated items of the type of the
    default's items; a Python/JSON literal for nested tuples). ``ValueError`` naming the key otherwise."""
    import ast
    text = text.strip()
    try:
        if isinstance(default, bool):
            lowered = text.lower()
            if lowered in ("true", "yes", "1"):
                return True
            if lowered in ("false", "no", "0"):
                return False
            raise ValueError
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, tuple):
            if text.startswith(("(", "[")):
                value = ast.literal_eval(text)
                return tuple(tuple(v) if isinstance(v, list) else v for v in value)
            items = [t.strip() for t in text.split(",") if t.strip()]
            kind = type(default[0]) if default else str
            return tuple(kind(t) if kind is not bool else parse_value(t, False, key) for t in items)
        if default is None or isinstance(default, str):
            return text
    except (ValueError, SyntaxError, TypeError):
        pass
    what = {bool: "true or false", int: "an integer", float: "a number",
            tuple: "comma-separated values, e.g. a,b"}.get(type(default), type(default).__name__)
    raise ValueError(f"--set {key}={text}: expected {what} (its default is {default!r})")


def parse_sets(experiment, preset, items):
    """``{field: value}`` from ``--set key=value`` items for ``experiment``'s ``preset`` config. An unknown
    key is an error listing the valid ones, and so is a key given twice (as Hydra refuses it: which of the two
    values was meant is not for mi-ref to guess); a value is parsed by :func:`parse_value`."""
    base = experiment.presets[preset] if preset in experiment.presets else None
    if base is None:
        raise ValueError(f"unknown preset {preset!r} for {experiment.name}; expected one of {sorted(experiment.presets)}")
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {item!r}")
        if key not in fields:
            raise ValueError(f"--set {key}: {experiment.name} has no setting {key!r}; its settings are "
                             f"{sorted(fields)}")
        if key in out:
            first = next(i for i in items if i.partition("=")[0].strip() == key).partition("=")[2].strip()
            raise ValueError(f"--set {key} is given twice ('{key}={first}' and '{key}={text.strip()}'); give each setting "
                             "once (to run several values, use `mi-ref sweep ... --grid "
                             f"{key}=V1,V2`)")
        out[key] = parse_value(text, fields[key], key)
    return out


def split_values(text, flag="--grid", key=""):
    """The values of ``--grid key=text``: ``text`` cut at its commas, except inside brackets, which group the
    items of one tuple-valued value (``[bilinear,concat],[concat]`` is two values, as Hydra's multirun reads
    ``key=[a,b],[c]``). ``ValueError`` for unbalanced brackets or an empty value."""
    values, depth, current = [], 0, ""
    for char in text:
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
            if depth < 0:
                break
        if char == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += char
    values.append(current.strip())
    if depth != 0:
        raise ValueError(f"{flag} {key}={text}: unbalanced brackets; a tuple-valued value is written in brackets, "
                         f"e.g. {flag} {key}=[a,b],[c]")
    if any(not v for v in values):
        raise ValueError(f"{flag} {key}={text}: an empty value; separate the values with single commas, e.g. "
                         f"{flag} {key}=V1,V2")
    return values


def parse_grid(experiment, preset, items):
    """``[(key, [value, ...])]`` from ``--grid key=V1,V2`` items for ``experiment``'s ``preset``, in the order
    given: the configs of a grid sweep are the product of these values (:func:`grid_configs`). A value is
    parsed as ``--set`` parses it (:func:`parse_value`); for a tuple-valued setting, a value in brackets is
    one tuple (``--grid critics=[bilinear,concat],[concat]``; ``[[1,0.5],[0.5,1]]`` for nested tuples) and a
    plain one a tuple of one item (``--grid critics=bilinear,concat`` is two configs, ``("bilinear",)`` and
    ``("concat",)``). An unknown key, a key given twice, a value given twice and a key without values are
    errors."""
    base = experiment.presets[preset] if preset in experiment.presets else None
    if base is None:
        raise ValueError(f"unknown preset {preset!r} for {experiment.name}; expected one of {sorted(experiment.presets)}")
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    out = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise ValueError(f"--grid expects KEY=V1,V2, got {item!r}")
        if key not in fields:
            raise ValueError(f"--grid {key}: {experiment.name} has no setting {key!r}; its settings are "
                             f"{sorted(fields)}")
        if key in [k for k, _ in out]:
            raise ValueError(f"--grid {key} is given twice; list all of its values in one --grid {key}=V1,V2")
        values = []
        for raw in split_values(text.strip(), "--grid", key):
            if isinstance(fields[key], tuple) and raw.startswith("[") and raw.endswith("]") and \
                    not any(c in raw[1:-1] for c in "[("):
                raw = raw[1:-1]
            value = parse_value(raw, fields[key], key)
            if value in values:
                raise ValueError(f"--grid {key}={text.strip()} gives the value {_short(value)} twice; give each value "
                                 "once")
            values.append(value)
        out.append((key, values))
    return out


def grid_configs(common, grid):
    """The overrides of every config of a grid sweep: ``common`` (the ``--set`` and shortcut settings, the
    same for every config) with each combination of the ``grid`` values (:func:`parse_grid`), the first key
    varying slowest. A key both in ``common`` and in the grid is an error."""
    import itertools
    both = sorted(set(common) & {k for k, _ in grid})
    if both:
        raise ValueError(f"{both[0]} is set for every config and by --grid {both[0]}=...; give it in one of them")
    keys = [k for k, _ in grid]
    return [dict(common, **dict(zip(keys, values))) for values in itertools.product(*[v for _, v in grid])]


REGISTRY = Registry("experiment")


def register(experiment):
    """Called by each module of this package for its :class:`Experiment` (found by :func:`names`)."""
    return REGISTRY.register(experiment.name, experiment)


def _load_all():
    """Import every module of this package once: each registers its experiment. A new experiment is a new
    module here, nothing else."""
    if getattr(_load_all, "done", False):
        return
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if module.name != "common":
            importlib.import_module(f"{__name__}.{module.name}")
    _load_all.done = True


def get(name):
    """The experiment registered as ``name``; an unknown name is an error listing the known ones."""
    _load_all()
    return REGISTRY.get(name)


def names():
    """Registered experiments in the paper's order."""
    _load_all()
    return sorted(REGISTRY.names(), key=lambda n: (REGISTRY.get(n).order, n))


def _short(value):
    if isinstance(value, list):
        value = tuple(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (tuple, list)):
        return ",".join(_short(v) for v in value)
    return str(value)


def overrides_of(name, preset, config):
    """``[(field, value)]`` of the settings in which ``config`` (a config object, or its dict as config.json
    holds it) differs from ``name``'s ``preset``, in the config's field order."""
    import json
    base = dataclasses.asdict(get(name).presets[preset])
    given = config if isinstance(config, dict) else dataclasses.asdict(config)
    canon = lambda v: json.loads(json.dumps(v))  # noqa: E731  (tuples and lists alike)
    return [(k, given[k]) for k in base if k in given and canon(given[k]) != canon(base[k])] + \
        [(k, v) for k, v in given.items() if k not in base]


def _reads_back(name, preset, diffs):
    """True if every ``key=short value`` of ``diffs`` reads back (:func:`parse_value`, as ``--set`` reads
    it) as exactly that value: then the short form of a run's name names one config only."""
    import json
    base = get(name).presets[preset]
    for key, value in diffs:
        text = _short(value)
        if not hasattr(base, key) or "=" in text:
            return False
        try:
            back = parse_value(text, getattr(base, key), key)
        except ValueError:
            return False
        if json.dumps(back) != json.dumps(value):
            return False
    return True


def run_name(name, preset, config=None):
    """The name of a run's folder: EXPERIMENT-PRESET, then the overrides of the preset, e.g.
    ``conditioning-paper-n_iters=2000-eval_final=true``. Overrides longer than 60 characters, or whose short
    form does not read back as exactly their values (``lr=0.00030000001`` would be shown as ``lr=0.0003``, a
    nested tuple flattened), become a short hash of the whole config and the names of the overridden
    settings, e.g. ``critics-quick-3f2a91c0-critics+lr``; so two configs never share a name. (config.json
    records every setting either way.) ``config``: a config object or its dict."""
    import hashlib
    import json
    diffs = [] if config is None else overrides_of(name, preset, config)
    if not diffs:
        return f"{name}-{preset}"
    text = "-".join(f"{k}={_short(v)}" for k, v in diffs)
    if len(text) > 60 or any(c in text for c in "/\\ ()[]'\"") or not _reads_back(name, preset, diffs):
        as_dict = config if isinstance(config, dict) else dataclasses.asdict(config)
        digest = hashlib.sha256(json.dumps(as_dict, sort_keys=True).encode()).hexdigest()[:8]
        keys = ""
        for k, _ in diffs:
            if len(keys) + len(k) > 48:
                keys += "+more"
                break
            keys += ("+" if keys else "") + k
        text = f"{digest}-{keys}"
    return f"{name}-{preset}-{text}"


def config_of_run(config):
    """The config object of a run, from its config.json (a dict with "experiment", "preset" and "config"; JSON
    lists become the config's tuples, settings this mi-ref does not have are left out); ``ValueError`` for an
    experiment or preset this mi-ref does not know."""
    exp = get(config["experiment"])
    if config["preset"] not in exp.presets:
        raise ValueError(f"unknown preset {config['preset']!r} for {exp.name}; expected one of {sorted(exp.presets)}")
    base = exp.presets[config["preset"]]
    fields = {f.name for f in dataclasses.fields(base)}

    def frozen(value):             # JSON lists back to the tuples of the config
        return tuple(frozen(v) for v in value) if isinstance(value, list) else value
    return dataclasses.replace(base, **{k: frozen(v) for k, v in config["config"].items() if k in fields})


def units_of_run(config):
    """The units (:attr:`Experiment.units`) of a run, from its config.json (a dict with "experiment",
    "preset" and "config"); ``ValueError`` for an experiment or preset this mi-ref does not know."""
    return get(config["experiment"]).units(config_of_run(config))


def describe_value(value):
    """A setting's value as run names, figure titles and tables write it: ``0.001``, ``true``,
    ``bilinear,concat``."""
    return _short(value)


def describe_overrides(name, preset, config):
    """``n_iters=2000, eval_final=true`` (empty if the config is the preset's)."""
    return ", ".join(f"{k}={_short(v)}" for k, v in overrides_of(name, preset, config))


def run_dir_for(out, name, preset, seed, config=None):
    """Where a run lives: OUT/RUN_NAME/seed-S (see :func:`run_name`)."""
    return Path(out) / run_name(name, preset, config) / f"seed-{seed}"


def run_experiment(name, preset="quick", seed=0, out="runs", resume=False, data_dir=None, progress=True,
                   repair=False, report=None, only=None, run_dir=None, keep_state=None, **overrides):
    """Run one seed of an experiment into its run directory and return that directory's path.

    Every argument is checked before anything is written. The directory is locked for the whole run
    (:meth:`mi_ref.results.RunDir.lock`). With ``resume=True`` an existing run is audited first
    (:meth:`mi_ref.results.RunDir.audit`; ``repair=True`` recomputes damaged variants) and continues from its
    last evaluation; a finished run is left as it is. ``report(line)`` receives what the audit repaired
    (default: stderr). ``only``: run just these of the experiment's units (``Experiment.units``); ``run_dir``:
    write there instead of ``OUT/RUN_NAME/seed-S`` (a sweep's task directory). ``keep_state``: whether each
    variant that finishes keeps its final state (``final/VARIANT.npz``, from which a longer run continues:
    :mod:`mi_ref.extend`); None: the preset's default (:meth:`Experiment.keeps_state`).
    """
    import sys

    from ..datasets import load
    from ..checks import positive_int
    exp = get(name)
    seed = positive_int(seed, "seed", minimum=0)
    config = exp.config(preset, **overrides)
    if hasattr(config, "dataset"):
        dataset = load(config.dataset, data_dir)                 # fails before anything is written
    elif data_dir is not None:
        raise ValueError(f"{name} uses synthetic data and reads no --data-dir (drop it)")
    else:
        dataset = None
    if exp.check_data is not None:
        exp.check_data(config, dataset)                           # so do sizes that do not fit the data
    if only is not None:
        unknown = sorted(set(only) - set(exp.units(config)))
        if unknown:
            raise ValueError(f"{name} has no variant {unknown}; its variants are {exp.units(config)}")
    report = report or (lambda line: print(line, file=sys.stderr))
    store = RunDir(run_dir if run_dir is not None else run_dir_for(out, name, preset, seed, config),
                   units=exp.units(config), last_step=getattr(config, "n_iters", None),
                   keep_state=exp.keeps_state(preset) if keep_state is None else keep_state)
    store.report = report
    header = {"experiment": name, "preset": preset, "seed": seed, "config": dataclasses.asdict(config)}
    try:
        if not store.prepare(header, resume):
            for note in store.audit(repair):
                report(f"{store.path}: {note}")
        exp.run(config, store, seed, dataset, progress, only=only)
    finally:
        store.unlock()
    return store.path

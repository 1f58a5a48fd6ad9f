"""The paper's experiments: a registry of :class:`Experiment` objects and the runner behind ``mi-ref run``.

Each experiment module defines a frozen config dataclass with the paper's values as defaults, two presets
(``paper``: exactly the paper's settings, see README "The paper's settings"; ``quick``: the same
mechanisms at laptop scale) and a ``run(config, store, seed, dataset, progress)`` function that trains every variant of the experiment
(e.g. one per estimator) into one run directory per seed (``dataset`` is None for synthetic experiments,
whose configs have no ``dataset`` field).
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
    run: object                 # run(config, store, seed, dataset, progress) -> None
    order: int = 100            # position in the paper (listings and `reproduce` follow it)

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


def run_dir_for(out, name, preset, seed):
    """Where a run lives: OUT/EXPERIMENT-PRESET/seed-S."""
    return Path(out) / f"{name}-{preset}" / f"seed-{seed}"


def run_experiment(name, preset="quick", seed=0, out="runs", resume=False, data_dir=None, progress=True,
                   **overrides):
    """Run one seed of an experiment into its run directory and return that directory's path.

    A finished run with ``resume=True`` is left as it is; a partial one continues from its last evaluation.
    """
    from ..data import load
    exp = get(name)
    config = exp.config(preset, **overrides)
    dataset = load(config.dataset, data_dir) if hasattr(config, "dataset") else None   # fails before writing
    store = RunDir(run_dir_for(out, name, preset, seed))
    header = {"experiment": name, "preset": preset, "seed": int(seed), "config": dataclasses.asdict(config)}
    store.prepare(header, resume)
    exp.run(config, store, int(seed), dataset, progress)
    return store.path

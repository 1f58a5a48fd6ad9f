"""The numbers a finding's rule compares, and their uncertainty: the metric rows of saved runs read seed by
seed (:func:`per_seed`, :func:`accuracies`, ...), and :func:`effect_test`, which compares an effect with its
threshold. The rules are in :mod:`mi_ref.findings`, their application to run directories in
:mod:`mi_ref.verdicts`.

**Verdicts account for noise.** Each rule compares a difference (an *effect*: an accuracy rise, a gap
between two variants) with its uncertainty. The effect is the mean over seeds of the per-seed differences
(paired by seed). Its standard error (SE) is

* the seed-to-seed SE, sample sd / sqrt(n), when 3 or more seeds are given (it holds the probe's noise,
  the training noise and the data order's: everything that differs between seeds);
* otherwise the probe's own SE, from its two sources of noise: the test images (each row keeps the probe's
  outcome on every test image, ``probe_hits``, so a difference of two accuracies on the same images has its
  paired SE, sd(c_a - c_b) / sqrt(M)) and the solver (saga with tol 0.1 lands on slightly different
  weights for another random order: :data:`PROBE_REFIT_SD` per accuracy, measured by
  ``scripts/finding_vs_scale.py``), SE_seed = sqrt(paired SE^2 + 2 refit sd^2), and for n seeds
  SE = sqrt(sum of SE_seed^2) / n. Rows without outcomes fall back to two independent binomial
  accuracies, sqrt(p (1 - p) / M + q (1 - q) / M), which over-states the noise of a paired difference.

A directional rule holds when the effect is at least its *threshold* = max(minimum effect, 2 SE); every
verdict prints effect, SE and threshold. The minimum effects are stated with each rule (0.01 accuracy is
about twice the probe's paired SE of a difference on the subset's 5000 test images).
"""

import math
from dataclasses import dataclass

import numpy as np

from .registry import NONE
from .results import RunDir
from .stats import sample_sd

# ----------------------------------------------------------------------------------------------------
# reading the runs


class IncompleteRunError(ValueError):
    """A run given to ``judge`` (or ``plot``) has not finished every unit of its experiment."""


class MissingData(Exception):
    """The runs lack what a rule compares: the rule is not judged (the message says why)."""


# The sd of one probe accuracy over refits with other solver seeds (saga's random order; the protocol's tol 0.1
# stops it early), per dataset: `python scripts/finding_vs_scale.py refits` (the pixel probe, seeds 0-7; and the
# trained flows' codes in figures/scale/inv-*.json, seeds 0-4). mnist-subset: 0.0020 (root mean square over 16
# sets of the flows' codes on its 5000 test images; the pixels' 0.0011); mnist: 0.0008 (pixels); digits: 0.0084
# (pixels). The larger of the two where both were measured. Every registered dataset (mi_ref.datasets.DATASETS)
# is listed, NONE where the sd was not measured: its runs' differences then get the binomial SE, which holds
# no refit term.
PROBE_REFIT_SD = {"mnist-subset": 0.0020, "mnist": 0.0008, "digits": 0.0084}


def unfinished_units(run):
    """The units of the run's experiment (for its config) that its progress.json does not list as done."""
    from .experiments import units_of_run
    done = set(RunDir(run["path"]).done_variants())
    return [u for u in units_of_run(run["config"]) if u not in done]


def seed_of(run):
    """The seed of a run (as :func:`mi_ref.runs.load_run` reads it)."""
    return run["config"]["seed"]


def rows_of(run, variant):
    """The metric rows of one variant, ordered by step."""
    return sorted((r for r in run["metrics"] if r.get("variant") == variant), key=lambda r: r["step"])


def _row(run, variant, key, which):
    rows = [r for r in rows_of(run, variant) if r.get(key) is not None]
    if not rows:
        return None
    return rows[0 if which == "first" else -1]


def _value(run, variant, key, which):
    row = _row(run, variant, key, which)
    return None if row is None else float(row[key])


def per_seed(runs, variant, key, which="last"):
    """``{seed: value}`` of ``key`` at the first or the last evaluation of ``variant``; a run without it is a
    :class:`MissingData` (the rule cannot be judged on part of the seeds)."""
    out = {}
    for run in runs:
        value = _value(run, variant, key, which)
        if value is None:
            raise MissingData(f"seed {seed_of(run)} has no {key} of {variant}")
        out[seed_of(run)] = value
    return out


class Accuracies(dict):
    """``{seed: accuracy}`` of one variant at one evaluation, with the probe's per-image outcomes of those
    rows (``hits``: {seed: boolean array} where the rows keep them) and the dataset's name, for the probe's
    own SE of a difference (:func:`probe_difference_se`)."""

    def __init__(self, values, hits, dataset):
        super().__init__(values)
        self.hits, self.dataset = hits, dataset


def accuracies(runs, variant, which="last"):
    """:class:`Accuracies` of ``variant`` at its first or last evaluation (the probe's ``accuracy``)."""
    from .probe import decode_hits
    values, hits = {}, {}
    dataset = runs[0]["config"]["config"].get("dataset")
    for run in runs:
        row = _row(run, variant, "accuracy", which)
        if row is None:
            raise MissingData(f"seed {seed_of(run)} has no accuracy of {variant}")
        values[seed_of(run)] = float(row["accuracy"])
        if row.get("probe_hits") is not None and n_test(runs):
            hits[seed_of(run)] = decode_hits(row["probe_hits"], n_test(runs))
    return Accuracies(values, hits, dataset)


def probe_difference_se(a, b, m):
    """The probe's SE of mean_s (a_s - b_s) over the n seeds of two :class:`Accuracies` (see the module
    docstring): per seed sqrt(paired SE^2 + 2 refit sd^2) from the per-image outcomes, or the binomial SE of
    two independent accuracies where a row lacks them; then sqrt(sum over seeds) / n. Returns
    ``(se, kind)``."""
    seeds = [s for s in a if s in b]
    variances = [seed_variance(a, b, s, m) for s in seeds]
    kind = "probe (paired)" if all(v[1] for v in variances) else "probe (binomial)"
    return math.sqrt(sum(v[0] for v in variances)) / max(len(seeds), 1), kind


def seed_variance(a, b, seed, m):
    """``(variance, paired)`` of the probe's noise in a[seed] - b[seed] (see :func:`probe_difference_se`)."""
    from .probe import paired_se
    refit = PROBE_REFIT_SD.get(getattr(a, "dataset", None), NONE)
    if refit != NONE and seed in getattr(a, "hits", {}) and seed in getattr(b, "hits", {}):
        return paired_se(a.hits[seed], b.hits[seed]) ** 2 + 2 * refit ** 2, True
    return (probe_se(a[seed], b[seed], m) ** 2 if m else 0.0), False


def pixel_accuracies(runs):
    """:class:`Accuracies` of the pixel-baseline rows."""
    from .probe import decode_hits
    values, hits = {}, {}
    for run in runs:
        rows = [r for r in run["metrics"] if r.get("variant") == "baseline"]
        if not rows:
            raise MissingData(f"seed {seed_of(run)} has no pixel-baseline row")
        values[seed_of(run)] = float(rows[0]["accuracy"])
        if rows[0].get("probe_hits") is not None and n_test(runs):
            hits[seed_of(run)] = decode_hits(rows[0]["probe_hits"], n_test(runs))
    return Accuracies(values, hits, runs[0]["config"]["config"].get("dataset"))


def pixel_baseline(runs):
    """``{seed: pixel-baseline accuracy}``."""
    out = {}
    for run in runs:
        rows = [r for r in run["metrics"] if r.get("variant") == "baseline"]
        if not rows:
            raise MissingData(f"seed {seed_of(run)} has no pixel-baseline row")
        out[seed_of(run)] = float(rows[0]["accuracy"])
    return out


def variants_where(runs, **fields):
    """The trained variants whose rows carry all of ``fields`` (e.g. critic="concat"), in order."""
    seen = []
    for run in runs:
        for r in run["metrics"]:
            v = r.get("variant")
            if v not in seen and v != "baseline" and all(r.get(k) == x for k, x in fields.items()):
                seen.append(v)
    return seen


def distinct(runs, key):
    """The distinct values of a row field over the trained variants, in order of appearance."""
    values = []
    for run in runs:
        for r in run["metrics"]:
            if r.get("variant") != "baseline" and key in r and r[key] not in values:
                values.append(r[key])
    return values


def the_variant(runs, what, **fields):
    found = variants_where(runs, **fields)
    if not found:
        raise MissingData(f"the runs hold no {what}")
    return found[0]


def n_test(runs):
    """The number of test images the probe is scored on: the pixel-baseline row's ``n_test``, else the
    ``n_test`` its entry in :data:`mi_ref.datasets.DATASETS` declares (None if neither says)."""
    from .datasets import DATASETS
    for run in runs:
        for r in run["metrics"]:
            if r.get("variant") == "baseline" and isinstance(r.get("n_test"), int):
                return r["n_test"]
    name = runs[0]["config"]["config"].get("dataset")
    return DATASETS.meta(name, "n_test") if name in DATASETS else None


def fmt(values, digits=3):
    """mean +- sd over seeds (the sample sd, ddof = 1; just the value for one seed)."""
    values = np.asarray(list(values.values()) if isinstance(values, dict) else values, dtype=float)
    if values.size == 0:
        return "n/a"
    if values.size == 1:
        return f"{values[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {sample_sd(values):.{digits}f}"


def mean(values):
    values = np.asarray(list(values.values()) if isinstance(values, dict) else values, dtype=float)
    return float(values.mean()) if values.size else float("nan")


# ----------------------------------------------------------------------------------------------------
# effects and their uncertainty


SEED_SE_MIN_SEEDS = 3


@dataclass
class Test:
    """One comparison of a rule: ``effect`` (mean over seeds) against ``threshold``."""

    name: str
    effect: float
    se: float
    se_kind: str                 # "seed-to-seed" or "probe"
    threshold: float
    holds: bool
    n: int
    kind: str = "at least"       # "at least": effect >= threshold; "at most": effect <= threshold

    def text(self):
        rel = ">=" if self.kind == "at least" else "<="
        return (f"{self.name}: effect {self.effect:+.4f} (SE {self.se:.4f}, {self.se_kind}, n={self.n}), needs "
                f"{rel} {self.threshold:+.4f} -> {'ok' if self.holds else 'NOT MET'}")

    def as_dict(self):
        return {"name": self.name, "effect": self.effect, "se": self.se, "se_kind": self.se_kind,
                "threshold": self.threshold, "kind": self.kind, "n": self.n, "holds": self.holds}


def probe_se(p, q, m):
    """SE of the difference of two accuracies p and q on m test images, the probes taken as independent:
    sqrt(p (1 - p) / m + q (1 - q) / m)."""
    return math.sqrt(p * (1 - p) / m + q * (1 - q) / m)


def effect_test(name, diffs, minimum, m=None, accuracies=None, kind="at least", se_override=None,
                equivalence=False, se_label="within-run"):
    """A :class:`Test` of the per-seed differences ``diffs`` ({seed: d}).

    "at least": holds iff mean(d) >= max(minimum, 2 SE). "at most": holds iff mean(d) <= minimum + 2 SE
    (a claim "not above ``minimum``" is rejected only beyond the noise), or, with ``equivalence``, iff
    mean(d) <= minimum - 2 SE (a claim "within ``minimum``" must hold beyond the noise). SE: seed-to-seed
    for 3 or more seeds; else the probe's own for a difference of two :class:`Accuracies` ``accuracies``
    = (a, b) (:func:`probe_difference_se`; ``m`` test images), or ``se_override`` / sqrt(n) for a quantity
    measured with its own noise."""
    d = np.array(list(diffs.values()), dtype=float)
    n = d.size
    if n >= SEED_SE_MIN_SEEDS:
        se, se_kind = float(sample_sd(d) / math.sqrt(n)), "seed-to-seed"
    elif se_override is not None:
        se, se_kind = float(se_override) / math.sqrt(n), se_label
    elif accuracies is not None:
        se, se_kind = probe_difference_se(*accuracies, m)
    else:
        se, se_kind = 0.0, "none"
    effect = float(d.mean())
    if kind == "at least":
        threshold = max(minimum, 2 * se)
        ok = effect >= threshold
    else:
        threshold = minimum - 2 * se if equivalence else minimum + 2 * se
        ok = effect <= threshold
    return Test(name, effect, se, se_kind, threshold, bool(ok), n, kind)


def paired(a, b):
    """``{seed: a[seed] - b[seed]}`` over the seeds of both."""
    return {s: a[s] - b[s] for s in a if s in b}

"""The paper's findings as code: one explicit rule per finding, judged on saved run directories.

``judge(run_dirs)`` (CLI: ``mi-ref findings RUN_DIR...``) groups the runs by experiment and config (runs
that differ only in their seed form one group), applies every finding of that experiment and returns one
:class:`Verdict` per (group, finding): the paper's claim and numbers, the measured numbers and the verdict.

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

**Verdicts only on complete data.** A seed whose run is unfinished (progress.json lacks one of the
experiment's units for its config) is refused: :class:`IncompleteRunError`, naming the directory, unless
``partial=True``, which judges only the finished seeds and says which were left out. A rule whose runs lack
what it compares (a variant, an estimator, a second encoder) gives no verdict: "not judged", with the
reason. Runs with critics, estimators or targets beyond the paper's are judged on what they hold: the
critics finding compares the high-capacity critic with the simple critics it knows (:data:`CRITIC_ROLES`)
and reports any other critic without letting it decide the verdict.
"""

import json
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .registry import NONE
from .results import RunDir
from .runs import load_run
from .stats import order_statistics, sample_sd

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


def _seed(run):
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
            raise MissingData(f"seed {_seed(run)} has no {key} of {variant}")
        out[_seed(run)] = value
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
            raise MissingData(f"seed {_seed(run)} has no accuracy of {variant}")
        values[_seed(run)] = float(row["accuracy"])
        if row.get("probe_hits") is not None and n_test(runs):
            hits[_seed(run)] = decode_hits(row["probe_hits"], n_test(runs))
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
            raise MissingData(f"seed {_seed(run)} has no pixel-baseline row")
        values[_seed(run)] = float(rows[0]["accuracy"])
        if rows[0].get("probe_hits") is not None and n_test(runs):
            hits[_seed(run)] = decode_hits(rows[0]["probe_hits"], n_test(runs))
    return Accuracies(values, hits, runs[0]["config"]["config"].get("dataset"))


def pixel_baseline(runs):
    """``{seed: pixel-baseline accuracy}``."""
    out = {}
    for run in runs:
        rows = [r for r in run["metrics"] if r.get("variant") == "baseline"]
        if not rows:
            raise MissingData(f"seed {_seed(run)} has no pixel-baseline row")
        out[_seed(run)] = float(rows[0]["accuracy"])
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


# ----------------------------------------------------------------------------------------------------
# the findings


@dataclass(frozen=True)
class Finding:
    """One finding of the paper and the rule that decides whether runs show it.

    ``judge(runs) -> (measured, tests, values)``: a sentence of measured numbers, the list of
    :class:`Test` whose conjunction is the verdict (None: reported without a verdict) and the numbers for
    findings.json. ``source`` quotes what the paper or its notebook claims, the rule's ground.
    """

    key: str
    experiment: str
    figure: str
    claim: str
    paper: str
    source: str
    criterion: str
    judge: object


FINDINGS = []


def finding(key, experiment, figure, claim, paper, source, criterion):
    def register(judge):
        FINDINGS.append(Finding(key, experiment, figure, claim, paper, source, criterion, judge))
        return judge
    return register


MIN_ACC = 0.01       # the smallest accuracy difference a rule counts
METRIC_MARGIN = 0.03     # "about as good as": the largest accuracy gap the metric finding calls alike
SE_RULE = ("SE: seed-to-seed (sample sd / sqrt(n)) with 3 or more seeds, else the probe's own (the paired SE "
           "over the test images and the solver's refit noise)")

# how the critics finding treats each critic of mi_ref.critics.CRITICS, by registry name: "high_capacity" (the
# one the simple critics are compared with), "simple", or NONE (reported, never judged). A critic not listed is
# reported and not judged too, and the verdict says that it has no role here; tests/test_registry.py asks every
# registered critic for an entry.
CRITIC_ROLES = {"concat": "high_capacity", "bilinear": "simple", "separable": "simple",
                "inner_product": "simple"}
PAPER_SIMPLE_CRITICS = ("bilinear", "separable")

# Why a finding does not show at the quick preset's scale, as measured; printed beside a "does not hold"
# verdict of that preset by `mi-ref findings` and `mi-ref list`.
_ENCODERS_AT_QUICK_SCALE = (
    "measured on the subset (5000 test images, seeds 0-2, figures/scale/enc-subset*.json): at lr 1e-3 the "
    "ConvNet trains well under I_NCE (ahead of the MLP by 0.03-0.04) but not under I_NWJ, whose ConvNet "
    "runs stall at 0.69-0.76 after 400-1200 steps while the MLP reaches 0.77-0.80; a ConvNet of (16, 32) "
    "channels is ahead at t = 2 and level at t = 4 after 1200 steps; at lr 3e-4 the ConvNet is still behind "
    "the MLP after 1200 steps. No setting that runs in minutes shows the finding. On full MNIST at the paper's "
    "lr 1e-4 (figures/runs/encoders-paper-*, 1500 steps, seed 0) the ConvNet is ahead in 3 of the 4 "
    "(estimator, t) pairs; under I_NWJ at t = 4 its training fell back between steps 750 and 1500, and a "
    "4000-step run of that pair alone ends with the ConvNet ahead by 0.030")
QUICK_SCALE_NOTES = {
    "encoders.convnet_ahead": _ENCODERS_AT_QUICK_SCALE,
    "encoders.architecture_over_estimator": _ENCODERS_AT_QUICK_SCALE,
}


def quick_scale_note(finding_key, preset, verdict):
    """The measured reason a finding does not hold at the quick preset, or None."""
    if preset == "quick" and verdict == "does not hold":
        return QUICK_SCALE_NOTES.get(finding_key)
    return None


def _trained_variants(runs):
    """Every variant the runs trained; none is :class:`MissingData` (e.g. a run with ``--set estimators=``)."""
    variants = variants_where(runs)
    if not variants:
        raise MissingData("the runs hold no trained variant (no estimator was run)")
    return variants


def _rise_tests(runs, variants, key="accuracy", label="accuracy rise"):
    tests, values = [], {}
    m = n_test(runs)
    for v in variants:
        a0, a1 = accuracies(runs, v, "first"), accuracies(runs, v, "last")
        tests.append(effect_test(f"{v}: {label}", paired(a1, a0), MIN_ACC, m, (a1, a0)))
        values[v] = {key: [mean(a0), mean(a1)]}
    return tests, values


@finding("invertible.rise", "invertible", "Fig. 1a, 1b",
         "With bijective encoders (the true MI never changes) the bound and the probe accuracy rise together.",
         "both rise over 21000 steps for I_NCE and I_NWJ",
         "Section 3.1: 'maximizing the estimators ... leads to an increase in downstream performance ... "
         "even though the MI is the same for every parameter setting' (the encoders are bijections)",
         f"for every estimator: the plotted bound rises by at least 1 nat, and the accuracy rise (last minus "
         f"step 0, mean over seeds) is at least max({MIN_ACC}, 2 SE); {SE_RULE}")
def _invertible(runs):
    variants = _trained_variants(runs)
    tests, values = _rise_tests(runs, variants)
    parts = []
    for v in variants:
        b0, b1 = per_seed(runs, v, "bound", "first"), per_seed(runs, v, "bound", "last")
        a0, a1 = per_seed(runs, v, "accuracy", "first"), per_seed(runs, v, "accuracy", "last")
        rise = mean(b1) - mean(b0)
        tests.append(Test(f"{v}: bound rise (nats)", rise, 0.0, "none", 1.0, rise >= 1.0, len(b0)))
        parts.append(f"{v}: bound {fmt(b0, 2)} -> {fmt(b1, 2)}, accuracy {fmt(a0)} -> {fmt(a1)}")
        values[v]["bound"] = [mean(b0), mean(b1)]
    return "; ".join(parts), tests, values


@finding("adversarial.below_pixels", "adversarial", "Fig. 1c",
         "An encoder trained adversarially against a linear classifier ends far below the raw pixels, "
         "although it stays a bijection (MI unchanged).",
         "far below the pixel baseline (about 0.835) after 4001 iterations",
         "Section 3.1: 'we can train the encoder ... so that the linear separability ... is worse than in "
         "the pixel space', with an invertible encoder",
         f"the pixel baseline minus the last probe accuracy (mean over seeds) is at least max(0.05, 2 SE), and "
         f"the flow's log-determinant stays finite; {SE_RULE}")
def _adversarial(runs):
    a0, a1 = accuracies(runs, "adversarial", "first"), accuracies(runs, "adversarial", "last")
    base = pixel_accuracies(runs)
    det = per_seed(runs, "adversarial", "mean_log_det", "last")
    test = effect_test("pixels minus last accuracy", paired(base, a1), 0.05, n_test(runs), (base, a1))
    finite = bool(np.all(np.isfinite(list(det.values()))))
    text = f"accuracy {fmt(a0)} -> {fmt(a1)}, pixels {fmt(base)}; mean log-det at the end {fmt(det, 0)}" + \
           (" (finite)" if finite else " (NOT finite)")
    tests = [test, Test("log-det finite", float(finite), 0.0, "none", 1.0, finite, len(det))]
    return text, tests, {"accuracy": [mean(a0), mean(a1)], "pixels": mean(base)}


def pooled_median(runs, variant, which):
    """The median log condition number of the pooled batches of all runs at the first or last evaluation,
    as the notebook takes percentiles (index int(0.5 (n - 1)) of the sorted values)."""
    values = []
    for run in runs:
        rows = [r for r in rows_of(run, variant) if r.get("logcond_values") is not None]
        if not rows:
            raise MissingData(f"seed {_seed(run)} has no logcond_values of {variant}")
        values.append(rows[0 if which == "first" else -1]["logcond_values"])
    return float(order_statistics(np.concatenate(values), (0.5,))[0])


@finding("conditioning.ill_conditioned", "conditioning", "Fig. 2",
         "Residual-MLP encoders start at the identity and become ill-conditioned (hard to invert) while the "
         "bound and the accuracy rise.",
         "log(sigma_max / sigma_min) grows steadily from 0; accuracy rises within 0.83-0.90",
         "Section 3.1: 'the encoders become increasingly ill-conditioned' while 'the downstream performance "
         "... improves' (Fig. 2)",
         f"for every estimator: the median log condition number of the pooled batches (Fig. 2c's rule) is below "
         f"0.1 at step 0 and at least 1 at the end, and the accuracy rise is at least max({MIN_ACC}, 2 SE); "
         f"{SE_RULE}")
def _conditioning(runs):
    variants = _trained_variants(runs)
    tests, values = _rise_tests(runs, variants)
    parts = []
    for v in variants:
        c0, c1 = pooled_median(runs, v, "first"), pooled_median(runs, v, "last")
        a0, a1 = per_seed(runs, v, "accuracy", "first"), per_seed(runs, v, "accuracy", "last")
        tests.append(Test(f"{v}: median log-condition at step 0", c0, 0.0, "none", 0.1, c0 < 0.1, len(runs),
                          "at most"))
        tests.append(Test(f"{v}: median log-condition at the end", c1, 0.0, "none", 1.0, c1 >= 1.0, len(runs)))
        parts.append(f"{v}: median log-condition {c0:.2f} -> {c1:.2f}, accuracy {fmt(a0)} -> {fmt(a1)}")
        values[v]["logcond_median"] = [c0, c1]
    return "; ".join(parts), tests, values


def _critic_accuracies(runs, est):
    acc = {}
    for critic in distinct(runs, "critic"):
        vs = variants_where(runs, critic=critic, estimator=est)
        if vs:
            acc[critic] = accuracies(runs, vs[0])
    return acc


@finding("critics.concat_worst", "critics", "Fig. 3",
         "A higher-capacity critic gives a worse representation: the concat (MLP) critic has the lowest "
         "accuracy; bilinear and separable do clearly better.",
         "under I_NCE and I_NWJ, concat barely beats the pixels; bilinear and separable are clearly higher",
         "Section 3.2, titled 'looser bounds with simpler critics can lead to better representations': 'the "
         "MLP critic ... leads to the worst downstream performance'",
         f"under every estimator: every simple critic's last accuracy (bilinear and separable, plus any other "
         f"critic known as simple) exceeds the concat critic's by at least max({MIN_ACC}, 2 SE); other critics are "
         f"reported, not judged; {SE_RULE}")
def _critics(runs):
    estimators = distinct(runs, "estimator")
    if not estimators:
        raise MissingData("the runs hold no trained variant")
    parts, tests, values = [], [], {}
    m = n_test(runs)
    for est in estimators:
        acc = _critic_accuracies(runs, est)
        missing = [c for c in ("concat",) + PAPER_SIMPLE_CRITICS if c not in acc]
        if missing:
            raise MissingData(f"under {est} the runs lack the critic(s) {missing} that the rule compares")
        for critic, a in acc.items():
            if CRITIC_ROLES.get(critic) == "simple":
                tests.append(effect_test(f"{est}: {critic} minus concat", paired(a, acc["concat"]), MIN_ACC, m,
                                         (a, acc["concat"])))
        unjudged = [c for c in acc if CRITIC_ROLES.get(c, NONE) == NONE]
        undeclared = [c for c in unjudged if c not in CRITIC_ROLES]
        parts.append(f"{est}: " + ", ".join(f"{c} {fmt(a)}" for c, a in acc.items()) +
                     (f" ({', '.join(unjudged)} reported, not judged" if unjudged else "") +
                     (f"; {', '.join(undeclared)}: no role in CRITIC_ROLES in mi_ref/findings.py" if undeclared
                      else "") + (")" if unjudged else ""))
        values[est] = {c: mean(a) for c, a in acc.items()}
    return "accuracy " + "; ".join(parts), tests, values


@finding("critics.bounds", "critics", "Fig. 3",
         "(Reported without a verdict.) The bounds of the critics, as the paper plots them and held out.",
         "the section is titled 'looser bounds with simpler critics can lead to better representations'; the "
         "bound order is not claimed for both estimators",
         "Section 3.2; the notebook plots the bound of every critic under each estimator",
         "none: the bounds are reported, not judged")
def _critics_bounds(runs):
    parts, values = [], {}
    for est in distinct(runs, "estimator"):
        items = []
        for critic in distinct(runs, "critic"):
            vs = variants_where(runs, critic=critic, estimator=est)
            if vs:
                b, t = per_seed(runs, vs[0], "bound"), per_seed(runs, vs[0], "bound_test")
                items.append(f"{critic} {fmt(b, 2)} (held out {fmt(t, 2)})")
                values.setdefault(est, {})[critic] = {"bound": mean(b), "bound_test": mean(t)}
        parts.append(f"{est}: " + ", ".join(items))
    if not parts:
        raise MissingData("the runs hold no trained variant")
    return "bound " + "; ".join(parts), None, values


def _encoder_accuracies(runs):
    """``{(encoder, estimator, target): {seed: last accuracy}}`` of every encoders variant."""
    out = {}
    for v in variants_where(runs):
        row = next(r for run in runs for r in run["metrics"] if r.get("variant") == v)
        out[(row.get("encoder"), row.get("estimator"), row.get("target"))] = accuracies(runs, v)
    return out


@finding("encoders.convnet_ahead", "encoders", "Fig. 4a, 4b",
         "Trained to the same bound value (loss L_t), the ConvNet gives a better representation than the MLP.",
         "the ConvNet is more accurate than the MLP at t = 2 and at t = 4, under I_NCE and I_NWJ",
         "Section 3.3: 'despite matching lower bounds, ConvNet encoders lead to clearly superior "
         "classification accuracy'",
         f"for every (estimator, t): the ConvNet's last accuracy exceeds the MLP's by at least max({MIN_ACC}, "
         f"2 SE); {SE_RULE}")
def _encoders(runs):
    acc = _encoder_accuracies(runs)
    if not acc:
        raise MissingData("the runs hold no trained variant")
    parts, tests, values = [], [], {}
    m = n_test(runs)
    for est in distinct(runs, "estimator"):
        for t in sorted(distinct(runs, "target")):
            conv, mlp = acc.get(("convnet", est, t)), acc.get(("mlp", est, t))
            if conv is None or mlp is None:
                raise MissingData(f"the runs need both encoders for {est}, t = {t:g}")
            tests.append(effect_test(f"{est} t={t:g}: ConvNet minus MLP", paired(conv, mlp), MIN_ACC, m,
                                     (conv, mlp)))
            parts.append(f"{est} t={t:g}: ConvNet {fmt(conv)} vs MLP {fmt(mlp)}")
            values[f"{est}-t{t:g}"] = {"convnet": mean(conv), "mlp": mean(mlp)}
    return "; ".join(parts), tests, values


@finding("encoders.architecture_over_estimator", "encoders", "Fig. 4a, 4b",
         "The encoder's architecture matters more for the representation than the estimator.",
         "at each t, the ConvNet-MLP gap is larger than the I_NCE-I_NWJ gap",
         "the notebook's Section 3.3 cell: 'the choice of encoder architecture can have more impact on "
         "downstream performance than the specific estimator used'",
         f"at every t, per seed: the smaller ConvNet-minus-MLP gap over the estimators minus the larger "
         f"|I_NCE - I_NWJ| gap over the encoders; its mean is at least max({MIN_ACC}, 2 SE); {SE_RULE}")
def _architecture_over_estimator(runs):
    acc = _encoder_accuracies(runs)
    estimators, encoders = distinct(runs, "estimator"), distinct(runs, "encoder")
    if len(estimators) < 2:
        raise MissingData(f"the rule compares two estimators; the runs hold {estimators or 'none'}")
    if "convnet" not in encoders or "mlp" not in encoders:
        raise MissingData(f"the rule compares the ConvNet and the MLP; the runs hold {encoders or 'none'}")
    parts, tests, values = [], [], {}
    m = n_test(runs)
    for t in sorted(distinct(runs, "target")):
        cells = {(e, s): acc.get((e, s, t)) for e in ("convnet", "mlp") for s in estimators}
        if any(c is None for c in cells.values()):
            raise MissingData(f"the runs need both encoders under {estimators} at t = {t:g}")
        seeds = sorted(set.intersection(*(set(c) for c in cells.values())))
        diffs, arch_gaps, est_gaps, variance = {}, {}, {}, 0.0
        for s in seeds:
            arch_e = min(estimators, key=lambda e: cells[("convnet", e)][s] - cells[("mlp", e)][s])
            enc, e2 = max(((enc, e) for enc in ("convnet", "mlp") for e in estimators[1:]),
                          key=lambda p: abs(cells[(p[0], estimators[0])][s] - cells[p][s]))
            arch_gaps[s] = cells[("convnet", arch_e)][s] - cells[("mlp", arch_e)][s]
            est_gaps[s] = abs(cells[(enc, estimators[0])][s] - cells[(enc, e2)][s])
            diffs[s] = arch_gaps[s] - est_gaps[s]
            # the probe's noise of the two differences that decide this seed's value
            variance += (seed_variance(cells[("convnet", arch_e)], cells[("mlp", arch_e)], s, m)[0]
                         + seed_variance(cells[(enc, estimators[0])], cells[(enc, e2)], s, m)[0])
        tests.append(effect_test(f"t={t:g}: architecture gap minus estimator gap", diffs, MIN_ACC,
                                 se_override=math.sqrt(variance / len(seeds)), se_label="probe"))
        parts.append(f"t={t:g}: architecture gap {fmt(arch_gaps)}, estimator gap {fmt(est_gaps)}")
        values[f"t{t:g}"] = {"architecture_gap": mean(arch_gaps), "estimator_gap": mean(est_gaps)}
    return "; ".join(parts), tests, values


@finding("encoders.t_comparison", "encoders", "Fig. 4a, 4b",
         "(Reported without a verdict.) The accuracy at each target t: the paper makes no claim about t = 2 "
         "against t = 4.",
         "no claim",
         "none: neither the paper nor the notebook compares the targets",
         "none: reported, not judged")
def _t_comparison(runs):
    acc = _encoder_accuracies(runs)
    if not acc:
        raise MissingData("the runs hold no trained variant")
    parts, values = [], {}
    targets = sorted(distinct(runs, "target"))
    for enc in distinct(runs, "encoder"):
        for est in distinct(runs, "estimator"):
            cells = [(t, acc[(enc, est, t)]) for t in targets if (enc, est, t) in acc]
            if cells:
                parts.append(f"{enc} {est}: " + ", ".join(f"t={t:g} {fmt(a)}" for t, a in cells))
                values[f"{enc}-{est}"] = {f"t{t:g}": mean(a) for t, a in cells}
    return "; ".join(parts), None, values


def _smoothed_end_se(runs, variant, sigma):
    """The noise of one run's smoothed end estimate, from its per-step trace: the sd of the last 1000
    estimates times sqrt(1 / (2 sqrt(pi) sigma)), the variance ratio of a Gaussian filter of width sigma on
    white noise (the mean over runs where several are given)."""
    ses = []
    for run in runs:
        trace = run["arrays"].get(variant, {}).get("trace")
        if trace is None or len(trace) < 2:
            raise MissingData(f"seed {_seed(run)} has no per-step trace of {variant} (arrays/{variant}.npz)")
        tail = np.asarray(trace[-1000:], dtype=float)
        ses.append(float(np.std(tail, ddof=1) / math.sqrt(2 * math.sqrt(math.pi) * sigma)))
    return float(np.mean(ses))


@finding("sampling.non_iid_exceeds", "sampling", "Fig. 4c",
         "With non-i.i.d. negatives (one Z shared by the batch) the estimates exceed the true MI; with i.i.d. "
         "samples they stay at or below it.",
         "true MI 0.0204 nats; non-i.i.d. estimates far above it, i.i.d. ones below (y axis -0.3 to 0.25)",
         "Section 4: with samples that are not i.i.d. 'the estimators ... can exceed the true MI' (Fig. 4c)",
         "for every estimator, the smoothed estimate at the end (mean over seeds): non-i.i.d. minus the true MI "
         "is at least max(0.05, 2 SE), and i.i.d. minus the true MI is at most 0.005 + 2 SE (the smoothed i.i.d. "
         "curve still wanders by a few thousandths); SE: seed-to-seed with 3 or more seeds, else the smoothed "
         "end's own noise from the per-step trace")
def _sampling(runs):
    estimators = distinct(runs, "estimator")
    if not estimators:
        raise MissingData("the runs hold no trained variant")
    sigma = float(runs[0]["config"]["config"].get("smoothing_sigma", 100.0))
    parts, tests, values = [], [], {}
    true_mi = None
    for est in estimators:
        ends = {}
        for sampling in ("iid", "non-iid"):
            v = the_variant(runs, f"{sampling} batches under {est}", sampling=sampling, estimator=est)
            ends[sampling] = per_seed(runs, v, "bound_smoothed")
            true_mi = per_seed(runs, v, "true_mi")
            ends[sampling + "-se"] = _smoothed_end_se(runs, v, sigma) if len(runs) < SEED_SE_MIN_SEEDS else None
        tests.append(effect_test(f"{est}: non-i.i.d. minus true MI", paired(ends["non-iid"], true_mi), 0.05,
                                 se_override=ends["non-iid-se"]))
        tests.append(effect_test(f"{est}: i.i.d. minus true MI", paired(ends["iid"], true_mi), 0.005,
                                 kind="at most", se_override=ends["iid-se"]))
        parts.append(f"{est}: non-i.i.d. {fmt(ends['non-iid'], 4)}, i.i.d. {fmt(ends['iid'], 4)}")
        values[est] = {k: mean(ends[k]) for k in ("iid", "non-iid")}
    return f"true MI {mean(true_mi):.4f}; " + "; ".join(parts), tests, values


@finding("metric.alike", "metric", "Section 4",
         "A loss that bounds no MI at all (the triplet loss) learns a representation about as good as the MI "
         "bounds I_NCE (the multi-class K-pair loss) and I_NWJ: their success is better explained by metric "
         "learning.",
         "a discussion in Section 4 (no figure); mi-ref's own experiment",
         "Section 4: 'the success of these methods ... [is] better explained by the connection to metric "
         "learning'; the notebook runs no such experiment: mi-ref built it from this text",
         f"'about as good as': the better MI bound's last accuracy (I_NCE or I_NWJ) exceeds the triplet loss's by "
         f"at most {0.03} - 2 SE, an equivalence that must hold beyond the noise (the pixel baseline is reported; "
         f"the hardest-negative triplet loss is reported without a verdict: it can collapse early in training); "
         f"{SE_RULE}")
def _metric(runs):
    base = pixel_baseline(runs)
    acc = {v: accuracies(runs, v) for v in variants_where(runs)}
    bounds = [v for v in ("infonce", "nwj") if v in acc]
    if "triplet" not in acc or not bounds:
        raise MissingData("the runs need the triplet objective and I_NCE or I_NWJ")
    best = max(bounds, key=lambda v: mean(acc[v]))
    tests = [effect_test(f"{best} minus triplet", paired(acc[best], acc["triplet"]), METRIC_MARGIN, n_test(runs),
                         (acc[best], acc["triplet"]), kind="at most", equivalence=True)]
    text = "accuracy " + ", ".join(f"{v} {fmt(a)}" for v, a in acc.items()) + f"; pixels {fmt(base)}"
    return text, tests, {v: mean(a) for v, a in acc.items()}


def findings_of(experiment):
    """The findings judged on runs of ``experiment``."""
    return [f for f in FINDINGS if f.experiment == experiment]


# ----------------------------------------------------------------------------------------------------
# judging run directories


@dataclass
class Verdict:
    """One row of the findings table: a finding judged on one group of runs (same config, several seeds)."""

    finding: str
    experiment: str
    preset: str
    dataset: str
    steps: object
    seeds: list
    figure: str
    claim: str
    paper: str
    source: str
    criterion: str
    measured: str
    holds: object                  # True, False, or None (reported without a verdict, or not judged)
    values: dict = field(default_factory=dict)
    tests: list = field(default_factory=list)
    reason: str = None             # why it was not judged
    overrides: str = ""            # the settings that differ from the preset
    left_out: list = field(default_factory=list)     # unfinished seeds left out (partial=True)

    @property
    def verdict(self):
        if self.holds is None:
            return "not judged" if self.reason else "no verdict"
        return "holds" if self.holds else "does not hold"

    def as_dict(self):
        out = {k: getattr(self, k) for k in ("finding", "experiment", "preset", "dataset", "steps", "seeds",
                                             "figure", "claim", "paper", "source", "criterion", "measured",
                                             "holds", "values", "reason", "overrides", "left_out")}
        out["tests"] = [t.as_dict() for t in self.tests]
        out["verdict"] = self.verdict
        return out


def group_runs(run_dirs):
    """``{(experiment, preset, config-without-seed as JSON): [run, ...]}`` in the order first seen."""
    from . import experiments
    groups = OrderedDict()
    for d in run_dirs:
        run = load_run(d)
        cfg = run["config"]
        experiments.get(cfg["experiment"])          # an unknown experiment is an error naming the known ones
        key = (cfg["experiment"], cfg["preset"], json.dumps(cfg["config"], sort_keys=True))
        groups.setdefault(key, []).append(run)
    return groups


def judge(run_dirs, partial=False):
    """Every finding of every experiment among ``run_dirs``: a list of :class:`Verdict`, in the paper's
    order of findings. An unfinished run is an :class:`IncompleteRunError` naming it, unless ``partial``:
    then only the finished seeds are judged, and each verdict lists the seeds left out."""
    from .experiments import describe_overrides
    if not run_dirs:
        raise ValueError("no run directories given")
    verdicts = []
    for (experiment, preset, cfg_text), runs in group_runs(run_dirs).items():
        cfg = json.loads(cfg_text)
        seeds = sorted(_seed(run) for run in runs)
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{experiment}: the same seed appears twice among the runs {seeds}; give each run "
                             "directory once")
        left_out = []
        for run in list(runs):
            missing = unfinished_units(run)
            if missing:
                if not partial:
                    raise IncompleteRunError(
                        f"{run['path']} is unfinished (it lacks {', '.join(missing)}): judging it with the finished "
                        f"seeds would mix evaluations of different steps. Finish it (mi-ref run ... --resume), "
                        f"leave it out, or pass --partial to judge only the finished seeds")
                left_out.append(_seed(run))
                runs.remove(run)
        for f in findings_of(experiment):
            tests, reason, values = [], None, {}
            if not runs:
                measured, holds, reason = "", None, f"no finished seed (left out: {left_out})"
            else:
                try:
                    measured, tests, values = f.judge(runs)
                    holds = None if tests is None else all(t.holds for t in tests)
                    tests = tests or []
                except MissingData as err:
                    measured, holds, reason = "", None, str(err)
            verdicts.append(Verdict(f.key, experiment, preset, cfg.get("dataset", "synthetic"), cfg.get("n_iters"),
                                    sorted(_seed(r) for r in runs), f.figure, f.claim, f.paper, f.source, f.criterion,
                                    measured or f"not judged: {reason}", holds, values, tests, reason,
                                    describe_overrides(experiment, preset, cfg), sorted(left_out)))
    order = {f.key: i for i, f in enumerate(FINDINGS)}
    verdicts.sort(key=lambda v: order[v.finding])
    return verdicts


def seeds_text(seeds):
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"seeds {seeds[0]}-{seeds[-1]}"
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(str(s) for s in seeds)


def _where(v):
    text = f"preset {v.preset}" + (f" with {v.overrides}" if v.overrides else "")
    return f"{text}, {v.dataset}, {v.steps} steps, {seeds_text(v.seeds)}" + \
        (f" (unfinished, left out: {seeds_text(v.left_out)})" if v.left_out else "")


def format_table(verdicts):
    """Plain text: one block per finding (claim, paper, measured, rule, each test, verdict)."""
    lines = []
    for v in verdicts:
        lines.append(f"[{v.verdict.upper()}] {v.experiment} ({v.figure}; {_where(v)}): {v.claim}")
        lines.append(f"    paper:     {v.paper}")
        lines.append(f"    source:    {v.source}")
        lines.append(f"    measured:  {v.measured}")
        lines.append(f"    rule:      {v.criterion}")
        for t in v.tests:
            lines.append(f"      {t.text()}")
        note = quick_scale_note(v.finding, v.preset, v.verdict)
        if note:
            lines.append(f"    at laptop scale: {note}")
    n_hold = sum(v.holds is True for v in verdicts)
    n_judged = sum(v.holds is not None for v in verdicts)
    n_not = sum(v.verdict == "not judged" for v in verdicts)
    lines.append(f"{n_hold} of {n_judged} findings with a verdict hold" +
                 (f"; {n_not} not judged (see the reasons above)" if n_not else ""))
    return "\n".join(lines)


def _tests_markdown(v):
    return "; ".join(f"{t.name} {t.effect:+.3f} (SE {t.se:.3f}, {'≥' if t.kind == 'at least' else '≤'} "
                     f"{t.threshold:+.3f})" for t in v.tests if t.se_kind != "none")


def format_markdown(verdicts):
    """The same as a Markdown table (README's findings tables are this output); a verdict on a config that
    differs from its preset names the settings changed, as the plain table's header does."""
    lines = ["| finding | paper | measured | effect (SE, threshold) | verdict |", "|---|---|---|---|---|"]
    for v in verdicts:
        where = f"{v.experiment}, {v.figure}; {v.dataset}, {v.steps} steps, {seeds_text(v.seeds)}" + \
            (f"; preset {v.preset} with {v.overrides}" if v.overrides else "")
        lines.append(f"| **{where}.** {v.claim} | {v.paper} | {v.measured} | {_tests_markdown(v)} | {v.verdict} |")
    return "\n".join(lines)


FINDINGS_FILE = "findings.json"


def _judged_runs(path):
    """The resolved run directories that the findings file ``path`` judged, or None if ``path`` is not a
    findings file of mi-ref (not JSON, not ``{"findings": [...]}``); an empty set for a findings file of an
    older version, which did not record its runs."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("findings"), list):
        return None
    runs = data.get("runs")
    if not isinstance(runs, list) or not all(isinstance(r, str) for r in runs):
        return set()
    return {(Path(path).parent / r).resolve() for r in runs}


def output_path(run_dirs, out=None, folder=None):
    """``(path, note)``: where ``mi-ref findings`` writes the JSON of its verdicts on ``run_dirs``, and what
    to say about it (None, or a sentence on a file kept or replaced). Nothing silently overwrites a file:

    * ``out`` given: that file. A file that exists there must be a findings file of mi-ref (it is then
      replaced, and the note says so); anything else, or a directory, is a ``ValueError`` (nothing written).
    * else ``FOLDER/findings.json``, ``FOLDER`` being ``folder`` or the common folder of the runs' folders
      (beside the runs judged: a sweep's ``RUN_NAME`` folder, an ``--out`` folder). A findings.json there
      that judged the same runs is replaced (a new judgement of the same runs); one that judged other runs,
      or any other file of that name, is kept, and the verdicts go to ``findings-2.json`` (``-3``, ...): the
      first name that is free or judged the same runs.
    """
    import os
    runs = {Path(d).resolve() for d in run_dirs}
    if out is not None:
        out = Path(out)
        if out.is_dir():
            raise ValueError(f"--out {out} is a directory; give the file to write, e.g. --out {out / FINDINGS_FILE}")
        if out.exists() or out.is_symlink():
            judged = _judged_runs(out)
            if judged is None:
                raise ValueError(f"--out {out} exists and is not a findings file of mi-ref; choose another path "
                                 "(nothing was written)")
            same = "the same runs" if judged == runs else "other runs"
            return out, f"replaced {out}, which held findings of {same}"
        return out, None
    if folder is None:
        folder = Path(os.path.commonpath([str(Path(d).resolve().parent) for d in run_dirs]))
        cwd = Path.cwd()
        if folder == cwd or cwd in folder.parents:
            folder = folder.relative_to(cwd)
    folder = Path(folder)
    kept = []
    for n in range(1, 10_000):
        path = folder / (FINDINGS_FILE if n == 1 else f"findings-{n}.json")
        if not path.exists() and not path.is_symlink():
            break
        if path.is_file() and _judged_runs(path) == runs:
            return path, f"replaced {path}, an earlier judgement of the same runs"
        kept.append(path.name)
    else:
        raise ValueError(f"{folder} holds findings-2.json to findings-9999.json already; give --out")
    note = (f"{', '.join(kept)} there judge{'s' if len(kept) == 1 else ''} other runs and "
            f"{'is' if len(kept) == 1 else 'are'} kept") if kept else None
    return path, note


def write_json(verdicts, path, run_dirs=()):
    """findings.json: every verdict with its numbers and tests, and the run directories judged (relative to
    the file's folder), written atomically."""
    import os

    from .results import atomic_write_json
    path = Path(path)
    base = path.resolve().parent
    runs = [Path(os.path.relpath(Path(d).resolve(), base)).as_posix() for d in run_dirs]
    atomic_write_json(path, {"findings": [v.as_dict() for v in verdicts], "runs": runs})
    return path


# ----------------------------------------------------------------------------------------------------
# the verdicts recorded in the package (``mi-ref list``)

RECORDED = Path(__file__).resolve().parent / "recorded_findings.json"


def recorded_entries(verdicts, per_seed_verdicts=()):
    """The compact form ``mi-ref list`` reads: one entry per pooled verdict, without the long texts, with
    the verdicts of each seed alone beside it."""
    out = []
    for v in verdicts:
        seeds = {p.seeds[0]: p.verdict for p in per_seed_verdicts
                 if p.finding == v.finding and p.preset == v.preset and p.steps == v.steps
                 and p.dataset == v.dataset and p.seeds and p.seeds[0] in v.seeds and p.overrides == v.overrides}
        out.append({"experiment": v.experiment, "preset": v.preset, "dataset": v.dataset, "steps": v.steps,
                    "seeds": v.seeds, "overrides": v.overrides, "finding": v.finding, "verdict": v.verdict,
                    "measured": v.measured,
                    "per_seed": {str(k): seeds[k] for k in sorted(seeds)} if len(v.seeds) > 1 else {}})
    return out


def judge_for_record(run_dirs):
    """(pooled verdicts, verdicts of every seed alone) of ``run_dirs``."""
    return judge(run_dirs), [v for d in run_dirs for v in judge([d])]


def record(run_dirs, path=RECORDED):
    """Judge ``run_dirs`` (pooled over seeds and seed by seed) and write the verdicts for ``mi-ref list``
    (see scripts/record_findings.py). Returns the path."""
    from .results import atomic_write_json
    pooled, per_seed_verdicts = judge_for_record(run_dirs)
    atomic_write_json(Path(path), {"about": "verdicts of mi_ref.findings on the runs committed under "
                                            "figures/runs; rewritten by scripts/record_findings.py",
                                   "verdicts": recorded_entries(pooled, per_seed_verdicts)})
    return Path(path)


def load_recorded(path=RECORDED):
    """The recorded verdicts (an empty list if the file is missing)."""
    path = Path(path)
    if not path.is_file():
        return []
    return json.loads(path.read_text(encoding="utf-8"))["verdicts"]

"""Figures in the paper's style, made from run directories only (config.json, metrics.jsonl, arrays/).

Runs of the same experiment, preset and dataset (one directory per seed) are pooled: every curve is the
mean over runs with a band of +- one standard deviation, against "training steps (in thousands)", as in the
paper's plots. ``plot_runs(run_dirs, out_dir)`` writes one PNG per experiment group and returns their paths.
"""

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from .bounds import ESTIMATORS
from .critics import CRITICS
from .metric_learning import LOSSES
from .runs import load_run
from .stats import pooled_order_statistics, sample_sd


def _style(registry, name, key, default=None):
    """``label`` or ``color`` of ``name`` in a registry (``default``, or the name, if it is not there)."""
    if name in registry:
        return registry.meta(name, key, name if key == "label" else default)
    return name if key == "label" else default


def label_of(name):
    """How figures name an estimator, a critic or a metric-learning loss."""
    for registry in (ESTIMATORS, CRITICS, LOSSES):
        if name in registry:
            return _style(registry, name, "label")
    return name


def color_of(name):
    for registry in (ESTIMATORS, CRITICS, LOSSES):
        if name in registry:
            return _style(registry, name, "color")
    return None


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


# ----------------------------------------------------------------------------------------------------
# pooling runs


def series(runs, variant, key):
    """(steps, mean, sd, n_runs) of metric ``key`` of ``variant`` over runs, at the steps all runs share; sd
    is the sample sd (ddof = 1, :func:`mi_ref.stats.sample_sd`; 0 for one run), as the paper's bands.

    A metric that is a list (e.g. the log-condition percentiles) gives mean and sd of shape (steps, len).
    """
    per_run = []
    for run in runs:
        rows = {r["step"]: r[key] for r in run["metrics"] if r.get("variant") == variant and key in r}
        if rows:
            per_run.append(rows)
    if not per_run:
        return np.array([]), np.array([]), np.array([]), 0
    steps = sorted(set.intersection(*(set(r) for r in per_run)))
    values = np.array([[r[s] for s in steps] for r in per_run], dtype=float)
    return np.array(steps), values.mean(axis=0), sample_sd(values, axis=0), len(per_run)


def baseline(runs):
    """Mean pixel-baseline accuracy over runs (None if no run has one)."""
    values = [r["accuracy"] for run in runs for r in run["metrics"] if r.get("variant") == "baseline"]
    return float(np.mean(values)) if values else None


def variants_of(runs):
    """The trained variants in the order they first appear (the baseline row excluded)."""
    seen = []
    for run in runs:
        for r in run["metrics"]:
            v = r.get("variant")
            if v not in seen and v != "baseline":
                seen.append(v)
    return seen


def variant_field(runs, variant, key):
    for run in runs:
        for r in run["metrics"]:
            if r.get("variant") == variant and key in r:
                return r[key]
    return None


def _band(ax, steps, mean, sd, label, color=None, linestyle="-"):
    x = steps / 1000.0
    line, = ax.plot(x, mean, label=label if label is not None else "_nolegend_", color=color,
                    linestyle=linestyle, marker=".", markersize=4)
    if len(mean) and np.any(sd > 0):
        ax.fill_between(x, mean - sd, mean + sd, color=line.get_color(), alpha=0.2, linewidth=0)
    return line


def _finish(fig, axes, title, path, xlabel="training steps (in thousands)"):
    for ax in np.ravel(axes):
        ax.grid(alpha=0.3)
        ax.set_xlabel(xlabel)
    # wrap each line of the title to the figure's width (about 12 characters per inch at this size)
    import textwrap
    width = max(30, int(fig.get_figwidth() * 12))
    title = "\n".join(textwrap.fill(line, width, break_on_hyphens=False) for line in title.split("\n"))
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def _title(runs, what):
    from .experiments import describe_overrides
    cfg = runs[0]["config"]
    dataset = cfg["config"].get("dataset", "synthetic")
    steps = cfg["config"].get("n_iters")
    changed = describe_overrides(cfg["experiment"], cfg["preset"], cfg["config"])
    preset = f"preset {cfg['preset']}" + (f" with {changed}" if changed else "")
    seeds = sorted(r["config"]["seed"] for r in runs)
    unfinished = sorted(r["config"]["seed"] for r in runs if r.get("unfinished"))
    return (f"{what}\n{cfg['experiment']}, {preset}\n{dataset}, {steps} steps, {len(runs)} run(s) (seeds "
            f"{', '.join(map(str, seeds))}), mean ± sd" +
            (f"; UNFINISHED: seed(s) {', '.join(map(str, unfinished))}" if unfinished else ""))


def _accuracy_panel(ax, runs, variants, label_of, color_of):
    for v in variants:
        steps, mean, sd, _ = series(runs, v, "accuracy")
        if len(steps):
            _band(ax, steps, mean, sd, label_of(v), color_of(v))
    base = baseline(runs)
    if base is not None:
        ax.axhline(base, color="black", linestyle="--", linewidth=1, label=f"pixels ({base:.3f})")
    ax.set_ylabel("linear-probe test accuracy")
    ax.legend(fontsize=8)


BOUND_LEGEND = "solid: the paper's bound (fresh training batches); dashed: held-out (test set)"


def _bound_panel(ax, runs, variants, label_of, color_of, ylabel="estimated bound (nats)"):
    """The bound the paper plots (``bound``, solid) and the held-out ``bound_test`` (dashed, no legend entry
    of its own: the panel's note says which is which)."""
    later = []
    for v in variants:
        steps, mean, sd, _ = series(runs, v, "bound")
        if len(steps):
            line = _band(ax, steps, mean, sd, label_of(v), color_of(v))
            later.append(mean[1:])
            t_steps, t_mean, t_sd, _ = series(runs, v, "bound_test")
            if len(t_steps):
                _band(ax, t_steps, t_mean, t_sd, None, line.get_color(), "--")
                later.append(t_mean[1:])
    _clip_initial_outliers(ax, later)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, title=BOUND_LEGEND if any("bound_test" in r for run in runs for r in run["metrics"])
              else None, title_fontsize=6, framealpha=0.6)     # curves behind a crowded legend stay visible


def _clip_initial_outliers(ax, later_values):
    """Keep the y range on the trained part of the curves when a step-0 value lies far below it.

    I_NWJ at initialization can be hugely negative (-e^S for large scores S); drawn to scale it would
    flatten every curve. The axis then starts just below the later values and a note says so.
    """
    values = np.concatenate([np.ravel(v) for v in later_values] + [np.empty(0)])   # none at all: empty
    values = values[np.isfinite(values)]
    if not len(values):
        return
    lo, hi = values.min(), values.max()
    span = max(hi - lo, 1e-3)
    bottom = ax.get_ylim()[0]
    if bottom < lo - 10 * span:
        ax.set_ylim(lo - 0.5 * span, hi + 0.25 * span)
        ax.text(0.02, 0.02, "step-0 values lie below the axis", transform=ax.transAxes, fontsize=7,
                color="gray")


def _estimator_label(v):
    return label_of(v)


def _estimator_color(v):
    return color_of(v)


# ----------------------------------------------------------------------------------------------------
# one function per experiment


def plot_invertible(runs, path):
    """Fig. 1a-b: bound and accuracy over training for bijective RealNVP encoders (MI is constant)."""
    plt = _pyplot()
    variants = variants_of(runs)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    _bound_panel(axes[0], runs, variants, _estimator_label, _estimator_color)
    axes[0].set_title("(a) estimated bound; the true MI never changes", fontsize=10)
    _accuracy_panel(axes[1], runs, variants, _estimator_label, _estimator_color)
    axes[1].set_title("(b) linear probe on g1's codes", fontsize=10)
    return _finish(fig, axes, _title(runs, "Invertible encoders (Fig. 1a, 1b)"), path)


def plot_adversarial(runs, path):
    """Fig. 1c: probe accuracy of an adversarially trained bijective encoder vs. the pixel baseline."""
    plt = _pyplot()
    fig, ax = plt.subplots(1, 1, figsize=(5.5, 4))
    _accuracy_panel(ax, runs, ["adversarial"], lambda v: "RealNVP trained against the probe",
                    lambda v: "tab:red")
    ax.set_title("bijective encoder, MI unchanged", fontsize=10)
    return _finish(fig, np.array([ax]), _title(runs, "Adversarial encoder (Fig. 1c)"), path,
                   xlabel="iterations of 10 classifier steps + 1 encoder step (in thousands)")


def pooled_condition_bands(runs, variant):
    """(steps, bands) of Fig. 2c for ``variant``: at every step that all runs evaluated, the log condition
    numbers of every run's batch pooled (concatenated) and their order statistics at index int(p (n - 1)),
    p = 0, .2, ..., 1, as the paper's notebook draws them (:func:`mi_ref.stats.pooled_order_statistics`);
    ``bands`` has shape (steps, 6): min, 20th, 40th, 60th, 80th percentile, max."""
    per_run = []
    for run in runs:
        rows = {r["step"]: r["logcond_values"] for r in run["metrics"]
                if r.get("variant") == variant and r.get("logcond_values") is not None}
        if rows:
            per_run.append(rows)
    if not per_run:
        return np.array([]), np.empty((0, 6))
    steps = sorted(set.intersection(*(set(r) for r in per_run)))
    bands = np.array([pooled_order_statistics([r[s] for r in per_run]) for s in steps]).reshape(len(steps), 6)
    return np.array(steps), bands


def _condition_panel(ax, runs, variant):
    steps, mean = pooled_condition_bands(runs, variant)
    if not len(steps):
        return
    x = steps / 1000.0
    color = color_of(variant) or "tab:purple"
    ax.fill_between(x, mean[:, 0], mean[:, 5], color=color, alpha=0.15, linewidth=0, label="min - max")
    ax.fill_between(x, mean[:, 1], mean[:, 4], color=color, alpha=0.3, linewidth=0, label="20th - 80th")
    ax.fill_between(x, mean[:, 2], mean[:, 3], color=color, alpha=0.6, linewidth=0, label="40th - 60th")
    ax.set_ylabel(r"$\log(\sigma_{max} / \sigma_{min})$ of $J_{g_1}$")
    ax.set_title(f"(c) conditioning, {label_of(variant)}; {len(runs)} run(s) pooled", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")


def plot_conditioning(runs, path):
    """Fig. 2a-c: bound, accuracy and the log-condition-number percentiles of g1's Jacobian."""
    plt = _pyplot()
    variants = variants_of(runs)
    fig, axes = plt.subplots(1, 2 + len(variants), figsize=(5 * (2 + len(variants)), 4))
    _bound_panel(axes[0], runs, variants, _estimator_label, _estimator_color)
    axes[0].set_title("(a) estimated bound", fontsize=10)
    _accuracy_panel(axes[1], runs, variants, _estimator_label, _estimator_color)
    axes[1].set_title("(b) linear probe on g1's codes", fontsize=10)
    for ax, v in zip(axes[2:], variants):
        _condition_panel(ax, runs, v)
    return _finish(fig, axes, _title(runs, "Hard-to-invert encoders (Fig. 2)"), path)


def _distinct(runs, field):
    """The distinct values of a metric-row field over the variants, in order of appearance."""
    values = []
    for v in variants_of(runs):
        value = variant_field(runs, v, field)
        if value not in values:
            values.append(value)
    return values


def _by_field(runs, field, value):
    return [v for v in variants_of(runs) if variant_field(runs, v, field) == value]


def plot_critics(runs, path):
    """Fig. 3: bound (top) and accuracy (bottom) per critic, one column per estimator."""
    plt = _pyplot()
    estimators = _distinct(runs, "estimator")
    fig, axes = plt.subplots(2, len(estimators), figsize=(5 * len(estimators), 7.5), squeeze=False)
    for col, est in enumerate(estimators):
        chosen = _by_field(runs, "estimator", est)
        critic_of = lambda v: variant_field(runs, v, "critic")  # noqa: E731
        _bound_panel(axes[0, col], runs, chosen, lambda v: label_of(critic_of(v)), lambda v: color_of(critic_of(v)))
        axes[0, col].set_title(f"{label_of(est)}: estimated bound", fontsize=10)
        _accuracy_panel(axes[1, col], runs, chosen, lambda v: label_of(critic_of(v)), lambda v: color_of(critic_of(v)))
        axes[1, col].set_title(f"{label_of(est)}: linear probe", fontsize=10)
    return _finish(fig, axes, _title(runs, "Critics (Fig. 3)"), path)


ENCODER_COLORS = {"convnet": "tab:purple", "mlp": "tab:olive"}


def plot_encoders(runs, path):
    """Fig. 4a-b: per estimator (columns), the accuracy (top), the loss L_t = |I_EST - t| the paper plots
    beside it (middle), and the bound itself against the targets t (bottom; dashed: held-out)."""
    plt = _pyplot()
    estimators = _distinct(runs, "estimator")
    fig, axes = plt.subplots(3, len(estimators), figsize=(5 * len(estimators), 10.5), squeeze=False)
    targets = sorted({variant_field(runs, v, "target") for v in variants_of(runs)})
    styles = {t: s for t, s in zip(targets, ["-", "--", ":", "-."])}

    def label(v):
        return f"{variant_field(runs, v, 'encoder')}, t = {variant_field(runs, v, 'target'):g}"

    for col, est in enumerate(estimators):
        name = label_of(est)
        later = {"loss": [], "bound": [np.array(targets, dtype=float)]}
        for v in _by_field(runs, "estimator", est):
            color = ENCODER_COLORS.get(variant_field(runs, v, "encoder"))
            style = styles[variant_field(runs, v, "target")]
            for row, key in ((0, "accuracy"), (1, "loss"), (2, "bound")):
                steps, mean, sd, _ = series(runs, v, key)
                if len(steps):
                    _band(axes[row, col], steps, mean, sd, label(v), color, style)
                    if key in later:
                        later[key].append(mean[1:])
            steps, mean, sd, _ = series(runs, v, "bound_test")
            if len(steps):
                line = _band(axes[2, col], steps, mean, sd, None, color, style)
                line.set_alpha(0.5)
                later["bound"].append(mean[1:])
        base = baseline(runs)
        if base is not None:
            axes[0, col].axhline(base, color="black", linestyle="--", linewidth=1, label=f"pixels ({base:.3f})")
        _clip_initial_outliers(axes[1, col], later["loss"])
        _clip_initial_outliers(axes[2, col], later["bound"])
        for t in targets:
            axes[2, col].axhline(t, color="gray", linestyle=styles[t], linewidth=0.8)
        axes[0, col].set_ylabel("linear-probe test accuracy")
        axes[1, col].set_ylabel(rf"$L_t(g_1, g_2)$ = |{name} - t|")
        axes[2, col].set_ylabel(f"{name} (nats)")
        axes[0, col].set_title(f"loss |{name} - t|: linear probe", fontsize=10)
        axes[1, col].set_title("the loss L_t on fresh training batches (as the paper plots)", fontsize=10)
        axes[2, col].set_title(f"{name}; gray: targets t; fainter: held-out (test set)", fontsize=10)
        for ax in axes[:, col]:
            ax.legend(fontsize=7, handlelength=3.5)        # long enough to show t = 4's dashes
    return _finish(fig, axes, _title(runs, "Encoders (Fig. 4a, 4b)"), path)


def plot_sampling(runs, path):
    """Fig. 4c: the per-step estimates on i.i.d. and non-i.i.d. batches, smoothed as the paper does
    (Gaussian filter, sigma = ``smoothing_sigma`` steps), against the true MI, on the paper's y range."""
    from .synthetic import smoothed
    plt = _pyplot()
    fig, ax = plt.subplots(1, 1, figsize=(6.5, 4.5))
    cfg = runs[0]["config"]["config"]
    sigma = cfg.get("smoothing_sigma", 100.0)
    true_mi, top = None, 0.25
    for v in variants_of(runs):
        traces = [run["arrays"][v]["trace"] for run in runs if v in run["arrays"]]
        if not traces:
            continue
        n = min(len(t) for t in traces)
        curves = np.array([smoothed(t[:n], sigma) for t in traces])
        est, sampling = variant_field(runs, v, "estimator"), variant_field(runs, v, "sampling")
        true_mi = variant_field(runs, v, "true_mi")
        mean = curves.mean(axis=0)
        what = {"iid": "i.i.d.", "non-iid": "non-i.i.d."}.get(sampling, sampling)
        _band(ax, np.arange(n), mean, sample_sd(curves, axis=0), f"{label_of(est)}, {what} samples",
              color_of(est), "-" if sampling == "iid" else "--")
        top = max(top, 1.1 * float(mean[-1]))
    if true_mi is not None:
        ax.axhline(true_mi, color="black", linestyle=":", linewidth=1.5, label=f"true MI ({true_mi:.4f})")
    for line in ax.get_lines():
        line.set_marker("")
    ax.set_ylim(-0.3, top)                        # the paper's range, widened if a curve ends above it
    ax.set_ylabel(f"$I_{{EST}}$ (nats), Gaussian-smoothed, sigma {sigma:g} steps")
    ax.legend(fontsize=8, loc="lower right")
    batches = "a fresh batch every step" if cfg.get("batches", "fresh") == "fresh" else "ONE FIXED batch"
    ax.set_title(f"solid: i.i.d. samples; dashed: all pairs share one Z; {batches}", fontsize=9)
    return _finish(fig, np.array([ax]), _title(runs, "Negative sampling (Fig. 4c)"), path)


def _objective_label(name):
    return label_of(name) + (" (= log K - K-pair)" if name == "infonce" else "")


def plot_metric(runs, path):
    """Section 4: probe accuracy and the bound (both measures) for MI bounds and triplet losses: each MI
    objective's own estimator, and I_NCE for the triplet losses."""
    plt = _pyplot()
    variants = variants_of(runs)
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4))
    objective = lambda v: variant_field(runs, v, "objective")  # noqa: E731
    _bound_panel(axes[0], runs, variants, lambda v: _objective_label(objective(v)),
                 lambda v: color_of(objective(v)), ylabel="estimated bound (nats)")
    axes[0].set_title(r"bound of the codes: the objective's own ($I_{NWJ}$ for $I_{NWJ}$), else $I_{NCE}$",
                      fontsize=10)
    _accuracy_panel(axes[1], runs, variants, lambda v: _objective_label(objective(v)),
                    lambda v: color_of(objective(v)))
    axes[1].set_title("linear probe on g1's codes", fontsize=10)
    return _finish(fig, axes, _title(runs, "Metric learning (Section 4)"), path)


# the figure of each experiment of mi_ref.experiments.REGISTRY, by registry name (plot_generic, defined below,
# draws the bound and the accuracy of every variant); tests/test_registry.py asks every experiment for one
PLOTTERS = {"invertible": plot_invertible, "adversarial": plot_adversarial, "conditioning": plot_conditioning,
            "critics": plot_critics, "encoders": plot_encoders, "sampling": plot_sampling,
            "metric": plot_metric}


def plot_generic(runs, path):
    """Any other experiment: the bound (both measures) and the accuracy of every variant."""
    plt = _pyplot()
    variants = variants_of(runs)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    _bound_panel(axes[0], runs, variants, label_of, color_of)
    _accuracy_panel(axes[1], runs, variants, label_of, color_of)
    return _finish(fig, axes, _title(runs, runs[0]["config"]["experiment"]), path)


def register_plotter(name, fn):
    """Give experiment ``name`` a figure of its own (the default is :func:`plot_generic`)."""
    PLOTTERS[name] = fn
    return fn


# ----------------------------------------------------------------------------------------------------
# entry point


FORMATS = ("png", "pdf", "svg")


def _group_key(run):
    cfg = run["config"]
    return cfg["experiment"], cfg["preset"], json.dumps(cfg["config"], sort_keys=True)


COMPARISON_PANELS_PER_ROW = 4
COMPARISON_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
                     "tab:gray", "tab:olive", "tab:cyan")


def _config_of(runs):
    cfg = runs[0]["config"]
    return {"preset": cfg["preset"], **cfg["config"]}


def differing_settings(groups):
    """The settings (the preset among them) whose values differ between the groups' configs, in the order of
    the config's fields (as run names list them)."""
    import dataclasses

    from .experiments import get
    configs = [_config_of(g) for g in groups]
    cfg = groups[0][0]["config"]
    order = ["preset"] + [f.name for f in dataclasses.fields(get(cfg["experiment"]).presets[cfg["preset"]])]
    keys = list(dict.fromkeys(order + [k for c in configs for k in c]))
    return [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]


def variant_colors(groups):
    """``{variant: colour}``, the same in every panel of a comparison: a variant's registered colour (an
    estimator's, a critic's, a loss's) unless another variant took it, else the next free one of
    :data:`COMPARISON_COLORS`, in the order the variants first appear."""
    colors, used = {}, set()
    variants = list(dict.fromkeys(v for runs in groups for v in variants_of(runs)))
    for v in variants:
        own = color_of(v)
        if own is not None and own not in used:
            colors[v] = own
            used.add(own)
    free = [c for c in COMPARISON_COLORS if c not in used]
    for i, v in enumerate(v for v in variants if v not in colors):
        colors[v] = free[i % len(free)] if free else COMPARISON_COLORS[i % len(COMPARISON_COLORS)]
    return colors


def comparison_name(groups, fmt="png"):
    """The file name of a comparison, from the configs compared: ``EXPERIMENT-PRESET-compared-KEYS-HASH.FMT``,
    KEYS the settings that differ between the configs, HASH the first 8 hex digits of the SHA-256 of every
    config and its seeds: another set of configs or seeds is another file, and the same comparison drawn
    again is the same file."""
    import hashlib
    cfg = groups[0][0]["config"]
    keys = differing_settings(groups)
    text = json.dumps(sorted([json.dumps(_config_of(g), sort_keys=True),
                              sorted(r["config"]["seed"] for r in g)] for g in groups))
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    shown = "+".join(keys) if len("+".join(keys)) <= 48 else "+".join(keys[:3]) + "+more"
    return f"{cfg['experiment']}-{cfg['preset']}-compared-{shown or 'seeds'}-{digest}.{fmt}"


def _comparison_panel(ax, runs, key, colors, held_out):
    """One config's curves of ``key`` (solid; with ``held_out``, ``bound_test`` dashed in the same colour, as
    in every figure of mi-ref), and the pixel baseline in the accuracy panel. Returns the later values (for
    the y range)."""
    later = []
    for v in variants_of(runs):
        steps, mean, sd, _ = series(runs, v, key)
        if len(steps):
            _band(ax, steps, mean, sd, label_of(v), colors[v])
            later.append(mean[1:])
        if held_out:
            steps, mean, sd, _ = series(runs, v, "bound_test")
            if len(steps):
                _band(ax, steps, mean, sd, None, colors[v], "--")
                later.append(mean[1:])
    if key == "accuracy":
        base = baseline(runs)
        if base is not None:
            ax.axhline(base, color="black", linestyle=":", linewidth=1)
    return later


def comparison_figure(groups):
    """The figure of :func:`plot_comparison` (returned, not saved)."""
    from matplotlib.lines import Line2D

    from .experiments import describe_overrides, describe_value
    plt = _pyplot()
    experiment = groups[0][0]["config"]["experiment"]
    keys = differing_settings(groups)
    colors = variant_colors(groups)
    metrics = [k for k in ("bound", "accuracy") if any(k in r for g in groups for run in g for r in run["metrics"])]
    held_out = any("bound_test" in r for g in groups for run in g for r in run["metrics"])
    per_row = min(len(groups), COMPARISON_PANELS_PER_ROW)
    blocks = -(-len(groups) // per_row)
    rows = blocks * len(metrics)
    fig, axes = plt.subplots(rows, per_row, figsize=(3.9 * per_row + 2.6, 3.2 * rows + 1.4), squeeze=False)
    ylabels = {"bound": "the paper's bound (nats)" if held_out else "the estimate (nats), mean over each row's steps",
               "accuracy": "linear-probe test accuracy"}
    later = {m: [] for m in metrics}
    for i, runs in enumerate(groups):
        block, col = divmod(i, per_row)
        config = _config_of(runs)
        title = ", ".join(f"{k}={describe_value(config.get(k))}" for k in keys) or "the same config"
        seeds = sorted(r["config"]["seed"] for r in runs)
        for j, metric in enumerate(metrics):
            ax = axes[block * len(metrics) + j, col]
            later[metric] += _comparison_panel(ax, runs, metric, colors, held_out and metric == "bound")
            ax.set_title(f"{title}\n{len(runs)} run(s), seed{'s' if len(seeds) > 1 else ''} "
                         f"{', '.join(map(str, seeds))}", fontsize=9)
            if col == 0:
                ax.set_ylabel(ylabels[metric])
    for j, metric in enumerate(metrics):          # every config's panel on the same scale
        used = [axes[b * len(metrics) + j, c] for b in range(blocks) for c in range(per_row)
                if b * per_row + c < len(groups)]
        lo = min(ax.get_ylim()[0] for ax in used)
        hi = max(ax.get_ylim()[1] for ax in used)
        for ax in used:
            ax.set_ylim(lo, hi)
            _clip_initial_outliers(ax, later[metric])
    for i in range(len(groups), blocks * per_row):  # empty places of the last block
        for j in range(len(metrics)):
            axes[(i // per_row) * len(metrics) + j, i % per_row].set_visible(False)
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator
    last = max((r["step"] for g in groups for run in g for r in run["metrics"]), default=0)
    ticks = [t / 1000 for t in MaxNLocator(nbins=5, integer=True).tick_values(0, max(last, 1)) if 0 <= t <= last]
    for ax in np.ravel(axes):
        if ax.get_visible():
            ax.grid(alpha=0.3)
            if last < 2000:                       # short runs: whole steps, not thousandths
                ax.xaxis.set_major_locator(FixedLocator(ticks))
                ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x * 1000:.0f}"))
            else:
                ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
            ax.set_xlabel("training steps" if last < 2000 else "training steps (in thousands)", fontsize=8)
    handles = [Line2D([], [], color=colors[v], marker=".", label=label_of(v)) for v in colors]
    if "bound" in metrics and held_out:
        handles.append(Line2D([], [], color="gray", linestyle="-", label="solid: the paper's bound"))
        handles.append(Line2D([], [], color="gray", linestyle="--", label="dashed: held-out bound (test set)"))
    if any(baseline(g) is not None for g in groups) and "accuracy" in metrics:
        handles.append(Line2D([], [], color="black", linestyle=":", label="dotted: pixel baseline"))
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
               title="colour: variant (the same in every panel)\none panel per config", title_fontsize=8)
    cfg = groups[0][0]["config"]
    common = {k: v for k, v in _config_of(groups[0]).items() if k not in keys and k != "preset"}
    shared = describe_overrides(experiment, cfg["preset"], common) if "preset" not in keys else ""
    import textwrap
    title = (f"{experiment}: {len(groups)} configs compared, differing in {', '.join(keys) or 'nothing'}; "
             f"mean ± sd over each config's seeds"
             + (f"\nevery config: preset {cfg['preset']}" + (f" with {shared}" if shared else "")
                if "preset" not in keys else ""))
    title = "\n".join(textwrap.fill(line, int(fig.get_figwidth() * 11), break_on_hyphens=False)
                      for line in title.split("\n"))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_comparison(groups, path):
    """Runs of one experiment with different configs, each config pooled over its seeds (mean ± sd): one
    panel per config (a row of panels per metric: the paper's bound, the accuracy), titled with the settings
    that differ between the configs, the settings they share in the figure's title. A variant has one
    colour in every panel; within a panel the line styles mean what they mean in every figure of mi-ref
    (solid: the paper's bound, dashed: the held-out bound; dotted: the pixel baseline). Every panel of a
    metric has the same y range. The legend stands outside the panels, to the right."""
    fig = comparison_figure(groups)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def plot_runs(run_dirs, out_dir, fmt="png", separate=False, partial=False):
    """Figures of run directories: the runs of one experiment that differ only in their seed are pooled
    (mean +- sd) into the experiment's figure, ``out_dir/RUN_NAME-DATASET.FMT``. Runs of one experiment with
    different configs are not averaged: a ``ValueError`` names the settings that differ, unless ``separate``,
    which draws each config in a panel of its own (:func:`plot_comparison`) in a file named after the configs
    compared (:func:`comparison_name`).
    An unfinished run (:func:`mi_ref.effects.unfinished_units`) is a
    :class:`mi_ref.effects.IncompleteRunError` naming it, unless ``partial``: then it is drawn as it is and
    the title says which seeds are unfinished. Returns the paths written."""
    from .experiments import run_name
    if fmt not in FORMATS:
        raise ValueError(f"unknown figure format {fmt!r}; expected one of {list(FORMATS)}")
    by_experiment = defaultdict(lambda: defaultdict(list))
    from .effects import IncompleteRunError, unfinished_units
    for d in run_dirs:
        run = load_run(d)
        missing = unfinished_units(run)
        if missing and not partial:
            raise IncompleteRunError(f"{run['path']} is unfinished (it lacks {', '.join(missing)}); finish it with "
                                     "--resume, or pass --partial to draw it as it is")
        run["unfinished"] = missing
        by_experiment[run["config"]["experiment"]][_group_key(run)].append(run)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for experiment, groups in sorted(by_experiment.items()):
        groups = list(groups.values())
        for runs in groups:
            if not any(r["metrics"] for r in runs):
                raise ValueError(f"the runs of {experiment} in {runs[0]['path']} hold no metrics yet")
        if len(groups) > 1:
            if not separate:
                configs = [{"preset": g[0]["config"]["preset"], **g[0]["config"]["config"]} for g in groups]
                keys = sorted(k for k in set().union(*configs)
                              if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1)
                raise ValueError(f"the runs of {experiment} have {len(groups)} different configs (they differ in "
                                 f"{keys}), so they are not averaged; plot each config's runs apart, or pass "
                                 "--separate to draw every config as curves of its own")
            written.append(plot_comparison(groups, out_dir / comparison_name(groups, fmt)))
            continue
        runs = groups[0]
        cfg = runs[0]["config"]
        name = run_name(experiment, cfg["preset"], cfg["config"])
        path = out_dir / f"{name}-{cfg['config'].get('dataset', 'synthetic')}.{fmt}"
        written.append(PLOTTERS.get(experiment, plot_generic)(runs, path))
    return written

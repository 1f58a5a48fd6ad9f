"""How each experiment's figure is drawn, in the paper's style: one plotter per experiment (a catalogue).

:data:`PLOTTERS` maps each experiment of :data:`mi_ref.experiments.REGISTRY` to the function that draws its
figure from the runs of one config, pooled over their seeds: every curve is the mean over runs with a band
of +- one standard deviation, against "training steps (in thousands)", as in the paper's plots;
:func:`plot_generic` draws any other experiment. Before them, the pieces they share: the styles the
registries give, pooling runs into curves, panels and titles. :func:`mi_ref.figures.plot_runs` writes the
figures of run directories.
"""

import weakref

import numpy as np

from .bounds import ESTIMATORS
from .critics import CRITICS
from .metric_learning import LOSSES
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
    for ax in np.ravel(axes):
        if ax in _ABOVE_THE_CURVES:
            _lift_legend(fig, ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def runs_phrase(seeds):
    """``"1 run (seed 0)"`` or ``"3 runs (seeds 0, 1, 2)"``: what a figure's title says of its runs."""
    seeds = sorted(seeds)
    many = len(seeds) != 1
    return f"{len(seeds)} run{'s' if many else ''} (seed{'s' if many else ''} {', '.join(map(str, seeds))})"


def _title(runs, what):
    from .experiments import describe_overrides
    cfg = runs[0]["config"]
    dataset = cfg["config"].get("dataset", "synthetic")
    steps = cfg["config"].get("n_iters")
    changed = describe_overrides(cfg["experiment"], cfg["preset"], cfg["config"])
    preset = f"preset {cfg['preset']}" + (f" with {changed}" if changed else "")
    seeds = sorted(r["config"]["seed"] for r in runs)
    unfinished = sorted(r["config"]["seed"] for r in runs if r.get("unfinished"))
    return (f"{what}\n{cfg['experiment']}, {preset}\n{dataset}, {steps} steps, {runs_phrase(seeds)}" +
            (", mean ± sd" if len(seeds) > 1 else "") +
            (f"; UNFINISHED: seed{'s' if len(unfinished) > 1 else ''} {', '.join(map(str, unfinished))}"
             if unfinished else ""))


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
              else None, title_fontsize=6, framealpha=0.6, loc="upper left")
    _ABOVE_THE_CURVES.add(ax)


# axes whose upper-left legend :func:`_finish` lifts above every curve (a bound panel's legend is wide, and
# matplotlib's "best" place still covered curves in the metric and critics figures)
_ABOVE_THE_CURVES = weakref.WeakSet()


def _lift_legend(fig, ax, room=0.5):
    """Raise the top of ``ax``'s y axis so that its upper-left legend lies above everything drawn in it.
    A legend taller than ``room`` of the axes would squash the curves: it goes to matplotlib's "best" place."""
    legend = ax.get_legend()
    if legend is None:
        return
    renderer = fig.canvas.get_renderer()
    share = legend.get_window_extent(renderer).height / ax.get_window_extent(renderer).height
    if share > room:
        legend.set_loc("best")
        return
    low, high = ax.get_ylim()
    ax.set_ylim(low, low + (high - low) / (1 - share - 0.03))       # 3 % of the axes between curves and legend


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
    pooled = f"{len(runs)} runs pooled" if len(runs) > 1 else "1 run"
    ax.set_title(f"(c) conditioning, {label_of(variant)}; {pooled}", fontsize=10)
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

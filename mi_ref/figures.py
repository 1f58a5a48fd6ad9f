"""Figure files from run directories only (config.json, metrics.jsonl, arrays/): :func:`plot_runs` pools the
runs of an experiment that differ only in their seed into the experiment's figure (drawn by its plotter in
:mod:`mi_ref.plots`), one file per group, and draws the runs of different configs side by side when asked
(:func:`plot_comparison`).
"""

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from .plots import (PLOTTERS, _band, _clip_initial_outliers, _pyplot, baseline, color_of, label_of, plot_generic,
                    runs_phrase, series, variants_of)
from .runs import load_run

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
            ax.set_title(f"{title}\n{runs_phrase(seeds)}", fontsize=9)
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

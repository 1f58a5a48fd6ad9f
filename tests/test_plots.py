"""mi_ref.figures: the comparison of configs (`mi-ref plot A B --separate`): a panel per config, a colour per
variant in every panel, the figures' own line styles, the differing settings in the panel titles, the legend
off the data, and a file name that no other comparison shares."""

import pytest

from mi_ref import cli, experiments, figures
from mi_ref.runs import load_run

TINY = dict(dataset="digits", n_iters=6, n_evals=2, critics=("bilinear",))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three configs of critics (two learning rates, and one with a single estimator), seeds 0-1 of the first."""
    out = tmp_path_factory.mktemp("runs")
    dirs = {"a": [experiments.run_experiment("critics", "quick", s, out, progress=False, **TINY) for s in (0, 1)],
            "b": [experiments.run_experiment("critics", "quick", 0, out, progress=False, **dict(TINY, lr=3e-3))],
            "c": [experiments.run_experiment("critics", "quick", 0, out, progress=False,
                                             **dict(TINY, lr=3e-3, estimators=("nwj",)))]}
    return dirs


def groups_of(dirs):
    return [[load_run(d) for d in group] for group in dirs]


def test_a_comparison_has_a_panel_per_config_and_a_colour_per_variant(runs):
    groups = groups_of([runs["a"], runs["b"], runs["c"]])
    assert figures.differing_settings(groups) == ["lr", "estimators"]
    fig = figures.comparison_figure(groups)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2 * 3                                     # bound and accuracy, one panel per config
    titles = [ax.get_title() for ax in axes]
    assert sum("lr=0.001, estimators=infonce,nwj" in t for t in titles) == 2
    assert sum("lr=0.003, estimators=nwj" in t for t in titles) == 2 and "2 runs (seeds 0, 1)" in titles[0]
    assert titles[1].endswith("\n1 run (seed 0)")             # was "1 run(s), seed 0"
    colours = {}
    for ax in axes:
        for line in ax.get_lines():
            if line.get_label().startswith("bilinear-"):
                colours.setdefault(line.get_label(), set()).add(line.get_color())
                assert line.get_linestyle() == "-"            # the paper's bound and the accuracy: solid
    assert set(colours) == {"bilinear-infonce", "bilinear-nwj"} and all(len(c) == 1 for c in colours.values())
    assert colours["bilinear-infonce"] != colours["bilinear-nwj"]
    dashed = [line for ax in axes for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert dashed and all(line.get_label().startswith("_") for line in dashed)    # the held-out bound, as always
    assert {line.get_color() for line in dashed} <= set().union(*colours.values())
    assert len({ax.get_ylim() for ax in axes[:3]}) == 1 and len({ax.get_ylim() for ax in axes[3:]}) == 1
    fig.canvas.draw()
    (legend,) = fig.legends
    box = legend.get_window_extent()
    assert not any(box.overlaps(ax.get_window_extent()) for ax in axes)        # the legend is off the data
    texts = [t.get_text() for t in legend.get_texts()]
    assert "dashed: held-out bound (test set)" in texts and "bilinear-nwj" in texts
    assert "every config: preset quick with dataset=digits, n_iters=6, critics=bilinear" in fig._suptitle.get_text()


def test_a_comparison_is_named_after_its_configs_and_never_overwrites_another(runs, tmp_path, capsys):
    """Was: every comparison was written to EXPERIMENT-comparison.png, the next one over the last."""
    out = tmp_path / "fig"
    first = figures.plot_runs(runs["a"] + runs["b"], out, separate=True)
    second = figures.plot_runs(runs["a"] + runs["c"], out, separate=True)
    third = figures.plot_runs(runs["a"][:1] + runs["b"], out, separate=True)        # other seeds: another file
    names = [p.name for p in first + second + third]
    assert len(set(names)) == 3 and names[0].startswith("critics-quick-compared-lr-")
    assert names[1].startswith("critics-quick-compared-lr+estimators-")
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    assert [p.name for p in figures.plot_runs(runs["b"] + runs["a"], out, separate=True)] == names[:1]  # the same
    assert cli.main(["plot", *map(str, runs["a"] + runs["b"]), "--separate", "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"wrote {out / names[0]}\n"


def test_a_figure_title_counts_its_runs_in_words_and_gives_an_sd_only_over_several(runs):
    """Was: "1 run(s) (seeds 0), mean ± sd" under a single run, which has no sd."""
    from mi_ref.plots import _title, runs_phrase
    assert runs_phrase([2, 0, 1]) == "3 runs (seeds 0, 1, 2)" and runs_phrase([4]) == "1 run (seed 4)"
    one = _title([load_run(runs["b"][0])], "what")
    assert one.endswith("6 steps, 1 run (seed 0)"), one
    two = _title([load_run(d) for d in runs["a"]], "what")
    assert two.endswith("6 steps, 2 runs (seeds 0, 1), mean ± sd"), two


def test_a_bound_panels_legend_is_lifted_above_every_curve():
    """Was: the wide legend of a bound panel, at matplotlib's "best" place, covered curves of the metric and
    critics figures. Now the axis top rises until the upper-left legend lies above everything drawn; a
    legend that would take more than half the axes goes to the "best" place instead of squashing the curves."""
    from mi_ref import plots
    plt = plots._pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.fill_between([0, 1], [0, 3], [1, 4], alpha=0.2)
    ax.plot([0, 1], [0.5, 3.5], label="rises to the top right")
    ax.plot([0, 1], [3.5, 0.5], label="starts at the top left")
    ax.legend(loc="upper left", title=plots.BOUND_LEGEND, title_fontsize=6, fontsize=8)
    fig.tight_layout()
    plots._lift_legend(fig, ax)
    fig.canvas.draw()
    box = ax.get_legend().get_window_extent(fig.canvas.get_renderer())
    bottom = ax.transData.inverted().transform((box.x0, box.y0))[1]
    assert bottom > 4.0, bottom                                      # above the band's top, 4
    assert ax.get_ylim()[1] < 8.0                                    # and the curves keep most of the height
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(3, 2))
    for i in range(12):
        ax.plot([0, 1], [i, i + 1], label=f"curve {i}")
    ax.legend(loc="upper left", fontsize=8)
    high = ax.get_ylim()[1]
    plots._lift_legend(fig, ax)
    assert ax.get_ylim()[1] == high and ax.get_legend()._loc == 0    # 0: matplotlib's "best"
    plt.close(fig)

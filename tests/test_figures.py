"""The committed figures: every PNG in figures/ has the saved run it was drawn from in figures/runs/, and
that run draws a figure of the same name again (so a clean checkout can redraw every figure)."""

from pathlib import Path

import pytest

from mi_ref import plots

FIGURES = Path(__file__).resolve().parent.parent / "figures"
PNGS = sorted(p.name for p in FIGURES.glob("*.png"))


def test_figures_are_committed():
    assert len(PNGS) >= 14, f"expected the quick and MNIST figures of all seven experiments, found {PNGS}"


@pytest.mark.parametrize("name", PNGS)
def test_each_figure_redraws_from_its_saved_run(name, tmp_path):
    experiment, preset = name.split("-")[:2]
    run_dirs = sorted((FIGURES / "runs" / f"{experiment}-{preset}").glob("seed-*"))
    assert run_dirs, f"figures/{name} has no saved run in figures/runs/{experiment}-{preset}/"
    for run_dir in run_dirs:
        assert (run_dir / "config.json").is_file() and (run_dir / "metrics.jsonl").is_file(), run_dir
    written = plots.plot_runs(run_dirs, tmp_path)
    assert [Path(p).name for p in written] == [name]
    assert Path(written[0]).stat().st_size > 10_000

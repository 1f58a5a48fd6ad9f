"""The committed figures: every PNG in figures/ is drawn again, byte for byte the same name, from a run saved
in figures/runs/ (so a clean checkout can redraw every figure), and the verdicts recorded for `mi-ref list`
are the verdicts of those runs."""

from pathlib import Path

import pytest

from mi_ref import figures, verdicts

FIGURES = Path(__file__).resolve().parent.parent / "figures"
GROUPS = sorted(p for p in (FIGURES / "runs").iterdir() if p.is_dir()) if (FIGURES / "runs").is_dir() else []
PNGS = sorted(p.name for p in FIGURES.glob("*.png"))


def test_the_quick_figure_of_every_experiment_and_one_figure_per_saved_run_are_committed():
    from mi_ref import experiments
    quick = {name.split("-quick-")[0] for name in PNGS if "-quick-" in name}
    assert quick == set(experiments.names()), f"every experiment's quick figure, found {PNGS}"
    assert any("-paper" in name for name in PNGS), f"no figure of an MNIST (paper-preset) run in {PNGS}"
    assert len(GROUPS) == len(PNGS), (GROUPS, PNGS)


@pytest.mark.parametrize("group", GROUPS, ids=lambda p: p.name)
def test_each_saved_run_draws_its_committed_figure(group, tmp_path):
    run_dirs = sorted(group.glob("seed-*"))
    assert run_dirs, f"figures/runs/{group.name} holds no seed-* run"
    for run_dir in run_dirs:
        assert (run_dir / "config.json").is_file() and (run_dir / "metrics.jsonl").is_file(), run_dir
    written = figures.plot_runs(run_dirs, tmp_path)
    assert len(written) == 1 and Path(written[0]).name in PNGS, (written, PNGS)
    assert Path(written[0]).stat().st_size > 10_000


def test_the_recorded_verdicts_are_those_of_the_committed_runs():
    """mi_ref/recorded_findings.json (what `mi-ref list` shows) equals a fresh judgement of figures/runs."""
    run_dirs = [str(p) for g in GROUPS for p in sorted(g.glob("seed-*"))]
    pooled, per_seed = verdicts.judge_for_record(run_dirs)
    fresh = verdicts.recorded_entries(pooled, per_seed)
    recorded = verdicts.load_recorded()
    strip = lambda entries: [{k: v for k, v in e.items()} for e in entries]  # noqa: E731
    assert strip(recorded) == strip(fresh)


def test_the_scaling_study_report_reads_every_committed_study_and_trace(tmp_path):
    """`scripts/finding_vs_scale.py report` (README's source for the scaling numbers) prints from every file
    in figures/scale, the densely evaluated traces included, and names a file that is neither kind."""
    import subprocess
    import sys
    script = FIGURES.parent / "scripts" / "finding_vs_scale.py"
    out = subprocess.run([sys.executable, str(script), "report"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "enc-quick-nwj-trace.json convnet-nwj-t2: mean training loss of the first 10 steps 418.8" in out.stdout
    assert "quick flow 6 x [256, 256]" in out.stdout and "quick encoders" in out.stdout
    (tmp_path / "stray.json").write_text('{"something": []}')
    bad = subprocess.run([sys.executable, str(script), "report", "--out", str(tmp_path)], capture_output=True,
                         text=True)
    assert bad.returncode != 0 and "stray.json: neither a study" in bad.stderr and "Traceback" not in bad.stderr

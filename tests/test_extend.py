"""mi_ref.extend: `mi-ref run ... --steps M --resume` continues a finished shorter run; its rows equal a fresh
M-step run's wherever the evaluation schedules coincide, a note says where they do not, and --resume with no
run to continue is an error naming where it looked and what is there."""

import json

import numpy as np
import pytest

from mi_ref import cli, experiments
from mi_ref.extend import coinciding
from mi_ref.files import load_npz
from mi_ref.results import RunDir

CRITICS = ["--dataset", "digits", "--set", "critics=bilinear", "--quiet"]


def run(argv, capsys):
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def rows(path):
    """The rows without their wall times."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in RunDir(path).read_metrics()]


def only(out, pattern="*/seed-0"):
    (path,) = sorted(out.glob(pattern))
    return path


def params(path, unit):
    """The parameters of ``unit``'s final state."""
    return {k: v for k, v in load_npz(RunDir(path).final_path(unit)).items() if k.startswith("params/")}


def test_coinciding():
    # the interval kept: every row of the continued run is a fresh run's
    assert coinciding([0, 100, 200], 200, [0, 100, 200, 300, 400]) == ([0, 100, 200, 300, 400], [], [])
    # the same n_evals over twice the steps: another interval; only step 0 coincides
    assert coinciding([0, 100, 200], 200, [0, 200, 400]) == ([0], [100, 200, 400], [])
    # no evaluation after the shorter run's last step (the paper's schedule): it is evaluated on continuing
    assert coinciding([0, 4, 8], 12, [0, 4, 8, 12, 16, 20]) == ([0, 4, 8, 12, 16, 20], [], [])
    # a fresh run evaluates at a step the continued one passed without a row
    assert coinciding([0, 83, 166, 250], 250, [0, 83, 166, 249, 332, 500]) == ([0, 83, 166], [250, 332, 500], [249])


def test_a_200_step_run_continued_to_400_has_the_rows_of_a_fresh_400_step_run(tmp_path, capsys):
    """The required check. 200 steps with the preset's 2 evaluations (every 100 steps, and after the last);
    continued to 400 steps, the run keeps the interval (n_evals = 4), so that every row equals a fresh
    `--steps 400 --evals 4` run's; the shorter run is untouched."""
    out = tmp_path / "runs"
    assert run(["run", "critics", "--steps", "200", "--out", str(out)] + CRITICS, capsys)[0] == 0
    short = only(out)
    before = {p.name: p.read_bytes() for p in short.rglob("*") if p.is_file() and p.name != ".lock"}
    code, stdout, err = run(["run", "critics", "--steps", "400", "--resume", "--out", str(out)] + CRITICS, capsys)
    assert code == 0, err
    assert "keeps that interval (n_evals = 4)" in err and "its rows equal those of a fresh 400-step run" in err
    longer = out / "critics-quick-dataset=digits-n_evals=4-critics=bilinear" / "seed-0"
    assert f"results in {longer}" in stdout
    assert {p.name: p.read_bytes() for p in short.rglob("*") if p.is_file() and p.name != ".lock"} == before
    assert run(["run", "critics", "--steps", "400", "--evals", "4", "--out", str(tmp_path / "fresh")] + CRITICS,
               capsys)[0] == 0
    fresh = only(tmp_path / "fresh")
    assert rows(longer) == rows(fresh)
    assert sorted({r["step"] for r in rows(longer)}) == [0, 100, 200, 300, 400]
    for unit in ("bilinear-infonce", "bilinear-nwj"):
        got, want = params(longer, unit), params(fresh, unit)
        assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in got)
    record = json.loads((longer / "config.json").read_text())["extended_from"]
    assert record["n_iters"] == 200 and record["rows_unlike_a_fresh_run"] == [] and record["run"] == str(short)
    # the continued run is a run like any other: resumed again it is finished, and plot reads it
    assert run(["run", "critics", "--steps", "400", "--evals", "4", "--resume", "--out", str(out)] + CRITICS,
               capsys)[0] == 0
    assert rows(longer) == rows(fresh)
    assert run(["plot", str(longer), "--out", str(tmp_path / "fig")], capsys)[0] == 0


def test_a_schedule_that_does_not_coincide_is_said_and_the_parameters_still_are_a_fresh_runs(tmp_path, capsys):
    """--evals 2 over 40 steps evaluates every 20 steps, the 20-step run every 10: the rows coincide at step 0
    only, and the note says so; the training does not depend on the evaluations, so the parameters at the end
    equal a fresh run's."""
    out = tmp_path / "runs"
    assert run(["run", "critics", "--steps", "20", "--out", str(out)] + CRITICS, capsys)[0] == 0
    code, _, err = run(["run", "critics", "--steps", "40", "--evals", "2", "--resume", "--out", str(out)] + CRITICS,
                       capsys)
    assert code == 0
    assert "The evaluation schedules differ: the shorter run has rows at steps 0, 10, 20, a fresh 40-step run at " \
           "0, 20, 40. The rows at step 0 equal a fresh run's; those at steps 10, 20, 40 do not" in err
    longer = out / "critics-quick-dataset=digits-n_iters=40-critics=bilinear" / "seed-0"
    assert run(["run", "critics", "--steps", "40", "--evals", "2", "--out", str(tmp_path / "fresh")] + CRITICS,
               capsys)[0] == 0
    fresh = only(tmp_path / "fresh")
    got, want = rows(longer), rows(fresh)
    assert [r["step"] for r in got if r["variant"] == "bilinear-nwj"] == [0, 10, 20, 40]
    assert [r for r in got if r["step"] == 0] == [r for r in want if r["step"] == 0]
    assert [r for r in got if r["step"] == 40] != [r for r in want if r["step"] == 40]
    for unit in ("bilinear-infonce", "bilinear-nwj"):
        a, b = params(longer, unit), params(fresh, unit)
        assert all(np.array_equal(a[k], b[k]) for k in a)
    assert json.loads((longer / "config.json").read_text())["extended_from"]["rows_unlike_a_fresh_run"] == [10, 20, 40]


@pytest.mark.parametrize("name,short,longer,extra", [
    # the paper's schedule (no evaluation after the last step): the shorter run's last step is evaluated on
    # continuing, its training loss carried over from the final state
    ("conditioning", 12, 24, dict(n_evals=3, n_layers=2, eval_final=False, estimators=("infonce",))),
    # adversarial: the final state lies after iteration 8, a probe iteration of the longer run, whose row
    # needs the losses of the iteration before it; and after iteration 9, which is none
    ("adversarial", 8, 16, dict(warmup_steps=3, probe_every=4, n_couplings=2, hidden=(8,))),
    ("adversarial", 9, 17, dict(warmup_steps=3, probe_every=4, n_couplings=2, hidden=(8,))),
    # sampling: the smoothed end belongs to the last row only
    ("sampling", 100, 200, dict(record_every=25, estimators=("nwj",))),
])
def test_every_kind_of_loop_continues_to_a_fresh_runs_rows(tmp_path, name, short, longer, extra):
    from mi_ref import extend
    exp = experiments.get(name)
    data = {} if name == "sampling" else {"dataset": "digits"}
    short_dir = experiments.run_experiment(name, "quick", 0, tmp_path / "runs", progress=False, n_iters=short,
                                           **data, **extra)
    overrides = dict(data, n_iters=longer, **extra)
    overrides, (plan,) = extend.plan(name, "quick", [0], tmp_path / "runs", overrides, {"n_iters"})
    assert overrides.get("n_evals") == (6 if name == "conditioning" else None)         # every 4 steps kept
    assert plan.source == short_dir and not plan.exists
    extend.extend(plan.source, plan.target, name, "quick", 0, overrides)
    continued = experiments.run_experiment(name, "quick", 0, tmp_path / "runs", resume=True, progress=False,
                                           report=lambda line: None, **overrides)
    fresh = experiments.run_experiment(name, "quick", 0, tmp_path / "fresh", progress=False, **overrides)
    assert continued == plan.target and rows(continued) == rows(fresh)
    assert {r["step"] for r in rows(continued)} >= set(exp.config("quick", **overrides).row_steps())
    for unit in exp.units(exp.config("quick", **overrides)):
        a, b = RunDir(continued).load_arrays(unit), RunDir(fresh).load_arrays(unit)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    if name == "sampling":
        assert [r["step"] for r in rows(continued) if "bound_smoothed" in r and r["variant"] == "iid-nwj"] == [200]


def test_resume_with_no_run_to_continue_names_where_it_looked_and_what_is_there(tmp_path, capsys):
    out = tmp_path / "runs"
    code, _, err = run(["run", "critics", "--steps", "30", "--resume", "--out", str(out)] + CRITICS, capsys)
    assert code == 2 and f"no run to continue at {out}/critics-quick-dataset=digits-n_iters=30-critics=bilinear/seed-0" \
        in err and f"{out} does not exist" in err and "Run without --resume to start it" in err
    assert not out.exists()
    assert run(["run", "critics", "--steps", "20", "--out", str(out), "--runs", "2"] + CRITICS, capsys)[0] == 0
    assert run(["run", "critics", "--steps", "20", "--out", str(out), "--set", "lr=0.003"] + CRITICS, capsys)[0] == 0
    listing = sorted(p.relative_to(out) for p in out.rglob("*"))
    # another learning rate: no run of these settings, shorter or not; the runs there are listed with theirs
    code, _, err = run(["run", "critics", "--steps", "30", "--resume", "--out", str(out), "--set", "lr=0.01"]
                       + CRITICS, capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "critics-quick-dataset=digits-n_iters=20-critics=bilinear (seeds 0, 1; preset quick with dataset=digits, " \
           "n_iters=20, critics=bilinear)" in err
    assert "critics-quick-dataset=digits-n_iters=20-lr=0.003-critics=bilinear (seed 0; preset quick with " \
           "dataset=digits, n_iters=20, lr=0.003, critics=bilinear)" in err
    # a shorter --steps is no continuation either
    assert run(["run", "critics", "--steps", "10", "--resume", "--out", str(out)] + CRITICS, capsys)[0] == 2
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == listing
    # of two seeds asked for, one has a run: it continues, the other starts, and a note says so
    code, _, err = run(["run", "critics", "--steps", "40", "--resume", "--out", str(out), "--runs", "3"] + CRITICS,
                       capsys)
    assert code == 0 and "seed 2 has no run to continue" in err and "it starts afresh" in err


def test_a_run_that_kept_no_state_or_is_unfinished_cannot_be_continued(tmp_path, capsys):
    out = tmp_path / "runs"
    assert run(["run", "critics", "--steps", "20", "--out", str(out), "--no-keep-state"] + CRITICS, capsys)[0] == 0
    assert not list(out.rglob("final"))
    code, _, err = run(["run", "critics", "--steps", "40", "--resume", "--out", str(out)] + CRITICS, capsys)
    assert code == 2 and "bilinear-infonce has no final state to continue from: it kept no final state" in err
    assert "run the 40-step run afresh (without --resume)" in err
    assert len(list(out.iterdir())) == 1
    store = RunDir(only(out))
    progress = json.loads(store.progress_path.read_text())
    progress["done"].remove("bilinear-nwj")
    store.progress_path.write_text(json.dumps(progress))
    code, _, err = run(["run", "critics", "--steps", "40", "--resume", "--out", str(out), "--keep-state"] + CRITICS,
                       capsys)
    assert code == 2 and "is not finished (it lacks bilinear-nwj)" in err and len(list(out.iterdir())) == 1


def test_an_edited_final_state_is_refused(tmp_path, capsys):
    out = tmp_path / "runs"
    assert run(["run", "critics", "--steps", "20", "--out", str(out)] + CRITICS, capsys)[0] == 0
    final = RunDir(only(out)).final_path("bilinear-nwj")
    arrays = load_npz(final)
    arrays["params/model/critic/W"] = arrays["params/model/critic/W"] + 1e-9
    np.savez(final, **arrays)
    code, _, err = run(["run", "critics", "--steps", "40", "--resume", "--out", str(out)] + CRITICS, capsys)
    assert code == 2 and "final state of bilinear-nwj" in err and "differs from the file bilinear-nwj finished with" \
        in err
    assert not [p for p in out.iterdir() if "n_evals=4" in p.name and (p / "seed-0" / "config.json").exists()]

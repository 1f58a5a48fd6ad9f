"""mi_ref.runs: the checked readers of saved runs take what `mi-ref plot` takes."""

import pytest

from mi_ref import experiments
from mi_ref.runs import load_records, run_paths

TINY = dict(dataset="digits", n_iters=4, n_evals=2, critics=("bilinear",), estimators=("infonce",))


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """Two seeds of one config and one seed of another, under one --out folder."""
    out = tmp_path_factory.mktemp("runs")
    for seed in (0, 1):
        experiments.run_experiment("critics", "quick", seed, out, progress=False, **TINY)
    experiments.run_experiment("critics", "quick", 0, out, progress=False, **dict(TINY, lr=3e-3))
    return out


def test_load_records_takes_a_string_a_parent_folder_a_path_or_a_list(out):
    """Was: load_records("runs") iterated over the characters of the string."""
    one = experiments.run_dir_for(out, "critics", "quick", 0, experiments.get("critics").config("quick", **TINY))
    rows = load_records([one])
    assert {r["run"] for r in rows} == {str(one)} and len(rows) == 1 + 3        # baseline + steps 0, 2, 4
    assert load_records(str(one)) == load_records(one) == rows
    everything = load_records(str(out))                     # an --out folder: every run below it
    assert sorted({(r["seed"], r["config.lr"]) for r in everything}) == [(0, 1e-3), (0, 3e-3), (1, 1e-3)]
    assert len(everything) == 3 * 4
    assert load_records(one.parent) == [r for r in everything if r["config.lr"] == 1e-3]   # a RUN_NAME folder
    assert load_records([one, str(one.parent / "seed-1")]) == load_records(one.parent)
    assert load_records(p for p in [one]) == rows


def test_load_records_refuses_what_is_not_a_path(out, tmp_path):
    with pytest.raises(TypeError, match="expected a run directory, a folder holding runs, or a list of them"):
        load_records(3)
    with pytest.raises(TypeError, match="got 3 among them"):
        run_paths([str(out), 3])
    with pytest.raises(FileNotFoundError, match="holds no run directory"):
        load_records(tmp_path)

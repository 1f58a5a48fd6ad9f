"""Tests of the mi-ref command: list, run, plot, reproduce and their errors (exit code 2, nothing lost)."""

import json

import pytest

from mi_ref import cli

TINY = ["--steps", "6", "--quiet", "--dataset", "digits"]


def run(argv, capsys):
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list(capsys):
    code, out, _ = run(["list"], capsys)
    assert code == 0
    for name in ("invertible", "adversarial", "conditioning"):
        assert name in out
    assert out.index("invertible") < out.index("adversarial") < out.index("conditioning")


def test_run_then_plot(tmp_path, capsys):
    code, out, _ = run(["run", "invertible", "--out", str(tmp_path / "runs"), "--steps", "4", "--quiet",
                        "--dataset", "digits"], capsys)
    assert code == 0 and "invertible seed 0: results in" in out
    run_dir = next((tmp_path / "runs").glob("invertible-quick-*/seed-0"))
    assert run_dir.parent.name == "invertible-quick-dataset=digits-n_iters=4"    # the run's name says how
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # 4 steps: n_evals capped at 4, plus the quick preset's evaluation after the last step
    assert [r["step"] for r in rows if r["variant"] == "infonce"] == [0, 1, 2, 3, 4]
    code, out, _ = run(["plot", str(run_dir), "--out", str(tmp_path / "fig")], capsys)
    assert code == 0 and (tmp_path / "fig" / "invertible-quick-dataset=digits-n_iters=4-digits.png").exists()


def test_existing_run_is_never_overwritten(tmp_path, capsys):
    out_dir = str(tmp_path / "runs")
    assert run(["run", "adversarial", "--out", out_dir] + TINY, capsys)[0] == 0
    config = next((tmp_path / "runs").glob("adversarial-quick-*/seed-0/config.json"))
    metrics = config.parent / "metrics.jsonl"
    before = (config.read_bytes(), metrics.read_bytes())
    code, _, err = run(["run", "adversarial", "--out", out_dir] + TINY, capsys)
    assert code == 2 and "--resume" in err
    # another config is another run: it gets a folder of its own, named by what differs
    code, out, _ = run(["run", "adversarial", "--out", out_dir, "--steps", "5", "--quiet", "--dataset", "digits"],
                       capsys)
    assert code == 0 and "adversarial-quick-dataset=digits-n_iters=5/seed-0" in out
    assert (config.read_bytes(), metrics.read_bytes()) == before
    # resuming a finished run is a no-op that succeeds
    assert run(["run", "adversarial", "--out", out_dir, "--resume"] + TINY, capsys)[0] == 0
    assert (config.read_bytes(), metrics.read_bytes()) == before


@pytest.mark.parametrize("argv,message", [
    (["run", "nope"], "unknown experiment 'nope'"),
    (["run", "invertible", "--dataset", "mnist", "--data-dir", "/nonexistent/mnist"], "mi-ref download mnist"),
    (["plot", "/nonexistent/run"], "/nonexistent/run does not exist"),
    (["reproduce", "--only", "nope"], "unknown experiment 'nope'"),
])
def test_bad_input_exits_2(tmp_path, capsys, argv, message):
    code, _, err = run(argv + ["--out", str(tmp_path / "o")] if argv[0] != "plot" else argv, capsys)
    assert code == 2 and message in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv", [["run", "invertible", "--preset", "huge"], ["run", "invertible", "--steps", "0"],
                                  ["run", "invertible", "--steps", "-3"], ["run", "invertible", "--runs", "0"]])
def test_argparse_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2


def test_reproduce_subset(tmp_path, capsys):
    code, out, _ = run(["reproduce", "--only", "invertible", "adversarial", "--out", str(tmp_path / "r"),
                        "--figures", str(tmp_path / "f")] + TINY, capsys)
    assert code == 0 and "training" in out and "wall s" in out
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["adversarial-quick-dataset=digits-n_iters=6-digits.png",
                                                                  "invertible-quick-dataset=digits-n_iters=6-digits.png"]
    assert "The paper's findings, judged on these runs" in out and (tmp_path / "r" / "findings.json").is_file()


def test_parallel_reproduce_equals_the_serial_single_threaded_one(tmp_path, capsys):
    """Two single-threaded workers over every (experiment, seed, variant) give the run directories, row for
    row, of the serial reproduction with one BLAS thread; each experiment's wall span and core-seconds are
    reported."""
    from mi_ref.results import RunDir
    common = ["reproduce", "--only", "critics", "metric", "--runs", "2", "--quiet"] + TINY
    code, out, _ = run(common + ["--jobs", "2", "--out", str(tmp_path / "par"), "--figures", str(tmp_path / "f1")],
                       capsys)
    assert code == 0 and "critics" in out and "core-s" in out
    code, _, _ = run(common + ["--jobs", "1", "--threads", "1", "--out", str(tmp_path / "ser"), "--figures",
                               str(tmp_path / "f2")], capsys)
    assert code == 0
    par = sorted((tmp_path / "par").glob("*/seed-*"))
    ser = sorted((tmp_path / "ser").glob("*/seed-*"))
    assert [p.relative_to(tmp_path / "par") for p in par] == [p.relative_to(tmp_path / "ser") for p in ser]
    assert len(par) == 4
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    for a, b in zip(par, ser):
        assert strip(RunDir(a).read_metrics()) == strip(RunDir(b).read_metrics()), a
        assert RunDir(a).done_variants() == RunDir(b).done_variants()
    code, _, err = run(common + ["--jobs", "2", "--out", str(tmp_path / "par")], capsys)
    assert code == 2 and "already holds a run" in err
    code, _, err = run(common + ["--jobs", "2", "--out", str(tmp_path / "par"), "--resume", "--figures",
                                 str(tmp_path / "f3")], capsys)
    assert code == 0


def test_evals_override(tmp_path, capsys):
    code, _, _ = run(["run", "conditioning", "--out", str(tmp_path), "--steps", "6", "--evals", "2", "--quiet",
                      "--dataset", "digits"], capsys)
    assert code == 0
    rows = [json.loads(line) for line in
            next(tmp_path.glob("conditioning-quick-*/seed-0/metrics.jsonl")).read_text().splitlines()]
    assert [r["step"] for r in rows if r["variant"] == "infonce"] == [0, 3, 6]
    code, _, err = run(["run", "sampling", "--out", str(tmp_path), "--evals", "2", "--quiet"], capsys)
    assert code == 2 and "takes no --evals" in err


def test_set_parses_every_kind_of_setting_and_names_the_valid_keys():
    from mi_ref import experiments
    exp = experiments.get("critics")
    sets = experiments.parse_sets(exp, "quick", ["lr=3e-4", "n_iters=50", "eval_final=no", "dataset=digits",
                                                 "critics=bilinear,concat", "concat_hidden=16", "separable_hidden=(8, 8)"])
    assert sets == {"lr": 3e-4, "n_iters": 50, "eval_final": False, "dataset": "digits",
                    "critics": ("bilinear", "concat"), "concat_hidden": (16,), "separable_hidden": (8, 8)}
    with pytest.raises(ValueError, match=r"--set lr=fast: expected a number \(its default is 0.001\)"):
        experiments.parse_sets(exp, "quick", ["lr=fast"])
    with pytest.raises(ValueError, match=r"--set n_iters=1.5: expected an integer"):
        experiments.parse_sets(exp, "quick", ["n_iters=1.5"])
    with pytest.raises(ValueError, match=r"--set eval_final=maybe: expected true or false"):
        experiments.parse_sets(exp, "quick", ["eval_final=maybe"])
    with pytest.raises(ValueError, match=r"critics has no setting 'learning_rate'; its settings are \['adam', "):
        experiments.parse_sets(exp, "quick", ["learning_rate=1"])
    with pytest.raises(ValueError, match="expects key=value"):
        experiments.parse_sets(exp, "quick", ["lr"])


def test_set_on_the_command_line_and_the_run_is_named_by_it(tmp_path, capsys):
    code, out, err = run(["run", "conditioning", "--out", str(tmp_path), "--dataset", "digits", "--steps", "3",
                          "--set", "lr=0.003", "--set", "noise_std=0.1", "--quiet"], capsys)
    assert code == 0
    run_dir = tmp_path / "conditioning-quick-dataset=digits-n_iters=3-n_evals=3-lr=0.003-noise_std=0.1" / "seed-0"
    config = json.loads((run_dir / "config.json").read_text())["config"]
    assert (config["lr"], config["noise_std"], config["n_evals"]) == (0.003, 0.1, 3)
    assert "4 evaluations asked for 3 steps: evaluating at every step instead (n_evals = 3)" in err
    code, _, err = run(["run", "conditioning", "--out", str(tmp_path), "--set", "layers=3"], capsys)
    assert code == 2 and "no setting 'layers'" in err and "'n_layers'" in err


def test_a_shortened_paper_run_also_evaluates_after_its_last_step(tmp_path, capsys):
    from mi_ref import cli as cli_module
    args = cli_module.build_parser().parse_args(["run", "conditioning", "--preset", "paper", "--steps", "300",
                                                 "--evals", "3"])
    from mi_ref import experiments
    overrides = cli_module.training._overrides(experiments.get("conditioning"), args)
    assert overrides["eval_final"] is True and "also evaluates after its last step" in capsys.readouterr().err
    args = cli_module.build_parser().parse_args(["run", "conditioning", "--preset", "paper"])
    assert "eval_final" not in cli_module.training._overrides(experiments.get("conditioning"), args)   # the paper's own


def test_plot_refuses_to_average_different_configs_unless_separate(tmp_path, capsys):
    for lr in ("0.001", "0.003"):
        assert run(["run", "conditioning", "--out", str(tmp_path / "r"), "--dataset", "digits", "--steps", "4",
                    "--set", f"lr={lr}", "--quiet"], capsys)[0] == 0
    dirs = sorted(str(p) for p in (tmp_path / "r").glob("*/seed-0"))
    code, _, err = run(["plot", *dirs, "--out", str(tmp_path / "f")], capsys)
    assert code == 2 and "2 different configs (they differ in ['lr'])" in err and "--separate" in err
    code, out, _ = run(["plot", *dirs, "--out", str(tmp_path / "f"), "--separate", "--format", "svg"], capsys)
    (figure,) = (tmp_path / "f").glob("conditioning-quick-compared-lr-*.svg")
    assert code == 0 and out == f"wrote {figure}\n" and figure.stat().st_size > 10_000


def test_the_summary_is_the_last_rows_of_the_metrics(tmp_path, capsys):
    from mi_ref.results import RunDir
    code, out, _ = run(["run", "conditioning", "--out", str(tmp_path), "--dataset", "digits", "--steps", "6",
                        "--set", "estimators=infonce,nwj", "--runs", "2", "--quiet"], capsys)
    assert code == 0 and "summary of 2 runs" in out
    for run_dir in sorted(tmp_path.glob("*/seed-*")):
        summary = json.loads((run_dir / "summary.json").read_text())
        rows = RunDir(run_dir).read_metrics()
        pixels = [r for r in rows if r["variant"] == "baseline"][0]["accuracy"]
        for rec in summary["variants"]:
            last = [r for r in rows if r["variant"] == rec["variant"]][-1]
            assert rec["step"] == last["step"] == 6
            assert (rec["bound"], rec["bound_test"], rec["accuracy"]) == (last["bound"], last["bound_test"],
                                                                         last["accuracy"])
            assert rec["vs_pixels"] == last["accuracy"] - pixels and summary["pixels"] == pixels


@pytest.mark.parametrize("command", ["run", "sweep"])
@pytest.mark.parametrize("sets,message", [
    (["batch_size=100000"], "batch_size 100000 is larger than the 1347 training images of digits"),
    (["batch_size=500"], "batch_size 500 is larger than the 450 test images of digits"),
    (["encoder_dims=-3"], "encoder_dims must be a tuple of positive integers, got (-3,)"),
    (["encoder_dims="], "encoder_dims must list at least one width, got ()"),
    (["critics="], "critics must list at least one name, got ()"),
    (["concat_hidden=0"], "concat_hidden must be a tuple of positive integers, got (0,)"),
])
def test_every_setting_is_checked_against_the_data_before_anything_is_written(tmp_path, capsys, command, sets,
                                                                              message):
    """Was: --set batch_size=100000 or encoder_dims=-3 failed only after the run directory and its baseline row
    were written (the same command then said "already holds this run"), and encoder_dims= crashed with an
    IndexError traceback."""
    argv = [command, "critics", "--out", str(tmp_path / "o"), "--quiet", "--dataset", "digits", "--steps", "4"]
    argv += ["--seeds", "0", "--jobs", "1"] if command == "sweep" else []
    for item in sets:
        argv += ["--set", item]
    code, _, err = run(argv, capsys)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flags,setting", [(["--steps", "40", "--set", "n_iters=50"], "n_iters"),
                                           (["--evals", "2", "--set", "n_evals=3"], "n_evals"),
                                           (["--dataset", "digits", "--set", "dataset=mnist-subset"], "dataset")])
def test_a_shortcut_and_a_set_of_the_same_setting_is_an_error(tmp_path, capsys, flags, setting):
    """Was: --set n_iters=50 --steps 40 ran 40 steps without a word (likewise --evals and --dataset)."""
    code, _, err = run(["run", "critics", "--out", str(tmp_path / "o"), "--quiet"] + flags, capsys)
    assert code == 2 and f"both set {setting}" in err, err
    assert not (tmp_path / "o").exists()


def test_no_note_comes_before_the_error_of_a_bad_value(tmp_path, capsys):
    """Was: --set n_iters=0 printed its note ("4 evaluations asked for 0 steps ...") and then its error."""
    code, _, err = run(["run", "conditioning", "--out", str(tmp_path / "o"), "--set", "n_iters=0"], capsys)
    assert code == 2 and "n_iters must be a positive integer, got 0" in err and "note" not in err, err


def test_an_interruption_before_the_run_directory_exists_says_so(tmp_path, capsys, monkeypatch):
    """Was: Ctrl-C before the run directory existed said that everything was saved, in a path that did not
    exist."""
    from mi_ref import datasets

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(datasets, "load", interrupted)
    code, _, err = run(["run", "critics", "--out", str(tmp_path / "o")] + TINY, capsys)
    assert code == 130 and "before anything was written" in err and "is saved" not in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("point", ["metrics", "replace"])
def test_a_full_disk_names_the_file_and_says_what_to_do(tmp_path, capsys, monkeypatch, point):
    """Was: a full disk ended with "cannot use: No space left on device; choose another path or fix its
    permissions", naming no path."""
    import errno

    from mi_ref import faults

    def full(name):
        if name == point:
            raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(faults, "HOOK", full)
    code, _, err = run(["run", "critics", "--out", str(tmp_path / "o")] + TINY, capsys)
    assert code == 2 and "No space left on device" in err and str(tmp_path / "o") in err, err
    assert "free some space" in err and "permissions" not in err and "Traceback" not in err


def test_findings_to_a_directory_names_the_directory(tmp_path, capsys):
    """Was: `mi-ref findings RUNS --out DIR` printed the table, then failed naming a temporary file."""
    assert run(["run", "critics", "--out", str(tmp_path / "r"), "--set", "critics=bilinear"] + TINY, capsys)[0] == 0
    (tmp_path / "dir").mkdir()
    code, out, err = run(["findings", str(tmp_path / "r"), "--out", str(tmp_path / "dir")], capsys)
    assert code == 2 and f"--out {tmp_path / 'dir'} is a directory" in err and ".tmp" not in err, err
    assert out == "" and list((tmp_path / "dir").iterdir()) == []


def test_a_repeated_set_is_exit_2_and_writes_nothing(tmp_path, capsys):
    code, out, err = run(["run", "critics", "--out", str(tmp_path / "o"), "--set", "lr=1e-3", "--set", "lr=3e-4"]
                         + TINY, capsys)
    assert code == 2 and "--set lr is given twice" in err and "Traceback" not in err and out == ""
    assert not (tmp_path / "o").exists()

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
    assert code == 0 and (tmp_path / "fig" / "invertible-quick-digits.png").exists()


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
    (["plot", "/nonexistent/run"], "no config.json"),
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
    assert code == 0 and "total" in out
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["adversarial-quick-digits.png",
                                                                  "invertible-quick-digits.png"]
    assert "The paper's findings, judged on these runs" in out and (tmp_path / "r" / "findings.json").is_file()


def test_evals_override(tmp_path, capsys):
    code, _, _ = run(["run", "conditioning", "--out", str(tmp_path), "--steps", "6", "--evals", "2", "--quiet",
                      "--dataset", "digits"], capsys)
    assert code == 0
    rows = [json.loads(line) for line in
            next(tmp_path.glob("conditioning-quick-*/seed-0/metrics.jsonl")).read_text().splitlines()]
    assert [r["step"] for r in rows if r["variant"] == "infonce"] == [0, 3, 6]
    code, _, err = run(["run", "sampling", "--out", str(tmp_path), "--evals", "2", "--quiet"], capsys)
    assert code == 2 and "takes no --evals" in err

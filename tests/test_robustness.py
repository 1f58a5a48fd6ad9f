"""Run directories under hostile conditions: kills at every kind of write, damaged and hostile files,
concurrent writers, bad arguments. Every case either resumes to the metrics of an uninterrupted run, or
stops with one clear error (exit code 2 from the CLI) that names the file and changes nothing."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mi_ref import cli, experiments
from mi_ref.results import RunDir

TINY = dict(dataset="digits", n_iters=12, n_evals=3, n_layers=2, eval_final=True, estimators=("infonce", "nwj"))
ROOT = Path(__file__).resolve().parent.parent


def run_path(out):
    """Where the tiny run of these tests lives under ``out``."""
    config = experiments.get("conditioning").config("quick", **TINY)
    return experiments.run_dir_for(out, "conditioning", "quick", 0, config)


def run(out, resume=False, repair=False, **kw):
    return experiments.run_experiment("conditioning", "quick", 0, out, resume=resume, progress=False,
                                      repair=repair, report=lambda line: None, **dict(TINY, **kw))


def rows_without_time(path):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in RunDir(path).read_metrics()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run: the rows every recovery must reproduce exactly."""
    path = run(tmp_path_factory.mktemp("ref"))
    return path, rows_without_time(path), RunDir(path).load_arrays("nwj")["singular_values"]


def run_cli(argv, capsys):
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


# ------------------------------------------------------------------------------ kills at every kind of write

KILLER = textwrap.dedent("""
    import os, signal, sys
    from mi_ref import experiments, faults
    point, at = sys.argv[2], int(sys.argv[3])
    seen = [0]
    def hook(name):
        if name == point:
            seen[0] += 1
            if seen[0] == at:
                os.kill(os.getpid(), signal.SIGKILL)      # a kill -9: no cleanup of any kind runs
    faults.HOOK = hook
    experiments.run_experiment("conditioning", "quick", 0, sys.argv[1], progress=False, **{TINY})
""")

# (fault point, occurrence): the middle of a metrics append (a torn line), just before one, a checkpoint
# write and an arrays write killed between their temporary file and the rename, an optimizer step
KILLS = [("metrics-torn", 1), ("metrics-torn", 3), ("metrics-torn", 5), ("metrics", 2), ("checkpoint", 1),
         ("checkpoint", 4), ("replace", 2), ("replace", 7), ("arrays", 3), ("update", 5), ("update", 20),
         ("final", 1), ("done", 2), ("done", 3)]


@pytest.mark.parametrize("point,at", KILLS)
def test_a_kill_at_any_write_resumes_to_the_uninterrupted_metrics(tmp_path, reference, point, at):
    script = KILLER.replace("{TINY}", repr(TINY))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path), point, str(at)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    path = run(tmp_path, resume=True)
    assert rows_without_time(path) == reference[1]
    np.testing.assert_array_equal(RunDir(path).load_arrays("nwj")["singular_values"], reference[2])
    assert not list(Path(path).rglob(".*.tmp"))
    for variant in ("infonce", "nwj"):          # the final states kept are those of the uninterrupted run
        kept, want = RunDir(path).load_final(variant)[0], RunDir(reference[0]).load_final(variant)[0]
        assert kept.keys() == want.keys() and all(np.array_equal(kept[k], want[k]) for k in kept)


def test_the_final_state_of_an_unfinished_variant_is_a_leftover(tmp_path, reference, monkeypatch):
    """A session stopped after a variant's final state was written but before the variant was recorded
    finished leaves that file: resuming removes it, says so, and recomputes the variant's last part."""
    from mi_ref import faults
    seen = [0]

    def hook(name):
        if name == "done":
            seen[0] += 1
            if seen[0] == 3:                  # baseline, infonce, then nwj: its final state is on disk
                raise KeyboardInterrupt
    monkeypatch.setattr(faults, "HOOK", hook)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path)
    monkeypatch.setattr(faults, "HOOK", None)
    run_dir = RunDir(run_path(tmp_path))
    assert run_dir.final_path("nwj").exists() and "nwj" not in run_dir.done_variants()
    notes = []
    experiments.run_experiment("conditioning", "quick", 0, tmp_path, resume=True, progress=False, report=notes.append,
                               **TINY)
    assert any("removed the final state of nwj, which is not finished" in n for n in notes), notes
    assert rows_without_time(run_dir.path) == reference[1] and "nwj" in run_dir.done_variants()
    assert run_dir.load_final("nwj")[1]["step"] == TINY["n_iters"]


# ------------------------------------------------------------------------------ damaged metrics


def finished_copy(tmp_path, reference):
    target = tmp_path / "r"
    shutil.copytree(Path(reference[0]).parent.parent, target)
    return RunDir(run_path(target)), target


def test_garbage_in_the_middle_of_metrics_is_an_error_and_nothing_is_lost(tmp_path, reference, capsys):
    """Old behaviour: a garbage line 4 made --resume keep rows 1-3 only and exit 0. Now: exit 2, no change."""
    run_dir, out = finished_copy(tmp_path, reference)
    lines = run_dir.metrics_path.read_text().splitlines(keepends=True)
    damaged = "".join(lines[:3] + ["garbage\n"] + lines[3:])
    run_dir.metrics_path.write_text(damaged)
    code, _, err = run_cli(["run", "conditioning", "--out", str(out), "--resume", "--quiet"] + tiny_flags(), capsys)
    assert code == 2 and "metrics.jsonl, line 4, is not valid JSON" in err and "Traceback" not in err
    assert run_dir.metrics_path.read_text() == damaged


def partial(out, at=19):
    """A run stopped by Ctrl-C before its ``at``-th optimizer step (in this process, so it is fast). With
    TINY and ``at=19``: baseline and infonce finished, nwj with its rows of steps 0 and 4 and its checkpoint
    at step 4."""
    from mi_ref import faults
    seen = [0]

    def hook(name):
        if name == "update":
            seen[0] += 1
            if seen[0] == at:
                raise KeyboardInterrupt
    faults.HOOK = hook
    try:
        with pytest.raises(KeyboardInterrupt):
            run(out)
    finally:
        faults.HOOK = None
    return RunDir(run_path(out))


def resume_noting(out, repair=False):
    """Resume the tiny run; returns (its path, the notes of the audit)."""
    notes = []
    path = experiments.run_experiment("conditioning", "quick", 0, out, resume=True, progress=False, repair=repair,
                                      report=notes.append, **TINY)
    return path, notes


def test_a_last_row_without_its_newline_is_a_torn_line(tmp_path, reference):
    """Was: `truncate -s -1 metrics.jsonl` left a complete-looking last row that was accepted; the next
    append was glued onto it and the run died ("line 8, is not valid JSON"). Now that row is a torn line:
    dropped, reported and evaluated again."""
    run_dir = partial(tmp_path)
    data = run_dir.metrics_path.read_bytes()
    assert data.endswith(b"}\n")
    run_dir.metrics_path.write_bytes(data[:-1])
    assert len(run_dir.read_metrics()) == 6                  # the row without its newline is not complete
    path, notes = resume_noting(tmp_path)
    assert rows_without_time(path) == reference[1]
    assert any("torn last line" in n for n in notes), notes
    assert RunDir(path).metrics_path.read_bytes().endswith(b"}\n")


def tiny_flags():
    """The command-line flags that give TINY's config."""
    return ["--dataset", "digits", "--steps", "12", "--evals", "3", "--set", "n_layers=2", "--set", "eval_final=true",
            "--set", "estimators=infonce,nwj"]


def test_a_metrics_line_that_is_not_a_row_names_the_file(tmp_path, reference):
    run_dir, out = finished_copy(tmp_path, reference)
    with open(run_dir.metrics_path, "a") as f:
        f.write("[1, 2]\n")
    with pytest.raises(ValueError, match=r"line \d+, is not a metric row .*\[1, 2\]"):
        run_dir.read_metrics()


def test_deleted_metrics_of_finished_variants_is_an_error_unless_repaired(tmp_path, reference):
    """Old behaviour: after rm metrics.jsonl, --resume exited 0 with 3 of 13 rows and never redid the
    finished variants. Now: an error naming them; with --repair they are recomputed, identically."""
    run_dir, out = finished_copy(tmp_path, reference)
    run_dir.metrics_path.unlink()
    with pytest.raises(ValueError, match=r"holds 0 rows of the finished variant infonce, progress.json recorded 4"):
        run(out, resume=True)
    assert not run_dir.metrics_path.exists()
    run(out, resume=True, repair=True)
    assert rows_without_time(run_dir.path) == reference[1]


def test_a_lost_row_of_a_checkpoint_step_is_evaluated_again(tmp_path, reference):
    """A torn last line while the checkpoint is already at that step: the row is evaluated again from the
    checkpoint (with the evaluation streams' positions before it), giving the same numbers."""
    script = KILLER.replace("{TINY}", repr(TINY))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-c", script, str(tmp_path), "update", "6"], env=env, capture_output=True,
                   timeout=300)
    run_dir = RunDir(run_path(tmp_path))
    lines = run_dir.metrics_path.read_text().splitlines(keepends=True)
    assert json.loads(lines[-1])["step"] == 4                  # the checkpoint of infonce is at step 4
    run_dir.metrics_path.write_text("".join(lines[:-1]) + lines[-1][:20])    # tear that row
    path = run(tmp_path, resume=True)
    assert rows_without_time(path) == reference[1]


def test_a_duplicated_row_is_damage_not_a_row(tmp_path, reference):
    """Was: `sed -i 6p metrics.jsonl` (the row of nwj's step 0 twice) resumed with exit 0 and no note, and
    the finished run held one row too many, which progress.json then recorded. Now it is an error naming
    the row, nothing changed; --repair recomputes the variant."""
    run_dir = partial(tmp_path)
    lines = run_dir.metrics_path.read_text().splitlines(keepends=True)
    assert '"variant": "nwj"' in lines[5] and '"step": 0,' in lines[5]
    damaged = "".join(lines[:6] + lines[5:]) + '{"variant": "nwj", "st'         # and a torn last line
    run_dir.metrics_path.write_text(damaged)
    stale = run_dir.path / "checkpoints" / ".nwj.npz.abcd1234.tmp"
    stale.write_bytes(b"half a checkpoint")
    with pytest.raises(ValueError, match=r"nwj: metrics.jsonl holds its row of step 0 twice \(lines 6 and 7\)"):
        run(tmp_path, resume=True)
    assert run_dir.metrics_path.read_text() == damaged and stale.exists()       # nothing changed, not even those
    path, notes = resume_noting(tmp_path, repair=True)
    assert rows_without_time(path) == reference[1]
    assert RunDir(path).read_progress()["rows"] == {"baseline": 1, "infonce": 4, "nwj": 4}


def test_rows_out_of_step_order_are_damage(tmp_path, reference):
    run_dir, out = finished_copy(tmp_path, reference)
    lines = run_dir.metrics_path.read_text().splitlines(keepends=True)
    lines[1], lines[2] = lines[2], lines[1]                  # infonce's rows of steps 0 and 4 swapped
    run_dir.metrics_path.write_text("".join(lines))
    with pytest.raises(ValueError, match=r"infonce: metrics.jsonl holds its row of step 0 \(line 3\) after that "
                                         r"of step 4 \(line 2\)"):
        run(out, resume=True)


def test_a_row_of_an_unknown_variant_is_damage(tmp_path, reference):
    """Was: a row of a variant the run does not have was kept by --resume, and plot and findings read it."""
    run_dir = partial(tmp_path)
    with open(run_dir.metrics_path, "a") as f:
        f.write(json.dumps({"variant": "mystery", "step": 0, "accuracy": 1.0}) + "\n")
    damaged = run_dir.metrics_path.read_text()
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 8, is a row of the variant 'mystery', which this run "
                                         r"does not have \(its variants: \['baseline', 'infonce', 'nwj'\]\)"):
        run(tmp_path, resume=True)
    assert run_dir.metrics_path.read_text() == damaged
    path, notes = resume_noting(tmp_path, repair=True)
    assert any("removed the row of the unknown variant 'mystery' (line 8)" in n for n in notes), notes
    assert rows_without_time(path) == reference[1]


@pytest.mark.parametrize("deleted", ["progress.json", "checkpoints"])
def test_rows_are_never_dropped_because_a_file_was_deleted(tmp_path, reference, deleted):
    """Was: `rm progress.json` (or `rm checkpoints/*.npz`) then --resume exited 0 with no note, dropping the
    rows of the finished variants (of the variant in progress) and recomputing them. Now it is an error that
    says which file is missing, nothing changed; --repair recomputes those variants, identically."""
    run_dir = partial(tmp_path)
    if deleted == "progress.json":
        run_dir.progress_path.unlink()
        message = r"infonce: metrics.jsonl holds 4 rows of infonce, which is neither finished"
    else:
        shutil.rmtree(run_dir.path / "checkpoints")
        message = r"nwj: metrics.jsonl holds 2 rows of nwj, which is neither finished"
    before = run_dir.metrics_path.read_bytes()
    with pytest.raises(ValueError, match=message + r" \(progress.json\) nor has a checkpoint"):
        run(tmp_path, resume=True)
    assert run_dir.metrics_path.read_bytes() == before
    path, notes = resume_noting(tmp_path, repair=True)
    assert rows_without_time(path) == reference[1]


def test_repair_writes_the_rows_in_the_serial_order(tmp_path, reference):
    """Was: --repair appended the recomputed rows of a variant after those of the variants that follow it.
    Now the file is laid out as a serial run's: the variants in the experiment's order."""
    run_dir, out = finished_copy(tmp_path, reference)
    lines = run_dir.metrics_path.read_text().splitlines(keepends=True)
    run_dir.metrics_path.write_text("".join(line for line in lines if '"variant": "infonce"' not in line))
    with pytest.raises(ValueError, match="holds 0 rows of the finished variant infonce"):
        run(out, resume=True)
    path, notes = resume_noting(out, repair=True)
    assert any("infonce is recomputed from its start" in n for n in notes), notes
    assert rows_without_time(path) == reference[1]
    assert RunDir(path).done_variants() == ["baseline", "infonce", "nwj"]


def edit_value(path, line, key, value):
    """Change one number of one row by hand, leaving valid JSON."""
    lines = path.read_text().splitlines(keepends=True)
    row = json.loads(lines[line - 1])
    row[key] = value
    lines[line - 1] = json.dumps(row, sort_keys=True) + "\n"
    path.write_text("".join(lines))


def test_a_hand_edited_value_of_a_finished_variant_is_detected(tmp_path, reference, capsys):
    """Was: a metric value edited by hand went unnoticed by --resume, plot and findings. Now progress.json
    holds the SHA-256 of every finished variant's rows: resume, plot and findings name the variant."""
    run_dir, out = finished_copy(tmp_path, reference)
    edit_value(run_dir.metrics_path, 3, "accuracy", 0.99)
    before = run_dir.metrics_path.read_bytes()
    with pytest.raises(ValueError, match=r"infonce: its rows in metrics.jsonl differ from those it finished with"):
        run(out, resume=True)
    for argv in (["plot", str(run_dir.path), "--out", str(tmp_path / "fig")],
                 ["findings", str(run_dir.path), "--out", str(tmp_path / "f.json")]):
        code, _, err = run_cli(argv, capsys)
        assert code == 2 and "infonce: its rows in metrics.jsonl differ" in err and "Traceback" not in err
    assert run_dir.metrics_path.read_bytes() == before and not (tmp_path / "f.json").exists()
    path, _ = resume_noting(out, repair=True)
    assert rows_without_time(path) == reference[1]


def test_a_hand_edited_row_before_the_checkpoint_is_detected(tmp_path, reference):
    """The rows a checkpoint covers are pinned by it: an edit there is an error, not a row kept."""
    run_dir = partial(tmp_path)
    edit_value(run_dir.metrics_path, 6, "bound", 123.0)                    # nwj's row of step 0
    with pytest.raises(ValueError, match=r"nwj: its row of step 0 in metrics.jsonl differs from the one its "
                                         r"checkpoint \(step 4\) recorded"):
        run(tmp_path, resume=True)
    path, _ = resume_noting(tmp_path, repair=True)
    assert rows_without_time(path) == reference[1]


def torn(path):
    path.write_bytes(path.read_bytes()[:-1])


def duplicated_with_another_value(path):
    lines = path.read_text().splitlines(keepends=True)
    row = json.loads(lines[2])
    row["accuracy"] = 0.5
    path.write_text("".join(lines[:3] + [json.dumps(row, sort_keys=True) + "\n"] + lines[3:]))


def unknown_variant(path):
    with open(path, "a") as f:
        f.write(json.dumps({"variant": "mystery", "step": 0, "accuracy": 1.0}) + "\n")


@pytest.mark.parametrize("damage_rows,message", [
    (torn, "its last line is torn"),
    (duplicated_with_another_value, "infonce: metrics.jsonl holds its row of step 4 twice (lines 3 and 4)"),
    (unknown_variant, "line 10, is a row of the variant 'mystery', which this run does not have")])
@pytest.mark.parametrize("command", ["plot", "findings"])
def test_plot_and_findings_refuse_a_damaged_finished_run(tmp_path, reference, capsys, damage_rows, message, command):
    """Was: plot and findings read a finished run with a torn last row, a duplicated row with another value
    or a row of an unknown variant without a word. Now: exit 2, naming the file and the rows."""
    run_dir, _ = finished_copy(tmp_path, reference)
    damage_rows(run_dir.metrics_path)
    code, _, err = run_cli([command, str(run_dir.path), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and message in err and "metrics.jsonl" in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


def test_findings_on_an_unknown_experiment_is_an_error(tmp_path, reference, capsys):
    """Was: `mi-ref findings` on runs whose config names an unknown experiment printed "0 of 0 findings"
    and exited 0."""
    run_dir, _ = finished_copy(tmp_path, reference)
    config = json.loads(run_dir.config_path.read_text())
    run_dir.config_path.write_text(json.dumps(dict(config, experiment="nope")))
    code, out, err = run_cli(["findings", str(run_dir.path), "--out", str(tmp_path / "f.json")], capsys)
    assert code == 2 and "unknown experiment 'nope'" in err and str(run_dir.config_path) in err
    assert not (tmp_path / "f.json").exists()


SAMPLING = dict(n_iters=100, record_every=50)


@pytest.fixture(scope="module")
def sampling_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("sampling")
    path = experiments.run_experiment("sampling", "quick", 0, out, progress=False, **SAMPLING)
    return path, rows_without_time(path), RunDir(path).load_arrays("iid-infonce")["trace"]


@pytest.mark.parametrize("how", ["truncated", "deleted"])
def test_the_arrays_of_finished_variants_are_audited(tmp_path, sampling_reference, capsys, how):
    """Was: `truncate -s 100 arrays/iid-infonce.npz` (or deleting it) on a finished sampling run: --resume and
    --resume --repair exited 0 and left the file as it was; plot and findings failed later or never noticed.
    Now progress.json holds the SHA-256 of each finished variant's arrays file: resume and plot name the
    file, and --repair recomputes the variant."""
    out = tmp_path / "r"
    shutil.copytree(Path(sampling_reference[0]).parent.parent, out)
    run_dir = RunDir(Path(out) / Path(sampling_reference[0]).relative_to(Path(sampling_reference[0]).parents[1]))
    arrays = run_dir.arrays_path("iid-infonce")
    if how == "truncated":
        arrays.write_bytes(arrays.read_bytes()[:100])
    else:
        arrays.unlink()
    with pytest.raises(ValueError, match=r"iid-infonce: arrays/iid-infonce.npz (is missing|differs from)"):
        experiments.run_experiment("sampling", "quick", 0, out, resume=True, progress=False, **SAMPLING)
    code, _, err = run_cli(["plot", str(run_dir.path), "--out", str(tmp_path / "fig")], capsys)
    assert code == 2 and "arrays/iid-infonce.npz" in err
    notes = []
    path = experiments.run_experiment("sampling", "quick", 0, out, resume=True, repair=True, progress=False,
                                      report=notes.append, **SAMPLING)
    assert any("iid-infonce is recomputed from its start" in n for n in notes), notes
    assert rows_without_time(path) == sampling_reference[1]
    np.testing.assert_array_equal(RunDir(path).load_arrays("iid-infonce")["trace"], sampling_reference[2])


@pytest.mark.parametrize("how", ["truncated", "deleted"])
def test_the_arrays_of_the_variant_in_progress_are_audited(tmp_path, reference, how):
    """The singular values of the variant in progress are read back on resume: a damaged or deleted file is
    an error before anything runs, and --repair recomputes the variant (it was a dead end: the run failed
    after the audit, asking for --repair, which did not help)."""
    run_dir = partial(tmp_path)
    arrays = run_dir.arrays_path("nwj")
    if how == "truncated":
        arrays.write_bytes(arrays.read_bytes()[:100])
    else:
        arrays.unlink()
    with pytest.raises(ValueError, match=r"nwj: (arrays of nwj .*arrays/nwj.npz is damaged|arrays/nwj.npz is missing)"):
        run(tmp_path, resume=True)
    path, _ = resume_noting(tmp_path, repair=True)
    assert rows_without_time(path) == reference[1]
    np.testing.assert_array_equal(RunDir(path).load_arrays("nwj")["singular_values"], reference[2])


# ------------------------------------------------------------------------------ damaged npz files

def damage(path, how):
    data = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "crc":                                         # flip a byte inside the first member's data
        i = data.index(b"NUMPY") + 200
        path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:])
    elif how == "not-npz":
        path.write_bytes(b"\x80\x04this is some other file")
    elif how == "wrong-members":
        np.savez(path, nothing=np.zeros(2))


@pytest.mark.parametrize("how", ["empty", "truncated", "crc", "not-npz", "wrong-members"])
def test_a_damaged_checkpoint_is_one_clear_error_then_repairable(tmp_path, reference, how):
    script = KILLER.replace("{TINY}", repr(TINY))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-c", script, str(tmp_path), "update", "17"], env=env, capture_output=True,
                   timeout=300)
    run_dir = RunDir(run_path(tmp_path))
    ckpt = run_dir.checkpoint_path("nwj")
    assert ckpt.exists()
    damage(ckpt, how)
    before = ckpt.read_bytes()
    with pytest.raises(ValueError) as err:
        run(tmp_path, resume=True)
    message = str(err.value)
    assert "nwj" in message and "--repair" in message and "pickle" not in message
    assert ckpt.read_bytes() == before
    path = run(tmp_path, resume=True, repair=True)
    assert rows_without_time(path) == reference[1]


def edit_checkpoint_meta(path, change):
    """Rewrite a checkpoint with ``change(meta)`` applied to its JSON metadata (a valid npz, no pickle)."""
    from mi_ref.checkpoints import array_to_json, json_to_array
    arrays = dict(np.load(path, allow_pickle=False))
    meta = array_to_json(arrays["__meta__"])
    change(meta)
    arrays["__meta__"] = json_to_array(meta)
    np.savez(path, **arrays)


@pytest.mark.parametrize("change,message", [
    (lambda m: m.pop("iterators"), r"its metadata lacks the key 'iterators'"),
    (lambda m: m.update(step="abc"), r"its metadata's 'step' must be an integer, got \"abc\""),
    (lambda m: m.update(step=1000000), r"its step 1000000 is beyond the run's last step, 12"),
    (lambda m: m.update(step=6), r"its step 6 is not among the steps of the rows it recorded \[0, 4\]"),
    (lambda m: m.update(seconds=-1), r"its metadata's 'seconds' must be a number >= 0, got -1"),
    (lambda m: m["iterators"].update(data={"kind": "nonsense"}),
     r"cannot be restored \(ValueError: the saved batch stream"),
    (lambda m: m["streams"].update(init={"bit_generator": "PCG64", "state": 3}), r"cannot be restored"),
])
def test_checkpoint_metadata_is_checked_before_it_is_used(tmp_path, reference, capsys, change, message):
    """Was: a checkpoint without its 'iterators' gave a KeyError traceback, a step "abc" exit 2 with no file
    name, a step of 1000000 exit 0 and a row labelled step 12 that held the model of step 4. Now each is an
    error naming the checkpoint, nothing changed, and --repair recomputes the variant."""
    run_dir = partial(tmp_path)
    ckpt = run_dir.checkpoint_path("nwj")
    edit_checkpoint_meta(ckpt, change)
    before = (ckpt.read_bytes(), run_dir.metrics_path.read_bytes())
    code, _, err = run_cli(["run", "conditioning", "--out", str(tmp_path), "--resume", "--quiet"] + tiny_flags(),
                           capsys)
    assert code == 2 and "Traceback" not in err, err
    assert re.search(message, err) and str(ckpt) in err and "--repair" in err, err
    assert (ckpt.read_bytes(), run_dir.metrics_path.read_bytes()) == before
    path, notes = resume_noting(tmp_path, repair=True)
    assert any("nwj is recomputed from its start" in n for n in notes), notes
    assert rows_without_time(path) == reference[1]


@pytest.mark.parametrize("how", ["empty", "truncated", "crc", "not-npz"])
def test_damaged_arrays_and_results_files_are_clear_errors(tmp_path, reference, how, capsys):
    run_dir, out = finished_copy(tmp_path, reference)
    damage(run_dir.arrays_path("nwj"), how)
    code, _, err = run_cli(["plot", str(run_dir.path), "--out", str(tmp_path / "fig")], capsys)
    assert code == 2 and "arrays" in err and "damaged" in err and "pickle" not in err and "Traceback" not in err


@pytest.mark.parametrize("how", ["empty", "truncated", "crc", "not-npz"])
def test_verify_says_bad_input_not_mismatch_for_damaged_files(tmp_path, how, capsys):
    from mi_ref import vectors
    vdir = tmp_path / "v"
    vectors.generate(vdir, names=["dense"])
    good = {f"dense/{k}": v for k, v in vectors.load_component(vdir, "dense").items() if k.startswith("output/")}
    results = tmp_path / "mine.npz"
    np.savez(results, **good)
    damage(results, how)
    code, _, err = run_cli(["verify", str(vdir), str(results), "--allow-missing"], capsys)
    assert code == 2 and "damaged" in err and "pickle" not in err
    np.savez(results, **good)
    damage(vdir / "dense.npz", how)
    code, _, err = run_cli(["verify", str(vdir), str(results), "--allow-missing"], capsys)
    assert code == 2 and "dense.npz" in err and "pickle" not in err


def test_a_tampered_golden_file_fails_its_checksum(tmp_path, capsys):
    from mi_ref import vectors
    vdir = tmp_path / "v"
    vectors.generate(vdir, names=["dense"])
    arrays = vectors.load_component(vdir, "dense")
    arrays["output/y"] = arrays["output/y"] + 1.0               # a changed golden value, a valid npz file
    (vdir / "dense.npz").write_bytes(vectors.npz_bytes(arrays))
    results = tmp_path / "mine.npz"
    np.savez(results, **{"dense/output/y": arrays["output/y"]})
    code, _, err = run_cli(["verify", str(vdir), str(results), "--allow-missing"], capsys)
    assert code == 2 and "was changed or damaged: its SHA-256" in err


# ------------------------------------------------------------------------------ hostile JSON


@pytest.mark.parametrize("content,message", [("[1, 2]", "holds a JSON list, expected a JSON object"),
                                             ("{not json", "is not valid JSON"),
                                             ('{"done": 3}', "must be {\"done\": [variant names]"),
                                             ('{"done": ["baseline"], "rows": {"baseline": "1"}}',
                                              'the row count of baseline must be an integer >= 0, got "1"')])
def test_a_damaged_progress_file_names_itself(tmp_path, reference, content, message):
    run_dir, out = finished_copy(tmp_path, reference)
    run_dir.progress_path.write_text(content)
    with pytest.raises(ValueError, match="progress file .*progress.json") as err:
        run(out, resume=True)
    assert message in str(err.value)


def test_a_damaged_config_names_itself(tmp_path, reference, capsys):
    run_dir, out = finished_copy(tmp_path, reference)
    run_dir.config_path.write_text('["not", "a", "config"]')
    code, _, err = run_cli(["plot", str(run_dir.path), "--out", str(tmp_path / "f")], capsys)
    assert code == 2 and "run config" in err and "config.json holds a JSON list" in err


# ------------------------------------------------------------------------------ two writers


HOLDER = textwrap.dedent("""
    import sys, time
    from mi_ref.results import RunDir
    RunDir(sys.argv[1]).lock()
    print("locked", flush=True)
    time.sleep(60)
""")


def test_a_second_writer_is_refused_and_a_dead_ones_lock_never_blocks(tmp_path, reference, capsys):
    run_dir, out = finished_copy(tmp_path, reference)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir.path)], env=env, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = run_dir.metrics_path.read_bytes()
        code, _, err = run_cli(["run", "conditioning", "--out", str(out), "--resume", "--quiet"] + tiny_flags(),
                               capsys)
        assert code == 2 and f"being written by another mi-ref process (pid {holder.pid}" in err
        assert run_dir.metrics_path.read_bytes() == before
    finally:
        holder.send_signal(signal.SIGKILL)                     # killed holding the lock
        holder.wait()
    assert run(out, resume=True) == run_dir.path               # the OS released it: resuming works


def test_two_fresh_runs_racing_write_no_duplicate_rows(tmp_path, reference):
    """Two processes start the same fresh run at once: one runs, the other is refused by the lock; the
    rows are written once."""
    script = textwrap.dedent(f"""
        import sys
        from mi_ref import experiments
        try:
            experiments.run_experiment("conditioning", "quick", 0, sys.argv[1], progress=False, **{TINY!r})
            print("ran")
        except ValueError as err:
            print("refused:", err)
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], env=env, stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert sum("ran" in o for o in outputs) == 1 and sum("refused" in o for o in outputs) == 1, outputs
    assert rows_without_time(run_path(tmp_path)) == reference[1]


@pytest.mark.parametrize("name", [".lock", "metrics.jsonl"])
def test_no_file_of_the_run_is_written_through_a_symbolic_link(tmp_path, reference, capsys, name):
    """Was: `ln -s OUTSIDE .lock` then --resume overwrote the outside file with the lock holder's line (and an
    append went through a linked metrics.jsonl). Now a link there is an error naming it; the outside file is
    untouched."""
    run_dir = partial(tmp_path / "out")
    outside = tmp_path / "outside.txt"
    outside.write_text(run_dir.metrics_path.read_text() if name == "metrics.jsonl" else "precious\n")
    link = run_dir.path / name
    if link.exists():
        link.unlink()
    link.symlink_to(outside)
    before = outside.read_bytes()
    code, _, err = run_cli(["run", "conditioning", "--out", str(tmp_path / "out"), "--resume", "--quiet"]
                           + tiny_flags(), capsys)
    assert code == 2 and f"{link} is a symbolic link" in err and "Traceback" not in err, err
    assert outside.read_bytes() == before and link.is_symlink()


WAITING_WRITER = textwrap.dedent("""
    import os, sys, time
    from mi_ref import experiments, faults
    out, release = sys.argv[1], sys.argv[2]
    def hook(name):
        if name == "update" and not os.path.exists(release):
            print("waiting", flush=True)
            while not os.path.exists(release):
                time.sleep(0.05)
    faults.HOOK = hook
    experiments.run_experiment("conditioning", "quick", 0, out, resume=True, progress=False, **{TINY})
""")


def test_deleting_the_lock_never_gives_two_writers(tmp_path, reference):
    """Was: deleting .lock while a run wrote, then resuming, gave two writers and rows written twice. Now the
    second process takes a new lock and finishes the run; the first, before its next write, finds that .lock
    is no longer the file it locked and stops without writing. The rows are those of one run."""
    partial(tmp_path)
    release = tmp_path / "release"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    first = subprocess.Popen([sys.executable, "-c", WAITING_WRITER.replace("{TINY}", repr(TINY)), str(tmp_path),
                              str(release)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "waiting"         # it holds the lock, between two steps
        (run_path(tmp_path) / ".lock").unlink()
        path = run(tmp_path, resume=True)                            # a second process on the same directory
        release.touch()
        _, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode != 0 and "was deleted or replaced while this process was writing" in err, err
    assert rows_without_time(path) == reference[1]


def test_the_lock_is_taken_on_the_file_that_is_there_after_locking(tmp_path, monkeypatch):
    """Another process may delete and recreate .lock between this one's open and its flock: the lock then
    checks the file's identity (device and inode) and locks the new file instead of the deleted one."""
    from mi_ref import results
    run_dir = RunDir(tmp_path / "r")
    real_flock, calls = results.fcntl.flock, []

    def racing_flock(fd, flags):
        if not calls:                                   # the other process's delete and recreate
            run_dir.lock_path.unlink()
            run_dir.lock_path.write_text("")
        calls.append(fd)
        return real_flock(fd, flags)
    (tmp_path / "r").mkdir()
    monkeypatch.setattr(results.fcntl, "flock", racing_flock)
    run_dir.lock()
    assert len(calls) == 2
    assert os.fstat(run_dir._lock_fd).st_ino == os.stat(run_dir.lock_path).st_ino
    run_dir.unlock()


# ------------------------------------------------------------------------------ arguments and paths


def test_a_negative_seed_is_refused_before_anything_is_written(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "conditioning", "--out", str(tmp_path / "o"), "--seed", "-1"])
    assert exc.value.code == 2 and "argument --seed: expected an integer >= 0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        experiments.run_experiment("conditioning", "quick", -1, tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kind", ["file", "read-only"])
def test_an_out_that_cannot_be_written_is_exit_2_without_traceback(tmp_path, capsys, kind):
    target = tmp_path / "out"
    if kind == "file":
        target.write_text("a file")
    else:
        target.mkdir()
        target.chmod(0o500)
        if os.access(target, os.W_OK):                          # root ignores permissions
            pytest.skip("running as root: a read-only directory is writable")
    code, _, err = run_cli(["run", "conditioning", "--out", str(target), "--quiet"] + tiny_flags(), capsys)
    assert code == 2 and "error" in err and "Traceback" not in err


def test_data_dir_with_an_embedded_dataset_is_an_error(tmp_path, capsys):
    code, _, err = run_cli(["run", "conditioning", "--out", str(tmp_path), "--data-dir", str(tmp_path)]
                           + tiny_flags(), capsys)
    assert code == 2 and "only read by the dataset 'mnist'" in err
    code, _, err = run_cli(["run", "sampling", "--out", str(tmp_path), "--data-dir", str(tmp_path)], capsys)
    assert code == 2 and "reads no --data-dir" in err


def test_a_config_mismatch_names_the_setting(tmp_path, reference):
    """Each config has its own folder; a folder that holds another config anyway (moved by hand) says which
    setting differs."""
    run_dir, _ = finished_copy(tmp_path, reference)
    header = RunDir(run_dir.path).read_config()
    header = {k: header[k] for k in ("experiment", "preset", "seed", "config")}
    header["config"] = dict(header["config"], n_iters=13)
    with pytest.raises(ValueError, match=r"config.n_iters: 12 on disk, 13 now"):
        RunDir(run_dir.path).prepare(header, resume=True)


def test_stale_temporary_files_are_removed_on_resume(tmp_path, reference):
    run_dir, out = finished_copy(tmp_path, reference)
    stale = run_dir.path / "checkpoints"
    stale.mkdir(exist_ok=True)
    (stale / ".nwj.npz.abc12_x9.tmp").write_bytes(b"half a checkpoint")      # named as mkstemp names it
    notes = []
    experiments.run_experiment("conditioning", "quick", 0, out, resume=True, progress=False,
                               report=notes.append, **TINY)
    assert not list(run_dir.path.rglob(".*.tmp")) and any("temporary file" in n for n in notes)


def test_the_audit_removes_only_its_own_temporary_files(tmp_path, reference):
    """Was: the audit deleted every file matching .*.tmp anywhere under the run directory, and a directory of
    that name stopped the resume. Now it removes only the temporary files of its own writes: named as
    mkstemp names them, after a file mi-ref writes, in the folder mi-ref writes it to."""
    run_dir, out = finished_copy(tmp_path, reference)
    own = [run_dir.path / ".metrics.jsonl.k2j4_x0a.tmp", run_dir.path / "arrays" / ".nwj.npz.00000000.tmp"]
    theirs = [run_dir.path / ".notes.tmp", run_dir.path / ".metrics.jsonl.tmp", run_dir.path / "arrays" / ".mine.tmp",
              run_dir.path / "mine" / ".nwj.npz.k2j4_x0a.tmp", run_dir.path / ".config.json.ABCDEFGH.tmp"]
    for path in own + theirs:
        path.parent.mkdir(exist_ok=True)
        path.write_text("x")
    (run_dir.path / ".x.tmp").mkdir()
    (run_dir.path / "checkpoints").mkdir(exist_ok=True)
    (run_dir.path / "checkpoints" / ".nwj.npz.abcdefgh.tmp").mkdir()       # a directory, not a write of mi-ref
    path, notes = resume_noting(out)
    assert [p for p in own if p.exists()] == [] and all(p.exists() for p in theirs)
    assert (run_dir.path / ".x.tmp").is_dir() and (run_dir.path / "checkpoints" / ".nwj.npz.abcdefgh.tmp").is_dir()
    assert sum("temporary file" in n for n in notes) == 2, notes


def test_files_respect_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = run(tmp_path)
    finally:
        os.umask(old)
    for f in ("config.json", "metrics.jsonl", "progress.json", "arrays/nwj.npz"):
        assert (Path(path) / f).stat().st_mode & 0o777 == 0o644, f

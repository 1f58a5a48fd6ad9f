"""Tests for mi_ref.results, mi_ref.audit and mi_ref.checkpoints: atomic writes, run-directory rules, torn lines,
checkpoints."""

import json

import numpy as np
import pytest

from mi_ref import checkpoints, results


def test_atomic_write_leaves_no_temp_and_replaces(tmp_path):
    p = tmp_path / "a.json"
    results.atomic_write_json(p, {"x": 1})
    results.atomic_write_json(p, {"x": 2})
    assert json.loads(p.read_text()) == {"x": 2}
    assert [f.name for f in tmp_path.iterdir()] == ["a.json"]


def test_atomic_write_failure_keeps_old_file(tmp_path):
    p = tmp_path / "a.npz"
    results.atomic_savez(p, {"a": np.arange(3)})
    with pytest.raises(Exception):
        results.atomic_savez(p, {"a": np.array([object()], dtype=object)})   # savez of objects needs pickle
    np.testing.assert_array_equal(results.load_npz(p)["a"], np.arange(3))
    assert [f.name for f in tmp_path.iterdir()] == ["a.npz"]


def test_prepare_rules(tmp_path):
    run = results.RunDir(tmp_path / "r")
    header = {"experiment": "e", "preset": "quick", "seed": 0, "config": {"a": [1, 2]}}
    assert run.prepare(header, resume=False) is True
    cfg = json.loads(run.config_path.read_text())
    assert cfg["config"] == {"a": [1, 2]} and "packages" in cfg["environment"]
    before = run.config_path.read_bytes()
    with pytest.raises(results.RunExistsError, match="--resume"):
        run.prepare(header, resume=False)
    with pytest.raises(results.RunExistsError, match=r"different config \(config.a: \[1, 2\] on disk, \[1, 3\] now\)"):
        run.prepare(dict(header, config={"a": [1, 3]}), resume=True)
    assert run.config_path.read_bytes() == before
    assert run.prepare(header, resume=True) is False
    other = tmp_path / "other"
    other.mkdir()
    (other / "file.txt").write_text("mine")
    with pytest.raises(results.RunExistsError, match="not an mi-ref run directory"):
        results.RunDir(other).prepare(header, resume=True)


def test_metrics_torn_line_and_truncation(tmp_path):
    run = results.RunDir(tmp_path)
    for step in (0, 10, 20):
        run.append_metrics({"variant": "a", "step": step})
    run.append_metrics({"variant": "b", "step": 0})
    with open(run.metrics_path, "a") as f:
        f.write('{"variant": "a", "st')          # an interrupted append
    assert len(run.read_metrics()) == 4
    kept = run.truncate_variant("a", 10)
    assert [r["step"] for r in kept] == [0, 10]
    assert [r["variant"] for r in run.read_metrics()] == ["a", "a", "b"]


def test_checkpoint_round_trip_and_done(tmp_path):
    run = results.RunDir(tmp_path)
    assert run.load_checkpoint("v") is None
    saved = {"step": 3, "seconds": 1.5, "iterators": {}, "streams": {"rng": {"state": 2 ** 100}}}
    run.save_checkpoint("v", {"params/W": np.eye(2)}, saved)
    arrays, meta = run.load_checkpoint("v")
    np.testing.assert_array_equal(arrays["params/W"], np.eye(2))
    assert meta == saved
    run.mark_done("v")
    assert run.done_variants() == ["v"] and run.load_checkpoint("v") is None
    run.checkpoint_path("w").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="is damaged: it is not an .npz archive") as err:
        run.load_checkpoint("w")
    assert "pickle" not in str(err.value)


def test_a_pickled_array_is_named_as_such(tmp_path):
    """Was: an .npz holding a pickled object array was reported as "not an .npz archive"."""
    path = tmp_path / "objects.npz"
    np.savez(path, fine=np.arange(3), objects=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match=r"holds 'objects', an array of Python objects that only pickle can read"):
        results.load_npz(path, "results file")
    import pickle
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="not an .npz archive") as err:
        results.load_npz(tmp_path / "plain.pkl", "results file")
    assert "pickle" not in str(err.value).split("is damaged")[1]        # nothing that invites unpickling it


def test_a_final_state_is_kept_only_when_asked_and_pinned_by_progress(tmp_path):
    meta = {"step": 5, "seconds": 1.0, "iterators": {}, "streams": {}, "row_steps": [0, 5], "evaluated": True}
    run = results.RunDir(tmp_path, last_step=5, keep_state=True)
    run.save_final("v", {"params/W": np.eye(2)}, meta)
    run.mark_done("v")
    progress = run.read_progress()
    assert progress["final"] == {"v": checkpoints.file_sha256(run.final_path("v"))}
    arrays, back = run.load_final("v")
    np.testing.assert_array_equal(arrays["params/W"], np.eye(2))
    assert back == meta
    results.atomic_savez(run.final_path("v"), {"params/W": np.eye(2) * 2, "__meta__": checkpoints.json_to_array(meta)})
    with pytest.raises(ValueError, match="differs from the file v finished with"):
        run.load_final("v")
    run.final_path("v").unlink()                     # deleting it frees the space; the run stays readable
    with pytest.raises(FileNotFoundError, match="its final state .* was deleted"):
        run.load_final("v")
    run.verify()
    other = results.RunDir(tmp_path / "other")
    other.mark_done("w")
    with pytest.raises(FileNotFoundError, match="it kept no final state"):
        other.load_final("w")

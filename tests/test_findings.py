"""Tests for mi_ref.findings: every criterion on synthetic metric rows, once holding and once not."""

import json

import pytest

from mi_ref import cli, findings
from mi_ref.results import RunDir


def make_run(path, experiment, rows, seed=0, preset="quick", config=None):
    """A run directory with the given metric rows (and a pixel-baseline row of 0.80)."""
    run = RunDir(path)
    run.prepare({"experiment": experiment, "preset": preset, "seed": seed,
                 "config": dict({"dataset": "mnist-subset", "n_iters": 100}, **(config or {}))}, resume=False)
    run.append_metrics({"variant": "baseline", "step": 0, "accuracy": 0.80})
    for row in rows:
        run.append_metrics(row)
    return path


def curve(variant, start, end, steps=(0, 50, 100), **extra):
    """Rows of ``variant`` whose fields go linearly from ``start`` to ``end`` (dicts of field -> value)."""
    out = []
    for i, step in enumerate(steps):
        t = i / (len(steps) - 1)
        row = {"variant": variant, "step": step, **extra}
        row.update({k: start[k] + t * (end[k] - start[k]) for k in start})
        out.append(row)
    return out


def verdict_of(tmp_path, experiment, rows, key, name="run", **kwargs):
    path = make_run(tmp_path / name, experiment, rows, **kwargs)
    return {v.finding: v for v in findings.judge([path])}[key]


@pytest.mark.parametrize("gain,holds", [(0.02, True), (0.005, False)])
def test_invertible(tmp_path, gain, holds):
    rows = []
    for est in ("infonce", "nwj"):
        rows += curve(est, {"bound": -1.0, "accuracy": 0.80}, {"bound": 4.0, "accuracy": 0.80 + gain},
                      estimator=est)
    assert verdict_of(tmp_path, "invertible", rows, "invertible.rise").holds is holds


def test_invertible_needs_the_bound_to_rise_too(tmp_path):
    rows = curve("infonce", {"bound": 3.5, "accuracy": 0.80}, {"bound": 4.0, "accuracy": 0.85})
    assert verdict_of(tmp_path, "invertible", rows, "invertible.rise").holds is False


@pytest.mark.parametrize("end,holds", [(0.70, True), (0.78, False)])
def test_adversarial(tmp_path, end, holds):
    rows = curve("adversarial", {"accuracy": 0.82, "mean_log_det": -10.0}, {"accuracy": end, "mean_log_det": -30.0})
    v = verdict_of(tmp_path, "adversarial", rows, "adversarial.below_pixels")
    assert v.holds is holds and "pixels 0.800" in v.measured


@pytest.mark.parametrize("c_end,a_end,holds", [(2.0, 0.83, True), (0.5, 0.83, False), (2.0, 0.805, False)])
def test_conditioning(tmp_path, c_end, a_end, holds):
    rows = []
    for est in ("infonce", "nwj"):
        rows += curve(est, {"logcond_median": 0.01, "accuracy": 0.80}, {"logcond_median": c_end, "accuracy": a_end})
    assert verdict_of(tmp_path, "conditioning", rows, "conditioning.ill_conditioned").holds is holds


@pytest.mark.parametrize("concat,holds", [(0.79, True), (0.818, False)])
def test_critics(tmp_path, concat, holds):
    rows = []
    for est in ("infonce", "nwj"):
        for critic, acc in (("bilinear", 0.83), ("separable", 0.825), ("concat", concat)):
            rows += curve(f"{critic}-{est}", {"accuracy": 0.8, "bound": 0.0, "bound_test": 0.0},
                          {"accuracy": acc, "bound": 4.0, "bound_test": 3.5}, critic=critic, estimator=est)
    verdicts = {v.finding: v for v in findings.judge([make_run(tmp_path / "r", "critics", rows)])}
    assert verdicts["critics.concat_worst"].holds is holds
    assert verdicts["critics.bounds"].holds is None and "held out 3.50" in verdicts["critics.bounds"].measured


@pytest.mark.parametrize("conv,holds", [(0.84, True), (0.825, False)])
def test_encoders(tmp_path, conv, holds):
    rows = []
    for est in ("infonce", "nwj"):
        for t in (2.0, 4.0):
            rows += curve(f"convnet-{est}-t{t:g}", {"accuracy": 0.8}, {"accuracy": conv - 0.01 * (t == 4.0)},
                          encoder="convnet", estimator=est, target=t)
            rows += curve(f"mlp-{est}-t{t:g}", {"accuracy": 0.8}, {"accuracy": 0.82}, encoder="mlp", estimator=est,
                          target=t)
    verdicts = {v.finding: v for v in findings.judge([make_run(tmp_path / "r", "encoders", rows)])}
    assert verdicts["encoders.convnet_ahead"].holds is holds
    assert verdicts["encoders.larger_t_not_better"].holds is True      # the ConvNet is worse at t = 4


def test_encoders_larger_t_always_better(tmp_path):
    rows = []
    for enc in ("convnet", "mlp"):
        for t, acc in ((2.0, 0.81), (4.0, 0.83)):
            rows += curve(f"{enc}-infonce-t{t:g}", {"accuracy": 0.8}, {"accuracy": acc}, encoder=enc,
                          estimator="infonce", target=t)
    assert verdict_of(tmp_path, "encoders", rows, "encoders.larger_t_not_better").holds is False


@pytest.mark.parametrize("iid,non_iid,holds", [(0.019, 0.20, True), (0.04, 0.20, False), (0.015, 0.05, False)])
def test_sampling(tmp_path, iid, non_iid, holds):
    rows = []
    for est in ("infonce", "nwj"):
        for sampling, end in (("iid", iid), ("non-iid", non_iid)):
            rows.append({"variant": f"{sampling}-{est}", "step": 100, "bound": end, "bound_smoothed": end,
                         "true_mi": 0.0204, "sampling": sampling, "estimator": est})
    assert verdict_of(tmp_path, "sampling", rows, "sampling.non_iid_exceeds").holds is holds


@pytest.mark.parametrize("triplet,holds", [(0.83, True), (0.79, False), (0.805, False)])
def test_metric(tmp_path, triplet, holds):
    """The triplet loss must be above the pixels (0.80) and within 0.03 of the better MI bound; the
    hardest-negative variant (collapsed here) does not count."""
    rows = []
    for obj, acc in (("infonce", 0.84), ("nwj", 0.81), ("triplet", triplet), ("triplet_hardest", 0.3)):
        rows += curve(obj, {"accuracy": 0.8}, {"accuracy": acc}, objective=obj)
    assert verdict_of(tmp_path, "metric", rows, "metric.alike").holds is holds


def test_several_seeds_use_the_mean_and_say_how_many(tmp_path):
    paths = []
    for seed, gain in ((0, 0.03), (1, 0.01), (2, 0.005)):        # mean gain 0.015 >= 0.01: holds
        rows = curve("infonce", {"bound": -1.0, "accuracy": 0.80}, {"bound": 4.0, "accuracy": 0.80 + gain})
        paths.append(make_run(tmp_path / f"s{seed}", "invertible", rows, seed=seed))
    (v,) = findings.judge(paths)
    assert v.holds is True and v.seeds == [0, 1, 2]
    # sample sd (ddof = 1) of 0.83, 0.81, 0.805: 0.0132 (ddof = 0 would give 0.011)
    assert "0.815 ± 0.013" in v.measured and "seeds 0-2" in findings.format_table([v])


def test_runs_of_different_configs_are_judged_apart(tmp_path):
    rows = curve("infonce", {"bound": -1.0, "accuracy": 0.80}, {"bound": 4.0, "accuracy": 0.85})
    a = make_run(tmp_path / "a", "invertible", rows)
    b = make_run(tmp_path / "b", "invertible", rows, config={"n_iters": 200})
    assert [v.steps for v in findings.judge([a, b])] == [100, 200]


def test_missing_rows_give_no_verdict_and_a_reason(tmp_path):
    rows = [{"variant": "infonce", "step": 0, "accuracy": 0.8}]          # stopped before any bound
    v = verdict_of(tmp_path, "conditioning", rows, "conditioning.ill_conditioned")
    assert v.holds is None and v.measured.startswith("cannot judge: no logcond_median")


def test_cli_findings_prints_and_writes_json(tmp_path, capsys):
    rows = curve("adversarial", {"accuracy": 0.82, "mean_log_det": -1.0}, {"accuracy": 0.5, "mean_log_det": -2.0})
    path = make_run(tmp_path / "adv", "adversarial", rows)
    out = tmp_path / "f.json"
    assert cli.main(["findings", str(path), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "[HOLDS] adversarial (Fig. 1c" in text and "1 of 1 findings with a verdict hold" in text
    data = json.loads(out.read_text())
    assert data["findings"][0]["verdict"] == "holds" and data["findings"][0]["values"]["accuracy"] == [0.82, 0.5]
    assert cli.main(["findings", str(path), "--out", str(out), "--markdown"]) == 0
    assert "| **adversarial, Fig. 1c;" in capsys.readouterr().out
    assert cli.main(["findings", str(tmp_path / "nope")]) == 2


def test_the_quick_scale_notes_name_real_findings_and_show_only_beside_a_quick_failure():
    keys = {f.key for f in findings.FINDINGS}
    assert set(findings.QUICK_SCALE_NOTES) <= keys
    key = next(iter(findings.QUICK_SCALE_NOTES))
    assert findings.quick_scale_note(key, "quick", "does not hold") == findings.QUICK_SCALE_NOTES[key]
    assert findings.quick_scale_note(key, "quick", "holds") is None
    assert findings.quick_scale_note(key, "paper", "does not hold") is None

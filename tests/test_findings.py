"""Tests for mi_ref.findings, mi_ref.effects and mi_ref.verdicts: every rule on synthetic metric rows, once
holding and once not; the noise rule (seed-to-seed SE with 3 or more seeds, the probe's SE otherwise);
refusing unfinished runs; "not judged" where the runs lack what a rule compares; critics, estimators and
targets beyond the paper's."""

import dataclasses
import json
import math

import numpy as np
import pytest

from mi_ref import cli, effects, experiments, findings, verdicts
from mi_ref.results import RunDir
from mi_ref.runs import load_run


def make_run(path, experiment, rows, seed=0, preset="quick", config=None, done=True, baseline=0.80, raw=None,
             arrays=None):
    """A run directory with the preset's config (plus ``config``; ``raw``: settings written as given, unchecked),
    a pixel-baseline row (image experiments) and ``rows`` (and ``arrays``: {variant: {name: array}}); with
    ``done`` every unit that has rows (and the baseline) is marked finished."""
    cfg = dataclasses.asdict(experiments.get(experiment).config(preset, **(config or {})))
    cfg.update(raw or {})
    run = RunDir(path)
    run.prepare({"experiment": experiment, "preset": preset, "seed": seed, "config": cfg}, resume=False)
    units = list(dict.fromkeys(r["variant"] for r in rows))
    if "dataset" in cfg:
        run.append_metrics({"variant": "baseline", "step": 0, "accuracy": baseline})
        units = ["baseline"] + units
    for row in rows:
        run.append_metrics(row)
    for variant, values in (arrays or {}).items():
        run.save_arrays(variant, values)
    if done:
        for unit in units:
            run.mark_done(unit)
    run.unlock()
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


def verdicts_of(paths, **kwargs):
    return {v.finding: v for v in verdicts.judge(paths, **kwargs)}


def verdict_of(tmp_path, experiment, rows, key, name="run", **kwargs):
    return verdicts_of([make_run(tmp_path / name, experiment, rows, **kwargs)])[key]


BOTH = {"estimators": ("infonce", "nwj")}


# ---------------------------------------------------------------- the effect rule


def acc(values, hits=None, dataset="mnist-subset"):
    return effects.Accuracies(values, hits or {}, dataset)


def test_effect_rule_single_seed_without_outcomes_uses_two_binomial_accuracies():
    """One seed on 2000 test images, rows without per-image outcomes: SE = sqrt(p(1-p)/M + q(1-q)/M); the
    threshold is max(minimum, 2 SE)."""
    t = effects.effect_test("rise", {0: 0.03}, 0.01, 2000, (acc({0: 0.83}), acc({0: 0.80})))
    se = math.sqrt(0.8 * 0.2 / 2000 + 0.83 * 0.17 / 2000)
    assert t.se == pytest.approx(se) and t.se_kind == "probe (binomial)" and t.threshold == pytest.approx(2 * se)
    assert t.holds is True                                   # 0.03 >= 0.0245
    assert effects.effect_test("rise", {0: 0.02}, 0.01, 2000, (acc({0: 0.82}), acc({0: 0.80}))).holds is False


def test_effect_rule_single_seed_with_outcomes_uses_the_paired_se_and_the_refit_noise():
    """The same images, 2000 of them: b gets 1600 right; a gets those and 40 more right (the only discordant
    images), so a - b = 0.02 with paired SE sd(d)/sqrt(M), d = 1 on 40 images and 0 elsewhere; the solver's
    refit sd of the subset enters twice."""
    hits_b = np.zeros(2000, bool)
    hits_b[:1600] = True
    hits_a = hits_b.copy()
    hits_a[1600:1640] = True
    d = hits_a.astype(float) - hits_b
    paired = d.std(ddof=1) / math.sqrt(2000)
    refit = effects.PROBE_REFIT_SD["mnist-subset"]
    t = effects.effect_test("rise", {0: 0.02}, 0.01, 2000, (acc({0: 0.82}, {0: hits_a}), acc({0: 0.80}, {0: hits_b})))
    assert t.se_kind == "probe (paired)"
    assert t.se == pytest.approx(math.sqrt(paired ** 2 + 2 * refit ** 2))
    assert t.se < math.sqrt(0.8 * 0.2 / 2000 + 0.82 * 0.18 / 2000)      # pairing removes the shared images
    assert t.holds is (0.02 >= 2 * t.se)


def test_effect_rule_three_seeds_use_the_seed_to_seed_se():
    t = effects.effect_test("rise", {0: 0.02, 1: 0.03, 2: 0.025}, 0.01, 2000,
                             (acc({0: 0.82, 1: 0.83, 2: 0.825}), acc({0: 0.8, 1: 0.8, 2: 0.8})))
    assert t.se_kind == "seed-to-seed" and t.se == pytest.approx(0.005 / math.sqrt(3))
    assert t.threshold == pytest.approx(0.01) and t.holds is True
    noisy = effects.effect_test("rise", {0: 0.10, 1: -0.05, 2: 0.02}, 0.01)
    assert noisy.effect == pytest.approx(0.0233, abs=1e-4) and noisy.threshold > noisy.effect and not noisy.holds


def test_effect_rule_at_most_and_equivalence():
    t = effects.effect_test("gap", {0: 0.02, 1: 0.03, 2: 0.025}, 0.03, kind="at most")
    assert t.holds is True and t.threshold == pytest.approx(0.03 + 2 * 0.005 / math.sqrt(3))
    assert effects.effect_test("gap", {0: 0.06, 1: 0.05, 2: 0.055}, 0.03, kind="at most").holds is False
    # an equivalence must hold beyond the noise: 0.025 <= 0.03 - 2 SE fails, 0.01 passes
    e = effects.effect_test("gap", {0: 0.02, 1: 0.03, 2: 0.025}, 0.03, kind="at most", equivalence=True)
    assert e.threshold == pytest.approx(0.03 - 2 * 0.005 / math.sqrt(3)) and e.holds is False
    assert effects.effect_test("gap", {0: 0.01, 1: 0.01, 2: 0.011}, 0.03, kind="at most",
                                equivalence=True).holds is True


# ---------------------------------------------------------------- each finding


@pytest.mark.parametrize("gain,holds", [(0.04, True), (0.005, False)])
def test_invertible(tmp_path, gain, holds):
    rows = []
    for est in ("infonce", "nwj"):
        rows += curve(est, {"bound": -1.0, "accuracy": 0.80}, {"bound": 4.0, "accuracy": 0.80 + gain},
                      estimator=est)
    v = verdict_of(tmp_path, "invertible", rows, "invertible.rise", config=BOTH)
    assert v.holds is holds and v.verdict == ("holds" if holds else "does not hold")
    assert [t.name for t in v.tests] == ["infonce: accuracy rise", "nwj: accuracy rise",
                                         "infonce: bound rise (nats)", "nwj: bound rise (nats)"]
    assert "effect" in v.tests[0].text() and "SE" in verdicts.format_table([v])


def test_invertible_needs_the_bound_to_rise_too(tmp_path):
    rows = curve("infonce", {"bound": 3.5, "accuracy": 0.80}, {"bound": 4.0, "accuracy": 0.85})
    assert verdict_of(tmp_path, "invertible", rows, "invertible.rise").holds is False


def test_a_run_without_variants_is_not_judged(tmp_path, capsys):
    """`--set estimators=` is refused before anything is written; a run directory whose config lists no
    estimator (made by hand, or by an older mi-ref) gives no verdict, never HOLDS."""
    assert cli.main(["run", "invertible", "--set", "estimators=", "--out", str(tmp_path / "r")]) == 2
    assert "estimators" in capsys.readouterr().err and not (tmp_path / "r").exists()
    v = verdict_of(tmp_path, "invertible", [], "invertible.rise", raw={"estimators": []})
    assert v.holds is None and v.verdict == "not judged" and "no trained variant" in v.reason
    assert "not judged" in verdicts.format_table([v])


@pytest.mark.parametrize("end,holds", [(0.70, True), (0.78, False)])
def test_adversarial(tmp_path, end, holds):
    rows = curve("adversarial", {"accuracy": 0.82, "mean_log_det": -10.0}, {"accuracy": end, "mean_log_det": -30.0})
    v = verdict_of(tmp_path, "adversarial", rows, "adversarial.below_pixels")
    assert v.holds is holds and "pixels 0.800" in v.measured


def _logcond_rows(est, start, end, a_end):
    rows = curve(est, {"accuracy": 0.80}, {"accuracy": a_end}, estimator=est)
    for row, level in zip(rows, (start, (start + end) / 2, end)):
        row["logcond_values"] = sorted(level + 0.01 * np.arange(-5, 6))
    return rows


@pytest.mark.parametrize("c_end,a_end,holds", [(2.0, 0.84, True), (0.5, 0.84, False), (2.0, 0.805, False)])
def test_conditioning(tmp_path, c_end, a_end, holds):
    rows = _logcond_rows("infonce", 0.05, c_end, a_end) + _logcond_rows("nwj", 0.05, c_end, a_end)
    v = verdict_of(tmp_path, "conditioning", rows, "conditioning.ill_conditioned", config=BOTH)
    assert v.holds is holds


def test_conditioning_pools_the_seeds_before_the_median(tmp_path):
    """Two seeds of 3 values each: the pooled median (index int(0.5 * 5) = 2 of 6 sorted values) is not the
    mean of the two runs' medians."""
    paths = []
    for seed, values in ((0, [0.0, 0.0, 3.0]), (1, [2.0, 2.0, 2.0])):
        rows = curve("infonce", {"accuracy": 0.8}, {"accuracy": 0.85}, steps=(0, 100), estimator="infonce")
        rows[0]["logcond_values"] = [0.0, 0.01, 0.02]
        rows[1]["logcond_values"] = values
        paths.append(make_run(tmp_path / f"s{seed}", "conditioning", rows, seed=seed))
    assert findings.pooled_median([load_run(p) for p in paths], "infonce", "last") == 2.0
    v = verdicts_of(paths)["conditioning.ill_conditioned"]
    assert v.values["infonce"]["logcond_median"][1] == 2.0        # the mean of the medians would be 1.0


def _critic_rows(accs, estimators=("infonce", "nwj")):
    rows = []
    for est in estimators:
        for critic, acc in accs.items():
            rows += curve(f"{critic}-{est}", {"accuracy": 0.8, "bound": 0.0, "bound_test": 0.0},
                          {"accuracy": acc, "bound": 4.0, "bound_test": 3.5}, critic=critic, estimator=est)
    return rows


@pytest.mark.parametrize("concat,holds", [(0.79, True), (0.818, False)])
def test_critics(tmp_path, concat, holds):
    rows = _critic_rows({"bilinear": 0.83, "separable": 0.825, "concat": concat})
    verdicts = verdicts_of([make_run(tmp_path / "r", "critics", rows)])
    assert verdicts["critics.concat_worst"].holds is holds
    assert verdicts["critics.bounds"].holds is None and "held out 3.50" in verdicts["critics.bounds"].measured
    assert verdicts["critics.bounds"].verdict == "no verdict"


def test_critics_without_separable_are_not_judged(tmp_path):
    rows = _critic_rows({"bilinear": 0.83, "concat": 0.70})
    v = verdict_of(tmp_path, "critics", rows, "critics.concat_worst", config={"critics": ("bilinear", "concat")})
    assert v.holds is None and "separable" in v.reason


def test_a_fourth_critic_is_reported_not_judged(tmp_path, monkeypatch):
    """A critic the rule does not know (a plugin) appears in the numbers and the bounds, and its accuracy does
    not decide the verdict, even when it is the worst."""
    from mi_ref import critics
    monkeypatch.setitem(critics.CRITICS._entries, "cosine", critics.CRITICS.get("bilinear"))
    monkeypatch.setitem(critics.CRITICS._meta, "cosine", {})
    rows = _critic_rows({"bilinear": 0.83, "separable": 0.825, "concat": 0.79, "cosine": 0.60})
    verdicts = verdicts_of([make_run(tmp_path / "r", "critics", rows,
                                     config={"critics": ("bilinear", "separable", "concat", "cosine")})])
    v = verdicts["critics.concat_worst"]
    assert v.holds is True and "cosine 0.600" in v.measured and "cosine reported, not judged" in v.measured
    assert "cosine 4.00" in verdicts["critics.bounds"].measured
    assert "cosine: no role in CRITIC_ROLES in mi_ref/findings.py" in v.measured      # says what it lacks


def test_a_critic_declared_without_a_role_is_reported_without_a_note(tmp_path, monkeypatch):
    from mi_ref import critics
    from mi_ref.findings import CRITIC_ROLES
    from mi_ref.registry import NONE
    monkeypatch.setitem(critics.CRITICS._entries, "cosine", critics.CRITICS.get("bilinear"))
    monkeypatch.setitem(critics.CRITICS._meta, "cosine", {})
    monkeypatch.setitem(CRITIC_ROLES, "cosine", NONE)
    rows = _critic_rows({"bilinear": 0.83, "separable": 0.825, "concat": 0.79, "cosine": 0.60})
    verdicts = verdicts_of([make_run(tmp_path / "r", "critics", rows,
                                     config={"critics": ("bilinear", "separable", "concat", "cosine")})])
    measured = verdicts["critics.concat_worst"].measured
    assert "(cosine reported, not judged)" in measured and "CRITIC_ROLES" not in measured


def _encoder_rows(acc):
    """acc: {(encoder, estimator, t): accuracy}"""
    rows = []
    for (enc, est, t), a in acc.items():
        rows += curve(f"{enc}-{est}-t{t:g}", {"accuracy": 0.8}, {"accuracy": a}, encoder=enc, estimator=est,
                      target=t)
    return rows


@pytest.mark.parametrize("conv,holds", [(0.86, True), (0.825, False)])
def test_encoders_convnet_ahead(tmp_path, conv, holds):
    acc = {(e, s, t): (conv if e == "convnet" else 0.82) for e in ("convnet", "mlp") for s in ("infonce", "nwj")
           for t in (2.0, 4.0)}
    verdicts = verdicts_of([make_run(tmp_path / "r", "encoders", _encoder_rows(acc), config=BOTH)])
    assert verdicts["encoders.convnet_ahead"].holds is holds
    assert verdicts["encoders.t_comparison"].holds is None and "t=2" in verdicts["encoders.t_comparison"].measured


@pytest.mark.parametrize("nwj_shift,holds", [(0.005, True), (0.05, False)])
def test_encoders_architecture_over_estimator(tmp_path, nwj_shift, holds):
    """ConvNet - MLP = 0.06 at every (t, estimator); |I_NCE - I_NWJ| = nwj_shift for the ConvNet."""
    acc = {}
    for t in (2.0, 4.0):
        for est in ("infonce", "nwj"):
            shift = nwj_shift if est == "nwj" else 0.0
            acc[("convnet", est, t)] = 0.88 - shift
            acc[("mlp", est, t)] = 0.82 - shift
    v = verdict_of(tmp_path, "encoders", _encoder_rows(acc), "encoders.architecture_over_estimator", config=BOTH)
    assert v.holds is holds
    assert v.tests[0].effect == pytest.approx(0.06 - nwj_shift)


def test_encoders_rule_two_needs_two_estimators(tmp_path):
    acc = {(e, "infonce", t): 0.8 for e in ("convnet", "mlp") for t in (2.0, 4.0)}
    v = verdict_of(tmp_path, "encoders", _encoder_rows(acc), "encoders.architecture_over_estimator",
                   config={"estimators": ("infonce",)})
    assert v.holds is None and "two estimators" in v.reason


def _sampling_run(tmp_path, name, iid, non_iid, seed=0, trace_sd=0.01):
    rows = []
    for est in ("infonce", "nwj"):
        for sampling, end in (("iid", iid), ("non-iid", non_iid)):
            rows.append({"variant": f"{sampling}-{est}", "step": 100, "bound": end, "bound_smoothed": end,
                         "true_mi": 0.0204, "sampling": sampling, "estimator": est})
    rng = np.random.default_rng(seed)
    arrays = {r["variant"]: {"trace": r["bound"] + trace_sd * rng.standard_normal(2000)} for r in rows}
    return make_run(tmp_path / name, "sampling", rows, seed=seed, arrays=arrays)


@pytest.mark.parametrize("iid,non_iid,holds", [(0.019, 0.20, True), (0.04, 0.20, False), (0.015, 0.05, False)])
def test_sampling(tmp_path, iid, non_iid, holds):
    v = verdicts_of([_sampling_run(tmp_path, "r", iid, non_iid)])["sampling.non_iid_exceeds"]
    assert v.holds is holds
    assert {t.se_kind for t in v.tests} == {"within-run"}


def test_sampling_of_an_empty_run_is_not_judged(tmp_path):
    path = make_run(tmp_path / "r", "sampling", [], raw={"estimators": []})
    v = verdicts_of([path])["sampling.non_iid_exceeds"]
    assert v.holds is None and "no trained variant" in v.reason


@pytest.mark.parametrize("triplet,holds", [(0.838, True), (0.80, False), (0.82, False), (0.827, True)])
def test_metric(tmp_path, triplet, holds):
    """The triplet loss must be within 0.03 - 2 SE of the better MI bound (0.84; one seed on the subset's 5000
    test images without per-image outcomes: binomial SE = 0.0075, so the largest gap allowed is 0.0150); the
    hardest-negative variant (collapsed here) does not count."""
    rows = []
    for obj, acc in (("infonce", 0.84), ("nwj", 0.81), ("triplet", triplet), ("triplet_hardest", 0.3)):
        rows += curve(obj, {"accuracy": 0.8}, {"accuracy": acc}, objective=obj)
    assert verdict_of(tmp_path, "metric", rows, "metric.alike").holds is holds


# ---------------------------------------------------------------- seeds, completeness, the CLI


def test_several_seeds_use_the_mean_the_sample_sd_and_say_how_many(tmp_path):
    paths = []
    for seed, gain in ((0, 0.03), (1, 0.02), (2, 0.025)):
        rows = curve("infonce", {"bound": -1.0, "accuracy": 0.80}, {"bound": 4.0, "accuracy": 0.80 + gain})
        paths.append(make_run(tmp_path / f"s{seed}", "invertible", rows, seed=seed))
    (v,) = verdicts.judge(paths)
    assert v.holds is True and v.seeds == [0, 1, 2] and v.tests[0].se_kind == "seed-to-seed"
    # sample sd (ddof = 1) of 0.83, 0.82, 0.825: 0.005 (ddof = 0 would give 0.004)
    assert "0.825 ± 0.005" in v.measured and "seeds 0-2" in verdicts.format_table([v])


def test_runs_of_different_configs_are_judged_apart_and_say_their_settings(tmp_path):
    rows = curve("infonce", {"bound": -1.0, "accuracy": 0.80}, {"bound": 4.0, "accuracy": 0.85})
    a = make_run(tmp_path / "a", "invertible", rows)
    b = make_run(tmp_path / "b", "invertible", rows, config={"n_iters": 200})
    judged = verdicts.judge([a, b])
    assert [v.steps for v in judged] == [1200, 200]
    text = verdicts.format_table(judged)
    assert "preset quick, mnist-subset" in text and "preset quick with n_iters=200" in text


def test_an_unfinished_seed_is_refused_or_left_out(tmp_path, capsys):
    """A finished seed and a seed stopped mid-run are never pooled: an error naming the directory (exit 2 from
    the CLI), or with --partial a verdict on the finished seed that names the one left out."""
    done = make_run(tmp_path / "s0", "invertible",
                    curve("infonce", {"bound": -1.0, "accuracy": 0.80}, {"bound": 4.0, "accuracy": 0.85}), seed=0)
    stopped = make_run(tmp_path / "s1", "invertible",
                       curve("infonce", {"bound": -1.0, "accuracy": 0.80}, {"bound": 2.0, "accuracy": 0.80},
                             steps=(0, 50)), seed=1, done=False)
    with pytest.raises(effects.IncompleteRunError, match=str(stopped)):
        verdicts.judge([done, stopped])
    assert cli.main(["findings", str(done), str(stopped), "--out", str(tmp_path / "f.json")]) == 2
    err = capsys.readouterr().err
    assert "unfinished" in err and str(stopped) in err and "Traceback" not in err
    (v,) = verdicts.judge([done, stopped], partial=True)
    assert v.seeds == [0] and v.left_out == [1] and "left out: seed 1" in verdicts.format_table([v])
    assert cli.main(["plot", str(done), str(stopped), "--out", str(tmp_path / "fig")]) == 2
    assert cli.main(["plot", str(done), str(stopped), "--out", str(tmp_path / "fig"), "--partial"]) == 0


def test_cli_findings_prints_and_writes_json(tmp_path, capsys):
    rows = curve("adversarial", {"accuracy": 0.82, "mean_log_det": -1.0}, {"accuracy": 0.5, "mean_log_det": -2.0})
    path = make_run(tmp_path / "adv", "adversarial", rows)
    out = tmp_path / "f.json"
    assert cli.main(["findings", str(path), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "[HOLDS] adversarial (Fig. 1c" in text and "1 of 1 findings with a verdict hold" in text
    assert "pixels minus last accuracy: effect +0.3000" in text
    data = json.loads(out.read_text())
    assert data["findings"][0]["verdict"] == "holds" and data["findings"][0]["values"]["accuracy"] == [0.82, 0.5]
    assert data["findings"][0]["tests"][0]["threshold"] >= 0.05
    assert cli.main(["findings", str(path), "--out", str(out), "--markdown"]) == 0
    assert "| **adversarial, Fig. 1c;" in capsys.readouterr().out
    assert cli.main(["findings", str(tmp_path / "nope")]) == 2


def test_every_finding_quotes_its_source_and_every_rule_names_its_noise():
    for f in findings.FINDINGS:
        assert f.source and f.criterion
        if "none" not in f.criterion.split(":")[0]:
            assert "SE" in f.criterion, f.key


def test_the_quick_scale_notes_name_real_findings_and_show_only_beside_a_quick_failure():
    keys = {f.key for f in findings.FINDINGS}
    assert set(findings.QUICK_SCALE_NOTES) <= keys
    for key, note in findings.QUICK_SCALE_NOTES.items():
        assert findings.quick_scale_note(key, "quick", "does not hold") == note
        assert findings.quick_scale_note(key, "quick", "holds") is None


def test_findings_write_beside_the_runs_and_never_silently_over_another_judgement(tmp_path, capsys, monkeypatch):
    """Was: `mi-ref findings` wrote ./findings.json wherever it was started, and overwrote an earlier one."""
    monkeypatch.chdir(tmp_path)
    rows = curve("adversarial", {"accuracy": 0.82, "mean_log_det": -1.0}, {"accuracy": 0.5, "mean_log_det": -2.0})
    sweep = tmp_path / "runs" / "adversarial-quick"
    a = [make_run(sweep / f"seed-{s}", "adversarial", rows, seed=s) for s in (0, 1)]
    b = make_run(tmp_path / "runs" / "adversarial-quick-lr" / "seed-0", "adversarial", rows,
                 config={"encoder_lr": 1e-3})
    (tmp_path / "findings.json").write_text("mine\n")
    assert cli.main(["findings", str(sweep)]) == 0
    out = capsys.readouterr().out
    first = sweep / "findings.json"
    assert f"wrote {first.relative_to(tmp_path)}\n" in out and (tmp_path / "findings.json").read_text() == "mine\n"
    data = json.loads(first.read_text())
    assert data["runs"] == ["seed-0", "seed-1"] and data["findings"][0]["seeds"] == [0, 1]
    # the same runs again: the earlier judgement is replaced, and the line says so
    assert cli.main(["findings", str(a[1]), str(a[0])]) == 0
    assert "(replaced runs/adversarial-quick/findings.json, an earlier judgement of the same runs)" in \
        capsys.readouterr().out
    data = json.loads(first.read_text())
    assert data["runs"] == ["seed-1", "seed-0"]
    # other runs whose common folder is the same: the earlier file is kept
    assert cli.main(["findings", str(a[0])]) == 0
    assert "wrote runs/adversarial-quick/findings-2.json (findings.json there judges other runs and is kept)" in \
        capsys.readouterr().out
    assert json.loads(first.read_text()) == data
    # two configs: beside both, in their common folder; each header names its changed settings
    assert cli.main(["findings", str(sweep), str(b)]) == 0
    out = capsys.readouterr().out
    assert "wrote runs/findings.json" in out and (tmp_path / "runs" / "findings.json").is_file()
    headers = [line for line in out.splitlines() if line.startswith("[")]
    assert len(headers) == 2 and headers[0] != headers[1] and "with encoder_lr=0.001" in headers[1]
    assert cli.main(["findings", str(sweep), str(b), "--markdown", "--out", "x.json"]) == 0
    assert "with encoder_lr=0.001" in capsys.readouterr().out


def test_an_explicit_out_replaces_only_a_findings_file(tmp_path, capsys):
    rows = curve("adversarial", {"accuracy": 0.82, "mean_log_det": -1.0}, {"accuracy": 0.5, "mean_log_det": -2.0})
    path = make_run(tmp_path / "adv", "adversarial", rows)
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}\n')
    assert cli.main(["findings", str(path), "--out", str(notes)]) == 2
    out, err = capsys.readouterr()
    assert f"--out {notes} exists and is not a findings file of mi-ref" in err and out == ""
    assert notes.read_text() == '{"mine": 1}\n'
    target = tmp_path / "f.json"
    assert cli.main(["findings", str(path), "--out", str(target)]) == 0
    assert capsys.readouterr().out.endswith(f"wrote {target}\n")
    assert cli.main(["findings", str(path), "--out", str(target)]) == 0
    assert f"wrote {target} (replaced {target}, which held findings of the same runs)" in capsys.readouterr().out

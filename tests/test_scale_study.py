"""The scaling study's own analyses (scripts/finding_vs_scale.py), which README quotes: the encoders rules it
applies at every evaluation must be `mi-ref findings`' rules, and its step-by-step trace must be the
training loop's own steps, not a re-implementation that could drift from it."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
scale = pytest.importorskip("finding_vs_scale")


def study_entries_from_runs(seed_dirs, label="from runs"):
    """The study entries (as `finding_vs_scale.py run` writes them) of committed encoders runs: one per
    (seed, variant), with every evaluation's accuracy."""
    entries = []
    for d in seed_dirs:
        config = json.loads((d / "config.json").read_text())
        rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines() if line.strip()]
        n_test = next(r["n_test"] for r in rows if r["variant"] == "baseline")
        for variant in dict.fromkeys(r["variant"] for r in rows if r["variant"] != "baseline"):
            mine = sorted((r for r in rows if r["variant"] == variant), key=lambda r: r["step"])
            entries.append({"label": label, "experiment": "encoders", "preset": "quick", "overrides": {},
                            "dataset": config["config"]["dataset"], "seed": config["seed"], "variant": variant,
                            "extra": {k: mine[0][k] for k in ("encoder", "estimator", "target")},
                            "n_test": n_test, "seconds": 0.0,
                            "evals": [{"step": r["step"], "accuracy": r["accuracy"]} for r in mine]})
    return entries


def test_the_study_applies_the_findings_own_encoders_rules():
    """At the last evaluation of the committed quick encoders runs (seeds 0-4), the study's verdicts equal
    `mi-ref findings`' on the same runs: every effect, SE, threshold and outcome."""
    from mi_ref import verdicts
    seed_dirs = sorted((ROOT / "figures" / "runs" / "encoders-quick").glob("seed-*"))
    assert len(seed_dirs) >= 3
    rows = scale.encoders_verdicts(study_entries_from_runs(seed_dirs))
    last_step = max(step for _, step, _, _ in rows)
    (label, step, n, tests), = [r for r in rows if r[1] == last_step]
    assert n == len(seed_dirs)
    expected = [t for v in verdicts.judge(seed_dirs) if v.finding in scale.ENCODERS_RULES for t in v.tests]
    assert len(tests) == len(expected) == 6             # 4 (estimator, t) pairs + 2 targets
    for got, want in zip(tests, expected):
        assert (got.name, got.holds, got.n) == (want.name, want.holds, want.n)
        assert got.effect == pytest.approx(want.effect, abs=1e-12)
        assert got.se == pytest.approx(want.se, abs=1e-12)
        assert got.threshold == pytest.approx(want.threshold, abs=1e-12)


def test_the_study_skips_what_the_rules_cannot_judge():
    """Fewer than 3 seeds (the studies keep no per-image outcomes for the probe's SE) or a study of one
    encoder: no verdict rows, and no error."""
    seed_dirs = sorted((ROOT / "figures" / "runs" / "encoders-quick").glob("seed-*"))
    entries = study_entries_from_runs(seed_dirs)
    assert scale.encoders_verdicts([e for e in entries if e["seed"] in (0, 1)]) == []
    assert scale.encoders_verdicts([e for e in entries if e["extra"]["encoder"] == "convnet"]) == []


def test_first_steps_are_the_training_loops_own_steps(tmp_path):
    """The traced losses are those of a run of the same variant: their mean over steps 0-9 equals the
    training loss that run records at step 10 (bit for bit: the same sum in the same order), and the rows
    say what Adam did (its first step moves every entry with a gradient by lr times the gradient's sign:
    a ratio of 1)."""
    from mi_ref import experiments
    from mi_ref.datasets import load
    from mi_ref.experiments import common, encoders
    from mi_ref.train import make_views, train_mi
    # the run's own wiring (mi_ref.experiments.common.run_variants): the variant's index seeds its streams
    config = experiments.get("encoders").config("quick", dataset="digits", n_iters=20, n_evals=2,
                                                 eval_final=False)
    dataset = load("digits")
    variants = encoders.variants(config, (dataset.image_shape[0] // 2, dataset.image_shape[1]))
    index = [v.name for v in variants].index("convnet-nwj-t2")
    v = variants[index]
    g1, g2, critic = common.build_variant(v, 3, index)
    run_rows = train_mi(g1=g1, g2=g2, critic=critic, objective=common.make_objective(v, g1, g2, critic),
                        estimator=v.estimator, views=make_views(dataset), config=config, seed=3, variant=v.name,
                        variant_index=index)
    recorded = next(r for r in run_rows if r["step"] == 10)

    rows = scale.first_steps("encoders", "quick", {"dataset": "digits"}, "convnet-nwj-t2", 3, 12)
    assert [r["step"] for r in rows] == list(range(12))
    total = 0.0
    for r in rows[:10]:
        total += r["loss"]
    assert total / 10 == recorded["train_loss"]
    assert rows[0]["step_ratio"] == pytest.approx(1.0, abs=1e-3)
    assert 0 < rows[0]["moved"] <= 1
    assert rows[-1]["step_ratio"] is None and rows[-1]["moved"] is None
    assert all(np.isfinite([r["positive"], r["negative"], r["exp_term"]]).all() for r in rows)
    # the exponential term is e^-1 mean(e^S) over the negative pairs: at least e^(mean S - 1) (Jensen)
    assert all(r["exp_term"] >= np.exp(r["negative"] - 1) * (1 - 1e-12) for r in rows)


def test_first_steps_trace_an_mlp_and_a_flow_too():
    """Every parameter structure (the MLP's list of layers, a flow's blocks) is read for Adam's step."""
    for experiment, variant in (("encoders", "mlp-nwj-t2"), ("invertible", "infonce")):
        rows = scale.first_steps(experiment, "quick", {"dataset": "digits"}, variant, 0, 3)
        assert rows[0]["step_ratio"] > 0 and 0 < rows[0]["moved"] <= 1


def test_first_steps_refuse_an_unknown_variant_and_an_experiment_without_variants():
    with pytest.raises(SystemExit, match="no variant 'convnet-nwj-t3'.*convnet-nwj-t2"):
        scale.first_steps("encoders", "quick", {"dataset": "digits"}, "convnet-nwj-t3", 0, 2)
    with pytest.raises(SystemExit, match="adversarial has none"):
        scale.first_steps("adversarial", "quick", {"dataset": "digits"}, "encoder", 0, 2)


def test_judged_along_is_the_findings_verdict_at_the_last_evaluation_and_refuses_mixed_configs():
    """`along` (the rules at every evaluation of run directories, finished or not) gives, at the last
    evaluation of finished runs, `mi-ref findings`' own tests: here two seeds, so the probe's paired SE."""
    from mi_ref import verdicts
    seed_dirs = sorted((ROOT / "figures" / "runs" / "encoders-paper-n_iters=4000-n_evals=4-eval_final=true")
                       .glob("seed-*"))
    assert len(seed_dirs) == 2
    rows = scale.judged_along([str(d) for d in seed_dirs])
    assert [step for step, _, _ in rows] == [1000, 2000, 3000, 4000]
    step, seeds, judged = rows[-1]
    assert seeds == [0, 1]
    for v in verdicts.judge(seed_dirs):
        if v.finding in scale.ENCODERS_RULES:
            got = judged[v.finding]
            assert len(got) == len(v.tests) > 0
            for a, b in zip(got, v.tests):
                assert (a.name, a.holds, a.se_kind) == (b.name, b.holds, b.se_kind)
                assert (a.effect, a.se, a.threshold) == pytest.approx((b.effect, b.se, b.threshold), abs=1e-12)
    earlier = rows[0][2]["encoders.convnet_ahead"]
    assert [t.effect for t in earlier] != [t.effect for t in judged["encoders.convnet_ahead"]]
    with pytest.raises(SystemExit, match="another config"):
        scale.judged_along([str(seed_dirs[0]), str(ROOT / "figures" / "runs" / "encoders-quick" / "seed-0")])


LONG_PAIR = ROOT / "figures" / "scale" / "runs" / "encoders-paper"
SHORT = ROOT / "figures" / "runs" / "encoders-paper-n_iters=4000-n_evals=4-eval_final=true"


def test_the_committed_full_length_pairs_are_the_4000_step_runs_continued():
    """README's 21000-step t = 4 units (figures/scale/runs/encoders-paper: both encoders under I_NCE and I_NWJ,
    the paper preset's own units run as a sweep's tasks, so with the full run's streams) pass mi-ref's run
    checks, their rows up to step 4000 are the committed 4000-step runs' rows, bit for bit (wall-clock seconds
    aside), and `along` judges both encoders rules at t = 4 at every evaluation: rule 2 too, since the units
    hold both estimators there (and no t = 2 unit, so t = 2 is not among its tests)."""
    from mi_ref.runs import load_run
    t4 = ("convnet-infonce-t4", "convnet-nwj-t4", "mlp-infonce-t4", "mlp-nwj-t4")
    for seed in (0, 1):
        run = load_run(LONG_PAIR / f"seed-{seed}")
        assert run["config"]["config"]["n_iters"] == 21000
        assert {r["variant"] for r in run["metrics"]} == {"baseline", *t4}
        short = load_run(SHORT / f"seed-{seed}")
        for variant in t4:
            mine = sorted((r for r in run["metrics"] if r["variant"] == variant), key=lambda r: r["step"])
            assert [r["step"] for r in mine] == list(range(0, 21000, 1000))        # the paper: 21 evaluations
            early = [{k: v for k, v in r.items() if k != "seconds"} for r in mine if r["step"] <= 4000]
            want = [{k: v for k, v in r.items() if k != "seconds"} for r in short["metrics"] if r["variant"] == variant]
            assert early == want, (seed, variant)
    rows = scale.judged_along([str(LONG_PAIR / "seed-0"), str(LONG_PAIR / "seed-1")])
    assert all(seeds == [0, 1] for _, seeds, _ in rows)
    by_step = {step: judged for step, _, judged in rows}
    assert list(by_step) == list(range(1000, 21000, 1000))
    for step, judged in by_step.items():
        for key in scale.ENCODERS_RULES:
            assert not isinstance(judged[key], str), (step, key, judged[key])          # judged, not skipped
            assert judged[key] and all(t.name.startswith(("t=4", "infonce t=4", "nwj t=4")) for t in judged[key])
    # README's numbers: at 4000 steps (where the 4000-step runs ended) rule 1 fails under I_NWJ and rule 2 fails;
    # at the last evaluation both hold
    outcome = {step: [(t.name, round(t.effect, 4), t.holds)
                      for key in scale.ENCODERS_RULES for t in by_step[step][key]] for step in (4000, 20000)}
    assert outcome[4000] == [("infonce t=4: ConvNet minus MLP", 0.031, True),
                             ("nwj t=4: ConvNet minus MLP", -0.0035, False),
                             ("t=4: architecture gap minus estimator gap", -0.0382, False)]
    assert outcome[20000] == [("infonce t=4: ConvNet minus MLP", 0.0322, True),
                              ("nwj t=4: ConvNet minus MLP", 0.0364, True),
                              ("t=4: architecture gap minus estimator gap", 0.0265, True)]

"""At what scale does each finding emerge? The invertible finding's accuracy rise and the encoders'
accuracies as a function of the number of training steps, over seeds, beside the linear probe's own noise.

Each *study* is a list of configurations (an experiment, a preset, overrides) trained for several seeds with
evaluations along the way; every evaluation records the paper's metrics and, for the invertible experiment,

* ``paired_se``: the standard error of the probe's accuracy difference against step 0 from the test images
  alone, sd(c_t - c_0) / sqrt(M) over the M test images (c = 1 if the probe classifies an image
  correctly), and ``boot_se``, the same by a bootstrap over the test images (1000 resamples);
* ``accuracy_no_const``: the probe on the codes without the columns that the (shift-only) flow carries
  over from pixels that are constant in the training set; at initialization the scaler stretches their
  tiny shifts, which is why a fresh flow probes above the pixels (a diagnostic only: the verdicts use the
  paper's protocol);
* at step 0 and at the end, ``refits``: the probe refitted with solver seeds 1-4 on the same codes.

Usage::

    python scripts/finding_vs_scale.py run inv-quick-lr --seeds 0,1,2 --threads 1
    python scripts/finding_vs_scale.py run enc-subset --seeds 0,1,2
    python scripts/finding_vs_scale.py run inv-mnist --data-dir DIR
    python scripts/finding_vs_scale.py refits --data-dir DIR   # the probe's solver noise per dataset
    python scripts/finding_vs_scale.py steps convnet-nwj-t2 --seeds 0,1,2   # the first steps, one by one
    python scripts/finding_vs_scale.py along RUN/seed-0 RUN/seed-1   # the encoders rules at every evaluation
    python scripts/finding_vs_scale.py report            # the table; and the figure:
    python scripts/finding_vs_scale.py plot --figure figures/scale/finding_vs_scale.png

Results go to ``figures/scale/STUDY.json`` (``--out``), written after every (configuration, seed,
variant), so an interrupted study continues where it stopped when run again.

``steps`` traces the first training steps of one variant, step by step, through the training loop itself
(:func:`mi_ref.train.train_mi`, its objective wrapped): the loss, the mean score of the positive pairs
and of the negative pairs, I_NWJ's exponential term e^-1 mean(e^S) over the negative pairs, and the median
over the parameter entries that step k moved of |theta_(k+1) - theta_k| / lr, the size of Adam's step
relative to the learning rate (1 at step 0, where Adam steps by lr times the gradient's sign), with the
share of the entries it moved. It writes ``figures/scale/steps-VARIANT-lrLR.json``
(``steps-PRESET-VARIANT-lrLR.json`` for a preset other than quick).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

QUICK_FLOW = {"n_couplings": 6, "hidden": (256, 256)}

# name -> list of (label, experiment, preset, overrides); every configuration runs for every seed
STUDIES = {
    "inv-quick-lr": [
        (f"quick flow 6 x [256, 256], subset, lr {lr:g}", "invertible", "quick",
         {"lr": lr, "n_iters": 3000, "n_evals": 10, "eval_final": True})
        for lr in (1e-4, 3e-4, 1e-3)],
    "inv-quick-5k": [
        ("quick flow 6 x [256, 256], subset of 5000 test images, lr 1e-3", "invertible", "quick",
         {"lr": 1e-3, "n_iters": 1800, "n_evals": 6, "eval_final": True})],
    "inv-larger": [
        (f"flow 12 x [512, 512], subset, lr {lr:g}", "invertible", "quick",
         {"lr": lr, "n_couplings": 12, "hidden": (512, 512), "n_iters": 3000, "n_evals": 10, "eval_final": True})
        for lr in (3e-4,)],
    "inv-quick-long": [
        ("quick flow 6 x [256, 256], subset, lr 1e-3, 6000 steps", "invertible", "quick",
         {"lr": 1e-3, "n_iters": 6000, "n_evals": 10, "eval_final": True})],
    "inv-mnist": [
        ("quick flow 6 x [256, 256], MNIST, lr 1e-3", "invertible", "quick",
         {"dataset": "mnist", "lr": 1e-3, "n_iters": 3000, "n_evals": 6, "eval_final": True})],
    "enc-subset": [
        (f"quick encoders, subset, lr {lr:g}", "encoders", "quick",
         {"lr": lr, "estimators": ("infonce", "nwj"), "n_iters": 1200, "n_evals": 6, "eval_final": True})
        for lr in (1e-3,)],
    "enc-subset-small": [
        ("ConvNet (16, 32), subset, lr 1e-3", "encoders", "quick",
         {"lr": 1e-3, "convnet_channels": (16, 32), "encoders": ("convnet",), "estimators": ("infonce", "nwj"),
          "n_iters": 1200, "n_evals": 6, "eval_final": True})],
    "enc-subset-lr": [
        (f"quick encoders, ConvNet (16, 32), subset, lr {lr:g}", "encoders", "quick",
         {"lr": lr, "convnet_channels": (16, 32), "estimators": ("infonce", "nwj"), "n_iters": 1200, "n_evals": 6,
          "eval_final": True})
        for lr in (3e-4,)],
    "enc-subset-3e-4": [
        ("quick encoders, subset, lr 3e-4", "encoders", "quick",
         {"lr": 3e-4, "estimators": ("infonce", "nwj"), "n_iters": 1600, "n_evals": 8, "eval_final": True})],
    "enc-subset-5e-4": [
        ("quick encoders, subset, lr 5e-4", "encoders", "quick",
         {"lr": 5e-4, "estimators": ("infonce", "nwj"), "n_iters": 1600, "n_evals": 8, "eval_final": True})],
    "enc-subset-paper-convnet": [
        ("paper ConvNet (64, 128), subset, lr 1e-3", "encoders", "quick",
         {"lr": 1e-3, "convnet_channels": (64, 128), "estimators": ("infonce", "nwj"), "n_iters": 1600,
          "n_evals": 8, "eval_final": True})],
}

REFIT_SEEDS = (1, 2, 3, 4)
BOOTSTRAP = 1000


def _plain(obj):
    return json.loads(json.dumps(obj, default=lambda o: list(o) if isinstance(o, tuple) else float(o)))


def constant_source_columns(model, x_train):
    """For a shift-only RealNVP: the code columns whose value is a training-constant pixel plus shifts
    (code column j carries input column P[j], P the composition of the blocks' permutations)."""
    constant = np.ptp(x_train, axis=0) == 0
    source = np.arange(x_train.shape[1])
    for perm in model.permutations:
        source = source[perm]
    return constant[source]


def paired_errors(correct_0, correct_t, rng):
    """(paired SE, bootstrap SE) of mean(correct_t) - mean(correct_0) over the test images."""
    d = correct_t.astype(float) - correct_0.astype(float)
    m = d.size
    paired = float(d.std(ddof=1) / np.sqrt(m))
    idx = rng.integers(0, m, size=(BOOTSTRAP, m))
    boot = float(d[idx].mean(axis=1).std(ddof=1))
    return paired, boot


def variants_module(experiment):
    """The module of an MI experiment (one with ``variants``); a clear error for any other name."""
    import importlib
    from mi_ref import experiments
    experiments.get(experiment)                 # a clear error for an unknown name
    module = importlib.import_module(f"mi_ref.experiments.{experiment}")
    if not hasattr(module, "variants"):
        raise SystemExit(f"`steps` and `run` train the variants of an experiment that trains two encoders and a "
                         f"critic; {experiment} has none")
    return module


def experiment_variants(experiment, config, dataset):
    """The variants of an MI experiment for ``dataset``, in the order (and so with the streams) of its runs."""
    from mi_ref.experiments import common
    h, w = dataset.image_shape
    return variants_module(experiment).variants(
        config, (h // 2, w) if experiment == "encoders" else common.view_dim(dataset))


def cached_dataset(name, dataset_cache, data_dir):
    """The dataset ``name``, loaded once per ``dataset_cache`` ({name: dataset})."""
    from mi_ref.datasets import data_dir_for, load
    if name not in dataset_cache:
        dataset_cache[name] = load(name, data_dir_for(name, data_dir))
    return dataset_cache[name]


def train_one(label, experiment, preset, overrides, seed, dataset_cache, data_dir):
    """Train every variant of one configuration for one seed, in memory; returns one entry per variant."""
    from mi_ref import experiments, probe
    from mi_ref.experiments import common
    from mi_ref.train import encode, make_views, train_mi

    exp = experiments.get(experiment)
    config = exp.config(preset, **overrides)
    dataset = cached_dataset(config.dataset, dataset_cache, data_dir)
    views = make_views(dataset)
    variants = experiment_variants(experiment, config, dataset)
    entries = []
    for index, v in enumerate(variants):
        g1, g2, critic = common.build_variant(v, seed, index, getattr(config, "permutations", "shared"))
        evals, first = [], {}
        rng = np.random.default_rng([seed, index, 12345])
        no_const = constant_source_columns(g1, views.x1_train) if experiment == "invertible" else None
        last_step = config.n_iters if config.eval_final else config.eval_every * (config.n_evals - 1)

        def on_evaluation(step, params, row):
            record = {k: row.get(k) for k in ("step", "bound", "bound_test", "accuracy", "loss")}
            if experiment == "invertible":
                tr = encode(g1.apply, params["g1"], views.x1_train)
                te = encode(g1.apply, params["g1"], views.x1_test)
                pred = probe.probe_predictions(tr, views.y_train, te, views.y_test, seed=0)
                correct = pred == views.y_test
                assert abs(correct.mean() - row["accuracy"]) < 1e-12
                keep = ~no_const
                record["accuracy_no_const"] = probe.linear_probe(tr[:, keep], views.y_train, te[:, keep],
                                                                 views.y_test)
                if step == 0:
                    first["correct"] = correct
                else:
                    record["paired_se"], record["boot_se"] = paired_errors(first["correct"], correct, rng)
                if step in (0, last_step):
                    record["refits"] = [probe.linear_probe(tr, views.y_train, te, views.y_test, seed=s)
                                        for s in REFIT_SEEDS]
            evals.append(record)

        start = time.perf_counter()
        train_mi(g1=g1, g2=g2, critic=critic, objective=common.make_objective(v, g1, g2, critic),
                 estimator=v.estimator, views=views, config=config, seed=seed, variant=v.name, variant_index=index,
                 extra_row=dict(v.extra), on_evaluation=on_evaluation)
        entries.append({"label": label, "experiment": experiment, "preset": preset, "overrides": _plain(overrides),
                        "dataset": config.dataset, "seed": seed, "variant": v.name, "extra": _plain(v.extra),
                        "n_test": int(len(views.y_test)), "seconds": time.perf_counter() - start,
                        "evals": _plain(evals)})
        print(f"  {label} seed {seed} {v.name}: accuracy {evals[0]['accuracy']:.4f} -> {evals[-1]['accuracy']:.4f} "
              f"in {entries[-1]['seconds']:.0f} s", flush=True)
    return entries


def cmd_run(args):
    from mi_ref.accel import configure_malloc
    from mi_ref.files import write_json
    from threadpoolctl import threadpool_limits
    import numba
    configure_malloc()
    numba.set_num_threads(args.threads)
    path = Path(args.out) / f"{args.study}.json"
    done = json.loads(path.read_text()) if path.exists() else {"study": args.study, "entries": []}
    have = {(e["label"], e["seed"], e["n_test"]) for e in done["entries"]}
    seeds = [int(s) for s in args.seeds.split(",")]
    cache = {}
    from mi_ref import experiments
    with threadpool_limits(limits=args.threads):
        for label, experiment, preset, overrides in STUDIES[args.study]:
            dataset = cached_dataset(experiments.get(experiment).config(preset, **overrides).dataset, cache,
                                     args.data_dir)
            for seed in seeds:
                if (label, seed, dataset.n_test) in have:     # the same study on the same test images
                    continue
                done["entries"] += train_one(label, experiment, preset, overrides, seed, cache, args.data_dir)
                write_json(path, done)
    print(f"wrote {path}")


def _scale_files(out):
    """Every JSON file of the scale directory, parsed: a *study* holds ``entries`` (written by ``run``), a
    *trace* holds the ``rows`` of one densely evaluated run (with the command that made it), a *first-steps
    trace* the ``first_steps`` written by ``steps``."""
    files = []
    for f in sorted(Path(out).glob("*.json")):
        data = json.loads(f.read_text())
        if "entries" not in data and "rows" not in data and "first_steps" not in data:
            raise SystemExit(f"{f}: neither a study (no 'entries'), a trace (no 'rows') nor a first-steps trace "
                             f"(no 'first_steps'); move it out of {out}")
        files.append((f, data))
    return files


def load_studies(out, files=None):
    entries = []
    for _, data in files if files is not None else _scale_files(out):
        entries += data.get("entries", [])
    return entries


def trace_summaries(files):
    """One line per trace: its variants' mean training loss over the first 10 steps, and the first and
    last evaluations (bound and probe accuracy)."""
    lines = []
    for f, data in files:
        if "rows" not in data:
            continue
        for variant in dict.fromkeys(r["variant"] for r in data["rows"] if r["variant"] != "baseline"):
            rows = sorted((r for r in data["rows"] if r["variant"] == variant), key=lambda r: r["step"])
            early = [r["train_loss"] for r in rows if r.get("train_loss") is not None and r["step"] <= 10]
            first, last = rows[0], rows[-1]
            lines.append(f"  {f.name} {variant}: mean training loss of the first 10 steps "
                         f"{np.mean(early) if early else float('nan'):.1f}; bound {first['bound']:.2f} -> "
                         f"{last['bound']:.2f}, accuracy {first['accuracy']:.4f} -> {last['accuracy']:.4f} "
                         f"(steps {first['step']}-{last['step']}, {len(rows)} evaluations)")
    return lines


def _by(entries, *keys):
    groups = {}
    for e in entries:
        groups.setdefault(tuple(e[k] for k in keys), []).append(e)
    return groups


def _labelled(entries):
    """The entries with the number of test images in their label (the subset's test part grew from 2000 to
    5000 images: runs on the two are different studies)."""
    return [dict(e, label=f"{e['label']} [{e['n_test']} test images]") for e in entries]


def invertible_table(entries):
    """Rows of (label, step, mean rise, seed-to-seed SE, mean paired probe SE, n seeds, rise without the
    constant-pixel columns, the smallest seed's rise)."""
    rows = []
    entries = _labelled(entries)
    for (label,), group in _by([e for e in entries if e["experiment"] == "invertible"], "label").items():
        steps = sorted(set.intersection(*({r["step"] for r in e["evals"]} for e in group)))
        for step in steps:
            rise = [next(r for r in e["evals"] if r["step"] == step)["accuracy"] - e["evals"][0]["accuracy"]
                    for e in group]
            rise_nc = [next(r for r in e["evals"] if r["step"] == step)["accuracy_no_const"]
                       - e["evals"][0]["accuracy_no_const"] for e in group]
            pse = [next(r for r in e["evals"] if r["step"] == step).get("paired_se") or 0.0 for e in group]
            n = len(rise)
            se = float(np.std(rise, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
            rows.append((label, step, float(np.mean(rise)), se, float(np.mean(pse)), n, float(np.mean(rise_nc)),
                         min(rise)))
    return rows


def encoders_table(entries):
    """Rows of (label, step, {variant: (mean accuracy, sd)}, n seeds)."""
    rows = []
    entries = _labelled(entries)
    for (label,), group in _by([e for e in entries if e["experiment"] == "encoders"], "label").items():
        by_variant = _by(group, "variant")
        steps = sorted(set.intersection(*({r["step"] for r in e["evals"]} for e in group)))
        for step in steps:
            cells = {}
            for (variant,), es in by_variant.items():
                acc = [next(r for r in e["evals"] if r["step"] == step)["accuracy"] for e in es]
                cells[variant] = (float(np.mean(acc)), float(np.std(acc, ddof=1)) if len(acc) > 1 else 0.0,
                                  len(acc))
            rows.append((label, step, cells))
    return rows


ENCODERS_RULES = ("encoders.convnet_ahead", "encoders.architecture_over_estimator")


def encoders_verdicts(entries):
    """Rows of (label, step, n seeds, tests): mi-ref's own encoders rules (:mod:`mi_ref.findings`, as `mi-ref
    findings` applies them) judged at every evaluation of each encoders study that holds both encoders and
    both estimators for 3 or more seeds, as if the runs had ended there. ``tests``: the rules'
    :class:`mi_ref.effects.Test` list. (With fewer seeds the rules take the probe's own SE from per-image
    outcomes, which the studies do not keep.)"""
    from mi_ref.effects import SEED_SE_MIN_SEEDS, MissingData
    from mi_ref.findings import FINDINGS
    rules = [f for f in FINDINGS if f.key in ENCODERS_RULES]
    rows = []
    for (label,), group in _by([e for e in _labelled(entries) if e["experiment"] == "encoders"], "label").items():
        seeds = sorted({e["seed"] for e in group})
        if len(seeds) < SEED_SE_MIN_SEEDS:
            continue
        steps = sorted(set.intersection(*({r["step"] for r in e["evals"]} for e in group)))
        for step in steps[1:]:
            runs = [{"config": {"seed": seed, "config": {"dataset": group[0]["dataset"]}},
                     "metrics": [{"variant": "baseline", "n_test": group[0]["n_test"]}]
                     + [dict(e["extra"], variant=e["variant"], step=step,
                             accuracy=next(r["accuracy"] for r in e["evals"] if r["step"] == step))
                        for e in group if e["seed"] == seed]}
                    for seed in seeds]
            try:
                tests = [t for f in rules for t in f.judge(runs)[1]]
            except MissingData:          # a study of one encoder or one estimator: the rules do not apply
                break
            rows.append((label, step, len(seeds), tests))
    return rows


def judged_along(run_dirs, keys=None):
    """mi-ref's encoders rules (``keys``: the finding keys, default :data:`ENCODERS_RULES`) judged on the rows of
    run directories, finished or not, at every evaluation step that every variant they hold has reached, as
    if the runs had ended there: a list of (step, seeds, {key: tests or the reason it is not judged}).

    Several directories of one seed (a sweep's task directories, one unit each) are read as one run; the
    directories must hold one config. The rules are :mod:`mi_ref.findings`' own; with fewer than 3 seeds they
    take the probe's SE from the rows' per-image outcomes, as `mi-ref findings` does. So a long run can be
    judged on its pairs while its other variants still train (`mi-ref findings` refuses an unfinished run)."""
    from mi_ref.effects import MissingData
    from mi_ref.findings import FINDINGS
    from mi_ref.runs import load_run
    keys = ENCODERS_RULES if keys is None else keys
    by_seed, config = {}, None
    for d in run_dirs:
        run = load_run(d)
        cfg = {k: run["config"][k] for k in ("experiment", "preset", "config")}
        if config is not None and cfg != config:
            raise SystemExit(f"along: {d} holds another config than {run_dirs[0]}; give the directories of one run")
        config = cfg
        seed = run["config"]["seed"]
        if seed in by_seed:
            have = {(r["variant"], r["step"]) for r in by_seed[seed]["metrics"]}
            by_seed[seed]["metrics"] += [r for r in run["metrics"] if (r["variant"], r["step"]) not in have]
        else:
            by_seed[seed] = run
    runs = [by_seed[s] for s in sorted(by_seed)]
    # the variants every seed holds (any other is left out), and the steps each of them reached in every seed
    variants = set.intersection(*({r["variant"] for r in run["metrics"]} for run in runs)) - {"baseline"}
    reached = [{r["step"] for r in run["metrics"] if r["variant"] == v} for run in runs for v in variants]
    common = sorted(set.intersection(*reached)) if reached else []
    rules = [f for f in FINDINGS if f.key in keys]
    out = []
    for step in common[1:]:
        cut = [dict(run, metrics=[r for r in run["metrics"] if r["variant"] == "baseline"
                                  or (r["variant"] in variants and r["step"] <= step)]) for run in runs]
        judged = {}
        for f in rules:
            try:
                judged[f.key] = f.judge(cut)[1]
            except MissingData as err:
                judged[f.key] = str(err)
        out.append((step, sorted(by_seed), judged))
    return out


def cmd_along(args):
    rows = judged_along(args.run_dirs)
    if not rows:
        raise SystemExit("along: the runs share no evaluation after step 0 yet")
    for step, seeds, judged in rows:
        print(f"step {step}, seeds {', '.join(map(str, seeds))}:")
        for key, tests in judged.items():
            if isinstance(tests, str):
                print(f"  {key}: not judged: {tests}")
                continue
            for t in tests:
                print(f"  {key}: {t.name} {t.effect:+.4f} ({t.se_kind} SE {t.se:.4f}, >= {t.threshold:.4f}) "
                      f"{'ok' if t.holds else 'NOT MET'}")


def first_steps_summaries(files):
    """One line per (first-steps trace, seed): the loss at step 0 and its largest value in the first 10 steps,
    the step from which Adam's step stays below 1 % of lr, and the scores at the last step traced."""
    lines = []
    for f, data in files:
        if "first_steps" not in data:
            continue
        trace = data["first_steps"]
        for seed, rows in _by(trace["rows"], "seed").items():
            rows = sorted(rows, key=lambda r: r["step"])
            early = rows[:10]
            peak = max(early, key=lambda r: r["loss"])
            ratios = [(r["step"], r["step_ratio"]) for r in rows if r.get("step_ratio") is not None]
            small = next((k for k, _ in ratios if all(x < 0.01 for j, x in ratios if j >= k)), None)
            last = rows[-1]
            lines.append(
                f"  {f.name} seed {seed[0]}: loss {rows[0]['loss']:.2f} at step 0, {peak['loss']:.1f} at step "
                f"{peak['step']} (positive scores {rows[0]['positive']:+.2f} -> {peak['positive']:+.2f}, "
                f"exponential term {rows[0]['exp_term']:.3g} -> {peak['exp_term']:.3g}); Adam's step "
                + (f"below 1% of lr from step {small} on" if small is not None else "never stays below 1% of lr")
                + f"; step {last['step']}: loss {last['loss']:.3f}, positive minus negative score "
                f"{last['positive'] - last['negative']:+.3f}")
    return lines


def cmd_report(args):
    files = _scale_files(args.out)                  # parsed once for the studies and the traces
    entries = load_studies(args.out, files)
    print("invertible: accuracy rise over step 0 (mean over seeds, seed-to-seed SE, the probe's paired SE, "
          "the smallest seed's rise, the rise without the constant-pixel columns)")
    for label, step, rise, se, pse, n, rise_nc, worst in invertible_table(entries):
        print(f"  {label:48s} step {step:5d}: rise {rise:+.4f} (SE {se:.4f}, probe SE {pse:.4f}, min "
              f"{worst:+.4f}, n={n}); without const columns {rise_nc:+.4f}")
    print("encoders: accuracy per variant (mean ± sd over seeds)")
    for label, step, cells in encoders_table(entries):
        text = ", ".join(f"{v} {m:.3f}±{s:.3f}" for v, (m, s, n) in cells.items())
        print(f"  {label:40s} step {step:5d}: {text}")
    print("encoders: mi-ref's rules at each evaluation, pooled over the seeds (effect, seed-to-seed SE, "
          "threshold)")
    for label, step, n, tests in encoders_verdicts(entries):
        held = sum(t.holds for t in tests)
        text = "; ".join(f"{t.name} {t.effect:+.3f} (SE {t.se:.3f}, >= {t.threshold:.3f}) "
                         f"{'ok' if t.holds else 'NOT MET'}" for t in tests)
        print(f"  {label:40s} step {step:5d}, {n} seeds: {held} of {len(tests)} met: {text}")
    steps = first_steps_summaries(files)
    if steps:
        print("first steps: one variant traced step by step (`steps`)")
        print("\n".join(steps))
    traces = trace_summaries(files)
    if traces:
        print("traces: runs evaluated densely, with the command in their file")
        print("\n".join(traces))
    refits = [(e["label"], e["seed"], r["step"], r["accuracy"], r["refits"]) for e in entries
              if e["experiment"] == "invertible" for r in e["evals"] if "refits" in r]
    if refits:
        spread = [np.std([acc] + list(ref), ddof=1) for _, _, _, acc, ref in refits]
        print(f"probe refits (solver seeds 0-4 on the same codes): sd {np.mean(spread):.4f} on average, at most "
              f"{np.max(spread):.4f} ({len(refits)} cases)")


def cmd_plot(args):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    entries = load_studies(args.out)
    fig, axes = plt.subplots(1, 4, figsize=(21, 5.2))
    ax = axes[0]
    rows = invertible_table(entries)
    for label in dict.fromkeys(r[0] for r in rows):
        sel = [r for r in rows if r[0] == label]
        x = np.array([r[1] for r in sel]) / 1000.0
        mean = np.array([r[2] for r in sel])
        se = np.nan_to_num(np.array([r[3] for r in sel]))
        line, = ax.plot(x, mean, marker=".", label=f"{label} (n={sel[0][5]})")
        ax.fill_between(x, mean - 2 * se, mean + 2 * se, color=line.get_color(), alpha=0.15, linewidth=0)
        ax.plot(x, 2 * np.array([r[4] for r in sel]), color=line.get_color(), linestyle=":", linewidth=1)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel("training steps (in thousands)")
    ax.set_ylabel("accuracy rise over step 0")
    ax.set_title("invertible: mean rise ± 2 SE over seeds;\ndotted: 2 x the probe's paired SE (test images)",
                 fontsize=9)
    _legend_below(ax)
    _plot_long_runs(axes[1], args.run)
    by_label = _by_label(encoders_table(entries))
    colors = dict(zip(by_label, plt.get_cmap("tab10").colors * 3))     # one colour per configuration
    for ax, est in zip(axes[2:], ("infonce", "nwj")):
        for label, step_rows in by_label.items():
            variants = [v for v in step_rows[0][2] if f"-{est}-" in v]
            for v in variants:
                x = np.array([r[1] for r in step_rows]) / 1000.0
                mean = np.array([r[2][v][0] for r in step_rows])
                sd = np.array([r[2][v][1] for r in step_rows])
                style = "-" if v.startswith("convnet") else "--"
                marker = "o" if v.endswith("-t2") else "^"
                ax.plot(x, mean, style, marker=marker, markersize=3, color=colors[label], label=f"{v} ({label})")
                ax.fill_between(x, mean - sd, mean + sd, color=colors[label], alpha=0.08, linewidth=0)
        ax.set_xlabel("training steps (in thousands)")
        ax.set_ylabel("linear-probe test accuracy")
        ax.set_title(f"encoders under {est}: mean ± sd over seeds; colour: configuration\n"
                     "solid: ConvNet, dashed: MLP; circles: t = 2, triangles: t = 4", fontsize=9)
        _legend_below(ax)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.figure, dpi=110, bbox_inches="tight")
    print(f"wrote {args.figure}")


def long_run_rise(run_dir):
    """``(label, steps, rises, 2 SE)`` of every variant of an invertible run directory: the probe accuracy at
    each evaluation minus its step-0 accuracy; the SE is the paired one from the rows' per-image outcomes
    where both rows keep them, else that of two independent binomial accuracies."""
    from mi_ref.probe import decode_hits, paired_se
    from mi_ref.runs import load_run
    run = load_run(run_dir)
    rows = run["metrics"]
    n_test = next((r["n_test"] for r in rows if r.get("variant") == "baseline" and "n_test" in r), None)
    cfg = run["config"]["config"]
    out = []
    for variant in dict.fromkeys(r["variant"] for r in rows if r.get("variant") != "baseline"):
        mine = sorted((r for r in rows if r.get("variant") == variant and "accuracy" in r), key=lambda r: r["step"])
        first = mine[0]
        steps, rises, ses = [], [], []
        for row in mine:
            steps.append(row["step"])
            rises.append(row["accuracy"] - first["accuracy"])
            if n_test is not None and "probe_hits" in first and "probe_hits" in row:
                ses.append(2 * paired_se(decode_hits(first["probe_hits"], n_test),
                                         decode_hits(row["probe_hits"], n_test)))
            else:           # two independent binomial accuracies: over-states a paired difference's noise
                p, q, m = first["accuracy"], row["accuracy"], n_test or 10000
                ses.append(2 * np.sqrt(p * (1 - p) / m + q * (1 - q) / m))
        label = (f"{variant}: {cfg['n_couplings']} x {list(cfg['hidden'])} flow, {cfg['dataset']}, lr {cfg['lr']:g}, "
                 f"seed {run['config']['seed']}")
        out.append((label, np.array(steps), np.array(rises), np.array(ses)))
    return out


def _plot_long_runs(ax, run_dirs):
    for run_dir in run_dirs or []:
        for label, steps, rises, ses in long_run_rise(run_dir):
            line, = ax.plot(steps / 1000.0, rises, marker=".", label=label)
            ok = np.isfinite(ses)
            ax.plot(steps[ok] / 1000.0, ses[ok], color=line.get_color(), linestyle=":", linewidth=1)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel("training steps (in thousands)")
    ax.set_ylabel("accuracy rise over step 0")
    ax.set_title("invertible at the paper's scale (full MNIST);\ndotted: 2 x the probe's SE (binomial where the rows "
                 "keep no per-image outcomes)", fontsize=9)
    if run_dirs:
        _legend_below(ax)


def _legend_below(ax):
    """The legend under the axes, off the curves (the studies' labels are long)."""
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)


def _by_label(rows):
    out = {}
    for r in rows:
        out.setdefault(r[0], []).append(r)
    return out


def cmd_refits(args):
    """The probe's solver noise: the pixel probe refitted with solver seeds 0-7 on each dataset (the
    ``PROBE_REFIT_SD`` of mi_ref.effects)."""
    from mi_ref import datasets, probe
    from mi_ref.train import make_views
    for name in args.datasets:
        views = make_views(datasets.load(name, datasets.data_dir_for(name, args.data_dir)))
        accs = [probe.linear_probe(views.x1_train, views.y_train, views.x1_test, views.y_test, seed=s)
                for s in range(8)]
        print(f"{name:13s} pixel probe, solver seeds 0-7: {' '.join(f'{a:.4f}' for a in accs)}; "
              f"sd {np.std(accs, ddof=1):.4f}")
    entries = [e for e in load_studies(args.out) if e["experiment"] == "invertible"]
    for dataset, n in dict.fromkeys((e["dataset"], e["n_test"]) for e in entries):
        sets = [[r["accuracy"]] + list(r["refits"]) for e in entries if (e["dataset"], e["n_test"]) == (dataset, n)
                for r in e["evals"] if "refits" in r]
        if sets:
            print(f"{dataset:13s} flows' codes ({n} test images), solver seeds 0-4, {len(sets)} sets: mean sd "
                  f"{np.mean([np.std(x, ddof=1) for x in sets]):.4f}")


def first_steps(experiment, preset, overrides, variant, seed, n_steps, data_dir=None, dataset_cache=None):
    """Train ``variant`` of ``experiment`` (its index, streams and initial weights as in a run of the preset
    with ``overrides``) for ``n_steps`` steps with :func:`mi_ref.train.train_mi`, recording every training
    step: ``{"step", "loss", "positive", "negative", "exp_term", "step_ratio", "moved"}`` (see the module
    docstring; ``step_ratio`` and ``moved`` of the last step traced are None: its update is not seen). The objective is wrapped, not
    changed: the rows are those of the run's own steps. ``dataset_cache`` ({name: dataset}) spares reloading
    the data for each seed."""
    from autograd.tracer import getval, isbox
    from mi_ref import experiments
    from mi_ref.experiments import common
    from mi_ref.objectives import mi_scores
    from mi_ref.train import make_views, train_mi
    from mi_ref.tree import tree_flatten

    variants_module(experiment)                 # before its config: a clear error for any other experiment
    dataset_cache = {} if dataset_cache is None else dataset_cache
    config = experiments.get(experiment).config(preset, **dict(overrides, n_iters=n_steps, n_evals=1,
                                                               eval_final=False))
    dataset = cached_dataset(config.dataset, dataset_cache, data_dir)
    variants = experiment_variants(experiment, config, dataset)
    views = make_views(dataset)
    names = [v.name for v in variants]
    if variant not in names:
        raise SystemExit(f"{experiment} has no variant {variant!r} with these settings; its variants: {names}")
    index = names.index(variant)
    v = variants[index]
    g1, g2, critic = common.build_variant(v, seed, index, getattr(config, "permutations", "shared"))
    objective = common.make_objective(v, g1, g2, critic)
    rows, previous = [], {}

    def traced(params, x1, x2):
        loss = objective(params, x1, x2)
        if not any(isbox(b) for b in params.values()):
            return loss                  # an evaluation's call (step 0's bound), not a training step
        plain = {k: getval(b) for k, b in params.items()}
        now = np.concatenate([np.ravel(leaf) for _, leaf in tree_flatten(plain)])
        if "theta" in previous:
            moved = np.abs(now - previous["theta"])
            moved = moved[moved > 0]
            rows[-1]["step_ratio"] = float(np.median(moved) / config.lr) if moved.size else 0.0
            rows[-1]["moved"] = moved.size / now.size
        previous["theta"] = now
        scores = np.asarray(mi_scores(plain, g1, g2, critic, x1, x2))
        off = ~np.eye(len(scores), dtype=bool)
        rows.append({"seed": seed, "step": len(rows), "loss": float(getval(loss)),
                     "positive": float(np.mean(np.diag(scores))), "negative": float(np.mean(scores[off])),
                     "exp_term": float(np.mean(np.exp(scores[off] - 1.0))), "step_ratio": None,
                     "moved": None})
        return loss

    train_mi(g1=g1, g2=g2, critic=critic, objective=traced, estimator=v.estimator, views=views, config=config,
             seed=seed, variant=v.name, variant_index=index, extra_row=dict(v.extra))
    return rows


def cmd_steps(args):
    from mi_ref.files import write_json
    from threadpoolctl import threadpool_limits
    overrides = {"lr": args.lr} if args.lr is not None else {}
    if args.channels:
        overrides["convnet_channels"] = tuple(int(c) for c in args.channels.split(","))
    seeds = [int(s) for s in args.seeds.split(",")]
    rows, cache = [], {}
    with threadpool_limits(limits=args.threads):
        for seed in seeds:
            try:
                rows += first_steps(args.experiment, args.preset, overrides, args.variant, seed, args.steps,
                                    args.data_dir, cache)
            except (KeyError, ValueError) as err:     # an unknown experiment, preset or setting
                raise SystemExit(f"steps: {err}") from None
    from mi_ref import experiments
    lr = experiments.get(args.experiment).config(args.preset, **overrides).lr
    name = ("steps-" + (f"{args.preset}-" if args.preset != "quick" else "") + f"{args.variant}-lr{lr:g}"
            + (f"-ch{args.channels.replace(',', '-')}" if args.channels else ""))
    path = Path(args.out) / f"{name}.json"
    command = "python scripts/finding_vs_scale.py " + " ".join(args.argv)
    write_json(path, {"first_steps": {"experiment": args.experiment, "preset": args.preset,
                                      "overrides": _plain(overrides), "variant": args.variant, "lr": lr,
                                      "seeds": seeds, "command": command, "rows": rows}})
    for line in first_steps_summaries([(path, json.loads(path.read_text()))]):
        print(line)
    print(f"wrote {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run")
    p.add_argument("study", choices=sorted(STUDIES))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=str(HERE.parent / "figures" / "scale"))
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("report")
    p.add_argument("--out", default=str(HERE.parent / "figures" / "scale"))
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("plot")
    p.add_argument("--out", default=str(HERE.parent / "figures" / "scale"))
    p.add_argument("--figure", default=str(HERE.parent / "figures" / "scale" / "finding_vs_scale.png"))
    p.add_argument("--run", action="append", metavar="SEED_DIR",
                   help="an invertible run's seed directory whose rise is drawn in the second panel (repeatable)")
    p.set_defaults(func=cmd_plot)
    p = sub.add_parser("refits")
    p.add_argument("--datasets", nargs="+", default=["mnist-subset", "digits", "mnist"])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=str(HERE.parent / "figures" / "scale"))
    p.set_defaults(func=cmd_refits)
    p = sub.add_parser("along", help="the encoders rules at every shared evaluation of run directories, "
                                      "finished or not")
    p.add_argument("run_dirs", nargs="+", metavar="DIR", help="seed directories, or a sweep's task directories")
    p.set_defaults(func=cmd_along)
    p = sub.add_parser("steps", help="trace one variant's first training steps, step by step")
    p.add_argument("variant", help="e.g. convnet-nwj-t2 (the names `mi-ref list --settings` shows)")
    p.add_argument("--experiment", default="encoders")
    p.add_argument("--preset", default="quick")
    p.add_argument("--lr", type=float, default=None, help="default: the preset's")
    p.add_argument("--channels", default=None, help="the ConvNet's two channel counts, e.g. 64,128")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=str(HERE.parent / "figures" / "scale"))
    p.set_defaults(func=cmd_steps)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())

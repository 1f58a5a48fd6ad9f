"""The commands that read what was measured: ``mi-ref list`` (the experiments and the verdicts recorded in the
package), ``mi-ref plot`` (figures of saved runs) and ``mi-ref findings`` (the paper's findings judged on
saved runs)."""


def _cmd_list(args):
    """``mi-ref list``: every experiment, the paper figure it reproduces, its presets and, for each preset,
    whether the paper's findings hold as last measured (the verdicts recorded in the package)."""
    from .. import experiments
    from ..findings import quick_scale_note
    from ..verdicts import load_recorded, seeds_text
    recorded = load_recorded()
    for name in experiments.names():
        exp = experiments.get(name)
        print(f"{name:13s} {exp.figure:16s} {exp.summary}")
        for preset in experiments.PRESETS:
            cfg = exp.presets[preset]
            steps = getattr(cfg, "n_iters", None)
            dataset = getattr(cfg, "dataset", "synthetic")
            print(f"{'':13s}   --preset {preset:6s} {dataset}, {steps} steps")
            if args.settings:
                import dataclasses
                values = ", ".join(f"{f.name}={getattr(cfg, f.name)!r}" for f in dataclasses.fields(cfg))
                print(f"{'':13s}       settings (change with --set KEY=VALUE): {values}")
            entries = [e for e in recorded if e["experiment"] == name and e["preset"] == preset]
            if not entries:
                print(f"{'':13s}       findings: not measured yet")
            for e in entries:
                each = (" (" + ", ".join(f"seed {k}: {v}" for k, v in e["per_seed"].items()) + ")"
                        if e["per_seed"] else "")
                print(f"{'':13s}       {e['finding']}: {e['verdict']}{each}; last measured on {e['dataset']}, "
                      f"{e['steps']} steps, {seeds_text(e['seeds'])}")
                note = quick_scale_note(e["finding"], preset, e["verdict"])
                if note:
                    print(f"{'':13s}         not shown at this scale: {note}")
    return 0


def _cmd_plot(args):
    """``mi-ref plot RUN_DIR... --out DIR``: figures from saved results."""
    from ..figures import plot_runs
    from ..runs import expand_run_dirs
    for path in plot_runs(expand_run_dirs(args.run_dirs), args.out, args.format, args.separate, args.partial):
        print(f"wrote {path}")
    return 0


def _cmd_findings(args):
    """``mi-ref findings RUN_DIR...``: judge the paper's findings on saved runs; write their JSON beside the runs
    (or to --out), never over a file that is not an earlier judgement of the same runs without saying so."""
    from ..verdicts import format_markdown, format_table, judge, output_path, write_json
    from ..runs import expand_run_dirs
    run_dirs = expand_run_dirs(args.run_dirs)
    path, note = output_path(run_dirs, args.out)          # a bad --out fails before anything is judged
    verdicts = judge(run_dirs, partial=args.partial)
    print(format_markdown(verdicts) if args.markdown else format_table(verdicts))
    write_json(verdicts, path, run_dirs)
    print(f"wrote {path}" + (f" ({note})" if note else ""))
    return 0

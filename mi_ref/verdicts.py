"""The paper's findings judged on saved run directories, and the verdicts reported.

``judge(run_dirs)`` (CLI: ``mi-ref findings RUN_DIR...``) groups the runs by experiment and config (runs
that differ only in their seed form one group), applies every finding of that experiment (the rules of
:mod:`mi_ref.findings`) and returns one :class:`Verdict` per (group, finding): the paper's claim and
numbers, the measured numbers and the verdict. Here too: the verdicts as a text or a Markdown table,
findings.json beside the runs judged, and the verdicts recorded in the package for ``mi-ref list``.

**Verdicts only on complete data.** A seed whose run is unfinished (progress.json lacks one of the
experiment's units for its config) is refused: :class:`~mi_ref.effects.IncompleteRunError`, naming the
directory, unless ``partial=True``, which judges only the finished seeds and says which were left out. A
rule whose runs lack what it compares (a variant, an estimator, a second encoder) gives no verdict: "not
judged", with the reason.
"""

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from .effects import IncompleteRunError, MissingData, seed_of, unfinished_units
from .findings import FINDINGS, findings_of, quick_scale_note
from .runs import load_run

# ----------------------------------------------------------------------------------------------------
# judging run directories


@dataclass
class Verdict:
    """One row of the findings table: a finding judged on one group of runs (same config, several seeds)."""

    finding: str
    experiment: str
    preset: str
    dataset: str
    steps: object
    seeds: list
    figure: str
    claim: str
    paper: str
    source: str
    criterion: str
    measured: str
    holds: object                  # True, False, or None (reported without a verdict, or not judged)
    values: dict = field(default_factory=dict)
    tests: list = field(default_factory=list)
    reason: str = None             # why it was not judged
    overrides: str = ""            # the settings that differ from the preset
    left_out: list = field(default_factory=list)     # unfinished seeds left out (partial=True)

    @property
    def verdict(self):
        if self.holds is None:
            return "not judged" if self.reason else "no verdict"
        return "holds" if self.holds else "does not hold"

    def as_dict(self):
        out = {k: getattr(self, k) for k in ("finding", "experiment", "preset", "dataset", "steps", "seeds",
                                             "figure", "claim", "paper", "source", "criterion", "measured",
                                             "holds", "values", "reason", "overrides", "left_out")}
        out["tests"] = [t.as_dict() for t in self.tests]
        out["verdict"] = self.verdict
        return out


def group_runs(run_dirs):
    """``{(experiment, preset, config-without-seed as JSON): [run, ...]}`` in the order first seen."""
    from . import experiments
    groups = OrderedDict()
    for d in run_dirs:
        run = load_run(d)
        cfg = run["config"]
        experiments.get(cfg["experiment"])          # an unknown experiment is an error naming the known ones
        key = (cfg["experiment"], cfg["preset"], json.dumps(cfg["config"], sort_keys=True))
        groups.setdefault(key, []).append(run)
    return groups


def judge(run_dirs, partial=False):
    """Every finding of every experiment among ``run_dirs``: a list of :class:`Verdict`, in the paper's
    order of findings. An unfinished run is an :class:`IncompleteRunError` naming it, unless ``partial``:
    then only the finished seeds are judged, and each verdict lists the seeds left out."""
    from .experiments import describe_overrides
    if not run_dirs:
        raise ValueError("no run directories given")
    verdicts = []
    for (experiment, preset, cfg_text), runs in group_runs(run_dirs).items():
        cfg = json.loads(cfg_text)
        seeds = sorted(seed_of(run) for run in runs)
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{experiment}: the same seed appears twice among the runs {seeds}; give each run "
                             "directory once")
        left_out = []
        for run in list(runs):
            missing = unfinished_units(run)
            if missing:
                if not partial:
                    raise IncompleteRunError(
                        f"{run['path']} is unfinished (it lacks {', '.join(missing)}): judging it with the finished "
                        f"seeds would mix evaluations of different steps. Finish it (mi-ref run ... --resume), "
                        f"leave it out, or pass --partial to judge only the finished seeds")
                left_out.append(seed_of(run))
                runs.remove(run)
        for f in findings_of(experiment):
            tests, reason, values = [], None, {}
            if not runs:
                measured, holds, reason = "", None, f"no finished seed (left out: {left_out})"
            else:
                try:
                    measured, tests, values = f.judge(runs)
                    holds = None if tests is None else all(t.holds for t in tests)
                    tests = tests or []
                except MissingData as err:
                    measured, holds, reason = "", None, str(err)
            verdicts.append(Verdict(f.key, experiment, preset, cfg.get("dataset", "synthetic"), cfg.get("n_iters"),
                                    sorted(seed_of(r) for r in runs), f.figure, f.claim, f.paper, f.source, f.criterion,
                                    measured or f"not judged: {reason}", holds, values, tests, reason,
                                    describe_overrides(experiment, preset, cfg), sorted(left_out)))
    order = {f.key: i for i, f in enumerate(FINDINGS)}
    verdicts.sort(key=lambda v: order[v.finding])
    return verdicts


def seeds_text(seeds):
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"seeds {seeds[0]}-{seeds[-1]}"
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(str(s) for s in seeds)


def _where(v):
    text = f"preset {v.preset}" + (f" with {v.overrides}" if v.overrides else "")
    return f"{text}, {v.dataset}, {v.steps} steps, {seeds_text(v.seeds)}" + \
        (f" (unfinished, left out: {seeds_text(v.left_out)})" if v.left_out else "")


def format_table(verdicts):
    """Plain text: one block per finding (claim, paper, measured, rule, each test, verdict)."""
    lines = []
    for v in verdicts:
        lines.append(f"[{v.verdict.upper()}] {v.experiment} ({v.figure}; {_where(v)}): {v.claim}")
        lines.append(f"    paper:     {v.paper}")
        lines.append(f"    source:    {v.source}")
        lines.append(f"    measured:  {v.measured}")
        lines.append(f"    rule:      {v.criterion}")
        for t in v.tests:
            lines.append(f"      {t.text()}")
        note = quick_scale_note(v.finding, v.preset, v.verdict)
        if note:
            lines.append(f"    at laptop scale: {note}")
    n_hold = sum(v.holds is True for v in verdicts)
    n_judged = sum(v.holds is not None for v in verdicts)
    n_not = sum(v.verdict == "not judged" for v in verdicts)
    lines.append(f"{n_hold} of {n_judged} findings with a verdict hold" +
                 (f"; {n_not} not judged (see the reasons above)" if n_not else ""))
    return "\n".join(lines)


def _tests_markdown(v):
    return "; ".join(f"{t.name} {t.effect:+.3f} (SE {t.se:.3f}, {'≥' if t.kind == 'at least' else '≤'} "
                     f"{t.threshold:+.3f})" for t in v.tests if t.se_kind != "none")


def format_markdown(verdicts):
    """The same as a Markdown table (README's findings tables are this output); a verdict on a config that
    differs from its preset names the settings changed, as the plain table's header does."""
    lines = ["| finding | paper | measured | effect (SE, threshold) | verdict |", "|---|---|---|---|---|"]
    for v in verdicts:
        where = f"{v.experiment}, {v.figure}; {v.dataset}, {v.steps} steps, {seeds_text(v.seeds)}" + \
            (f"; preset {v.preset} with {v.overrides}" if v.overrides else "")
        lines.append(f"| **{where}.** {v.claim} | {v.paper} | {v.measured} | {_tests_markdown(v)} | {v.verdict} |")
    return "\n".join(lines)


FINDINGS_FILE = "findings.json"


def _judged_runs(path):
    """The resolved run directories that the findings file ``path`` judged, or None if ``path`` is not a
    findings file of mi-ref (not JSON, not ``{"findings": [...]}``); an empty set for a findings file of an
    older version, which did not record its runs."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("findings"), list):
        return None
    runs = data.get("runs")
    if not isinstance(runs, list) or not all(isinstance(r, str) for r in runs):
        return set()
    return {(Path(path).parent / r).resolve() for r in runs}


def output_path(run_dirs, out=None, folder=None):
    """``(path, note)``: where ``mi-ref findings`` writes the JSON of its verdicts on ``run_dirs``, and what
    to say about it (None, or a sentence on a file kept or replaced). Nothing silently overwrites a file:

    * ``out`` given: that file. A file that exists there must be a findings file of mi-ref (it is then
      replaced, and the note says so); anything else, or a directory, is a ``ValueError`` (nothing written).
    * else ``FOLDER/findings.json``, ``FOLDER`` being ``folder`` or the common folder of the runs' folders
      (beside the runs judged: a sweep's ``RUN_NAME`` folder, an ``--out`` folder). A findings.json there
      that judged the same runs is replaced (a new judgement of the same runs); one that judged other runs,
      or any other file of that name, is kept, and the verdicts go to ``findings-2.json`` (``-3``, ...): the
      first name that is free or judged the same runs.
    """
    import os
    runs = {Path(d).resolve() for d in run_dirs}
    if out is not None:
        out = Path(out)
        if out.is_dir():
            raise ValueError(f"--out {out} is a directory; give the file to write, e.g. --out {out / FINDINGS_FILE}")
        if out.exists() or out.is_symlink():
            judged = _judged_runs(out)
            if judged is None:
                raise ValueError(f"--out {out} exists and is not a findings file of mi-ref; choose another path "
                                 "(nothing was written)")
            same = "the same runs" if judged == runs else "other runs"
            return out, f"replaced {out}, which held findings of {same}"
        return out, None
    if folder is None:
        folder = Path(os.path.commonpath([str(Path(d).resolve().parent) for d in run_dirs]))
        cwd = Path.cwd()
        if folder == cwd or cwd in folder.parents:
            folder = folder.relative_to(cwd)
    folder = Path(folder)
    kept = []
    for n in range(1, 10_000):
        path = folder / (FINDINGS_FILE if n == 1 else f"findings-{n}.json")
        if not path.exists() and not path.is_symlink():
            break
        if path.is_file() and _judged_runs(path) == runs:
            return path, f"replaced {path}, an earlier judgement of the same runs"
        kept.append(path.name)
    else:
        raise ValueError(f"{folder} holds findings-2.json to findings-9999.json already; give --out")
    note = (f"{', '.join(kept)} there judge{'s' if len(kept) == 1 else ''} other runs and "
            f"{'is' if len(kept) == 1 else 'are'} kept") if kept else None
    return path, note


def write_json(verdicts, path, run_dirs=()):
    """findings.json: every verdict with its numbers and tests, and the run directories judged (relative to
    the file's folder), written atomically."""
    import os

    from .results import atomic_write_json
    path = Path(path)
    base = path.resolve().parent
    runs = [Path(os.path.relpath(Path(d).resolve(), base)).as_posix() for d in run_dirs]
    atomic_write_json(path, {"findings": [v.as_dict() for v in verdicts], "runs": runs})
    return path


# ----------------------------------------------------------------------------------------------------
# the verdicts recorded in the package (``mi-ref list``)

RECORDED = Path(__file__).resolve().parent / "recorded_findings.json"


def recorded_entries(verdicts, per_seed_verdicts=()):
    """The compact form ``mi-ref list`` reads: one entry per pooled verdict, without the long texts, with
    the verdicts of each seed alone beside it."""
    out = []
    for v in verdicts:
        seeds = {p.seeds[0]: p.verdict for p in per_seed_verdicts
                 if p.finding == v.finding and p.preset == v.preset and p.steps == v.steps
                 and p.dataset == v.dataset and p.seeds and p.seeds[0] in v.seeds and p.overrides == v.overrides}
        out.append({"experiment": v.experiment, "preset": v.preset, "dataset": v.dataset, "steps": v.steps,
                    "seeds": v.seeds, "overrides": v.overrides, "finding": v.finding, "verdict": v.verdict,
                    "measured": v.measured,
                    "per_seed": {str(k): seeds[k] for k in sorted(seeds)} if len(v.seeds) > 1 else {}})
    return out


def judge_for_record(run_dirs):
    """(pooled verdicts, verdicts of every seed alone) of ``run_dirs``."""
    return judge(run_dirs), [v for d in run_dirs for v in judge([d])]


def record(run_dirs, path=RECORDED):
    """Judge ``run_dirs`` (pooled over seeds and seed by seed) and write the verdicts for ``mi-ref list``
    (see scripts/record_findings.py). Returns the path."""
    from .results import atomic_write_json
    pooled, per_seed_verdicts = judge_for_record(run_dirs)
    atomic_write_json(Path(path), {"about": "verdicts of mi_ref.findings on the runs committed under "
                                            "figures/runs; rewritten by scripts/record_findings.py",
                                   "verdicts": recorded_entries(pooled, per_seed_verdicts)})
    return Path(path)


def load_recorded(path=RECORDED):
    """The recorded verdicts (an empty list if the file is missing)."""
    path = Path(path)
    if not path.is_file():
        return []
    return json.loads(path.read_text(encoding="utf-8"))["verdicts"]

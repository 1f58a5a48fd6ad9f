"""The invariant of a run directory (:mod:`mi_ref.results` describes its files), and its checks: the audit
before a run is resumed, which repairs what an interruption leaves, and the verification before a run is read.
Both are methods of :class:`mi_ref.results.RunDir`, which inherits them from :class:`RunDirChecks`.

The invariant, per variant V, that a resumable directory keeps:

* every row is a row of one of the run's variants (:attr:`mi_ref.results.RunDir.units`), and each variant's
  rows have increasing steps, each step once (marking a variant finished also lays the rows out in the
  experiment's order of variants, as a serial run writes them);
* V is in progress.json: metrics.jsonl holds exactly the rows of V that progress.json recorded (their
  number and SHA-256), its arrays file is the one it recorded, and V has no checkpoint; if V kept its final
  state, progress.json recorded that file's SHA-256 too (the file may be deleted to free the space: the run
  then can no longer be continued, and nothing else changes);
* V has a checkpoint at step s (at most the run's last step): its rows with step <= s are exactly those the
  checkpoint recorded (steps and SHA-256; the row of step s among them); rows with step > s are the work of
  an interrupted session and are recomputed on resume, identically;
* V has neither: V has at most one row, written by a session interrupted between V's first evaluation and
  its first checkpoint; it is recomputed.

:meth:`RunDirChecks.audit` checks it before a run is resumed. What an interruption can leave (a torn last
line, rows after the last checkpoint, a leftover temporary file of mi-ref's own writes, a checkpoint of a
finished variant, the final state of a variant not yet finished, the row of a checkpoint's own step, the
first row before the first checkpoint) is
repaired and reported; what only outside damage can cause (a row missing, repeated, edited or of an
unknown variant, a damaged or deleted file) is an error naming the file and the defect, and nothing is
changed, unless the run is resumed with ``repair=True``, which recomputes the damaged variants from their
start. :meth:`RunDirChecks.verify` makes the same checks, changing nothing, before figures and findings
read a run.
"""

from .checkpoints import file_sha256, rows_sha256
from .files import DamagedFileError, load_npz, temporary_target


class RunDirError(ValueError):
    """A run directory's files disagree (see the module docstring's invariant) in a way only outside damage
    can cause; the message says which file and what to do."""


RUN_FILES = ("config.json", "metrics.jsonl", "progress.json", "summary.json",     # written atomically, at the top
             "heartbeat.json")                                                  # (heartbeat: sweep tasks only)

REPAIR = ("resume with --repair (`mi-ref run ... --resume --repair`, or the same `mi-ref sweep` command with "
          "--repair)")


def _rows(n):
    return f"{n} row" + ("" if n == 1 else "s")


class RunDirChecks:
    """The audit and the verification of a run directory (see the module docstring): the part of
    :class:`mi_ref.results.RunDir` that checks its files against the invariant, and repairs them."""

    def audit(self, repair=False, merging=()):
        """Check the invariant of the module docstring before this run is resumed.

        Repairs what an interruption leaves and returns the list of what it did (one sentence each). Raises
        :class:`RunDirError` for damage only outside hands cause, naming file and defect and changing
        nothing (the repairs included), unless ``repair``: then the damaged variants are forgotten (rows,
        checkpoint, arrays, done mark) so that the run recomputes them from their start, rows of variants
        the run does not have are removed, and that is reported too. ``merging``: units whose merge into this
        directory (a sweep's seed directory) was interrupted; their rows are left to the merge, which writes
        them again.
        """
        self.repair = repair
        self._check_lock()
        temporaries = self._leftover_temporaries()
        try:
            rows, torn = self._metric_lines()
            progress = self._progress()
        except DamagedFileError as err:
            if not repair:
                raise RunDirError(f"{err}. Nothing was changed. To recompute every variant, {REPAIR}") from None
            return self._remove(temporaries) + self._start_over(f"{err}")
        notes, leftovers = [], []
        by_variant, unknown, damaged = self._row_problems(rows)
        for variant in progress["done"]:
            if variant in damaged:
                continue
            why = self._finished_problem(variant, [r for _, r in by_variant.get(variant, [])], progress)
            if why:
                damaged[variant] = why
            elif self.checkpoint_path(variant).exists():
                leftovers.append(self.checkpoint_path(variant))
                notes.append(f"removed the leftover checkpoint of the finished variant {variant}")
        checkpointed = set()
        for path in sorted((self.path / "checkpoints").glob("*.npz")) if (self.path / "checkpoints").is_dir() else []:
            variant = path.stem
            if variant in progress["done"]:
                continue
            checkpointed.add(variant)
            if variant in damaged:
                continue
            try:
                _, meta = self.load_checkpoint(variant)
            except DamagedFileError as err:
                damaged[variant] = str(err)
                continue
            why, note = self._checkpoint_problem(variant, meta, [r for _, r in by_variant.get(variant, [])])
            if why:
                damaged[variant] = why
            elif note:
                notes.append(note)
        if (self.path / "final").is_dir():
            for path in sorted((self.path / "final").glob("*.npz")):
                if path.stem not in progress["done"] and path.is_file() and not path.is_symlink():
                    leftovers.append(path)
                    notes.append(f"removed the final state of {path.stem}, which is not finished (its last session "
                                 "was interrupted before it was recorded)")
        for variant, lines in by_variant.items():
            if variant in progress["done"] or variant in checkpointed or variant in damaged:
                continue
            if variant in merging:
                notes.append(f"{variant}: its merge was interrupted; it is merged again")
            elif len(lines) > 1:
                damaged[variant] = (f"metrics.jsonl holds {_rows(len(lines))} of {variant}, which is neither finished "
                                    f"(progress.json) nor has a checkpoint (checkpoints/{variant}.npz): one of "
                                    "those files was deleted")
            else:
                notes.append(f"{variant}: its first row, written before its first checkpoint, is evaluated again")
        problems = self._unknown_text(unknown) + [f"{v}: {why}" for v, why in damaged.items()]
        if problems and not repair:
            what = (f"recompute {sorted(damaged)} from their start" if damaged else "") + \
                (" and " if damaged and unknown else "") + ("remove the rows of unknown variants" if unknown else "")
            raise RunDirError(f"{self.path} cannot be resumed as it is: {'; '.join(problems)}. Nothing was changed. "
                              f"To {what}, {REPAIR}; or restore the files")
        # nothing is wrong that an interruption cannot leave (or the run is being repaired): now change things
        done_notes = self._remove(temporaries)
        if torn is not None or unknown:
            drop = {n for n, _ in unknown}
            self.rewrite_metrics([r for n, r in enumerate(rows, start=1) if n not in drop])
        if torn is not None:
            done_notes.append("dropped the torn last line of metrics.jsonl (an interrupted append); its evaluation "
                              "is recomputed")
        done_notes += [f"removed the row of the unknown variant {v!r} (line {n})" for n, v in unknown]
        for path in leftovers:
            path.unlink()
        for variant, why in damaged.items():
            self._forget(variant)
            notes.append(f"{variant} is recomputed from its start ({why})")
        return done_notes + notes

    def _remove(self, temporaries):
        """Remove the leftover ``temporaries`` (:meth:`_leftover_temporaries`); one note each."""
        for tmp in temporaries:
            tmp.unlink()
        return [f"removed {tmp.relative_to(self.path)}, a temporary file of an interrupted write"
                for tmp in temporaries]

    def _leftover_temporaries(self):
        """The temporary files that interrupted atomic writes of this directory's own files left (and nothing
        else): regular files named as :func:`mi_ref.files.write_bytes` names the temporary file of a file
        mi-ref writes, in the folder it writes that file to."""
        places = [(self.path, lambda target: target in RUN_FILES),
                  (self.path / "checkpoints", lambda target: target.endswith(".npz")),
                  (self.path / "arrays", lambda target: target.endswith(".npz")),
                  (self.path / "final", lambda target: target.endswith(".npz"))]
        found = []
        for folder, ours in places:
            if folder.is_dir() and not folder.is_symlink():
                for entry in sorted(folder.iterdir()):
                    target = temporary_target(entry.name)
                    if target is not None and ours(target) and entry.is_file() and not entry.is_symlink():
                        found.append(entry)
        return found

    def _row_problems(self, rows):
        """``(by_variant, unknown, damaged)`` of the rows of metrics.jsonl: ``{variant: [(line, row), ...]}``
        for the variants of the run, ``[(line, variant)]`` of the rows of variants it does not have (when
        :attr:`units` is known), and ``{variant: why}`` for variants whose rows repeat a step or are out of
        step order (a serial run writes each variant's rows once, in increasing steps)."""
        by_variant, unknown, damaged = {}, [], {}
        for number, row in enumerate(rows, start=1):
            variant, step = row["variant"], row["step"]
            if self.units is not None and variant not in self.units:
                unknown.append((number, variant))
                continue
            earlier = by_variant.setdefault(variant, [])
            if variant not in damaged:
                same = [n for n, r in earlier if r["step"] == step]
                if same:
                    damaged[variant] = (f"metrics.jsonl holds its row of step {step} twice (lines {same[0]} and "
                                        f"{number})")
                elif earlier and earlier[-1][1]["step"] > step:
                    damaged[variant] = (f"metrics.jsonl holds its row of step {step} (line {number}) after that of "
                                        f"step {earlier[-1][1]['step']} (line {earlier[-1][0]}): rows out of order")
            earlier.append((number, row))
        return by_variant, unknown, damaged

    def _finished_problem(self, variant, rows, progress):
        """Why the files of the finished ``variant`` differ from what progress.json recorded when it finished
        (its ``rows``: their count and SHA-256; its arrays file: its SHA-256), or None. Progress files of
        older versions hold counts only: their arrays files need only be readable."""
        expected = progress["rows"].get(variant)
        if expected is not None and len(rows) != expected:
            return (f"metrics.jsonl holds {_rows(len(rows))} of the finished variant {variant}, progress.json "
                    f"recorded {expected}")
        digest = progress["sha256"].get(variant)
        if digest is not None and rows_sha256(rows) != digest:
            return ("its rows in metrics.jsonl differ from those it finished with (progress.json recorded their "
                    "SHA-256): a value was edited")
        path = self.arrays_path(variant)
        recorded = progress["arrays"].get(variant)
        if recorded is not None:
            if not path.exists():
                return f"arrays/{path.name} is missing (it was written when {variant} finished)"
            if file_sha256(path) != recorded:
                return (f"arrays/{path.name} differs from the file {variant} finished with (progress.json recorded "
                        "its SHA-256)")
        elif path.exists():
            try:
                load_npz(path, f"arrays of {variant}")
            except DamagedFileError as err:
                return str(err)
        return None

    def _unknown_text(self, unknown):
        """The problem (a list of zero or one sentence) of the rows ``[(line, variant)]`` of unknown variants."""
        if not unknown:
            return []
        if len(unknown) == 1:
            (n, v), = unknown
            return [f"metrics.jsonl, line {n}, is a row of the variant {v!r}, which this run does not have (its "
                    f"variants: {self.units})"]
        names = sorted({v for _, v in unknown})
        return [f"metrics.jsonl, lines {', '.join(str(n) for n, _ in unknown)}, are rows of the variants {names}, "
                f"which this run does not have (its variants: {self.units})"]

    def _checkpoint_problem(self, variant, meta, rows):
        """``(why, note)``: why the rows or the arrays file of ``variant`` disagree with its checkpoint (None if
        they agree), and what resuming will redo (None if nothing)."""
        s = meta["step"]
        have = [r["step"] for r in rows if r["step"] <= s]
        recorded = meta.get("row_steps")
        note = None
        if recorded is not None:
            missing = sorted(set(recorded) - {s} - set(have))
            if missing:
                return (f"metrics.jsonl lacks the rows of {variant} at steps {missing}, which its checkpoint "
                        f"(step {s}) recorded"), None
            extra = sorted(set(have) - set(recorded))
            if extra:
                return (f"metrics.jsonl holds rows of {variant} at steps {extra}, which its checkpoint (step {s}) did "
                        "not record"), None
            pinned = dict(zip(recorded, meta.get("row_sha256") or []))
            for r in rows:
                if r["step"] in pinned and rows_sha256([r]) != pinned[r["step"]]:
                    return (f"its row of step {r['step']} in metrics.jsonl differs from the one its checkpoint (step "
                            f"{s}) recorded: a value was edited"), None
            if s in recorded and s not in have:
                note = (f"{variant}: the row of its checkpoint's step {s} is missing; it is evaluated again from the "
                        "checkpoint")
        path = self.arrays_path(variant)
        if path.exists():
            try:
                load_npz(path, f"arrays of {variant}")
            except DamagedFileError as err:
                return str(err), None
        elif meta.get("arrays"):
            return f"arrays/{path.name} is missing (it was there when its checkpoint was written)", None
        later = [r["step"] for r in rows if r["step"] > s]
        if later:
            note = f"{variant}: {len(later)} row(s) after its checkpoint (step {s}) are recomputed"
        return None, note

    def verify(self):
        """Check this run before its rows are read for figures and findings, changing nothing: a
        :class:`RunDirError` naming the file and the rows if metrics.jsonl repeats a step of a variant or
        holds it out of order, if the rows or arrays of a finished variant differ from what progress.json
        recorded, and, once every unit is finished, if it holds rows of a variant the run does not have or a
        torn last line. (A partial run is read as it is: its torn last line is an interrupted append, and
        rows written by other tools are theirs to explain.)"""
        rows, torn = self._metric_lines()
        progress = self._progress()
        by_variant, unknown, damaged = self._row_problems(rows)
        for variant in progress["done"]:
            why = damaged.get(variant) or self._finished_problem(variant, [r for _, r in by_variant.get(variant, [])],
                                                                 progress)
            if why:
                damaged[variant] = why
        finished = self.units is not None and set(self.units) <= set(progress["done"])
        problems = self._unknown_text(unknown if finished else []) + [f"{v}: {why}" for v, why in damaged.items()]
        if torn is not None and finished:
            problems.append(f"metrics.jsonl is complete, yet its last line is torn: {torn[:60]!r}")
        if problems:
            raise RunDirError(f"{self.path} is damaged: {'; '.join(problems)}. Nothing was read. To recompute what is "
                              f"damaged, {REPAIR}; or restore the files")

    def _start_over(self, why):
        """--repair of an unreadable metrics or progress file: keep config.json, recompute every variant."""
        self._check_lock()
        for path in [self.metrics_path, self.progress_path] + list(self.path.glob("checkpoints/*.npz")) + \
                list(self.path.glob("arrays/*.npz")):
            if path.exists():
                path.unlink()
        return [f"every variant is recomputed from its start ({why})"]


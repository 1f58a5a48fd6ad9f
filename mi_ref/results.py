"""Run directories: what a run writes, written atomically, checked before it is resumed or read back (by
:mod:`mi_ref.runs`, for figures, findings and analysis).

One directory per (experiment, preset, seed)::

    RUN_DIR/
      config.json          the experiment, preset, seed, the complete config, package versions, git revision
      metrics.jsonl        one JSON object per evaluation (and one "baseline" row), appended in order
      progress.json        the variants finished so far, with the number of rows each wrote, the SHA-256 of
                           those rows and of its arrays file
      arrays/VARIANT.npz   per-evaluation arrays (e.g. singular values), rewritten at every evaluation
      checkpoints/VARIANT.npz   the state of the variant in progress (params, optimizer state, stream and
                                data-iterator positions, the steps of its rows so far and their SHA-256);
                                deleted once the variant is finished
      final/VARIANT.npz    the state of a finished variant after its last step, in the checkpoints' format,
                           kept if the run keeps its trained state (:attr:`RunDir.keep_state`): a longer run
                           continues from it (:mod:`mi_ref.extend`), and its parameters can be probed again
      .lock                held (an OS advisory lock) by the one process writing the directory

Writes. Every file but metrics.jsonl is written to a temporary file in the same directory and moved into
place with ``os.replace`` (:mod:`mi_ref.files`): an interruption leaves the old or the new version. A
metrics row is one ``write`` of one line with its newline, fsynced, before anything that depends on it (the
checkpoint of that evaluation) is written; an interruption can leave a torn last line (without its
newline) and nothing else. No file is written through a symbolic link. The writer holds the lock and checks
before every write that ``.lock`` is still the file it locked. Arrays are saved with ``numpy.savez`` and read
with ``allow_pickle=False``; structured metadata travels as JSON text.

The invariant a resumable directory keeps, and its checks (:meth:`RunDir.audit` before a run is resumed,
:meth:`RunDir.verify` before it is read), are in :mod:`mi_ref.audit`; the format of checkpoints and final
states, and the digests progress.json records, in :mod:`mi_ref.checkpoints`. Here: the layout, the lock,
the writes and reads of each file, and the summary of a finished run (summary.json).
"""

import errno
import fcntl
import json
import os
import platform
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from . import faults, files
from .audit import REPAIR, RunDirChecks, RunDirError
from .checkpoints import file_sha256, json_to_array, load_state, rows_sha256
from .faults import point as _fault
from .files import DamagedFileError, load_npz, read_json
from .stats import sample_sd

# ----------------------------------------------------------------------------------------------------
# files (written and read by mi_ref.files)

atomic_write_text = files.write_text
atomic_write_json = files.write_json
atomic_savez = files.savez


# ----------------------------------------------------------------------------------------------------
# environment


def environment():
    """Versions of Python, mi-ref and its dependencies, the platform, and the git revision if known."""
    import importlib.metadata as md
    versions = {}
    for pkg in ("mi-ref", "numpy", "scipy", "autograd", "numba", "scikit-learn", "matplotlib"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": versions,
            "git_revision": git_revision()}


def git_revision():
    """The git commit of the mi-ref source tree (with '-dirty' if modified), or None outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


# ----------------------------------------------------------------------------------------------------
# run directories


class RunExistsError(ValueError):
    """The output directory already holds a run (of this or of another config)."""


class RunLockedError(ValueError):
    """Another process is writing the run directory."""


TASKS_DIR = ".tasks"      # a sweep's task directories: OUT/RUN_NAME/.tasks/seed-S/UNIT (see mi_ref.sweep)


class RunDir(RunDirChecks):
    """One run directory (see the module docstring for its layout; its invariant, and the checks it inherits,
    in :mod:`mi_ref.audit`). ``units``: the names of what the run writes, in the experiment's order
    (:attr:`mi_ref.experiments.Experiment.units`), if known: the files are then kept in that order, and the
    audit refuses rows of any other variant. ``last_step``: the largest step a checkpoint of the run may hold
    (its config's ``n_iters``), if known. ``keep_state``: whether a variant that finishes keeps its final
    state in ``final/VARIANT.npz`` (written by :meth:`mi_ref.loop.Loop.finish`); without it a finished
    variant keeps nothing but its rows and arrays."""

    def __init__(self, path, units=None, last_step=None, keep_state=False):
        self.path = Path(path)
        self.units = list(units) if units is not None else None
        self.last_step = last_step
        self.keep_state = bool(keep_state)
        self.repair, self.report = False, None      # set by audit(repair) and by the runner (a notes callable)
        self._lock_fd = None

    config_path = property(lambda self: self.path / "config.json")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    progress_path = property(lambda self: self.path / "progress.json")
    lock_path = property(lambda self: self.path / ".lock")

    def checkpoint_path(self, variant):
        return self.path / "checkpoints" / f"{variant}.npz"

    heartbeat_path = property(lambda self: self.path / "heartbeat.json")

    @property
    def is_task(self):
        """True for a sweep task's directory OUT/RUN_NAME/.tasks/seed-S/UNIT."""
        return self.path.parent.parent.name == TASKS_DIR

    def heartbeat(self):
        """For a sweep task's directory, a function ``beat(variant, step)`` that writes how far the task's
        training is to ``heartbeat.json`` (atomically), so that the sweep's progress lines count the steps
        between two evaluations too (the rows say only where the last evaluation was); None for any other
        run directory, which keeps no such file."""
        if not self.is_task:
            return None

        def beat(variant, step):
            atomic_write_json(self.heartbeat_path, {"variant": variant, "step": int(step)}, self._check_lock)
        return beat

    def label(self, seed):
        """``"RUN_NAME seed S"`` for progress lines, for OUT/RUN_NAME/seed-S and for a sweep task's
        directory OUT/RUN_NAME/.tasks/seed-S/UNIT alike."""
        parent = self.path.parent
        if self.is_task:
            parent = parent.parent.parent
        return f"{parent.name} seed {seed}"

    def arrays_path(self, variant):
        return self.path / "arrays" / f"{variant}.npz"

    def final_path(self, variant):
        """Where the finished ``variant`` keeps its final state (if the run keeps it)."""
        return self.path / "final" / f"{variant}.npz"

    # --- the lock

    def lock(self, wait=False):
        """Take the directory's advisory lock (``flock`` on ``.lock``) for as long as this process runs
        (or until :meth:`unlock`). The OS drops it when the process ends, however it ends, so a killed run
        never blocks a later one. A second writer gets :class:`RunLockedError` naming the holder, or with
        ``wait=True`` waits until the holder lets go.

        ``.lock`` is opened without following a symbolic link (a link there is an error: the holder's line
        would be written to its target). Once locked, ``.lock`` must still be the file that was locked (its
        device and inode): another process may have deleted and recreated it in between, and the lock is
        then taken again on the new file. And the holder checks that identity before each of its writes
        (:meth:`_check_lock`), so that deleting ``.lock`` while a run writes stops that run before its next
        write instead of letting a second writer in beside it."""
        if self._lock_fd is not None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        while True:
            fd = self._open_lock()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                try:
                    holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "unknown"
                finally:
                    os.close(fd)
                raise RunLockedError(f"{self.path} is being written by another mi-ref process ({holder}); wait for "
                                     "it to finish, or stop it, before running this again") from None
            if self._is_lock_file(fd):
                break
            os.close(fd)                 # .lock was replaced between the open and the lock: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, (f"pid {os.getpid()} on {socket.gethostname()}, since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)}\n").encode("utf-8"))
        self._lock_fd = fd

    def _open_lock(self):
        """A descriptor of ``.lock`` (created if missing), opened without following a link; a link or anything
        but a regular file there is a :class:`RunDirError`."""
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise RunDirError(f"{self.lock_path} is a symbolic link; mi-ref keeps its lock in a file of its own "
                                  "and never writes through a link: remove the link, then run this again") from None
            if err.errno == errno.EISDIR:
                raise RunDirError(f"{self.lock_path} is a directory, not mi-ref's lock file: remove it, then run this "
                                  "again") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise RunDirError(f"{self.lock_path} is not a regular file, so it is not mi-ref's lock file: remove it, "
                              "then run this again")
        return fd

    def _is_lock_file(self, fd):
        """True if ``.lock`` is (still) the file open as ``fd``."""
        try:
            now = os.lstat(self.lock_path)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)

    def _check_lock(self):
        """Before a write: a process that holds the lock raises :class:`RunLockedError` if ``.lock`` is no
        longer the file it locked (deleted or replaced by hand), since another process may now hold a lock
        on the new file and write too."""
        if self._lock_fd is not None and not self._is_lock_file(self._lock_fd):
            raise RunLockedError(f"{self.lock_path} was deleted or replaced while this process was writing "
                                 f"{self.path}; another mi-ref process may be writing it now, so this one stops "
                                 "before writing more (everything up to its last evaluation is saved). Let the "
                                 "other process finish, or continue with --resume once none runs")

    def unlock(self):
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # --- creation and resumption

    def prepare(self, header, resume):
        """Create the run directory for ``header`` (experiment, preset, seed, config), or check that an
        existing one holds the same and may be resumed. Takes the directory's lock first (:meth:`lock`).

        * new directory: writes config.json (header + environment);
        * existing run, ``resume=False``: ``RunExistsError`` (nothing is touched);
        * existing run with a different header: ``RunExistsError`` naming the settings that differ.
        """
        if self.path.exists() and not self.path.is_dir():
            raise RunExistsError(f"{self.path} exists and is not a directory; choose another --out")
        if self.path.is_dir() and not self.config_path.exists() and \
                any(p.name != ".lock" for p in self.path.iterdir()):
            raise RunExistsError(f"{self.path} exists and is not an mi-ref run directory (no config.json); "
                                 "choose another --out directory")
        self.lock()
        if self.config_path.exists():
            old = read_json(self.config_path, dict, "run config")
            new = json.loads(json.dumps(header))
            diff = _differences({k: old.get(k) for k in new}, new)
            if diff:
                raise RunExistsError(f"{self.path} holds a run with a different config ({'; '.join(diff)}); "
                                     "choose another --out directory (nothing was overwritten)")
            if not resume:
                raise RunExistsError(f"{self.path} already holds this run; pass --resume to continue it, or "
                                     "choose another --out directory (nothing was overwritten)")
            return False
        atomic_write_json(self.config_path, dict(header, environment=environment()), self._check_lock)
        return True

    def read_config(self):
        if not self.config_path.exists():
            raise FileNotFoundError(f"{self.path} is not an mi-ref run directory: no config.json")
        config = read_json(self.config_path, dict, "run config")
        for key in ("experiment", "preset", "seed", "config"):
            if key not in config:
                raise DamagedFileError(f"run config {self.config_path} lacks the key {key!r}")
        return config

    # --- metrics

    def _metric_lines(self):
        """``(rows, torn)``: every row of metrics.jsonl, and the torn last line (a crash mid-append) if any.
        Every row is written with its newline in one write, so a last line without its newline is torn even
        when it parses: appending to it would glue the next row onto it. Any other damage raises
        :class:`DamagedFileError` naming the line."""
        if not self.metrics_path.exists():
            return [], None
        text = self.metrics_path.read_text(encoding="utf-8", errors="replace")
        *lines, last = text.split("\n")          # last: "" after a final newline, else the torn line
        rows, torn = [], (last or None)
        for number, line in enumerate(lines, start=1):
            try:
                row = json.loads(line)
            except ValueError as err:
                raise DamagedFileError(f"metrics file {self.metrics_path}, line {number}, is not valid JSON "
                                       f"({err}); the file was damaged or edited. Nothing was changed: fix or "
                                       "delete that line, then resume") from None
            if not isinstance(row, dict) or not isinstance(row.get("variant"), str) or \
                    isinstance(row.get("step"), bool) or not isinstance(row.get("step"), int):
                raise DamagedFileError(f"metrics file {self.metrics_path}, line {number}, is not a metric row "
                                       f"(a JSON object with a string 'variant' and an integer 'step'): "
                                       f"{line[:80]!r}. Nothing was changed: fix or delete that line, then resume")
            rows.append(row)
        return rows, torn

    def read_metrics(self):
        """All complete rows of metrics.jsonl (a torn last line, if any, is left out)."""
        return self._metric_lines()[0]

    def append_metrics(self, row):
        """Append one row (a JSON object on one line, written with a single write and fsynced)."""
        line = json.dumps(row, sort_keys=True, allow_nan=True) + "\n"
        self._check_lock()
        try:
            fd = os.open(self.metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o666)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise RunDirError(f"{self.metrics_path} is a symbolic link; mi-ref appends its rows to a file of its "
                                  "own and never through a link: replace the link by the file, then resume") from None
            raise
        try:
            with open(fd, "a", encoding="utf-8") as f:
                _fault("metrics")
                if faults.HOOK is not None:          # fault injection: a crash can tear the line in two
                    f.write(line[:len(line) // 2])
                    f.flush()
                    _fault("metrics-torn")
                    line = line[len(line) // 2:]
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:                       # a full disk: name the file
            if err.filename is None:
                raise OSError(err.errno, err.strerror, str(self.metrics_path)) from None
            raise

    def rewrite_metrics(self, rows):
        atomic_write_text(self.metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows),
                          self._check_lock)

    def truncate_variant(self, variant, last_step):
        """Drop rows of ``variant`` after ``last_step`` (all of them if None): they are the work of an
        interrupted session, which the resumed run recomputes. Returns the rows of ``variant`` kept.
        Every other row is kept as it is (a damaged file raises instead: nothing is rewritten then)."""
        rows, torn = self._metric_lines()
        kept = [r for r in rows if r["variant"] != variant or (last_step is not None and r["step"] <= last_step)]
        if len(kept) != len(rows) or torn is not None:
            self.rewrite_metrics(kept)
        return [r for r in kept if r["variant"] == variant]

    # --- progress, checkpoints, arrays

    def _progress(self):
        if not self.progress_path.exists():
            return {"done": [], "rows": {}, "sha256": {}, "arrays": {}, "final": {}}
        progress = read_json(self.progress_path, dict, "progress file")
        done, counts = progress.get("done", []), progress.get("rows", {})
        if not isinstance(done, list) or not all(isinstance(v, str) for v in done) or not isinstance(counts, dict):
            raise DamagedFileError(f"progress file {self.progress_path} must be {{\"done\": [variant names], "
                                   f"\"rows\": {{variant: number}}}}, got {json.dumps(progress)[:80]}")
        for variant, count in counts.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise DamagedFileError(f"progress file {self.progress_path}: the row count of {variant} must be an "
                                       f"integer >= 0, got {json.dumps(count)}")
        if len(set(done)) != len(done):
            raise DamagedFileError(f"progress file {self.progress_path} lists a finished variant twice: {done}")
        digests = {}
        for key in ("sha256", "arrays", "final"):    # absent in the progress files of older versions
            digests[key] = progress.get(key, {})
            if not isinstance(digests[key], dict) or not all(
                    isinstance(d, str) and len(d) == 64 for d in digests[key].values()):
                raise DamagedFileError(f"progress file {self.progress_path}: {key!r} must map variants to SHA-256 "
                                       f"digests, got {json.dumps(digests[key])[:80]}")
        return {"done": done, "rows": counts, **digests}

    def read_progress(self):
        """progress.json as ``{"done": [variant, ...], "rows": {variant: count}, "sha256": {variant: digest of
        its rows}, "arrays": {variant: digest of its arrays file}, "final": {variant: digest of its final state}}``
        (empty if there is none);
        :class:`DamagedFileError` naming the file if it is not one."""
        return self._progress()

    def done_variants(self):
        return self._progress()["done"]

    def mark_done(self, variant, order=None):
        """Record ``variant`` as finished, with its number of rows, the SHA-256 of its rows, of its arrays
        file (the audit's checks) and of its final state if it kept one (``final/VARIANT.npz``, written just
        before), and drop its checkpoint. ``order`` (a list of variant names, default
        :attr:`units`) keeps the done list and the rows in that order whatever order the variants finish in,
        as a serial run writes them (sweeps merge in completion order; --repair recomputes a variant after
        those that follow it)."""
        order = self.units if order is None else order
        _fault("done")
        self._check_lock()
        progress = self._progress()
        if variant not in progress["done"]:
            rows = self.read_metrics()
            own = [r for r in rows if r["variant"] == variant]
            if order is not None:
                serial = serial_order(rows, order)
                if serial != rows:
                    self.rewrite_metrics(serial)
            done = progress["done"] + [variant]
            if order is not None:
                rank = {v: i for i, v in enumerate(order)}
                done = sorted(done, key=lambda v: rank.get(v, len(rank)))      # stable for unknown names
            arrays = {v: d for v, d in progress["arrays"].items() if v != variant}
            if self.arrays_path(variant).exists():
                arrays[variant] = file_sha256(self.arrays_path(variant))
            final = {v: d for v, d in progress["final"].items() if v != variant}
            if self.final_path(variant).exists():
                final[variant] = file_sha256(self.final_path(variant))
            atomic_write_json(self.progress_path, {"done": done, "rows": dict(progress["rows"], **{variant: len(own)}),
                                                   "sha256": dict(progress["sha256"], **{variant: rows_sha256(own)}),
                                                   "arrays": arrays, "final": final}, self._check_lock)
        ckpt = self.checkpoint_path(variant)
        if ckpt.exists():
            ckpt.unlink()

    def _forget(self, variant):
        """Remove every trace of ``variant`` (rows, done mark, checkpoint, arrays): it will be run again."""
        self._check_lock()
        self.truncate_variant(variant, None)
        progress = self._progress()
        if variant in progress["done"]:
            atomic_write_json(self.progress_path, {"done": [v for v in progress["done"] if v != variant]} | {
                key: {v: x for v, x in progress[key].items() if v != variant}
                for key in ("rows", "sha256", "arrays", "final")}, self._check_lock)
        for path in (self.checkpoint_path(variant), self.arrays_path(variant), self.final_path(variant)):
            if path.exists():
                path.unlink()

    def save_checkpoint(self, variant, arrays, meta):
        _fault("checkpoint")
        atomic_savez(self.checkpoint_path(variant), dict(arrays, __meta__=json_to_array(meta)), self._check_lock)

    def load_checkpoint(self, variant):
        """``(arrays, meta)`` of the variant's checkpoint, or None if it has none (a damaged one raises
        :class:`DamagedFileError`)."""
        return load_state(self.checkpoint_path(variant), f"checkpoint of {variant}", self.last_step)

    def save_final(self, variant, arrays, meta):
        """Keep the final state of ``variant`` (in the checkpoints' format; :meth:`mi_ref.loop.Loop.finish`),
        just before :meth:`mark_done` records its SHA-256."""
        _fault("final")
        atomic_savez(self.final_path(variant), dict(arrays, __meta__=json_to_array(meta)), self._check_lock)

    def load_final(self, variant):
        """``(arrays, meta)`` of the final state the finished ``variant`` kept, checked: it must be the file
        whose SHA-256 progress.json recorded when the variant finished, its metadata complete, and its step
        the run's last (:attr:`last_step`, if known). ``FileNotFoundError`` if the variant kept none (the run
        kept no state, or its file was deleted); :class:`DamagedFileError` naming the file otherwise."""
        path = self.final_path(variant)
        progress = self._progress()
        recorded = progress["final"].get(variant)
        if variant not in progress["done"] or recorded is None or not path.exists():
            why = ("it is not finished" if variant not in progress["done"] else
                   "it kept no final state (the run did not keep its trained state)" if recorded is None else
                   f"its final state {path} was deleted")
            raise FileNotFoundError(f"{self.path}: {variant} has no final state to continue from: {why}")
        if file_sha256(path) != recorded:
            raise DamagedFileError(f"final state of {variant} {path} differs from the file {variant} finished with "
                                   "(progress.json recorded its SHA-256)")
        arrays, meta = load_state(path, f"final state of {variant}", self.last_step)
        if self.last_step is not None and meta["step"] != self.last_step:
            raise DamagedFileError(f"final state of {variant} {path} is damaged: its step {meta['step']} is not the "
                                   f"run's last step, {self.last_step}")
        return arrays, meta

    def unusable_checkpoint(self, variant, err):
        """A checkpoint whose metadata passed the audit but whose contents cannot be restored into the run
        (:meth:`mi_ref.loop.Loop.resume` found it): a :class:`RunDirError` naming it, nothing changed; when
        the run is being repaired, the variant is forgotten instead (and reported), so that it starts
        afresh."""
        path = self.checkpoint_path(variant)
        why = f"its checkpoint {path} cannot be restored ({err})"
        if not self.repair:
            raise RunDirError(f"{self.path} cannot be resumed as it is: {variant}: {why}. Nothing was changed. To "
                              f"recompute {variant} from its start, {REPAIR}; or restore the file")
        self._forget(variant)
        if self.report is not None:
            self.report(f"{self.path}: {variant} is recomputed from its start ({why})")

    def save_arrays(self, variant, arrays):
        _fault("arrays")
        atomic_savez(self.arrays_path(variant), arrays, self._check_lock)

    def load_arrays(self, variant):
        path = self.arrays_path(variant)
        return load_npz(path, f"arrays of {variant}") if path.exists() else {}


def serial_order(rows, order):
    """``rows`` grouped by variant in the order of the names ``order`` (unknown names last), each variant's
    rows in their own order."""
    rank = {v: i for i, v in enumerate(order)}
    return sorted(rows, key=lambda r: rank.get(r["variant"], len(rank)))          # stable


def _differences(old, new, prefix=""):
    """'key: old -> new' for every setting that differs between two JSON-like dicts (nested keys joined
    with '.')."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {json.dumps(a)} on disk, {json.dumps(b)} now")
    return out



# ----------------------------------------------------------------------------------------------------
# the summary of a run

SUMMARY_FIELDS = ("bound", "bound_test", "bound_smoothed", "true_mi", "accuracy")


def summarize(path):
    """One record per trained variant of a run: its last evaluation's numbers (``SUMMARY_FIELDS`` it has),
    ``vs_pixels`` = accuracy minus the run's pixel baseline, ``step`` of that evaluation and ``seconds``
    (the variant's wall time). Returns ``{"run": path, "pixels": baseline or None, "variants": [...]}``."""
    rows = RunDir(path).read_metrics()
    pixels = next((r["accuracy"] for r in rows if r["variant"] == "baseline"), None)
    last = {}
    for r in rows:
        if r["variant"] != "baseline" and (r["variant"] not in last or r["step"] >= last[r["variant"]]["step"]):
            last[r["variant"]] = r
    variants = []
    for name, r in last.items():
        rec = {"variant": name, "step": r["step"], "seconds": r.get("seconds")}
        rec.update({k: r[k] for k in SUMMARY_FIELDS if r.get(k) is not None})
        if pixels is not None and r.get("accuracy") is not None:
            rec["vs_pixels"] = r["accuracy"] - pixels
        variants.append(rec)
    return {"run": str(path), "pixels": pixels, "variants": variants}


def write_summary(path):
    """Write ``summary.json`` into the run directory (atomically) and return the summary."""
    summary = summarize(path)
    atomic_write_json(Path(path) / "summary.json", summary)
    return summary


def format_summary(summaries):
    """A plain-text table: one line per variant, mean +- sd over the runs given (their seeds; the sample sd,
    ddof = 1)."""
    by_variant = {}
    for s in summaries:
        for rec in s["variants"]:
            by_variant.setdefault(rec["variant"], []).append(rec)
    keys = [k for k in ("bound", "bound_test", "bound_smoothed", "true_mi", "accuracy", "vs_pixels", "seconds")
            if any(k in rec for recs in by_variant.values() for rec in recs)]
    header = ["variant"] + keys
    lines = []
    for name, recs in by_variant.items():
        cells = [name]
        for k in keys:
            values = np.array([rec[k] for rec in recs if rec.get(k) is not None], dtype=float)
            if not values.size:
                cells.append("-")
            elif k == "seconds":
                cells.append(f"{values.mean():.0f}")
            elif values.size == 1:
                cells.append(f"{values[0]:+.4f}" if k == "vs_pixels" else f"{values[0]:.4f}")
            else:
                cells.append(f"{values.mean():.4f} ± {sample_sd(values):.4f}")
        lines.append(cells)
    widths = [max(len(r[i]) for r in [header] + lines) for i in range(len(header))]
    n = len(summaries)
    title = f"summary of {n} run{'s' if n > 1 else ''} (last evaluation of each variant" + \
            (", mean ± sd over the seeds)" if n > 1 else ")")
    pixels = [s["pixels"] for s in summaries if s["pixels"] is not None]
    if pixels:
        title += f"; pixel baseline {np.mean(pixels):.4f}"
    out = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths))]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in lines]
    return "\n".join(out)

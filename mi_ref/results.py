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

The invariant, per variant V, that a resumable directory keeps:

* every row is a row of one of the run's variants (:attr:`RunDir.units`), and each variant's rows have
  increasing steps, each step once (marking a variant finished also lays the rows out in the experiment's
  order of variants, as a serial run writes them);
* V is in progress.json: metrics.jsonl holds exactly the rows of V that progress.json recorded (their
  number and SHA-256), its arrays file is the one it recorded, and V has no checkpoint; if V kept its final
  state, progress.json recorded that file's SHA-256 too (the file may be deleted to free the space: the run
  then can no longer be continued, and nothing else changes);
* V has a checkpoint at step s (at most the run's last step): its rows with step <= s are exactly those the
  checkpoint recorded (steps and SHA-256; the row of step s among them); rows with step > s are the work of
  an interrupted session and are recomputed on resume, identically;
* V has neither: V has at most one row, written by a session interrupted between V's first evaluation and
  its first checkpoint; it is recomputed.

:meth:`RunDir.audit` checks it before a run is resumed. What an interruption can leave (a torn last line,
rows after the last checkpoint, a leftover temporary file of mi-ref's own writes, a checkpoint of a
finished variant, the final state of a variant not yet finished, the row of a checkpoint's own step, the
first row before the first checkpoint) is
repaired and reported; what only outside damage can cause (a row missing, repeated, edited or of an
unknown variant, a damaged or deleted file) is an error naming the file and the defect, and nothing is
changed, unless the run is resumed with ``repair=True``, which recomputes the damaged variants from their
start. :meth:`RunDir.verify` makes the same checks, changing nothing, before figures and findings read a
run.
"""

import errno
import fcntl
import hashlib
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
from .faults import point as _fault
from .files import DamagedFileError, load_npz, read_json, temporary_target
from .stats import sample_sd

# ----------------------------------------------------------------------------------------------------
# files (written and read by mi_ref.files)

atomic_write_text = files.write_text
atomic_write_json = files.write_json
atomic_savez = files.savez


def rows_sha256(rows):
    """SHA-256 of ``rows`` as metrics.jsonl holds them (one JSON line each, sorted keys): what progress.json
    records of a finished variant, and a checkpoint of each row it covers, so that an edited row is found."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update((json.dumps(row, sort_keys=True) + "\n").encode("utf-8"))
    return digest.hexdigest()


def file_sha256(path):
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def json_to_array(obj):
    """JSON metadata as a 0-d unicode array, storable in an npz without pickle."""
    return np.array(json.dumps(obj, sort_keys=True))


def array_to_json(arr):
    return json.loads(str(arr[()]))


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


class RunDirError(ValueError):
    """A run directory's files disagree (see the module docstring's invariant) in a way only outside damage
    can cause; the message says which file and what to do."""


RUN_FILES = ("config.json", "metrics.jsonl", "progress.json", "summary.json")    # written atomically, at the top
TASKS_DIR = ".tasks"      # a sweep's task directories: OUT/RUN_NAME/.tasks/seed-S/UNIT (see mi_ref.sweep)


class RunDir:
    """One run directory (see the module docstring for its layout and invariant). ``units``: the names of
    what the run writes, in the experiment's order (:attr:`mi_ref.experiments.Experiment.units`), if known:
    the files are then kept in that order, and the audit refuses rows of any other variant. ``last_step``:
    the largest step a checkpoint of the run may hold (its config's ``n_iters``), if known. ``keep_state``:
    whether a variant that finishes keeps its final state in ``final/VARIANT.npz`` (written by
    :meth:`mi_ref.loop.Loop.finish`); without it a finished variant keeps nothing but its rows and arrays."""

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

    def label(self, seed):
        """``"RUN_NAME seed S"`` for progress lines, for OUT/RUN_NAME/seed-S and for a sweep task's
        directory OUT/RUN_NAME/.tasks/seed-S/UNIT alike."""
        parent = self.path.parent
        if parent.parent.name == TASKS_DIR:
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
        return _load_state(self.checkpoint_path(variant), f"checkpoint of {variant}", self.last_step)

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
        arrays, meta = _load_state(path, f"final state of {variant}", self.last_step)
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

    # --- the audit before a resumption

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


def _load_state(path, what, last_step=None):
    """``(arrays, meta)`` of a checkpoint or a final state (the same format: arrays and a JSON ``__meta__``),
    or None if ``path`` does not exist; a damaged one raises :class:`DamagedFileError` naming it."""
    if not path.exists():
        return None
    arrays = load_npz(path, what)
    try:
        meta = array_to_json(arrays.pop("__meta__"))
    except (KeyError, ValueError) as err:
        raise DamagedFileError(f"{what} {path} is damaged: no readable metadata ({err})") from None
    problem = _meta_problem(meta, last_step)
    if problem:
        raise DamagedFileError(f"{what} {path} is damaged: {problem}")
    return arrays, meta


# the keys of a checkpoint's metadata (mi_ref.loop.Loop.checkpoint): the JSON types each must have, and
# whether it is required (the optional ones are absent from the checkpoints of older versions)
CHECKPOINT_META = {"step": (int, True), "seconds": ((int, float), True), "iterators": (dict, True),
                   "streams": (dict, True), "before_eval": (dict, False), "loop": (dict, False),
                   "evaluated": (bool, False), "row_steps": (list, False), "row_sha256": (list, False),
                   "arrays": (bool, False)}
_KIND = {int: "an integer", (int, float): "a number >= 0", dict: "a JSON object", bool: "true or false",
         list: "a JSON array"}


def _meta_problem(meta, last_step=None):
    """What is wrong with a checkpoint's metadata (its keys, their types, the step against ``last_step`` and
    against the rows it recorded), or None."""
    if not isinstance(meta, dict):
        return "its metadata is not a JSON object"
    for key, (kind, required) in CHECKPOINT_META.items():
        if key not in meta:
            if required:
                return f"its metadata lacks the key {key!r}"
            continue
        value = meta[key]
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind) or \
                (kind == (int, float) and not (np.isfinite(value) and value >= 0)):
            return f"its metadata's {key!r} must be {_KIND[kind]}, got {json.dumps(value)[:40]}"
    step, steps, digests = meta["step"], meta.get("row_steps"), meta.get("row_sha256")
    if step < 0:
        return f"its step {step} is negative"
    if last_step is not None and step > last_step:
        return f"its step {step} is beyond the run's last step, {last_step}"
    if steps is not None:
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in steps) or steps != sorted(set(steps)):
            return f"its metadata's 'row_steps' must be increasing integers, got {json.dumps(steps)[:60]}"
        if steps and steps[-1] > step:
            return f"it recorded a row of step {steps[-1]}, after its own step {step}"
        if meta.get("evaluated", True) and step not in steps:
            return f"its step {step} is not among the steps of the rows it recorded {steps}"
        if digests is not None and (len(digests) != len(steps) or not all(isinstance(d, str) for d in digests)):
            return "its metadata's 'row_sha256' must hold one SHA-256 per recorded row"
    return None


REPAIR = ("resume with --repair (`mi-ref run ... --resume --repair`, or the same `mi-ref sweep` command with "
          "--repair)")


def _rows(n):
    return f"{n} row" + ("" if n == 1 else "s")


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


def expand_run_dirs(paths):
    """Run directories from ``paths``: a run directory (it holds config.json) stands for itself; any other
    directory for the run directories below it: ``DIR/seed-S`` (a run's folder, e.g. a sweep's) and
    ``DIR/RUN_NAME/seed-S`` (an --out directory), seeds in numeric order. A path that is neither is an
    error."""
    out = []
    for given in paths:
        path = Path(given)
        if (path / "config.json").exists():
            out.append(path)
            continue
        if not path.is_dir():
            raise FileNotFoundError(f"{path} does not exist" if not path.exists() else
                                    f"{path} is not a run directory (it is a file)")
        seed_of = lambda p: (str(p.parent), int(p.name.split("-", 1)[1]) if p.name.split("-", 1)[1].isdigit() else -1)  # noqa: E731
        found = [c.parent for pattern in ("seed-*/config.json", "*/seed-*/config.json") for c in path.glob(pattern)
                 if not any(part.startswith(".") for part in c.relative_to(path).parts)]
        if not found:
            raise FileNotFoundError(f"{path} holds no run directory (no config.json in it, nor in seed-*/ or "
                                    "*/seed-*/ below it)")
        out += sorted(found, key=seed_of)
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

"""Run directories: what a run writes, written atomically, and read back for plots and resumption.

One directory per (experiment, preset, seed)::

    RUN_DIR/
      config.json          the experiment, preset, seed, the complete config, package versions, git revision
      metrics.jsonl        one JSON object per evaluation (and one "baseline" row), appended in order
      progress.json        the variants finished so far
      arrays/VARIANT.npz   per-evaluation arrays (e.g. singular values), rewritten at every evaluation
      checkpoints/VARIANT.npz   the state of the variant in progress (params, optimizer state, RNG and
                                data-iterator positions); deleted once the variant is finished

Every file is written to a temporary file in the same directory and moved into place with ``os.replace``,
so an interruption leaves either the old or the new version, never a torn one. Arrays are saved with
``numpy.savez`` and read with ``allow_pickle=False``; structured metadata travels as JSON text.
"""

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

from . import atomic


# ----------------------------------------------------------------------------------------------------
# files (written by mi_ref.atomic)

atomic_write_text = atomic.write_text
atomic_write_json = atomic.write_json
atomic_savez = atomic.savez


def load_npz(path):
    """Read an .npz written by mi-ref into a dict of arrays (never unpickles)."""
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


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


class RunDir:
    """One run directory (see the module docstring for its layout)."""

    def __init__(self, path):
        self.path = Path(path)

    config_path = property(lambda self: self.path / "config.json")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    progress_path = property(lambda self: self.path / "progress.json")

    def checkpoint_path(self, variant):
        return self.path / "checkpoints" / f"{variant}.npz"

    def arrays_path(self, variant):
        return self.path / "arrays" / f"{variant}.npz"

    # --- creation and resumption

    def prepare(self, header, resume):
        """Create the run directory for ``header`` (experiment, preset, seed, config), or check that an
        existing one holds the same and may be resumed.

        * new directory: writes config.json (header + environment);
        * existing run, ``resume=False``: ``RunExistsError`` (nothing is touched);
        * existing run with a different header: ``RunExistsError`` (with or without resume).
        """
        if self.config_path.exists():
            try:
                old = json.loads(self.config_path.read_text())
            except (OSError, ValueError) as err:
                raise RunExistsError(f"{self.config_path} exists but cannot be read ({err}); choose another "
                                     "--out or remove it") from None
            old_header = {k: old.get(k) for k in header}
            if old_header != json.loads(json.dumps(header)):
                diff = sorted(k for k in header if old_header.get(k) != json.loads(json.dumps(header[k])))
                raise RunExistsError(f"{self.path} holds a run with a different config (differs in {diff}); "
                                     "choose another --out directory (nothing was overwritten)")
            if not resume:
                raise RunExistsError(f"{self.path} already holds this run; pass --resume to continue it, or "
                                     "choose another --out directory (nothing was overwritten)")
            return False
        if self.path.exists() and any(self.path.iterdir()):
            raise RunExistsError(f"{self.path} exists and is not an mi-ref run directory (no config.json); "
                                 "choose another --out directory")
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.config_path, dict(header, environment=environment()))
        return True

    def read_config(self):
        if not self.config_path.exists():
            raise FileNotFoundError(f"{self.path} is not an mi-ref run directory: no config.json")
        return json.loads(self.config_path.read_text())

    # --- metrics

    def read_metrics(self):
        """All complete rows of metrics.jsonl (a torn last line, if any, is ignored)."""
        if not self.metrics_path.exists():
            return []
        rows = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                break
        return rows

    def append_metrics(self, row):
        """Append one row (a JSON object on one line, written with a single write and fsync)."""
        line = json.dumps(row, sort_keys=True, allow_nan=True) + "\n"
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def rewrite_metrics(self, rows):
        atomic_write_text(self.metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))

    def truncate_variant(self, variant, last_step):
        """Drop rows of ``variant`` after ``last_step`` (or all of them if None): makes metrics.jsonl agree
        with the checkpoint a resumed run starts from."""
        rows = [r for r in self.read_metrics()
                if r.get("variant") != variant or (last_step is not None and r.get("step", -1) <= last_step)]
        self.rewrite_metrics(rows)
        return [r for r in rows if r.get("variant") == variant]

    # --- progress, checkpoints, arrays

    def done_variants(self):
        if not self.progress_path.exists():
            return []
        return json.loads(self.progress_path.read_text()).get("done", [])

    def mark_done(self, variant):
        done = self.done_variants()
        if variant not in done:
            atomic_write_json(self.progress_path, {"done": done + [variant]})
        ckpt = self.checkpoint_path(variant)
        if ckpt.exists():
            ckpt.unlink()

    def save_checkpoint(self, variant, arrays, meta):
        atomic_savez(self.checkpoint_path(variant), dict(arrays, __meta__=json_to_array(meta)))

    def load_checkpoint(self, variant):
        """``(arrays, meta)`` of the variant's checkpoint, or None if it has none."""
        path = self.checkpoint_path(variant)
        if not path.exists():
            return None
        try:
            arrays = load_npz(path)
            meta = array_to_json(arrays.pop("__meta__"))
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"checkpoint {path} is unreadable ({err}); delete it to restart that variant "
                             "from scratch") from None
        return arrays, meta

    def save_arrays(self, variant, arrays):
        atomic_savez(self.arrays_path(variant), arrays)

    def load_arrays(self, variant):
        path = self.arrays_path(variant)
        return load_npz(path) if path.exists() else {}


def load_run(path):
    """``{"path", "config", "metrics", "arrays": {variant: {...}}}`` of a finished or partial run."""
    run = RunDir(path)
    config = run.read_config()
    arrays = {}
    if (run.path / "arrays").is_dir():
        for f in sorted((run.path / "arrays").glob("*.npz")):
            arrays[f.stem] = load_npz(f)
    return {"path": str(run.path), "config": config, "metrics": run.read_metrics(), "arrays": arrays}

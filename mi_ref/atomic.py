"""Atomic file writes, written once: every file mi-ref writes goes through :func:`write_bytes`.

The data go to a temporary file in the target's directory, are flushed and fsynced, get the permissions a
plain ``open()`` would give (0666 minus the process's umask: ``mkstemp`` alone would leave them 0600, which
colleagues and CI on shared storage cannot read) and are moved into place with ``os.replace``. Readers see
the old file or the complete new one, never a partial file; on any error the temporary file is removed.
"""

import io
import json
import os
import tempfile
from pathlib import Path


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path, data):
    """Write ``data`` (bytes) to ``path`` atomically (creating the parent directory). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path, obj):
    """Write ``obj`` as indented JSON (sorted keys) to ``path`` atomically."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def savez(path, arrays):
    """Save a dict of arrays to ``path`` (.npz) atomically; every value must be a non-object array (so that
    reading it back never needs pickle)."""
    import numpy as np
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    for k, v in arrays.items():
        if v.dtype.hasobject:
            raise ValueError(f"array {k!r} has dtype object, which would need pickle; store numbers or text")
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return write_bytes(path, buffer.getvalue())

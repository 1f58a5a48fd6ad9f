"""Files, written once: every file mi-ref writes goes through :func:`replacing` (:func:`write_bytes` for bytes in
memory), and every ``.npz`` and JSON file it reads through :func:`load_npz` and :func:`read_json`.

Writes.

The data go to a temporary file in the target's directory, are flushed and fsynced, get the permissions a
plain ``open()`` would give (0666 minus the process's umask: ``mkstemp`` alone would leave them 0600, which
colleagues and CI on shared storage cannot read) and are moved into place with ``os.replace``. Readers see
the old file or the complete new one, never a partial file; on any error the temporary file is removed.

Reads. A file can be damaged (empty, truncated, a CRC error) or hostile (not what its name says). The
readers raise one :class:`DamagedFileError` naming the file and the defect, never unpickle anything, and
never suggest to (numpy's own message for a non-npz file does).
"""

import contextlib
import io
import json
import os
import re
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from . import faults


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# the name mkstemp gives the temporary file of write_bytes: "." + the target's name + "." + 8 random characters
# of tempfile's alphabet + ".tmp"
_TEMPORARY = re.compile(r"\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp")


def temporary_target(name):
    """The name of the file that a temporary file named ``name`` of :func:`write_bytes` was to become, or None
    if ``name`` is not named as one."""
    match = _TEMPORARY.fullmatch(name)
    return match["target"] if match else None


@contextlib.contextmanager
def replacing(path, check=None):
    """A binary file, open for writing, whose contents replace ``path`` atomically when the ``with`` block
    ends without an error (creating the parent directory); on any error the temporary file is removed and
    ``path`` is left as it was. For data streamed to disk; :func:`write_bytes` writes bytes in one go.
    ``check()``, if given, runs just before the rename: an exception there leaves the old file in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        faults.point("replace")
        if check is not None:
            check()
        os.replace(tmp, path)
    except OSError as err:               # name the file being written, not the temporary one (or none: a full disk)
        _remove(tmp)
        if err.filename is None or err.filename == tmp:
            raise OSError(err.errno, err.strerror, str(path)) from None
        raise
    except BaseException:
        _remove(tmp)
        raise


def _remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def write_bytes(path, data, check=None):
    """Write ``data`` (bytes) to ``path`` atomically (creating the parent directory). Returns the path.
    ``check()``, if given, runs just before the rename: an exception there leaves the old file in place."""
    with replacing(path, check) as f:
        f.write(data)
    return Path(path)


def copy(source, path, check=None):
    """Give ``path`` the contents of the file ``source`` atomically (as :func:`write_bytes` would): a hard link
    of ``source`` where the filesystem allows one (mi-ref never changes a file of this kind in place, every
    write of it replaces it, so the two names never diverge by a write), else a copy streamed to a temporary
    file. Returns the path. ``check()``: see :func:`write_bytes`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.unlink(tmp)
        os.link(source, tmp)
    except OSError:
        _remove(tmp)
        with replacing(path, check) as f, open(source, "rb") as src:
            for block in iter(lambda: src.read(1 << 20), b""):
                f.write(block)
        return path
    try:
        faults.point("replace")
        if check is not None:
            check()
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    return path


def write_text(path, text, check=None):
    """Write ``text`` (UTF-8) to ``path`` atomically (``check``: see :func:`write_bytes`)."""
    return write_bytes(path, text.encode("utf-8"), check)


def write_json(path, obj, check=None):
    """Write ``obj`` as indented JSON (sorted keys) to ``path`` atomically (``check``: see :func:`write_bytes`)."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", check)


def savez(path, arrays, check=None):
    """Save a dict of arrays to ``path`` (.npz) atomically; every value must be a non-object array (so that
    reading it back never needs pickle). ``check``: see :func:`write_bytes`."""
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    for k, v in arrays.items():
        if v.dtype.hasobject:
            raise ValueError(f"array {k!r} has dtype object, which would need pickle; store numbers or text")
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return write_bytes(path, buffer.getvalue(), check)


class DamagedFileError(ValueError):
    """A file mi-ref reads is damaged or is not what it should be (the message names file and defect)."""


def load_npz(path, what="array file"):
    """Read an .npz into a dict of arrays, never unpickling. A damaged file (empty, truncated, a CRC error,
    not a zip, a member that is no plain array) raises :class:`DamagedFileError` naming the file."""
    path = Path(path)
    member = None
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {}
            for member in f.files:
                arrays[member] = f[member]
            return arrays
    except FileNotFoundError:
        raise
    except ValueError as err:
        if "pickle" in str(err) and member is not None:   # numpy's own text would invite unpickling it
            raise DamagedFileError(f"{what} {path} holds {member!r}, an array of Python objects that only pickle can "
                                   "read; mi-ref never unpickles a file: save plain numeric or text arrays") from None
        if "pickle" in str(err):
            reason = "it is not an .npz archive (it does not start like one): another kind of file, or damaged"
        else:
            reason = str(err)
        raise DamagedFileError(f"{what} {path} is damaged: {reason}") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as err:
        raise DamagedFileError(f"{what} {path} is damaged or truncated ({type(err).__name__}: {err})") from None


def read_json(path, kind, what):
    """The JSON value in ``path``, which must be of type ``kind`` (dict or list); :class:`DamagedFileError`
    naming the file otherwise."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise DamagedFileError(f"{what} {path} is not valid JSON ({err})") from None
    if not isinstance(value, kind):
        raise DamagedFileError(f"{what} {path} holds a JSON {type(value).__name__}, expected a JSON "
                               f"{'object' if kind is dict else 'array'}")
    return value



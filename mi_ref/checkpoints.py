"""The state files of a run directory and the digests it pins.

A checkpoint (``checkpoints/VARIANT.npz``, the state of a variant in progress) and a final state
(``final/VARIANT.npz``, the state a finished variant keeps) share one format: the state's arrays (``numpy.savez``,
read with ``allow_pickle=False``) and a JSON ``__meta__`` stored as a 0-d unicode array (:func:`json_to_array`),
whose keys :data:`CHECKPOINT_META` lists and :func:`meta_problem` checks. :func:`load_state` reads either kind.

The SHA-256 digests that progress.json and the checkpoints record, so that a row or a file edited by hand is
found: :func:`rows_sha256` of metric rows as metrics.jsonl holds them, :func:`file_sha256` of a file's bytes.
(:mod:`mi_ref.results` writes these files; :mod:`mi_ref.audit` checks them.)
"""

import hashlib
import json

import numpy as np

from .files import DamagedFileError, load_npz


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


def load_state(path, what, last_step=None):
    """``(arrays, meta)`` of a checkpoint or a final state (the same format: arrays and a JSON ``__meta__``),
    or None if ``path`` does not exist; a damaged one raises :class:`DamagedFileError` naming it."""
    if not path.exists():
        return None
    arrays = load_npz(path, what)
    try:
        meta = array_to_json(arrays.pop("__meta__"))
    except (KeyError, ValueError) as err:
        raise DamagedFileError(f"{what} {path} is damaged: no readable metadata ({err})") from None
    problem = meta_problem(meta, last_step)
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


def meta_problem(meta, last_step=None):
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

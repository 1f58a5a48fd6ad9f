"""The files of a golden-vector directory: byte-reproducible ``.npz`` files, ``manifest.json`` and the
tolerances :mod:`mi_ref.verify` applies (recorded in the manifest)."""

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as onp

from ..files import DamagedFileError, load_npz

from .conventions import FORMAT, FORMAT_VERSION, MANIFEST

ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)     # the earliest date a zip header can hold; fixed for byte identity

TOLERANCES = {
    "float64": {"rtol": 1e-10, "atol": 1e-12,
                "rule": "pass iff |a - e| <= atol * max(1, max|e|) + rtol * |e| for every entry",
                "why": "correct float64 code differs here by rounding only, < ~1e-13 relative (PyTorch float64: "
                       "at most 1/300 of the tolerance)"},
    "float32": {"rtol": 1e-4, "atol": 1e-5,
                "rule": "pass iff |a - e| <= atol * max(1, max|e|) + rtol * |e| for every entry",
                "why": "a correct float32 port errs here by <= ~1.4e-4 relative on cancellation-produced entries, "
                       "~2e-5 elsewhere (PyTorch float32: at most 1/12 of the tolerance)"},
}

def npz_bytes(arrays):
    """The bytes of an .npz holding ``arrays`` (in order), byte-identical for identical arrays.

    ``numpy.savez`` stamps each zip member with the current time, so two saves of the same arrays
    differ; here every member gets :data:`ZIP_DATE_TIME`, no compression and fixed attributes.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, value in arrays.items():
            member = io.BytesIO()
            value = onp.asarray(value)          # (ascontiguousarray would turn a 0-d array into shape (1,))
            onp.lib.format.write_array(member, value if value.flags.c_contiguous else value.copy(order="C"),
                                       allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_DATE_TIME)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


def manifest_integrity(components):
    """The SHA-256 that pins a manifest's ``components``: over their names in order and, for each, its file,
    the file's SHA-256 and every array's name, shape and dtype. A manifest trimmed to fewer components (which
    would let ``--require-all`` pass on them) or with an edited shape no longer matches it."""
    pinned = [[name, entry.get("file"), entry.get("sha256"),
               [[a.get("name"), a.get("shape"), a.get("dtype")] for a in entry.get("arrays", [])]]
              for name, entry in components.items()]
    return hashlib.sha256(json.dumps(pinned, sort_keys=True).encode("utf-8")).hexdigest()


def load_manifest(vectors_dir):
    """The manifest of a golden-vector directory (``FileNotFoundError`` / ``ValueError`` if it is none), its
    components checked against the SHA-256 it was written with (:func:`manifest_integrity`)."""
    folder = Path(vectors_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"golden-vector directory {folder} does not exist; create it with "
                                f"`mi-ref vectors --out {folder}`")
    path = folder / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{folder} holds no {MANIFEST}: not a golden-vector directory (create one with "
                                f"`mi-ref vectors --out DIR`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise DamagedFileError(f"{path} is not valid JSON ({err}); regenerate it with `mi-ref vectors`") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or \
            not isinstance(manifest.get("components"), dict):
        raise ValueError(f"{path} is not an mi-ref golden-vector manifest (format {FORMAT!r} expected)")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path} has format version {manifest.get('format_version')!r}; this mi-ref reads "
                         f"version {FORMAT_VERSION}: regenerate with `mi-ref vectors`")
    pinned = (manifest.get("integrity") or {}).get("sha256") if isinstance(manifest.get("integrity"), dict) else None
    if pinned is None:
        raise DamagedFileError(f"{path} has no integrity pin (\"integrity\": {{\"sha256\": ...}}): it was edited; "
                               "regenerate the directory with `mi-ref vectors`")
    if not all(isinstance(e, dict) and isinstance(e.get("arrays", []), list) for e in manifest["components"].values()) \
            or manifest_integrity(manifest["components"]) != pinned:
        raise DamagedFileError(f"{path} was edited or damaged: its list of components, their files or the shapes of "
                               f"their arrays differ from those it was written with (its integrity SHA-256 {pinned} "
                               "no longer matches); regenerate the directory with `mi-ref vectors` (a check against "
                               "it would not mean anything)")
    return manifest


def load_component(vectors_dir, name, manifest=None):
    """``{array name: array}`` of one component file (read with ``allow_pickle=False``)."""
    manifest = load_manifest(vectors_dir) if manifest is None else manifest
    comps = manifest["components"]
    if name not in comps:
        raise ValueError(f"unknown component {name!r} in {vectors_dir}; it holds {list(comps)}")
    path = Path(vectors_dir) / comps[name]["file"]
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing although {MANIFEST} lists it; regenerate the directory")
    pinned = comps[name].get("sha256")
    if pinned is not None:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != pinned:
            raise DamagedFileError(f"golden file {path} was changed or damaged: its SHA-256 is {digest}, "
                                   f"{MANIFEST} recorded {pinned}; regenerate the directory with `mi-ref vectors` "
                                   "(the comparison would not mean anything)")
    arrays = load_npz(path, "golden file")
    listed = [(a["name"], list(a["shape"]), a["dtype"]) for a in comps[name]["arrays"]]
    held = [(k, list(v.shape), str(v.dtype)) for k, v in arrays.items()]
    if held != listed:
        wrong = [f"{k} {tuple(s)} {d}" for k, s, d in held if (k, s, d) not in listed][:3] or \
            [f"{k} missing" for k, _, _ in listed if k not in arrays][:3]
        raise DamagedFileError(f"golden file {path} does not hold the arrays {MANIFEST} lists for it "
                               f"({', '.join(wrong)}); regenerate the directory with `mi-ref vectors`")
    return arrays



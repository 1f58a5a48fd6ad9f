"""Verified download of the four MNIST IDX files (``mi-ref download mnist --to DIR``).

For every file: if ``DIR`` already holds it (``NAME`` or ``NAME.gz``, as :func:`mi_ref.data.load_mnist`
finds it) and the SHA-256 of its uncompressed content equals the pin, it is left alone (not fetched,
not touched). Otherwise ``BASE + NAME + ".gz"`` is fetched from each mirror in turn until one delivers
the complete body (checked against Content-Length), a valid gzip stream and content whose SHA-256
equals the pin; that payload is written atomically (temporary file in ``DIR`` + ``os.replace``). A
file that fails on every mirror raises :class:`DownloadError` and leaves nothing behind; a file
that was valid is never deleted or rewritten. Only the standard library (``urllib``) is used.
"""

import gzip
import hashlib
import http.client
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

from . import __version__
from .files import write_bytes
from .data import MNIST_FILES, find_idx_file, read_file_bytes

# SHA-256 of the UNCOMPRESSED contents (gzip wrappers differ between mirrors; the IDX bytes do not).
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
assert set(MNIST_SHA256) == set(MNIST_FILES.values())

# Public mirrors of the original files (``BASE + NAME + ".gz"``), tried in order.
DEFAULT_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
DEFAULT_TIMEOUT = 60.0       # per network operation (connect, one read)
DEFAULT_DEADLINE = 900.0     # for a whole file, however the server trickles
DEFAULT_MIN_RATE = 10_000    # bytes per second, averaged, checked after the first MIN_RATE_GRACE seconds
MIN_RATE_GRACE = 30.0
_CHUNK = 1 << 16


class DownloadError(ValueError):
    """No mirror delivered a complete file whose uncompressed content matches its SHA-256 pin."""


def content_sha256(path):
    """Hex SHA-256 of the uncompressed content of ``path`` (gunzipped when the name ends in ``.gz``)."""
    return hashlib.sha256(read_file_bytes(path)).hexdigest()


def _check_mirrors(mirrors):
    mirrors = [str(m) for m in mirrors]
    if not mirrors:
        raise ValueError("no mirror given: pass at least one base URL, e.g. "
                         f"--mirror {DEFAULT_MIRRORS[0]}")
    for mirror in mirrors:
        parts = urllib.parse.urlsplit(mirror)
        if parts.scheme not in ("http", "https", "file") or (parts.scheme != "file" and not parts.netloc):
            raise ValueError(f"mirror {mirror!r} is not an http(s):// or file:// base URL; expected "
                             f"something like {DEFAULT_MIRRORS[0]}")
    return mirrors


def _check_pins(pins):
    pins = dict(pins)
    for name, digest in pins.items():
        if not isinstance(digest, str) or len(digest) != 64 or set(digest.lower()) - set("0123456789abcdef"):
            raise ValueError(f"pin for {name!r} must be a 64-digit hex SHA-256, got {digest!r}")
    return {name: digest.lower() for name, digest in pins.items()}


def file_url(mirror, name):
    """The URL of ``name.gz`` on ``mirror``: ``mirror`` with one trailing slash, then ``name.gz``."""
    return mirror.rstrip("/") + "/" + name + ".gz"


def fetch(url, timeout=DEFAULT_TIMEOUT, deadline=DEFAULT_DEADLINE, min_rate=DEFAULT_MIN_RATE, clock=time.monotonic):
    """The complete body of ``url``; a body shorter or longer than its Content-Length raises ``OSError``.

    Three limits, each an ``OSError``: ``timeout`` seconds for any single network operation, ``deadline``
    seconds for the whole transfer, and an average rate of at least ``min_rate`` bytes per second once
    :data:`MIN_RATE_GRACE` seconds have passed (a server that trickles a byte at a time never trips the
    per-operation timeout, but trips these). Reads return after each chunk the socket delivers, so the
    limits are checked as the bytes arrive.
    """
    start = clock()
    request = urllib.request.Request(url, headers={"User-Agent": f"mi-ref/{__version__}"})
    with urllib.request.urlopen(request, timeout=min(timeout, deadline)) as response:
        declared = response.headers.get("Content-Length")
        chunks = []
        received = 0
        while True:
            chunk = response.read1(_CHUNK)
            elapsed = clock() - start
            if elapsed > deadline:
                raise OSError(f"transfer too slow: {received + len(chunk)} bytes in {elapsed:.0f} s, past the "
                              f"deadline of {deadline:g} s for one file")
            if elapsed > MIN_RATE_GRACE and (received + len(chunk)) / elapsed < min_rate:
                raise OSError(f"transfer too slow: {(received + len(chunk)) / elapsed:.0f} bytes/s on average "
                              f"after {elapsed:.0f} s, below the minimum of {min_rate:g} bytes/s")
            if not chunk:
                break
            chunks.append(chunk)
            received += len(chunk)
    if declared is not None and received != int(declared):
        raise OSError(f"transfer interrupted: received {received} of {int(declared)} bytes")
    return b"".join(chunks)


def _existing_status(path, pin):
    """(is_valid, reason) for a file already in the target directory."""
    try:
        digest = content_sha256(path)
    except (OSError, ValueError) as err:
        return False, f"unreadable: {err}"
    if digest != pin:
        return False, f"SHA-256 of its content is {digest}, expected {pin}"
    return True, "ok"


def download_mnist(dest_dir, mirrors=DEFAULT_MIRRORS, *, pins=None, timeout=DEFAULT_TIMEOUT,
                   deadline=DEFAULT_DEADLINE, min_rate=DEFAULT_MIN_RATE, log=None):
    """Make ``dest_dir`` hold verified MNIST IDX files; returns ``{name: path}`` of the files in place.

    ``mirrors``: base URLs tried in order for each file (``BASE + NAME + ".gz"``). ``pins``:
    ``{name: sha256 of the uncompressed content}``, by default :data:`MNIST_SHA256` (tests pass pins of
    their own small files). ``timeout``, ``deadline``, ``min_rate``: the limits of :func:`fetch`.
    ``log``: optional callable receiving one line per file. See the module
    docstring for the rules (skip valid files, atomic writes, nothing left behind on failure).

    A present file whose content does not match its pin is replaced, in the same form (raw or
    ``.gz``), once a verified copy has been downloaded. Raises :class:`DownloadError` (a ``ValueError``)
    naming every mirror's failure when a file cannot be obtained; files completed before stay in place.
    """
    mirrors = _check_mirrors(mirrors)
    pins = _check_pins(MNIST_SHA256 if pins is None else pins)
    for value, what in ((timeout, "timeout (seconds)"), (deadline, "deadline (seconds)"),
                        (min_rate, "min_rate (bytes per second)")):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{what} must be a number > 0, got {value!r}")
    log = log or (lambda line: None)
    dest = Path(dest_dir)
    if dest.exists() and not dest.is_dir():
        raise ValueError(f"download target {dest} exists and is not a directory; pass a directory")
    dest.mkdir(parents=True, exist_ok=True)

    result = {}
    for name, pin in pins.items():
        existing = find_idx_file(dest, name)
        if existing is not None:
            valid, reason = _existing_status(existing, pin)
            if valid:
                log(f"{existing.name}: present, SHA-256 ok, skipped")
                result[name] = existing
                continue
            log(f"{existing.name}: present but invalid ({reason}); fetching a verified copy to replace it")
        target = existing if existing is not None else dest / f"{name}.gz"
        failures = []
        for mirror in mirrors:
            url = file_url(mirror, name)
            try:
                payload = fetch(url, timeout, deadline, min_rate)
            except (OSError, http.client.HTTPException, ValueError) as err:
                failures.append(f"{url}: {err}")
                continue
            try:
                content = gzip.decompress(payload)
            except (OSError, EOFError, zlib.error) as err:
                failures.append(f"{url}: not a valid gzip file ({err})")
                continue
            digest = hashlib.sha256(content).hexdigest()
            if digest != pin:
                failures.append(f"{url}: checksum mismatch, SHA-256 of the uncompressed content is {digest}, "
                                f"expected {pin}")
                continue
            write_bytes(target, payload if target.suffix == ".gz" else content)
            log(f"{target.name}: downloaded from {url} ({len(payload)} bytes), SHA-256 ok")
            result[name] = target
            break
        else:
            raise DownloadError(f"could not obtain a verified {name}; nothing was written for it. Tried: "
                                + "; ".join(failures)
                                + ". Retry later, pass other mirrors with --mirror URL, or place the file in "
                                + f"{dest} yourself")
    return result

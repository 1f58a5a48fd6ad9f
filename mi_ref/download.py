"""Verified download of the four MNIST IDX files (``mi-ref download mnist --to DIR``).

For every file: if ``DIR`` already holds it (``NAME`` or ``NAME.gz``, as :func:`mi_ref.datasets.load_mnist`
finds it) and the SHA-256 of its uncompressed content equals the pin, it is left alone (not fetched,
not touched). Otherwise ``BASE + NAME + ".gz"`` is fetched from each mirror in turn until one delivers
the complete body (checked against Content-Length), a valid gzip stream and content whose SHA-256
equals the pin; that payload is written atomically (temporary file in ``DIR`` + ``os.replace``). A
file that fails on every mirror raises :class:`DownloadError` and leaves nothing behind; a file
that was valid is never deleted or rewritten. Only the standard library (``urllib``) is used.

Memory stays small whatever a server sends: the body is streamed to an anonymous temporary file, never
held in memory, and stops past the most a gzipped file of the expected size can be (:data:`MNIST_SIZES`
plus :func:`max_compressed`'s margin); it is then decompressed in chunks, to hash it, stopping as soon as
the content exceeds the expected size (a gzip bomb fails within that size).
"""

import gzip
import hashlib
import http.client
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

from . import __version__
from .datasets import MNIST_FILES
from .files import replacing
from .idx import find_idx_file, read_file_bytes

# SHA-256 of the UNCOMPRESSED contents (gzip wrappers differ between mirrors; the IDX bytes do not).
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
assert set(MNIST_SHA256) == set(MNIST_FILES.values())

# Sizes of the UNCOMPRESSED files in bytes: the IDX header (8 bytes + 4 per dimension beyond the first) and
# one uint8 per label or pixel. No download may decompress to more.
MNIST_SIZES = {
    "train-images-idx3-ubyte": 16 + 60000 * 28 * 28,
    "train-labels-idx1-ubyte": 8 + 60000,
    "t10k-images-idx3-ubyte": 16 + 10000 * 28 * 28,
    "t10k-labels-idx1-ubyte": 8 + 10000,
}
assert set(MNIST_SIZES) == set(MNIST_SHA256)

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


def max_compressed(size):
    """The most bytes a gzip file of content of ``size`` bytes can take: deflate's stored blocks add 5 bytes
    per 64 KiB of incompressible data and gzip a header and trailer of a few dozen, so 1% plus 64 KiB is
    far above any real file and still bounds what a server can make mi-ref receive."""
    return size + size // 100 + (1 << 16)


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


def fetch(url, timeout=DEFAULT_TIMEOUT, deadline=DEFAULT_DEADLINE, min_rate=DEFAULT_MIN_RATE, clock=time.monotonic,
          out=None, max_bytes=None):
    """The complete body of ``url``, written to the binary file ``out`` (then the number of bytes is
    returned) or, without ``out``, returned as bytes; a body shorter or longer than its Content-Length
    raises ``OSError``.

    Four limits, each an ``OSError``: ``max_bytes`` for the body (a Content-Length above it fails before the
    body is read, and a body without one stops past it), ``timeout`` seconds for any single network
    operation, ``deadline`` seconds for the whole transfer, and an average rate of at least ``min_rate``
    bytes per second once :data:`MIN_RATE_GRACE` seconds have passed (a server that trickles a byte at a
    time never trips the per-operation timeout, but trips these). Reads return after each chunk the socket
    delivers, so the limits are checked as the bytes arrive.
    """
    start = clock()
    request = urllib.request.Request(url, headers={"User-Agent": f"mi-ref/{__version__}"})
    with urllib.request.urlopen(request, timeout=min(timeout, deadline)) as response:
        declared = response.headers.get("Content-Length")
        if declared is not None and max_bytes is not None and int(declared) > max_bytes:
            raise OSError(f"the server announces {int(declared)} bytes, more than the {max_bytes} a gzipped file of "
                          "the expected size can be")
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
            received += len(chunk)
            if max_bytes is not None and received > max_bytes:
                raise OSError(f"the server sent more than {max_bytes} bytes, more than a gzipped file of the expected "
                              "size can be; stopped there")
            if out is None:
                chunks.append(chunk)
            else:
                out.write(chunk)
    if declared is not None and received != int(declared):
        raise OSError(f"transfer interrupted: received {received} of {int(declared)} bytes")
    return b"".join(chunks) if out is None else received


def _gunzipped(compressed, max_size):
    """``(sha256 hex, size)`` of the content of the gzip file ``compressed`` (a binary file, read from its
    start in chunks); ``ValueError`` if it is no valid gzip file or its content exceeds ``max_size`` bytes
    (decompression stops there)."""
    compressed.seek(0)
    digest, size = hashlib.sha256(), 0
    try:
        with gzip.GzipFile(fileobj=compressed, mode="rb") as f:
            for block in iter(lambda: f.read(_CHUNK), b""):
                size += len(block)
                if size > max_size:
                    raise ValueError(f"it decompresses to more than {max_size} bytes, the size of the file; not the "
                                     "expected file")
                digest.update(block)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"not a valid gzip file ({err})") from None
    return digest.hexdigest(), size


def _existing_status(path, pin, size):
    """(is_valid, reason) for a file already in the target directory, read in chunks (its content may
    have at most ``size`` bytes)."""
    try:
        with open(path, "rb") as f:
            if path.suffix == ".gz":
                digest, _ = _gunzipped(f, size)
            elif path.stat().st_size > size:
                raise ValueError(f"it has {path.stat().st_size} bytes, more than the {size} of the file")
            else:
                digest = hashlib.sha256(f.read()).hexdigest()
    except (OSError, ValueError) as err:
        return False, f"unreadable: {err}"
    if digest != pin:
        return False, f"SHA-256 of its content is {digest}, expected {pin}"
    return True, "ok"


def download_mnist(dest_dir, mirrors=DEFAULT_MIRRORS, *, pins=None, sizes=None, timeout=DEFAULT_TIMEOUT,
                   deadline=DEFAULT_DEADLINE, min_rate=DEFAULT_MIN_RATE, log=None):
    """Make ``dest_dir`` hold verified MNIST IDX files; returns ``{name: path}`` of the files in place.

    ``mirrors``: base URLs tried in order for each file (``BASE + NAME + ".gz"``). ``pins``:
    ``{name: sha256 of the uncompressed content}``, by default :data:`MNIST_SHA256` (tests pass pins of
    their own small files). ``sizes``: ``{name: the most bytes its content may have}``, by default
    :data:`MNIST_SIZES` (every pinned name needs one); the download of a file stops past
    :func:`max_compressed` of it, its decompression past it. ``timeout``, ``deadline``, ``min_rate``: the
    limits of :func:`fetch`.
    ``log``: optional callable receiving one line per file. See the module
    docstring for the rules (skip valid files, atomic writes, nothing left behind on failure).

    A present file whose content does not match its pin is replaced, in the same form (raw or
    ``.gz``), once a verified copy has been downloaded. Raises :class:`DownloadError` (a ``ValueError``)
    naming every mirror's failure when a file cannot be obtained; files completed before stay in place.
    """
    mirrors = _check_mirrors(mirrors)
    pins = _check_pins(MNIST_SHA256 if pins is None else pins)
    sizes = dict(MNIST_SIZES if sizes is None else sizes)
    for name in pins:
        if isinstance(sizes.get(name), bool) or not isinstance(sizes.get(name), int) or sizes[name] < 1:
            raise ValueError(f"no expected size for {name!r} (the most bytes its content may have): pass sizes="
                             f"{{{name!r}: BYTES}}; got {sizes.get(name)!r}")
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
            valid, reason = _existing_status(existing, pin, sizes[name])
            if valid:
                log(f"{existing.name}: present, SHA-256 ok, skipped")
                result[name] = existing
                continue
            log(f"{existing.name}: present but invalid ({reason}); fetching a verified copy to replace it")
        target = existing if existing is not None else dest / f"{name}.gz"
        failures = []
        for mirror in mirrors:
            url = file_url(mirror, name)
            with tempfile.TemporaryFile(dir=dest) as payload:     # anonymous: nothing is left behind
                try:
                    received = fetch(url, timeout, deadline, min_rate, out=payload,
                                     max_bytes=max_compressed(sizes[name]))
                except (OSError, http.client.HTTPException, ValueError) as err:
                    failures.append(f"{url}: {err}")
                    continue
                try:
                    digest, _ = _gunzipped(payload, sizes[name])
                except ValueError as err:
                    failures.append(f"{url}: {err}")
                    continue
                if digest != pin:
                    failures.append(f"{url}: checksum mismatch, SHA-256 of the uncompressed content is {digest}, "
                                    f"expected {pin}")
                    continue
                payload.seek(0)
                with replacing(target) as out:
                    if target.suffix == ".gz":
                        shutil.copyfileobj(payload, out, _CHUNK)
                    else:
                        with gzip.GzipFile(fileobj=payload, mode="rb") as content:
                            shutil.copyfileobj(content, out, _CHUNK)
            log(f"{target.name}: downloaded from {url} ({received} bytes), SHA-256 ok")
            result[name] = target
            break
        else:
            raise DownloadError(f"could not obtain a verified {name}; nothing was written for it. Tried: "
                                + "; ".join(failures)
                                + ". Retry later, pass other mirrors with --mirror URL, or place the file in "
                                + f"{dest} yourself")
    return result

"""IDX files, the format of MNIST: reading (raw or gzip), validating and writing them.

Format (http://yann.lecun.com/exdb/mnist/): a 4-byte magic number 0x00 0x00 <type code> <ndim>, then ndim
big-endian uint32 sizes, then the values in row-major order. MNIST uses type code 0x08 (unsigned byte):
images have magic 0x00000803 (ndim 3: count, rows, cols) and labels 0x00000801 (ndim 1: count).

Files are parsed with ``numpy.frombuffer``; nothing here uses pickle. Every defect (a damaged gzip stream,
a wrong magic number, a truncated file, trailing bytes, a wrong count or size, a label out of range) is a
``ValueError`` naming the file and what was expected. The datasets built from such files are in
:mod:`mi_ref.datasets`.
"""

import gzip
import zlib
from pathlib import Path

import numpy as np

from .files import write_bytes

IDX_UBYTE = 0x08
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801


def read_file_bytes(path):
    """The (uncompressed) bytes of ``path``; a name ending in ``.gz`` is gunzipped.

    A damaged gzip file (bad header, CRC error, truncated stream) raises ``ValueError`` naming the file.
    """
    path = Path(path)
    raw = path.read_bytes()
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: not a valid gzip file ({err}); the file is damaged or was truncated, "
                         "delete it and download it again") from None


def parse_idx(data, source="<bytes>", magic=None):
    """Parse the bytes of an unsigned-byte IDX file into a uint8 array of the shape its header gives.

    Checks: the magic number (``0x0000 08 ndim``, or exactly ``magic`` when given) and that the data is
    exactly 4 + 4 * ndim + prod(sizes) bytes long (shorter: truncated; longer: trailing bytes).
    ``source`` names the file in error messages. The returned array is a read-only view of ``data``.
    """
    if len(data) < 4:
        raise ValueError(f"{source}: truncated IDX file: {len(data)} bytes, shorter than the 4-byte magic")
    found = int.from_bytes(data[:4], "big")
    if magic is not None and found != magic:
        raise ValueError(f"{source}: bad IDX magic number 0x{found:08x}, expected 0x{magic:08x}; "
                         "this is not the expected IDX file (images 0x00000803, labels 0x00000801)")
    if data[0] != 0 or data[1] != 0 or data[2] != IDX_UBYTE or data[3] == 0:
        raise ValueError(f"{source}: bad IDX magic number 0x{found:08x}, expected 0x000008NN "
                         "(unsigned bytes, NN = number of dimensions >= 1)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{source}: truncated IDX file: {len(data)} bytes, the header alone needs {header}")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(data) < expected:
        raise ValueError(f"{source}: truncated IDX file: {len(data)} bytes, but its header {shape} needs "
                         f"{expected}; delete it and download it again")
    if len(data) > expected:
        raise ValueError(f"{source}: IDX file has {len(data) - expected} trailing bytes: {len(data)} bytes, "
                         f"but its header {shape} needs exactly {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_idx(path, magic=None):
    """Read an unsigned-byte IDX file (raw, or gzip when the name ends in ``.gz``); see :func:`parse_idx`."""
    return parse_idx(read_file_bytes(path), str(path), magic)


def read_idx_images(path, count=None, image_shape=None):
    """Read an IDX image file (magic 0x00000803) as ``(count, rows, cols)`` uint8.

    ``count`` and ``image_shape = (rows, cols)``, when given, must match the header.
    """
    images = read_idx(path, IMAGES_MAGIC)
    if count is not None and images.shape[0] != count:
        raise ValueError(f"{path}: wrong image count {images.shape[0]}, expected {count}")
    if image_shape is not None and images.shape[1:] != tuple(image_shape):
        raise ValueError(f"{path}: wrong image size {images.shape[1]}x{images.shape[2]}, "
                         f"expected {image_shape[0]}x{image_shape[1]}")
    return images


def read_idx_labels(path, count=None, n_classes=10):
    """Read an IDX label file (magic 0x00000801) as ``(count,)`` uint8, every label in 0..n_classes-1."""
    labels = read_idx(path, LABELS_MAGIC)
    if count is not None and labels.shape[0] != count:
        raise ValueError(f"{path}: wrong label count {labels.shape[0]}, expected {count}")
    if labels.size and int(labels.max()) >= n_classes:
        bad = np.flatnonzero(labels >= n_classes)
        raise ValueError(f"{path}: {bad.size} labels out of range 0..{n_classes - 1} (first: label "
                         f"{int(labels[bad[0]])} at index {int(bad[0])})")
    return labels


def idx_bytes(array):
    """The bytes of an unsigned-byte IDX file holding ``array`` (the inverse of :func:`parse_idx`):
    magic 0x000008NN, NN = ``array.ndim``, the sizes as big-endian uint32, then the values (integers in
    0..255)."""
    array = np.asarray(array)
    if array.ndim < 1 or array.size and (not np.issubdtype(array.dtype, np.integer)
                                         or array.min() < 0 or array.max() > 255):
        raise ValueError(f"an IDX file needs an integer array with ndim >= 1 and values in 0..255, got dtype "
                         f"{array.dtype}, shape {array.shape}")
    header = bytes([0, 0, IDX_UBYTE, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx(path, array):
    """Write a uint8 array as an IDX file (:func:`idx_bytes`; gzip-compressed, level 9, no name and mtime 0,
    when the name ends in ``.gz``), atomically."""
    data = idx_bytes(array)
    if Path(path).suffix == ".gz":
        data = gzip.compress(data, compresslevel=9, mtime=0)
    write_bytes(path, data)


def find_idx_file(directory, name):
    """The path of IDX file ``name`` in ``directory``: ``name`` if it exists, else ``name.gz``, else None.

    The uncompressed file wins when both exist.
    """
    for candidate in (Path(directory) / name, Path(directory) / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None

"""Data: the embedded 8x8 digits, validated MNIST IDX files, the two views, shared noise and batches.

Everything the experiments feed to the encoders comes from here (README, "The paper's settings"):

* :func:`load` returns a :class:`Dataset`: flattened float64 images in [0, 1] and int64 labels.
  ``"digits"`` (scikit-learn's 8x8 digits, no download) is the default for laptops; ``"mnist"`` reads
  the four standard IDX files (see :func:`load_mnist`; :mod:`mi_ref.download` fetches them).
* :func:`split_views` cuts every image into the two views of the paper: x1 = top half of the rows,
  x2 = bottom half (MNIST: 392 + 392 values; digits: 32 + 32).
* :func:`add_shared_noise` adds ONE Gaussian vector per example to both views.
* :func:`batch_stream` yields index batches, endless, driven by an explicit ``numpy.random.Generator``,
  their position saved and restored exactly: the paper's shuffle buffer of 1000 over the stored order,
  batches across epochs (:class:`ShuffleBufferIterator`), or a fresh permutation per epoch with the
  remainder dropped (:class:`BatchIterator`).

IDX files are parsed with ``numpy.frombuffer``; nothing here uses pickle.
"""

import copy
import dataclasses
import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from .files import write_bytes
from .checks import positive_int

# ----------------------------------------------------------------------------------------------------
# the dataset container


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Train and test images of one dataset.

    Fields:
        name:        "digits" or "mnist" (free text for datasets built by hand).
        x_train:     (N_train, H * W) float64 in [0, 1], each image flattened row by row.
        y_train:     (N_train,) int64 class labels.
        x_test:      (N_test, H * W) float64 in [0, 1].
        y_test:      (N_test,) int64.
        image_shape: (H, W), e.g. (28, 28) for MNIST, (8, 8) for digits.

    The arrays are made read-only, so a dataset can be shared between runs without one run changing
    another's data by accident (copy an array before modifying it).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    image_shape: tuple

    def __post_init__(self):
        shape = tuple(int(s) for s in self.image_shape)
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"Dataset image_shape must be (H, W) with H, W >= 1, got {self.image_shape!r}")
        object.__setattr__(self, "image_shape", shape)
        width = shape[0] * shape[1]
        for split in ("train", "test"):
            # asarray + view: no copy of a float64 input, and the read-only flag below is set on our
            # own view, never on the caller's array
            x = np.asarray(getattr(self, f"x_{split}"), dtype=np.float64).view()
            y = np.asarray(getattr(self, f"y_{split}"))
            if x.ndim != 2 or x.shape[1] != width:
                raise ValueError(f"Dataset x_{split} must have shape (n, {width}) for image_shape {shape}, "
                                 f"got {x.shape}")
            if y.ndim != 1 or y.shape[0] != x.shape[0]:
                raise ValueError(f"Dataset y_{split} must have shape ({x.shape[0]},) to match x_{split}, "
                                 f"got {y.shape}")
            if y.size and not np.issubdtype(y.dtype, np.integer):
                raise ValueError(f"Dataset y_{split} must hold integer labels, got dtype {y.dtype}")
            y = y.astype(np.int64)
            x.flags.writeable = False
            y.flags.writeable = False
            object.__setattr__(self, f"x_{split}", x)
            object.__setattr__(self, f"y_{split}", y)

    @property
    def n_train(self):
        return self.x_train.shape[0]

    @property
    def n_test(self):
        return self.x_test.shape[0]

    def __repr__(self):
        return (f"Dataset(name={self.name!r}, x_train={self.x_train.shape}, x_test={self.x_test.shape}, "
                f"image_shape={self.image_shape})")


DATASETS = ("mnist-subset", "digits", "mnist")


def load(name, data_dir=None):
    """Load a dataset by name: ``"mnist-subset"`` (15000 real MNIST images shipped with mi-ref, see
    :func:`load_mnist_subset`), ``"digits"`` (scikit-learn's 8x8 digits, see :func:`load_digits`) or
    ``"mnist"`` (the full MNIST, read from ``data_dir``, else ``$MI_REF_DATA``; see :func:`load_mnist`).

    Only ``"mnist"`` reads ``data_dir``; passing one with an embedded dataset is an error (it would be
    silently ignored otherwise).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {list(DATASETS)} ('mnist-subset' and "
                         "'digits' are embedded; for 'mnist' see `mi-ref download mnist --to DIR`)")
    if name != "mnist" and data_dir is not None:
        raise ValueError(f"--data-dir {data_dir} is only read by the dataset 'mnist'; {name!r} is embedded in "
                         "mi-ref (drop --data-dir, or choose --dataset mnist)")
    if name == "digits":
        return load_digits()
    if name == "mnist-subset":
        return load_mnist_subset()
    return load_mnist(data_dir)


# ----------------------------------------------------------------------------------------------------
# embedded digits

DIGITS_SPLIT_SEED = 0
DIGITS_N_TEST = 450


def stratified_split(labels, n_test, rng):
    """Indices ``(train, test)`` of a stratified split with exactly ``n_test`` test examples.

    Class c with n_c examples gets t_c test examples, t_c = floor(n_test * n_c / N) plus one for the
    classes with the largest remainders (Hamilton's rule, ties to the smaller label) so that
    sum_c t_c = n_test. Within each class (in increasing label order) ``rng.permutation(n_c)`` picks which
    examples go to the test set. Both index arrays are returned sorted (original order kept).
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    if not 0 < n_test < n:
        raise ValueError(f"n_test must be in 1..{n - 1} for {n} examples, got {n_test}")
    classes, counts = np.unique(labels, return_counts=True)
    exact = n_test * counts / n
    per_class = np.floor(exact).astype(np.int64)
    short = n_test - int(per_class.sum())
    order = np.lexsort((classes, -(exact - per_class)))  # largest remainder first, ties: smaller label
    per_class[order[:short]] += 1
    test = []
    for c, t in zip(classes, per_class):
        members = np.flatnonzero(labels == c)
        test.append(members[rng.permutation(members.size)[:t]])
    test = np.sort(np.concatenate(test))
    train = np.setdiff1d(np.arange(n), test)
    return train, test


def load_digits():
    """scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), bundled with scikit-learn.

    Pixels are integers 0..16 and are divided by 16, so x is in [0, 1]. The split is fixed:
    :func:`stratified_split` with 450 test examples (25 %, the rest, 1347, for training) and
    ``rng = numpy.random.default_rng(0)``; every class keeps its share in both parts. Views
    (:func:`split_views`) are rows 0-3 and rows 4-7, 32 + 32 values.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    x = np.asarray(bunch.data, dtype=np.float64) / 16.0
    y = np.asarray(bunch.target, dtype=np.int64)
    train, test = stratified_split(y, DIGITS_N_TEST, np.random.default_rng(DIGITS_SPLIT_SEED))
    return Dataset("digits", x[train], y[train], x[test], y[test], (8, 8))


# ----------------------------------------------------------------------------------------------------
# IDX files (http://yann.lecun.com/exdb/mnist/ format description)
#
# header: 4-byte magic = 0x00 0x00 <type code> <ndim>, then ndim big-endian uint32 sizes, then the
# values in row-major order. MNIST uses type code 0x08 (unsigned byte): images have magic 0x00000803
# (ndim 3: count, rows, cols) and labels 0x00000801 (ndim 1: count).

IDX_UBYTE = 0x08
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MNIST_TRAIN_COUNT = 60000
MNIST_TEST_COUNT = 10000
MNIST_IMAGE_SHAPE = (28, 28)
DATA_ENV = "MI_REF_DATA"


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


def _how_to_get_mnist():
    names = ", ".join(MNIST_FILES.values())
    return (f"expected the four MNIST IDX files {names} (each may also end in .gz); get them with "
            f"`mi-ref download mnist --to DIR` and pass DIR as data_dir / --data-dir, or set {DATA_ENV}=DIR")


def mnist_dir(data_dir=None):
    """The MNIST directory: ``data_dir`` if given, else the environment variable ``MI_REF_DATA``."""
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(DATA_ENV) or None
        if data_dir is None:
            raise FileNotFoundError(f"no MNIST directory given and {DATA_ENV} is not set; "
                                    + _how_to_get_mnist())
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"MNIST directory {data_dir} does not exist; " + _how_to_get_mnist())
    return data_dir


def load_mnist(data_dir=None, *, n_train=MNIST_TRAIN_COUNT, n_test=MNIST_TEST_COUNT,
               image_shape=MNIST_IMAGE_SHAPE):
    """MNIST from the four IDX files in ``data_dir`` (else ``$MI_REF_DATA``), raw or gzip-compressed.

    Files (each as ``NAME`` or ``NAME.gz``): train-images-idx3-ubyte, train-labels-idx1-ubyte,
    t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte. Validated: magic numbers, exact file lengths, image
    counts ``n_train`` / ``n_test`` equal to the label counts, image size ``image_shape`` (28 x 28),
    labels in 0..9. The keyword defaults are the real MNIST; tests pass small values to exercise
    every check with tiny files.

    Returns a :class:`Dataset` with x = pixel / 255 (float64 in [0, 1], flattened to 784 values, row by
    row) and int64 labels. A missing directory or file raises ``FileNotFoundError``; a damaged file
    raises ``ValueError`` naming the file and the defect.
    """
    directory = mnist_dir(data_dir)
    paths = {}
    missing = []
    for key, name in MNIST_FILES.items():
        paths[key] = find_idx_file(directory, name)
        if paths[key] is None:
            missing.append(name)
    if missing:
        raise FileNotFoundError(f"MNIST files missing in {directory}: {', '.join(missing)}; "
                                + _how_to_get_mnist())
    arrays = {}
    for split, count in (("train", n_train), ("test", n_test)):
        images = read_idx_images(paths[f"{split}_images"], count, image_shape)
        labels = read_idx_labels(paths[f"{split}_labels"], count)
        if images.shape[0] != labels.shape[0]:  # only reachable with count=None
            raise ValueError(f"{paths[f'{split}_images']} has {images.shape[0]} images but "
                             f"{paths[f'{split}_labels']} has {labels.shape[0]} labels; they must match")
        x = images.reshape(images.shape[0], -1).astype(np.float64)
        x /= 255.0
        arrays[split] = (x, labels.astype(np.int64))
    return Dataset("mnist", *arrays["train"], *arrays["test"], tuple(image_shape))


# ----------------------------------------------------------------------------------------------------
# the embedded MNIST subset

MNIST_SUBSET_DIR = Path(__file__).resolve().parent / "mnist_subset"
MNIST_SUBSET_COUNTS = {"train": 1000, "test": 500}       # images per class
# SHA-256 of the UNCOMPRESSED content of each shipped file (the gzip bytes depend on the zlib version)
MNIST_SUBSET_SHA256 = {
    "train-images-idx3-ubyte": "96448e792027ae8c3d693bf7f6685beb422442276734ffe24b7860a3581dcb08",
    "train-labels-idx1-ubyte": "dfa6309ccbfc44ab3df730fa9d1b133e2baeb0fe7db8e4bbdcd05d3e5bd811ea",
    "t10k-images-idx3-ubyte": "5b96d8d5c9a90e3bfed00f56bc82a37930359afae5eb88e2d8b01946fbf12c5e",
    "t10k-labels-idx1-ubyte": "e3bfcd429db884e83dc61e56909781423c2c0dbf017e28735713f735a3b6fc19",
}


def mnist_subset_indices(labels, per_class):
    """The rule of the embedded subset: the first ``per_class`` examples of every class in file order,
    returned in file order (sorted indices). ``ValueError`` if a class has fewer."""
    labels = np.asarray(labels)
    keep = []
    for c in range(10):
        members = np.flatnonzero(labels == c)
        if members.size < per_class:
            raise ValueError(f"class {c} has {members.size} examples, fewer than the {per_class} the subset takes")
        keep.append(members[:per_class])
    return np.sort(np.concatenate(keep))


def load_mnist_subset(directory=None):
    """The embedded MNIST subset: 10000 training images (the first 1000 of every class in
    train-images-idx3-ubyte) and 5000 test images (the first 500 of every class in
    t10k-images-idx3-ubyte), shipped inside the package as gzip-compressed IDX files. (The test part is
    that large because the probe's noise at laptop scale comes mostly from the test images: with 5000 the
    paired standard error of an accuracy difference is about 0.004.)

    Every file's uncompressed content is checked against its SHA-256 pin before use, then parsed and
    validated like the full MNIST (:func:`load_mnist`). Images are 28 x 28, so the views are the same
    14 x 28 halves as MNIST's. ``directory`` (tests only) reads the files from elsewhere.
    MNIST is by Yann LeCun and Corinna Cortes, under CC BY-SA 3.0.
    """
    import hashlib
    directory = MNIST_SUBSET_DIR if directory is None else Path(directory)
    arrays = {}
    for key, name in MNIST_FILES.items():
        path = directory / f"{name}.gz"
        if not path.is_file():
            raise FileNotFoundError(f"the embedded MNIST subset file {path} is missing: the installation is "
                                    "incomplete; reinstall mi-ref (or rebuild it: scripts/make_mnist_subset.py)")
        data = read_file_bytes(path)
        digest = hashlib.sha256(data).hexdigest()
        if digest != MNIST_SUBSET_SHA256[name]:
            raise ValueError(f"{path}: SHA-256 of its content is {digest}, expected {MNIST_SUBSET_SHA256[name]}; "
                             "the file is damaged or was changed: reinstall mi-ref")
        arrays[key] = parse_idx(data, str(path), IMAGES_MAGIC if key.endswith("images") else LABELS_MAGIC)
    out = {}
    for split, prefix in (("train", "train"), ("test", "test")):
        count = 10 * MNIST_SUBSET_COUNTS[split]
        images, labels = arrays[f"{prefix}_images"], arrays[f"{prefix}_labels"]
        if images.shape != (count,) + MNIST_IMAGE_SHAPE or labels.shape != (count,) or labels.max() > 9:
            raise ValueError(f"the embedded MNIST subset's {split} files hold {images.shape} images and "
                             f"{labels.shape} labels, expected {count} of 28 x 28; reinstall mi-ref")
        out[split] = (images.reshape(count, -1) / 255.0, labels.astype(np.int64))
    return Dataset("mnist-subset", *out["train"], *out["test"], MNIST_IMAGE_SHAPE)


# ----------------------------------------------------------------------------------------------------
# the two views and the shared noise


def split_views(images, shape):
    """The paper's two views of flattened images: x1 = top rows, x2 = bottom rows.

    With ``images: (N, H * W)`` (row-major) and ``shape = (H, W)``, h = H // 2:
    x1 = rows [0, h) -> ``(N, h * W)``, x2 = rows [h, H) -> ``(N, (H - h) * W)``; i.e.
    ``x1 = images[:, :h * W]`` and ``x2 = images[:, h * W:]`` (views, not copies). MNIST: 392 + 392
    values (rows 0-13 and 14-27); digits: 32 + 32. With odd H the bottom view has the extra row.
    """
    images = np.asarray(images, dtype=np.float64)
    try:
        h, w = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"split_views needs shape = (H, W), got {shape!r}") from None
    if h < 2 or w < 1:
        raise ValueError(f"split_views needs H >= 2 rows and W >= 1 columns, got shape {(h, w)}")
    if images.ndim != 2 or images.shape[1] != h * w:
        raise ValueError(f"split_views needs flattened images of shape (N, {h * w}) for shape {(h, w)}, "
                         f"got {images.shape}; flatten each image row by row first")
    cut = (h // 2) * w
    return images[:, :cut], images[:, cut:]


def add_shared_noise(x1, x2, std, rng):
    """Add the same Gaussian vector to both views of each example (the paper's noise, Section 3.1).

    eps_n ~ N(0, std^2 I_D) drawn once per example n (``rng.standard_normal((N, D)) * std``), then
    x1'_n = x1_n + eps_n and x2'_n = x2_n + eps_n. ``x1`` and ``x2`` must both be ``(N, D)``.
    Returns new arrays; with ``std == 0`` they are unchanged copies and nothing is drawn from ``rng``.
    """
    x1 = np.asarray(x1, dtype=np.float64)
    x2 = np.asarray(x2, dtype=np.float64)
    if x1.ndim != 2 or x1.shape != x2.shape:
        raise ValueError(f"add_shared_noise needs two views of the same shape (N, D), got {x1.shape} and "
                         f"{x2.shape}; shared noise adds one vector to both, so their widths must match")
    std = float(std)
    if not (np.isfinite(std) and std >= 0):
        raise ValueError(f"noise std must be a finite number >= 0, got {std!r}")
    _check_generator(rng)
    if std == 0:
        return x1.copy(), x2.copy()
    eps = rng.standard_normal(x1.shape) * std
    return x1 + eps, x2 + eps


def _check_generator(rng):
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"expected a numpy.random.Generator, got {type(rng).__name__}; "
                         "pass numpy.random.default_rng(seed)")


# ----------------------------------------------------------------------------------------------------
# batches


def _plain(value):
    """Numpy scalars/arrays inside a bit-generator state -> plain Python ints/lists (JSON-friendly)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.integer):
        return int(value)
    return value


BATCHINGS = ("shuffle_buffer", "epoch_permutation")
SHUFFLE_BUFFER = 1000           # the paper's notebook: dataset.shuffle(1000)


def batch_stream(batching, n, batch_size, rng, buffer_size=SHUFFLE_BUFFER):
    """The endless index batches of a training loop: ``batching`` is ``"shuffle_buffer"`` (the paper's
    stream, :class:`ShuffleBufferIterator`) or ``"epoch_permutation"`` (:class:`BatchIterator`)."""
    if batching == "shuffle_buffer":
        return ShuffleBufferIterator(n, batch_size, rng, buffer_size)
    if batching == "epoch_permutation":
        return BatchIterator(n, batch_size, rng)
    raise ValueError(f"unknown batching {batching!r}; expected one of {list(BATCHINGS)}")


def _check_batch_size(n, batch_size, what):
    positive_int(n, f"{what} n")
    positive_int(batch_size, f"{what} batch_size")
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} is larger than the number of examples {n}: use batch_size <= "
                         f"{n} (a batch would hold the same example twice, or none could be formed)")


class ShuffleBufferIterator:
    """Endless batches of example indices as the paper's input pipeline makes them: tf.data's
    ``dataset.shuffle(buffer_size).repeat().batch(batch_size, drop_remainder=True)`` over the examples in
    their stored order 0, 1, ..., n - 1.

    One pass over the data (an epoch) is a shuffle buffer: it starts holding examples 0 .. buffer_size - 1;
    each output picks a uniformly random slot j of the buffer, emits its example and refills the slot with
    the next example of the stored order; once the order is used up, the slot is filled with the buffer's
    last entry and the buffer shrinks, until it is empty. Then the next epoch starts a new pass (a new
    buffer, new random picks), and the examples run on without a break: ``repeat()`` comes before
    ``batch()``, so batches straddle epoch boundaries and no example is dropped (the "drop remainder" of an
    endless stream never applies). An example therefore moves at most ``buffer_size - 1`` places ahead of
    its stored position, and a batch sees a window of the stored order, not the whole dataset.

    Randomness: each batch draws ``rng.random(batch_size)``, one uniform u per output, and the slot is
    floor(u * buffer length). The iterator must be the only user of ``rng``. :meth:`state` stores the
    buffer, the position in the stored order, the epoch and the generator's state (plain JSON), so a
    restored iterator continues with exactly the batches the original would have produced.
    """

    KIND = "shuffle_buffer"

    def __init__(self, n, batch_size, rng, buffer_size=SHUFFLE_BUFFER):
        _check_batch_size(n, batch_size, "ShuffleBufferIterator")
        positive_int(buffer_size, "shuffle buffer size")
        _check_generator(rng)
        self.n, self.batch_size, self.buffer_size = int(n), int(batch_size), int(buffer_size)
        self.rng = rng
        self.epoch = 0
        self._start_epoch()

    def _start_epoch(self):
        self._buffer = list(range(min(self.buffer_size, self.n)))
        self._next = len(self._buffer)           # the next example of the stored order to enter the buffer

    def _take(self, u):
        """One example: the buffer's slot floor(u * length), refilled from the stored order (or dropped)."""
        if not self._buffer:                     # this pass is used up: the next epoch begins
            self.epoch += 1
            self._start_epoch()
        buf = self._buffer
        j = min(int(u * len(buf)), len(buf) - 1)
        out = buf[j]
        if self._next < self.n:
            buf[j] = self._next
            self._next += 1
        else:
            buf[j] = buf[-1]
            buf.pop()
        return out

    def __iter__(self):
        return self

    def __next__(self):
        return np.array([self._take(u) for u in self.rng.random(self.batch_size)], dtype=np.int64)

    def state(self):
        """The position as plain JSON: kind, n, batch_size, buffer_size, epoch, buffer (the example indices
        in the buffer, in slot order), next (the next example of the stored order) and rng (the generator's
        ``bit_generator.state``)."""
        return {"kind": self.KIND, "n": self.n, "batch_size": self.batch_size, "buffer_size": self.buffer_size,
                "epoch": self.epoch, "buffer": list(self._buffer), "next": self._next,
                "rng": _plain(self.rng.bit_generator.state)}

    def restore(self, state):
        """Continue from a :meth:`state` (``ValueError`` naming what is wrong with a damaged one)."""
        expected = {"kind", "n", "batch_size", "buffer_size", "epoch", "buffer", "next", "rng"}
        if isinstance(state, dict) and state.get("kind", self.KIND) != self.KIND:
            raise ValueError(f"the saved batch stream is {state['kind']!r}, this run uses {self.KIND!r}")
        if not isinstance(state, dict) or expected - set(state):
            raise ValueError(f"a shuffle-buffer state needs the keys {sorted(expected)}, got "
                             f"{sorted(state) if isinstance(state, dict) else type(state).__name__}")
        for key in ("n", "batch_size", "buffer_size"):
            if state[key] != getattr(self, key):
                raise ValueError(f"the saved batch stream has {key}={state[key]!r}, this run {getattr(self, key)}")
        buf, nxt, epoch = state["buffer"], state["next"], state["epoch"]
        ints = isinstance(buf, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in buf)
        if not (ints and isinstance(nxt, int) and isinstance(epoch, int) and epoch >= 0
                and len(buf) <= self.buffer_size and len(set(buf)) == len(buf)
                and all(0 <= i < nxt for i in buf) and len(buf) <= nxt <= self.n
                and (nxt == self.n or len(buf) == min(self.buffer_size, self.n))):
            raise ValueError(f"the saved shuffle buffer is not one this stream can be in (epoch {epoch!r}, next "
                             f"{nxt!r}, {len(buf) if isinstance(buf, list) else '?'} entries): the checkpoint was "
                             "edited or damaged")
        _restore_generator(self.rng, state["rng"], "ShuffleBufferIterator")
        self._buffer, self._next, self.epoch = list(buf), nxt, epoch
        return self


def _restore_generator(rng, saved, what):
    if not isinstance(saved, dict) or saved.get("bit_generator") != type(rng.bit_generator).__name__:
        raise ValueError(f"{what} state was saved with bit generator "
                         f"{saved.get('bit_generator') if isinstance(saved, dict) else saved!r}, this one uses "
                         f"{type(rng.bit_generator).__name__!r}")
    try:
        rng.bit_generator.state = saved
    except (TypeError, ValueError, KeyError) as err:
        raise ValueError(f"{what} state holds an unusable generator state ({err})") from None


class BatchIterator:
    """Endless batches of example indices: ``for idx in BatchIterator(n, 128, rng): x[idx] ...``.

    The ``"epoch_permutation"`` batching (not the paper's; see :class:`ShuffleBufferIterator`). Epoch e draws ``order = rng.permutation(n)`` and yields ``order[i * B:(i + 1) * B]`` for
    i = 0 .. n // B - 1 (int64 index arrays; the last n mod B examples of each epoch are dropped); then
    epoch e + 1 draws a new permutation. The same generator state gives the same batches.

    The iterator must be the only user of ``rng`` (give it its own, e.g. ``default_rng(seed)``):
    :meth:`state` records the generator's state at the start of the current epoch plus the position
    in it, and :meth:`restore` / :meth:`from_state` redraw that epoch's permutation from it, so a restored
    iterator continues with exactly the batches the original would have produced.
    """

    KIND = "epoch_permutation"

    def __init__(self, n, batch_size, rng):
        _check_batch_size(n, batch_size, "BatchIterator")
        _check_generator(rng)
        self.n = int(n)
        self.batch_size = int(batch_size)
        self.rng = rng
        self.epoch = 0          # index of the current epoch
        self.position = 0       # index of the next batch within the current epoch
        self._epoch_state = _plain(rng.bit_generator.state)
        self._order = rng.permutation(self.n)

    @property
    def batches_per_epoch(self):
        """n // batch_size."""
        return self.n // self.batch_size

    def __iter__(self):
        return self

    def __next__(self):
        if self.position == self.batches_per_epoch:
            self.epoch += 1
            self.position = 0
            self._epoch_state = _plain(self.rng.bit_generator.state)
            self._order = self.rng.permutation(self.n)
        start = self.position * self.batch_size
        self.position += 1
        return self._order[start:start + self.batch_size].astype(np.int64)

    def state(self):
        """The position as a small dict of plain ints and a plain dict (storable as JSON).

        Keys: n, batch_size, epoch, position (batches already taken from this epoch) and rng (the
        generator's ``bit_generator.state`` at the start of this epoch, before its permutation).
        """
        return {"kind": self.KIND, "n": self.n, "batch_size": self.batch_size, "epoch": self.epoch,
                "position": self.position, "rng": copy.deepcopy(self._epoch_state)}

    def restore(self, state):
        """Continue from a :meth:`state`: sets this iterator's position and its generator's state."""
        if not isinstance(state, dict):
            raise ValueError(f"BatchIterator state must be a dict, got {type(state).__name__}")
        if state.get("kind", self.KIND) != self.KIND:
            raise ValueError(f"the saved batch stream is {state['kind']!r}, this run uses {self.KIND!r}")
        missing = {"n", "batch_size", "epoch", "position", "rng"} - set(state)
        if missing:
            raise ValueError(f"BatchIterator state lacks the keys {sorted(missing)}; pass a dict returned by "
                             "BatchIterator.state()")
        if int(state["n"]) != self.n or int(state["batch_size"]) != self.batch_size:
            raise ValueError(f"BatchIterator state is for n={state['n']}, batch_size={state['batch_size']} "
                             f"but this iterator has n={self.n}, batch_size={self.batch_size}")
        position = int(state["position"])
        if not 0 <= position <= self.batches_per_epoch or int(state["epoch"]) < 0:
            raise ValueError(f"BatchIterator state has epoch={state['epoch']}, position={position}; expected "
                             f"epoch >= 0 and 0 <= position <= {self.batches_per_epoch}")
        if state["rng"].get("bit_generator") != type(self.rng.bit_generator).__name__:
            raise ValueError(f"BatchIterator state was saved with bit generator "
                             f"{state['rng'].get('bit_generator')!r}, this iterator uses "
                             f"{type(self.rng.bit_generator).__name__!r}")
        self.rng.bit_generator.state = state["rng"]
        self._epoch_state = _plain(self.rng.bit_generator.state)
        self._order = self.rng.permutation(self.n)
        self.epoch = int(state["epoch"])
        self.position = position
        return self

    @classmethod
    def from_state(cls, state):
        """A new iterator (with a new generator of the saved kind) that continues from ``state``."""
        try:
            bit_generator = getattr(np.random, state["rng"]["bit_generator"])
        except (KeyError, TypeError, AttributeError):
            raise ValueError("BatchIterator state must hold the rng state of a numpy bit generator under "
                             "'rng'; pass a dict returned by BatchIterator.state()") from None
        it = cls(int(state["n"]), int(state["batch_size"]), np.random.Generator(bit_generator()))
        return it.restore(state)

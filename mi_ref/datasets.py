"""Datasets: one registry of named datasets, each entry its loader and what it needs, and the three that
mi-ref ships (README, "The paper's settings").

:data:`DATASETS` maps a name to a loader that returns a :class:`Dataset` (flattened float64 images in
[0, 1], int64 labels). An entry's metadata says everything the rest of mi-ref asks of it:

* ``reads_data_dir`` (default False): the loader is called as ``loader(data_dir)`` with the directory of
  ``--data-dir`` (None when not given: the loader then looks for it itself, e.g. in ``$MI_REF_DATA``);
  otherwise it is called as ``loader()`` and a ``data_dir`` is an error (it would be ignored silently);
* ``image_shape``, ``n_train``, ``n_test`` (optional): what it holds; :func:`load` checks every dataset
  it loads against them, and the findings read ``n_test`` where a run's rows lack it;
* ``description``: one line for the listings (an unknown name, the CLI's help).

The CLI's ``--dataset`` choices and every config's ``dataset`` check come from this registry, so a plugin
(:mod:`mi_ref.plugins`) adds a dataset with one call,
``DATASETS.register("NAME", loader, reads_data_dir=..., description=...)``.

Shipped: ``"mnist-subset"`` (15000 real MNIST images embedded in the package, the default of the quick
presets; :func:`load_mnist_subset`), ``"digits"`` (scikit-learn's 8x8 digits, no download;
:func:`load_digits`) and ``"mnist"`` (the four standard IDX files from a directory; :func:`load_mnist`,
fetched by :mod:`mi_ref.download`). Files are parsed by :mod:`mi_ref.idx` (``numpy.frombuffer``, never
pickle); pixels are scaled and split into views by :mod:`mi_ref.views`.
"""

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np

from .idx import IMAGES_MAGIC, LABELS_MAGIC, find_idx_file, parse_idx, read_file_bytes, read_idx_images, \
    read_idx_labels
from .registry import Registry
from .views import stratified_split, to_unit_interval

# ----------------------------------------------------------------------------------------------------
# the dataset container


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Train and test images of one dataset.

    Fields:
        name:        its name in :data:`DATASETS` (free text for datasets built by hand).
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


# ----------------------------------------------------------------------------------------------------
# the registry and loading by name

# name -> loader; metadata reads_data_dir, image_shape, n_train, n_test, description (module docstring)
DATASETS = Registry("dataset")


def reads_data_dir(name):
    """True if dataset ``name``'s loader takes the data directory (``--data-dir``); ``ValueError`` listing
    the datasets for an unknown name."""
    _known(name)
    return bool(DATASETS.meta(name, "reads_data_dir", False))


def data_dir_for(name, data_dir):
    """The directory to pass to :func:`load` for dataset ``name``: ``data_dir`` if the dataset reads one,
    else None (a command given one directory for several experiments hands it to those that read it)."""
    return data_dir if reads_data_dir(name) else None


def _listing():
    return "; ".join(f"{name}: {DATASETS.meta(name, 'description', 'no description')}" for name in DATASETS)


def _known(name):
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS.names()} ({_listing()})")


def load(name, data_dir=None):
    """The :class:`Dataset` registered as ``name`` in :data:`DATASETS`: ``loader(data_dir)`` for a dataset
    that reads a data directory, else ``loader()``.

    ``ValueError`` for an unknown name (listing the known ones and where each comes from), for a
    ``data_dir`` given to a dataset that reads none (it would be silently ignored otherwise), and for a
    loader that returns something other than a :class:`Dataset` or not the image shape and sizes its
    entry declares.
    """
    _known(name)
    loader = DATASETS.get(name)
    if reads_data_dir(name):
        dataset = loader(data_dir)
    else:
        if data_dir is not None:
            readers = [n for n in DATASETS if reads_data_dir(n)]
            which = (f"only read by the dataset{'s' if len(readers) > 1 else ''} {', '.join(map(repr, readers))}"
                     if readers else "read by no registered dataset")
            raise ValueError(f"--data-dir {data_dir} is {which}; {name!r} needs none "
                             f"({DATASETS.meta(name, 'description', 'no description')}): drop --data-dir"
                             + (f", or choose --dataset {readers[0]}" if len(readers) == 1 else ""))
        dataset = loader()
    if not isinstance(dataset, Dataset):
        raise ValueError(f"the loader of dataset {name!r} returned a {type(dataset).__name__}, expected a "
                         "mi_ref.datasets.Dataset; build one with Dataset(name, x_train, y_train, x_test, y_test, "
                         "image_shape)")
    for key in ("image_shape", "n_train", "n_test"):
        declared = DATASETS.meta(name, key)
        got = getattr(dataset, key)
        if declared is not None and tuple(np.atleast_1d(declared)) != tuple(np.atleast_1d(got)):
            raise ValueError(f"dataset {name!r} declares {key}={declared!r} in DATASETS, but its loader returned "
                             f"{key}={got!r}; fix the loader or the declaration")
    return dataset


# ----------------------------------------------------------------------------------------------------
# scikit-learn's digits

DIGITS_SPLIT_SEED = 0
DIGITS_N_TEST = 450


def load_digits():
    """scikit-learn's 8x8 handwritten digits (1797 images, 10 classes), bundled with scikit-learn.

    Pixels are integers 0..16 and are divided by 16 (:func:`mi_ref.views.to_unit_interval`), so x is in
    [0, 1]. The split is fixed: :func:`mi_ref.views.stratified_split` with 450 test examples (25 %, the
    rest, 1347, for training) and ``rng = numpy.random.default_rng(0)``; every class keeps its share in
    both parts. Views (:func:`mi_ref.views.split_views`) are rows 0-3 and rows 4-7, 32 + 32 values.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    x = to_unit_interval(bunch.data, 16)
    y = np.asarray(bunch.target, dtype=np.int64)
    train, test = stratified_split(y, DIGITS_N_TEST, np.random.default_rng(DIGITS_SPLIT_SEED))
    return Dataset("digits", x[train], y[train], x[test], y[test], (8, 8))


# ----------------------------------------------------------------------------------------------------
# MNIST from a directory of IDX files

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
    t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte. Validated (:mod:`mi_ref.idx`): magic numbers, exact
    file lengths, image counts ``n_train`` / ``n_test`` equal to the label counts, image size
    ``image_shape`` (28 x 28), labels in 0..9. The keyword defaults are the real MNIST; tests pass small
    values to exercise every check with tiny files.

    Returns a :class:`Dataset` with x = pixel / 255 (float64 in [0, 1], flattened to 784 values, row by
    row; :func:`mi_ref.views.to_unit_interval`) and int64 labels. A missing directory or file raises
    ``FileNotFoundError``; a damaged file raises ``ValueError`` naming the file and the defect.
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
        arrays[split] = (to_unit_interval(images, 255), labels.astype(np.int64))
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


def load_mnist_subset(directory=None):
    """The embedded MNIST subset: 10000 training images (the first 1000 of every class in
    train-images-idx3-ubyte) and 5000 test images (the first 500 of every class in
    t10k-images-idx3-ubyte; the rule is :func:`mi_ref.views.first_per_class`), shipped inside the package
    as gzip-compressed IDX files. (The test part is that large because the probe's noise at laptop scale
    comes mostly from the test images: with 5000 the paired standard error of an accuracy difference is
    about 0.004.)

    Every file's uncompressed content is checked against its SHA-256 pin before use, then parsed and
    validated like the full MNIST (:func:`load_mnist`). Images are 28 x 28, so the views are the same
    14 x 28 halves as MNIST's. ``directory`` (tests only) reads the files from elsewhere.
    MNIST is by Yann LeCun and Corinna Cortes, under CC BY-SA 3.0.
    """
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
        out[split] = (to_unit_interval(images, 255), labels.astype(np.int64))
    return Dataset("mnist-subset", *out["train"], *out["test"], MNIST_IMAGE_SHAPE)


# ----------------------------------------------------------------------------------------------------
# the datasets mi-ref ships, in the order the CLI lists them

DATASETS.register("mnist-subset", load_mnist_subset, reads_data_dir=False, image_shape=MNIST_IMAGE_SHAPE,
                  n_train=10 * MNIST_SUBSET_COUNTS["train"], n_test=10 * MNIST_SUBSET_COUNTS["test"],
                  description="15000 real MNIST images embedded in mi-ref (the quick presets' default)")
DATASETS.register("digits", load_digits, reads_data_dir=False, image_shape=(8, 8), n_train=1797 - DIGITS_N_TEST,
                  n_test=DIGITS_N_TEST, description="scikit-learn's 8x8 digits, embedded in scikit-learn")
DATASETS.register("mnist", load_mnist, reads_data_dir=True, image_shape=MNIST_IMAGE_SHAPE,
                  n_train=MNIST_TRAIN_COUNT, n_test=MNIST_TEST_COUNT,
                  description=f"the full MNIST from --data-dir or ${DATA_ENV} (get it with "
                              "`mi-ref download mnist --to DIR`)")

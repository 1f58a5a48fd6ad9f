"""Tests for the data path: mi_ref.datasets (the registry, digits, MNIST loading), mi_ref.idx (IDX parsing
and validation), mi_ref.views (pixels, views, shared noise) and mi_ref.batches (the batch streams)."""

import gzip
import hashlib
import json
import os

import numpy as np
import pytest

from mi_ref.batches import BatchIterator, ShuffleBufferIterator, batch_stream
from mi_ref.datasets import DATASETS, MNIST_FILES, Dataset, data_dir_for, load, load_mnist, reads_data_dir
from mi_ref.idx import read_idx, read_idx_images, read_idx_labels, write_idx
from mi_ref.views import add_shared_noise, first_per_class, split_views, stratified_split, to_unit_interval


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def write_tiny_mnist(directory, rng, n_train=7, n_test=5, shape=(4, 6), compress=True):
    """Four small MNIST-like IDX files; returns the arrays written."""
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    arrays = {
        "train_images": rng.integers(0, 256, size=(n_train, *shape), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, size=n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, size=(n_test, *shape), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, size=n_test, dtype=np.uint8),
    }
    for key, array in arrays.items():
        write_idx(directory / (MNIST_FILES[key] + suffix), array)
    return arrays


def tiny_load(directory, n_train=7, n_test=5, shape=(4, 6)):
    return load_mnist(directory, n_train=n_train, n_test=n_test, image_shape=shape)


# ---------------------------------------------------------------- digits


def test_digits_shapes_range_and_dtypes():
    d = load("digits")
    assert d.name == "digits" and d.image_shape == (8, 8)
    assert d.x_train.shape == (1347, 64) and d.x_test.shape == (450, 64)
    assert d.x_train.dtype == np.float64 and d.y_train.dtype == np.int64
    assert d.x_train.min() == 0.0 and d.x_train.max() == 1.0
    assert set(np.unique(d.y_test)) == set(range(10))
    # the arrays are read-only: no run can change another's data by accident
    with pytest.raises(ValueError):
        d.x_train[0, 0] = 0.5


def test_digits_split_is_fixed_stratified_and_complete():
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    d1, d2 = load("digits"), load("digits")
    assert np.array_equal(d1.x_train, d2.x_train) and np.array_equal(d1.y_test, d2.y_test)
    # every class keeps its share (within one example) and the two parts together are the whole set
    counts = np.bincount(bunch.target)
    assert np.all(np.abs(np.bincount(d1.y_test) - counts * 450 / 1797) < 1)
    assert np.array_equal(np.bincount(d1.y_train) + np.bincount(d1.y_test), counts)
    x_all = np.concatenate([d1.x_train, d1.x_test]) * 16
    assert sorted(map(bytes, x_all.astype(np.uint8))) == sorted(map(bytes, bunch.data.astype(np.uint8)))
    # the documented split (seed 0) itself; if numpy ever changes its PCG64 permutation stream, this
    # pin tells us and the README's digits numbers must be re-measured
    _, test = stratified_split(bunch.target, 450, np.random.default_rng(0))
    assert hashlib.sha256(test.astype("<i8").tobytes()).hexdigest() == (
        "5d6608225b66b6a5a430729d1326ec7a9ff26aea52dc70e2eb663d7cc46a8c6b")


def test_stratified_split_exact_size_and_errors(rng):
    labels = np.repeat([0, 1, 2], [10, 7, 3])
    train, test = stratified_split(labels, 6, rng)
    assert test.size == 6 and train.size == 14
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(20))
    assert list(np.bincount(labels[test])) == [3, 2, 1]
    for bad in (0, 20):
        with pytest.raises(ValueError, match="n_test"):
            stratified_split(labels, bad, rng)


def test_load_unknown_name():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'.*digits") as err:
        load("cifar")
    # every known name, and where each comes from (the full MNIST: how to get it)
    assert "['mnist-subset', 'digits', 'mnist']" in str(err.value)
    assert "mi-ref download mnist --to DIR" in str(err.value)
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        reads_data_dir("cifar")


def test_first_per_class_keeps_the_file_order():
    labels = np.array([2, 0, 1, 0, 2, 1, 1, 0, 2])
    assert list(first_per_class(labels, 2, n_classes=3)) == [0, 1, 2, 3, 4, 5]
    assert list(first_per_class(labels, 1, n_classes=3)) == [0, 1, 2]
    with pytest.raises(ValueError, match="class 0 has 3 examples, fewer than the 4"):
        first_per_class(labels, 4, n_classes=3)


def test_to_unit_interval_flattens_and_divides():
    pixels = np.array([[[0, 255], [51, 102]], [[255, 255], [0, 1]]], dtype=np.uint8)
    x = to_unit_interval(pixels, 255)
    assert x.dtype == np.float64 and x.shape == (2, 4)
    np.testing.assert_array_equal(x, pixels.reshape(2, 4).astype(np.float64) / 255.0)   # bit for bit
    np.testing.assert_array_equal(to_unit_interval(np.array([[0.0, 8.0, 16.0]]), 16), [[0.0, 0.5, 1.0]])
    with pytest.raises(ValueError, match=r"pixel values must lie in \[0, 16\], got \[0, 17\]"):
        to_unit_interval(np.array([[0, 17]]), 16)
    with pytest.raises(ValueError, match="max_value must be a finite number > 0"):
        to_unit_interval(pixels, 0)
    with pytest.raises(ValueError, match=r"one image per row"):
        to_unit_interval(np.uint8(3), 255)


# ---------------------------------------------------------------- the registry of datasets


@pytest.fixture
def tiny_dataset():
    """A dataset of 40 random 4 x 3 images registered as 'tiny' for one test, then removed."""
    def loader():
        pixels = np.random.default_rng(1).integers(0, 256, size=(40, 4, 3))
        x, y = to_unit_interval(pixels, 255), np.arange(40) % 4
        return Dataset("tiny", x[:30], y[:30], x[30:], y[30:], (4, 3))
    DATASETS.register("tiny", loader, image_shape=(4, 3), n_train=30, n_test=10, description="a test's images")
    try:
        yield "tiny"
    finally:
        DATASETS.unregister("tiny")


def test_the_shipped_datasets_are_registry_entries():
    assert DATASETS.names() == ["mnist-subset", "digits", "mnist"]
    assert [reads_data_dir(n) for n in DATASETS] == [False, False, True]
    assert [data_dir_for(n, "/d") for n in DATASETS] == [None, None, "/d"]
    for name in ("mnist-subset", "digits"):             # what each entry declares is what its loader returns
        d = load(name)
        assert d.name == name and (d.image_shape, d.n_train, d.n_test) == tuple(
            DATASETS.meta(name, key) for key in ("image_shape", "n_train", "n_test"))
    assert [DATASETS.meta("mnist", key) for key in ("image_shape", "n_train", "n_test")] == [(28, 28), 60000, 10000]


def test_a_registered_dataset_loads_by_name_and_is_checked_against_its_entry(tiny_dataset, monkeypatch):
    d = load(tiny_dataset)
    assert (d.name, d.n_train, d.n_test, d.image_shape) == ("tiny", 30, 10, (4, 3))
    with pytest.raises(ValueError, match="--data-dir /x is only read by the dataset 'mnist'; 'tiny' needs none"):
        load(tiny_dataset, "/x")
    monkeypatch.setitem(DATASETS._meta[tiny_dataset], "n_test", 11)
    with pytest.raises(ValueError, match=r"dataset 'tiny' declares n_test=11 in DATASETS, but its loader returned "
                                         r"n_test=10"):
        load(tiny_dataset)
    monkeypatch.setitem(DATASETS._entries, tiny_dataset, lambda: {"x_train": None})
    with pytest.raises(ValueError, match="the loader of dataset 'tiny' returned a dict, expected a "
                                         "mi_ref.datasets.Dataset"):
        load(tiny_dataset)


def test_a_dataset_that_reads_a_data_dir_is_given_it(tmp_path):
    seen = []

    def loader(data_dir):
        seen.append(data_dir)
        return load("digits")
    DATASETS.register("digits-from-dir", loader, reads_data_dir=True)
    try:
        assert load("digits-from-dir", tmp_path).name == "digits" and load("digits-from-dir").n_test == 450
        assert seen == [tmp_path, None]
        with pytest.raises(ValueError, match="only read by the datasets 'mnist', 'digits-from-dir'; 'digits'"):
            load("digits", tmp_path)
    finally:
        DATASETS.unregister("digits-from-dir")


def test_the_clis_dataset_choices_and_the_configs_check_read_the_registry(tiny_dataset, capsys):
    from mi_ref import cli, experiments
    parser = cli.build_parser()
    (commands,) = [a for a in parser._actions if a.dest == "command"]
    for command in ("run", "sweep", "reproduce", "baseline"):
        (option,) = [a for a in commands.choices[command]._actions if a.dest == "dataset"]
        assert list(option.choices) == ["mnist-subset", "digits", "mnist", "tiny"], command
    with pytest.raises(SystemExit):
        parser.parse_args(["baseline", "--dataset", "cifar"])
    err = capsys.readouterr().err
    assert "invalid choice: 'cifar'" in err and all(name in err for name in DATASETS)
    assert experiments.get("critics").config("quick", dataset="tiny").dataset == "tiny"


def test_dataset_validates_its_fields():
    x = np.zeros((3, 4))
    y = np.zeros(3, dtype=int)
    with pytest.raises(ValueError, match=r"x_train must have shape \(n, 6\)"):
        Dataset("t", x, y, x, y, (2, 3))
    with pytest.raises(ValueError, match="y_test must have shape"):
        Dataset("t", x, y, x, y[:2], (2, 2))
    with pytest.raises(ValueError, match="integer labels"):
        Dataset("t", x, y, x, y.astype(float), (2, 2))
    src = np.zeros((3, 4))
    Dataset("t", src, y, x, y, (2, 2))
    assert src.flags.writeable  # the caller's array is not frozen, only the dataset's view of it


# ---------------------------------------------------------------- IDX files


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("shape", [(5,), (3, 4, 2), (2, 1, 3, 2)])
def test_idx_round_trip(tmp_path, rng, suffix, shape):
    array = rng.integers(0, 256, size=shape, dtype=np.uint8)
    path = tmp_path / f"a-idx{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.uint8 and np.array_equal(back, array)
    raw = gzip.decompress(path.read_bytes()) if suffix else path.read_bytes()
    assert raw[:4] == bytes([0, 0, 8, len(shape)])
    assert len(raw) == 4 + 4 * len(shape) + array.size
    assert os.listdir(tmp_path) == [path.name]  # the atomic write leaves no temporary file


def test_write_idx_rejects_non_bytes(tmp_path):
    with pytest.raises(ValueError, match="0..255"):
        write_idx(tmp_path / "x", np.array([1, 256]))
    with pytest.raises(ValueError, match="integer array"):
        write_idx(tmp_path / "x", np.array([0.5]))


@pytest.mark.parametrize("compress", [True, False])
def test_load_mnist_round_trip(tmp_path, rng, compress):
    arrays = write_tiny_mnist(tmp_path, rng, compress=compress)
    d = tiny_load(tmp_path)
    assert d.name == "mnist" and d.image_shape == (4, 6)
    assert d.x_train.shape == (7, 24) and d.x_test.shape == (5, 24)
    assert d.x_train.dtype == np.float64 and d.y_train.dtype == np.int64
    np.testing.assert_array_equal(d.x_train, arrays["train_images"].reshape(7, 24) / 255.0)
    np.testing.assert_array_equal(d.x_test, arrays["test_images"].reshape(5, 24) / 255.0)
    np.testing.assert_array_equal(d.y_train, arrays["train_labels"])
    np.testing.assert_array_equal(d.y_test, arrays["test_labels"])


def test_load_mnist_mixed_compression_prefers_raw(tmp_path, rng):
    arrays = write_tiny_mnist(tmp_path, rng, compress=True)
    # an uncompressed copy next to the .gz wins; make it differ to see which one is read
    write_idx(tmp_path / MNIST_FILES["test_labels"], (arrays["test_labels"] + 1) % 10)
    d = tiny_load(tmp_path)
    np.testing.assert_array_equal(d.y_test, (arrays["test_labels"] + 1) % 10)
    np.testing.assert_array_equal(d.y_train, arrays["train_labels"])


def test_load_mnist_uses_env_var(tmp_path, rng, monkeypatch):
    arrays = write_tiny_mnist(tmp_path / "m", rng)
    monkeypatch.setenv("MI_REF_DATA", str(tmp_path / "m"))
    np.testing.assert_array_equal(tiny_load(None).y_train, arrays["train_labels"])
    # an explicit directory wins over the environment
    monkeypatch.setenv("MI_REF_DATA", str(tmp_path / "elsewhere"))
    np.testing.assert_array_equal(tiny_load(tmp_path / "m").y_train, arrays["train_labels"])


def _assert_lists_files_and_remedy(message):
    for name in MNIST_FILES.values():
        assert name in message
    assert "mi-ref download mnist --to DIR" in message and "MI_REF_DATA" in message


def test_missing_directory_and_files(tmp_path, rng, monkeypatch):
    monkeypatch.delenv("MI_REF_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="MI_REF_DATA is not set") as err:
        load("mnist")
    _assert_lists_files_and_remedy(str(err.value))
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        load("mnist", tmp_path / "nope")
    _assert_lists_files_and_remedy(str(err.value))
    write_tiny_mnist(tmp_path, rng)
    os.remove(tmp_path / (MNIST_FILES["test_labels"] + ".gz"))
    with pytest.raises(FileNotFoundError, match="missing in .*: t10k-labels-idx1-ubyte;") as err:
        tiny_load(tmp_path)
    _assert_lists_files_and_remedy(str(err.value))


def _raw(path):
    return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()


def _corrupt_bad_magic(raw):
    return raw[:3] + bytes([raw[3] + 1]) + raw[4:]


def _corrupt_type_code(raw):
    return raw[:2] + b"\x09" + raw[3:]


def _corrupt_truncate(raw):
    return raw[:-3]


def _corrupt_trailing(raw):
    return raw + b"\x00\x00"


def _corrupt_short_header(raw):
    return raw[:6]


def _corrupt_tiny(raw):
    return raw[:2]


def _corrupt_count(raw):  # header says one example fewer; cut the data to match, so only the count is off
    n = int.from_bytes(raw[4:8], "big")
    per_example = (len(raw) - 4 - 4 * raw[3]) // n
    return raw[:4] + (n - 1).to_bytes(4, "big") + raw[8:len(raw) - per_example]


CORRUPTIONS = [
    # (file, corruption, compress, expected message)
    ("train_images", _corrupt_bad_magic, True, r"bad IDX magic number 0x00000804, expected 0x00000803"),
    ("test_labels", _corrupt_bad_magic, False, r"bad IDX magic number 0x00000802, expected 0x00000801"),
    ("train_labels", _corrupt_type_code, True, r"bad IDX magic number 0x00000901"),
    ("train_images", _corrupt_truncate, True, r"truncated IDX file: \d+ bytes, but its header"),
    ("test_labels", _corrupt_truncate, False, r"truncated IDX file"),
    ("test_images", _corrupt_short_header, False, r"truncated IDX file: 6 bytes, the header alone needs 16"),
    ("train_labels", _corrupt_tiny, False, r"shorter than the 4-byte magic"),
    ("test_images", _corrupt_trailing, True, r"2 trailing bytes"),
    ("train_images", _corrupt_count, True, r"wrong image count 6, expected 7"),
    ("test_labels", _corrupt_count, False, r"wrong label count 4, expected 5"),
]


@pytest.mark.parametrize("key, corrupt, compress, message", CORRUPTIONS)
def test_corrupt_files_name_file_and_defect(tmp_path, rng, key, corrupt, compress, message):
    write_tiny_mnist(tmp_path, rng, compress=compress)
    path = tmp_path / (MNIST_FILES[key] + (".gz" if compress else ""))
    bad = corrupt(_raw(path))
    path.write_bytes(gzip.compress(bad) if compress else bad)
    with pytest.raises(ValueError, match=message) as err:
        tiny_load(tmp_path)
    assert str(path) in str(err.value)


def test_wrong_image_size(tmp_path, rng):
    write_tiny_mnist(tmp_path, rng, shape=(4, 6))
    with pytest.raises(ValueError, match=r"t10k-images.*wrong image size 4x6, expected 4x5|"
                                         r"train-images.*wrong image size 4x6, expected 4x5"):
        tiny_load(tmp_path, shape=(4, 5))


def test_image_and_label_counts_must_match(tmp_path, rng):
    write_tiny_mnist(tmp_path, rng)
    write_idx(tmp_path / (MNIST_FILES["train_labels"] + ".gz"), np.zeros(6, dtype=np.uint8))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz: wrong label count 6, expected 7"):
        tiny_load(tmp_path)
    # without fixed counts the loader still insists that images and labels pair up
    with pytest.raises(ValueError, match="has 7 images but .* has 6 labels"):
        load_mnist(tmp_path, n_train=None, n_test=5, image_shape=(4, 6))


def test_labels_out_of_range(tmp_path, rng):
    write_tiny_mnist(tmp_path, rng)
    labels = np.array([0, 1, 10, 3, 255], dtype=np.uint8)
    write_idx(tmp_path / (MNIST_FILES["test_labels"] + ".gz"), labels)
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.gz: 2 labels out of range 0..9 "
                                         r"\(first: label 10 at index 2\)"):
        tiny_load(tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "crc"])
def test_damaged_gzip_is_a_value_error_naming_the_file(tmp_path, rng, damage):
    write_tiny_mnist(tmp_path, rng)
    path = tmp_path / (MNIST_FILES["train_images"] + ".gz")
    payload = path.read_bytes()
    if damage == "truncated":
        payload = payload[: len(payload) // 2]
    elif damage == "garbage":
        payload = b"this is not gzip at all"
    else:  # flip a byte of the CRC-32 trailer
        payload = payload[:-8] + bytes([payload[-8] ^ 0xFF]) + payload[-7:]
    path.write_bytes(payload)
    with pytest.raises(ValueError, match="not a valid gzip file") as err:
        tiny_load(tmp_path)
    assert str(path) in str(err.value)


def test_read_idx_helpers_accept_no_expectations(tmp_path, rng):
    images = rng.integers(0, 256, size=(3, 2, 2), dtype=np.uint8)
    write_idx(tmp_path / "i", images)
    write_idx(tmp_path / "l", np.array([0, 9, 4], dtype=np.uint8))
    assert read_idx_images(tmp_path / "i").shape == (3, 2, 2)
    assert list(read_idx_labels(tmp_path / "l")) == [0, 9, 4]
    with pytest.raises(ValueError, match="out of range 0..3"):
        read_idx_labels(tmp_path / "l", n_classes=4)


@pytest.mark.mnist
def test_real_mnist_loads(mnist_dir):
    d = load("mnist", mnist_dir)
    assert d.image_shape == (28, 28)
    assert d.x_train.shape == (60000, 784) and d.x_test.shape == (10000, 784)
    assert d.x_train.dtype == np.float64 and d.y_test.dtype == np.int64
    assert d.x_train.min() == 0.0 and d.x_train.max() == 1.0
    # class counts of the canonical MNIST
    assert list(np.bincount(d.y_test)) == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert np.bincount(d.y_train).sum() == 60000 and np.bincount(d.y_train)[1] == 6742
    x1, x2 = split_views(d.x_test, d.image_shape)
    assert x1.shape == x2.shape == (10000, 392)


# ---------------------------------------------------------------- views


def test_split_views_rows(rng):
    images = rng.random((3, 6, 5))
    x1, x2 = split_views(images.reshape(3, 30), (6, 5))
    np.testing.assert_array_equal(x1, images[:, :3].reshape(3, 15))
    np.testing.assert_array_equal(x2, images[:, 3:].reshape(3, 15))
    # MNIST 392 + 392, digits 32 + 32; odd H: the bottom view has the extra row
    assert [v.shape[1] for v in split_views(np.zeros((2, 784)), (28, 28))] == [392, 392]
    assert [v.shape[1] for v in split_views(np.zeros((2, 64)), (8, 8))] == [32, 32]
    assert [v.shape[1] for v in split_views(np.zeros((2, 15)), (5, 3))] == [6, 9]


def test_split_views_validates():
    with pytest.raises(ValueError, match=r"shape \(N, 784\).*got \(2, 783\)"):
        split_views(np.zeros((2, 783)), (28, 28))
    with pytest.raises(ValueError, match="flattened images"):
        split_views(np.zeros((2, 28, 28)), (28, 28))
    with pytest.raises(ValueError, match=r"shape = \(H, W\)"):
        split_views(np.zeros((2, 4)), (4,))
    with pytest.raises(ValueError, match="H >= 2"):
        split_views(np.zeros((2, 4)), (1, 4))


# ---------------------------------------------------------------- shared noise


def test_shared_noise_is_one_vector_per_example(rng):
    x1, x2 = rng.random((500, 40)), rng.random((500, 40))
    n1, n2 = add_shared_noise(x1, x2, 0.3, rng)
    np.testing.assert_allclose(n1 - x1, n2 - x2, rtol=0, atol=1e-15)  # the same vector on both views
    z1, z2 = add_shared_noise(np.zeros((3, 4)), np.zeros((3, 4)), 0.3, rng)
    np.testing.assert_array_equal(z1, z2)  # bit for bit
    eps = n1 - x1
    assert not np.allclose(eps[0], eps[1])  # a fresh vector for every example
    # 20000 N(0, 0.09) draws: the sample std is within 3 % of 0.3 (standard error ~0.5 %)
    assert abs(eps.std() / 0.3 - 1) < 0.03 and abs(eps.mean()) < 0.01


def test_shared_noise_deterministic_and_inputs_untouched():
    x1, x2 = np.ones((4, 3)), np.zeros((4, 3))
    a = add_shared_noise(x1, x2, 0.1, np.random.default_rng(5))
    b = add_shared_noise(x1, x2, 0.1, np.random.default_rng(5))
    np.testing.assert_array_equal(a[0], b[0])
    assert np.all(x1 == 1) and np.all(x2 == 0)
    # eps = std * standard_normal((N, D)) from the given generator
    np.testing.assert_array_equal(a[1], 0.1 * np.random.default_rng(5).standard_normal((4, 3)))


def test_shared_noise_std_zero_copies_and_draws_nothing(rng):
    x1, x2 = np.ones((2, 3)), np.zeros((2, 3))
    before = rng.bit_generator.state
    n1, n2 = add_shared_noise(x1, x2, 0.0, rng)
    assert rng.bit_generator.state == before
    np.testing.assert_array_equal(n1, x1) and np.testing.assert_array_equal(n2, x2)
    assert n1 is not x1 and not np.shares_memory(n1, x1)


def test_shared_noise_validates(rng):
    with pytest.raises(ValueError, match=r"same shape.*\(2, 3\) and \(2, 4\)"):
        add_shared_noise(np.zeros((2, 3)), np.zeros((2, 4)), 0.1, rng)
    with pytest.raises(ValueError, match=">= 0"):
        add_shared_noise(np.zeros((2, 3)), np.zeros((2, 3)), -0.1, rng)
    with pytest.raises(ValueError, match=">= 0"):
        add_shared_noise(np.zeros((2, 3)), np.zeros((2, 3)), float("nan"), rng)
    with pytest.raises(ValueError, match="numpy.random.Generator"):
        add_shared_noise(np.zeros((2, 3)), np.zeros((2, 3)), 0.1, 0)


# ---------------------------------------------------------------- batches


def take(it, k):
    return [next(it) for _ in range(k)]


def test_batches_cover_each_epoch_once_and_drop_the_remainder():
    it = BatchIterator(10, 3, np.random.default_rng(1))
    assert it.batches_per_epoch == 3
    epochs = [np.concatenate(take(it, 3)) for _ in range(4)]
    for e in epochs:
        assert e.dtype == np.int64 and e.size == 9 and np.unique(e).size == 9 and e.max() < 10
    assert it.epoch == 3
    assert len({tuple(e) for e in epochs}) == 4  # reshuffled every epoch
    # the permutation is rng.permutation(n), one per epoch
    ref = np.random.default_rng(1)
    np.testing.assert_array_equal(epochs[0], ref.permutation(10)[:9])
    np.testing.assert_array_equal(epochs[1], ref.permutation(10)[:9])


def test_batches_deterministic():
    a = take(BatchIterator(50, 8, np.random.default_rng(3)), 20)
    b = take(BatchIterator(50, 8, np.random.default_rng(3)), 20)
    c = take(BatchIterator(50, 8, np.random.default_rng(4)), 20)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize("taken", [0, 1, 5, 6, 7, 13])  # 6 batches per epoch: mid-epoch and boundaries
def test_batch_state_save_and_restore(taken):
    it = BatchIterator(20, 3, np.random.default_rng(7))
    take(it, taken)
    state = json.loads(json.dumps(it.state()))  # plain ints and dicts: survives JSON
    expected = take(it, 15)
    resumed = BatchIterator.from_state(state)
    assert all(np.array_equal(x, y) for x, y in zip(take(resumed, 15), expected))
    fresh = BatchIterator(20, 3, np.random.default_rng(999)).restore(state)
    assert all(np.array_equal(x, y) for x, y in zip(take(fresh, 15), expected))
    assert fresh.epoch == it.epoch and fresh.position == it.position


def test_batch_state_other_bit_generator():
    it = BatchIterator(9, 2, np.random.Generator(np.random.MT19937(1)))
    take(it, 5)
    state = json.loads(json.dumps(it.state()))
    assert all(np.array_equal(x, y) for x, y in zip(take(BatchIterator.from_state(state), 9), take(it, 9)))


def test_batch_iterator_validates():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="batch_size 11 is larger than the number of examples 10"):
        BatchIterator(10, 11, rng)
    for n, b in ((0, 1), (10, 0), (10, 2.5), (True, 1)):
        with pytest.raises(ValueError, match="positive integer"):
            BatchIterator(n, b, rng)
    with pytest.raises(ValueError, match="numpy.random.Generator"):
        BatchIterator(10, 2, np.random.RandomState(0))
    state = BatchIterator(10, 2, rng).state()
    with pytest.raises(ValueError, match="n=10, batch_size=2 but this iterator has n=10, batch_size=3"):
        BatchIterator(10, 3, rng).restore(state)
    with pytest.raises(ValueError, match="lacks the keys"):
        BatchIterator(10, 2, rng).restore({"n": 10})
    with pytest.raises(ValueError, match="0 <= position <= 5"):
        BatchIterator(10, 2, rng).restore(dict(state, position=6))
    with pytest.raises(ValueError, match="bit generator"):
        BatchIterator(10, 2, np.random.Generator(np.random.MT19937(0))).restore(state)
    with pytest.raises(ValueError, match="rng state"):
        BatchIterator.from_state(dict(state, rng={"bit_generator": "NoSuch"}))



# ---------------------------------------------------------------- the paper's shuffle-buffer stream


def test_shuffle_buffer_by_hand():
    """n = 5, buffer 3, the uniforms given: slot floor(u * length), refilled from the stored order, then
    shrinking once the order is used up; the next epoch starts a new buffer [0, 1, 2]."""
    it = ShuffleBufferIterator(5, 2, np.random.default_rng(0), buffer_size=3)
    # buffer [0, 1, 2], next 3
    assert it._take(0.5) == 1            # slot 1 -> [0, 3, 2], next 4
    assert it._take(0.0) == 0            # slot 0 -> [4, 3, 2], next 5 = n
    assert it._take(0.9) == 2            # slot 2, nothing left to read -> [4, 3]
    assert it._take(0.6) == 3            # slot 1 -> [4]
    assert it._take(0.1) == 4            # -> [], the pass is over
    assert it.epoch == 0 and it._buffer == []
    assert it._take(0.99) == 2 and it.epoch == 1   # a new pass: [0, 1, 2], slot 2
    assert it._buffer == [0, 1, 3]


def test_shuffle_buffer_batches_cross_epochs_and_drop_nothing():
    n, b, buf = 10, 3, 4
    it = ShuffleBufferIterator(n, b, np.random.default_rng(1), buffer_size=buf)
    stream = np.concatenate(take(it, 20))                  # 60 examples = 6 whole epochs
    assert stream.dtype == np.int64
    for e in range(6):                                     # every epoch is a permutation: nothing dropped
        epoch = stream[e * n:(e + 1) * n]
        assert sorted(epoch) == list(range(n))
        # example i enters the buffer at output i - buf + 1 at the earliest: never emitted before that
        for pos, i in enumerate(epoch):
            assert pos >= i - buf + 1
    # the 4th batch (examples 9, 10, 11 of the stream) holds the end of epoch 0 and the start of epoch 1
    assert it.epoch == 5
    assert len({tuple(stream[e * n:(e + 1) * n]) for e in range(6)}) > 1        # reshuffled every pass


def test_shuffle_buffer_is_uniform_when_the_buffer_holds_everything():
    """buffer >= n: each pass is a uniformly random permutation; position 0 takes every example about
    equally often."""
    it = ShuffleBufferIterator(4, 4, np.random.default_rng(2), buffer_size=1000)
    firsts = np.array([next(it)[0] for _ in range(4000)])
    counts = np.bincount(firsts, minlength=4)
    assert counts.min() > 900 and counts.max() < 1100       # 1000 +- 3 sd (sd ~ 27)


@pytest.mark.parametrize("taken", [0, 1, 3, 4, 7, 13])   # 10 examples, batches of 3: mid-epoch and straddling
def test_shuffle_buffer_state_save_and_restore(taken):
    it = ShuffleBufferIterator(10, 3, np.random.default_rng(7), buffer_size=4)
    take(it, taken)
    state = json.loads(json.dumps(it.state()))            # plain JSON, the buffer included
    expected = take(it, 15)
    fresh = ShuffleBufferIterator(10, 3, np.random.default_rng(999), buffer_size=4).restore(state)
    assert all(np.array_equal(x, y) for x, y in zip(take(fresh, 15), expected))
    assert fresh.epoch == it.epoch and fresh._buffer == it._buffer and fresh._next == it._next


def test_shuffle_buffer_validates():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="batch_size 11 is larger than the number of examples 10"):
        ShuffleBufferIterator(10, 11, rng)
    with pytest.raises(ValueError, match="shuffle buffer size"):
        ShuffleBufferIterator(10, 2, rng, buffer_size=0)
    state = ShuffleBufferIterator(10, 2, rng, buffer_size=4).state()
    with pytest.raises(ValueError, match="buffer_size=4, this run 5"):
        ShuffleBufferIterator(10, 2, rng, buffer_size=5).restore(state)
    with pytest.raises(ValueError, match="needs the keys"):
        ShuffleBufferIterator(10, 2, rng, buffer_size=4).restore({"n": 10})
    for damaged in (dict(state, buffer=[0, 0, 1, 2]), dict(state, buffer=[0, 1, 2, 9]), dict(state, next=11),
                    dict(state, buffer=[0, 1]), dict(state, epoch=-1), dict(state, buffer=[0, 1, 2, "3"])):
        with pytest.raises(ValueError, match="edited or damaged"):
            ShuffleBufferIterator(10, 2, rng, buffer_size=4).restore(damaged)
    with pytest.raises(ValueError, match="'epoch_permutation'"):
        ShuffleBufferIterator(10, 2, rng, buffer_size=4).restore(BatchIterator(10, 2, rng).state())
    with pytest.raises(ValueError, match="'shuffle_buffer'"):
        BatchIterator(10, 2, rng).restore(state)
    with pytest.raises(ValueError, match="unknown batching 'sorted'"):
        batch_stream("sorted", 10, 2, rng)

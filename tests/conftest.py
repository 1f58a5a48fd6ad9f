"""Shared test configuration.

* ``@pytest.mark.slow`` marks paper-scale checks that take minutes: skipped unless ``MI_REF_SLOW=1``.
* ``mnist_dir`` is the shared MNIST folder beside the repository (``../shared/data/mnist``), or
  ``MI_REF_DATA``; tests that need it are skipped with a reason when neither holds the files.
"""

import os
from pathlib import Path

import pytest

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


def pytest_collection_modifyitems(config, items):
    if os.environ.get("MI_REF_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="paper-scale check: set MI_REF_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def mnist_dir():
    for candidate in (os.environ.get("MI_REF_DATA"), SHARED_MNIST):
        if not candidate:
            continue
        folder = Path(candidate)
        if any((folder / n).exists() for n in ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte")):
            return folder
    pytest.skip(f"MNIST IDX files not found in MI_REF_DATA or {SHARED_MNIST}")

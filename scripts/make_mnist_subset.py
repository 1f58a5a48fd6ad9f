"""Rebuild mi-ref's embedded MNIST subset (``mi_ref/mnist_subset/``) from the four standard MNIST IDX files.

The rule (:func:`mi_ref.views.first_per_class`): from each file, the first N_c images of every class
c in file order, kept in file order. The training part takes 1000 images per class (10000) from
train-images-idx3-ubyte, the test part 500 per class (5000) from t10k-images-idx3-ubyte. The four files
are written as gzip-compressed IDX files (level 9, no name, mtime 0) under the standard names.

Usage::

    python scripts/make_mnist_subset.py --data-dir ~/mnist            # rewrite mi_ref/mnist_subset/
    python scripts/make_mnist_subset.py --data-dir ~/mnist --check    # only compare with the shipped files

The uncompressed content of every file must equal the SHA-256 pins in :data:`mi_ref.datasets.MNIST_SUBSET_SHA256`,
bit for bit; the script checks that before it writes anything (exit code 1 if not). The gzip bytes
themselves may differ with another zlib version; mi-ref checks the uncompressed content on every load.
"""

import argparse
import hashlib
import sys
from pathlib import Path

from mi_ref.datasets import MNIST_FILES, MNIST_SUBSET_COUNTS, MNIST_SUBSET_DIR, MNIST_SUBSET_SHA256, mnist_dir
from mi_ref.idx import IMAGES_MAGIC, LABELS_MAGIC, find_idx_file, idx_bytes, read_file_bytes, read_idx, write_idx
from mi_ref.views import first_per_class


def build(data_dir):
    """{file name: uint8 array} of the subset, from the full MNIST files in ``data_dir``."""
    directory = mnist_dir(data_dir)
    out = {}
    for split, prefix in (("train", "train"), ("test", "test")):
        images = read_idx(find_idx_file(directory, MNIST_FILES[f"{prefix}_images"]), IMAGES_MAGIC)
        labels = read_idx(find_idx_file(directory, MNIST_FILES[f"{prefix}_labels"]), LABELS_MAGIC)
        keep = first_per_class(labels, MNIST_SUBSET_COUNTS[split])
        out[MNIST_FILES[f"{prefix}_images"]] = images[keep]
        out[MNIST_FILES[f"{prefix}_labels"]] = labels[keep]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="directory of the four MNIST IDX files (default: $MI_REF_DATA)")
    parser.add_argument("--out", default=str(MNIST_SUBSET_DIR), metavar="DIR",
                        help=f"where to write the subset (default: the package's {MNIST_SUBSET_DIR})")
    parser.add_argument("--check", action="store_true", help="only compare with the files in --out")
    args = parser.parse_args(argv)
    arrays = build(args.data_dir)
    ok = True
    for name, array in arrays.items():
        content = idx_bytes(array)
        digest = hashlib.sha256(content).hexdigest()
        pinned = MNIST_SUBSET_SHA256[name]
        status = "matches its pin" if digest == pinned else f"DIFFERS from its pin {pinned}"
        ok &= digest == pinned
        print(f"{name}: {array.shape}, sha256 {digest} {status}")
        if args.check:
            shipped = Path(args.out) / f"{name}.gz"
            same = shipped.is_file() and read_file_bytes(shipped) == content
            ok &= same
            print(f"  {shipped}: {'identical content' if same else 'MISSING or different'}")
    if not ok:
        print("the rebuilt subset does not match the pins: nothing written", file=sys.stderr)
        return 1
    if not args.check:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        for name, array in arrays.items():
            write_idx(Path(args.out) / f"{name}.gz", array)
            print(f"wrote {Path(args.out) / (name + '.gz')} ({(Path(args.out) / (name + '.gz')).stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

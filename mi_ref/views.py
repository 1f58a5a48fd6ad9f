"""The math of the inputs: pixels scaled to [0, 1], the choice of examples by label, the paper's two views
and the shared noise added to both (README, "The paper's settings").

Pure functions of arrays (and of an explicit ``numpy.random.Generator``): nothing here reads or writes a
file. The datasets that feed them are read by :mod:`mi_ref.datasets`; the batches over them are drawn by
:mod:`mi_ref.batches`.

* :func:`to_unit_interval`: x = pixel / max_value, each image flattened row by row.
* :func:`stratified_split` and :func:`first_per_class`: which examples of a labelled set form a part of it
  (the digits' fixed test split; the rule of the embedded MNIST subset).
* :func:`split_views`: x1 = top half of the rows of every image, x2 = bottom half (MNIST: 392 + 392
  values; digits: 32 + 32).
* :func:`add_shared_noise`: ONE Gaussian vector per example, added to both views.
"""

import numpy as np

from .checks import generator

# ----------------------------------------------------------------------------------------------------
# pixels


def to_unit_interval(pixels, max_value):
    """Images of integer-valued pixels in 0..``max_value`` as float64 in [0, 1], flattened row by row.

    ``pixels: (N, ...)`` (e.g. ``(N, H, W)`` uint8, or ``(N, H * W)``) -> ``x: (N, prod(...))`` with
    x = float64(pixel) / max_value (one correctly rounded division per value). MNIST: max_value = 255;
    scikit-learn's digits: 16. ``ValueError`` for a max_value that is not a finite number > 0, an array
    without an example axis, or a pixel outside [0, max_value] (the images are not of the kind named).
    """
    max_value = float(max_value)
    if not (np.isfinite(max_value) and max_value > 0):
        raise ValueError(f"max_value must be a finite number > 0 (the largest pixel value), got {max_value!r}")
    pixels = np.asarray(pixels)
    if pixels.ndim < 1:
        raise ValueError(f"pixels must hold one image per row, (N, ...), got a scalar of dtype {pixels.dtype}")
    x = pixels.reshape(pixels.shape[0], -1).astype(np.float64)
    if x.size and not (x.min() >= 0 and x.max() <= max_value):
        raise ValueError(f"pixel values must lie in [0, {max_value:g}], got [{x.min():g}, {x.max():g}]; "
                         "pass the largest value the images' format can hold as max_value")
    x /= max_value
    return x


# ----------------------------------------------------------------------------------------------------
# choosing examples by label


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


def first_per_class(labels, per_class, n_classes=10):
    """The first ``per_class`` examples of every class 0..n_classes-1 in the given order, as sorted indices
    (the order kept). The rule of the embedded MNIST subset. ``ValueError`` if a class has fewer."""
    labels = np.asarray(labels)
    keep = []
    for c in range(n_classes):
        members = np.flatnonzero(labels == c)
        if members.size < per_class:
            raise ValueError(f"class {c} has {members.size} examples, fewer than the {per_class} the subset takes")
        keep.append(members[:per_class])
    return np.sort(np.concatenate(keep))


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
    generator(rng)
    if std == 0:
        return x1.copy(), x2.copy()
    eps = rng.standard_normal(x1.shape) * std
    return x1 + eps, x2 + eps

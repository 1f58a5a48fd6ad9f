"""The paper's linear evaluation protocol (README, "The paper's settings": the linear probe).

The quality of a representation g1 is the test accuracy of a linear classifier trained on the codes
g1(x1) of the training images:

    scaler = MinMaxScaler().fit(train_codes)            # per feature: (z - min) / (max - min), train stats
    clf = LogisticRegression(solver="saga", tol=0.1, C=10, random_state=seed)   # multinomial softmax
    clf.fit(scaler.transform(train_codes), train_labels)
    accuracy = mean(clf.predict(scaler.transform(test_codes)) == test_labels)

The pixel baseline is the same probe on the raw top-half pixels x1 (with the same shared noise as the
experiment, if any): on MNIST 0.849 without noise and 0.842 with noise std 0.05 (``mi-ref baseline``,
seed 0, scikit-learn 1.9; the paper says about 0.835 with noise).
"""

import warnings

import numpy as np

from .checks import positive_int
from .views import add_shared_noise, split_views

PROBE_C = 10.0
PROBE_TOL = 0.1
PROBE_MAX_ITER = 100  # scikit-learn's default, which the paper's notebook used


def _check_codes(codes, labels, which):
    codes = np.asarray(codes, dtype=np.float64)
    labels = np.asarray(labels)
    if codes.ndim != 2 or codes.shape[0] < 1 or codes.shape[1] < 1:
        raise ValueError(f"{which}_codes must be a 2-D array (n_examples, code_dim) with n, code_dim >= 1, "
                         f"got shape {codes.shape}")
    if labels.ndim != 1 or labels.shape[0] != codes.shape[0]:
        raise ValueError(f"{which}_labels must be 1-D with one label per row of {which}_codes "
                         f"({codes.shape[0]}), got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{which}_labels must be integer class labels, got dtype {labels.dtype}")
    if not np.all(np.isfinite(codes)):
        bad = int(np.count_nonzero(~np.isfinite(codes)))
        raise ValueError(f"{which}_codes hold {bad} non-finite values (NaN or inf); the encoder diverged or "
                         "its inputs were invalid: the probe needs finite codes")
    return codes, labels


def linear_probe(train_codes, train_labels, test_codes, test_labels, seed=0, max_iter=PROBE_MAX_ITER):
    """Test accuracy of the paper's linear probe (see the module docstring for the formula): the mean of
    :func:`probe_predictions` ``== test_labels``, a float in [0, 1]."""
    predictions = probe_predictions(train_codes, train_labels, test_codes, test_labels, seed, max_iter)
    return float(np.mean(predictions == np.asarray(test_labels)))


def probe_predictions(train_codes, train_labels, test_codes, test_labels, seed=0, max_iter=PROBE_MAX_ITER):
    """The paper's linear probe's predicted class of every test example, ``(M,)`` (see the module
    docstring; ``test_labels`` are only checked). Per-example predictions let two probes on the same test
    images be compared pair by pair (a paired bootstrap of an accuracy difference).

    Shapes: ``train_codes: (N, D)``, ``train_labels: (N,)``, ``test_codes: (M, D)``, ``test_labels: (M,)``.
    The MinMaxScaler is fitted on the train codes only. ``LogisticRegression(solver='saga', tol=0.1, C=10,
    random_state=seed, max_iter=max_iter)`` is multinomial (softmax) for more than two classes, the
    default of current scikit-learn. saga visits the examples in a random order, so the result is
    deterministic given ``seed`` (and the scikit-learn version).

    ``ConvergenceWarning`` is silenced on purpose: the protocol fixes ``tol=0.1`` and the iteration budget,
    so stopping at ``max_iter`` is part of the protocol, not a fault to report at every evaluation.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import MinMaxScaler

    train_codes, train_labels = _check_codes(train_codes, train_labels, "train")
    test_codes, test_labels = _check_codes(test_codes, test_labels, "test")
    if train_codes.shape[1] != test_codes.shape[1]:
        raise ValueError(f"train and test codes must have the same width, got {train_codes.shape[1]} and "
                         f"{test_codes.shape[1]}; encode both with the same encoder")
    if np.unique(train_labels).size < 2:
        raise ValueError(f"the probe needs at least 2 classes in train_labels, got {np.unique(train_labels)}")
    positive_int(max_iter, "max_iter")

    scaler = MinMaxScaler().fit(train_codes)
    clf = LogisticRegression(solver="saga", tol=PROBE_TOL, C=PROBE_C, max_iter=int(max_iter),
                             random_state=int(seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        clf.fit(scaler.transform(train_codes), train_labels)
    return clf.predict(scaler.transform(test_codes))


def encode_hits(correct):
    """The probe's outcome on every test image as text for a metrics row: ``base64(numpy.packbits(c))`` with
    c[i] = 1 where test image i is classified correctly (bits in image order, most significant bit first,
    the last byte padded with zeros). 2000 test images take 336 characters, MNIST's 10000 take 1668.
    :func:`decode_hits` is the inverse. With the outcomes of two probes on the same test images, a difference
    of accuracies has its paired standard error (:func:`paired_se`)."""
    import base64
    return base64.b64encode(np.packbits(np.asarray(correct, dtype=bool))).decode("ascii")


def decode_hits(text, n):
    """The boolean outcomes ``(n,)`` of :func:`encode_hits`; ``ValueError`` if ``text`` does not hold n bits."""
    import base64
    import binascii
    try:
        packed = np.frombuffer(base64.b64decode(text.encode("ascii"), validate=True), dtype=np.uint8)
    except (binascii.Error, ValueError, AttributeError) as err:
        raise ValueError(f"probe_hits is not base64 text ({err})") from None
    if packed.size != (n + 7) // 8:
        raise ValueError(f"probe_hits holds {8 * packed.size} bits, expected {n} (one per test image)")
    return np.unpackbits(packed)[:n].astype(bool)


def paired_se(hits_a, hits_b):
    """Standard error of accuracy(a) - accuracy(b) over the same M test images, from the per-image outcomes:
    sd(c_a - c_b) / sqrt(M) (sample sd, ddof = 1). Images both probes get right, or both wrong, add nothing
    to the difference, so this is smaller than the SE of two independent accuracies."""
    d = np.asarray(hits_a, dtype=float) - np.asarray(hits_b, dtype=float)
    return float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else 0.0


def probe_outcomes(train_codes, train_labels, test_codes, test_labels, seed=0, max_iter=PROBE_MAX_ITER):
    """``(accuracy, hits)`` of the paper's probe: its test accuracy and :func:`encode_hits` of its per-image
    outcomes (the metrics rows' ``accuracy`` and ``probe_hits``)."""
    correct = probe_predictions(train_codes, train_labels, test_codes, test_labels, seed, max_iter) == \
        np.asarray(test_labels)
    return float(np.mean(correct)), encode_hits(correct)


def pixel_baseline(dataset, noise_std, rng, seed=0, max_iter=PROBE_MAX_ITER, hits=False):
    """The probe on raw top-half pixels: the accuracy a learned g1 must beat.

    x1 = top half of each image (:func:`mi_ref.views.split_views`); with ``noise_std > 0`` the train and
    then the test images get fresh shared noise from ``rng`` (:func:`mi_ref.views.add_shared_noise`, one
    N(0, noise_std^2) vector per image), as the experiments feed them to the encoder. Then
    ``linear_probe(x1_train, y_train, x1_test, y_test, seed)``. Paper: about 0.835 on MNIST with
    noise std 0.05. With ``hits=True`` returns :func:`probe_outcomes`, ``(accuracy, probe_hits)``.
    """
    x1_train, _ = split_views(dataset.x_train, dataset.image_shape)
    x1_test, _ = split_views(dataset.x_test, dataset.image_shape)
    # only x1 is probed; add_shared_noise draws the same (N, D) noise whatever the second view is
    x1_train, _ = add_shared_noise(x1_train, x1_train, noise_std, rng)
    x1_test, _ = add_shared_noise(x1_test, x1_test, noise_std, rng)
    if hits:
        return probe_outcomes(x1_train, dataset.y_train, x1_test, dataset.y_test, seed=seed, max_iter=max_iter)
    return linear_probe(x1_train, dataset.y_train, x1_test, dataset.y_test, seed=seed, max_iter=max_iter)

"""Tests for mi_ref.probe (the paper's linear evaluation protocol) and the `mi-ref baseline` command."""

import warnings

import numpy as np
import pytest

from mi_ref.cli import main
from mi_ref.datasets import load
from mi_ref.probe import linear_probe, pixel_baseline


def blobs(rng, n_per_class, centers, std=0.1):
    centers = np.asarray(centers, dtype=float)
    labels = np.repeat(np.arange(len(centers)), n_per_class)
    return centers[labels] + std * rng.standard_normal((labels.size, centers.shape[1])), labels


CENTERS = [[0, 0, 0], [5, 0, 1], [0, 5, -1], [5, 5, 3]]


def test_separable_toy_problem_is_solved():
    rng = np.random.default_rng(0)
    x_train, y_train = blobs(rng, 50, CENTERS)
    x_test, y_test = blobs(rng, 30, CENTERS)
    assert linear_probe(x_train, y_train, x_test, y_test) == 1.0


def test_chance_level_on_noise_labels():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((600, 5))
    y = rng.integers(0, 3, 600)
    acc = linear_probe(x[:400], y[:400], x[400:], y[400:])
    assert 0.2 < acc < 0.5  # 200 test points, chance 1/3, binomial std ~0.033


def test_deterministic_given_seed_and_invariant_to_feature_scaling():
    rng = np.random.default_rng(2)
    centers = [[0, 0], [1.0, 0.2], [0.3, 1.0]]
    x_train, y_train = blobs(rng, 100, centers, std=0.6)
    x_test, y_test = blobs(rng, 100, centers, std=0.6)
    a = linear_probe(x_train, y_train, x_test, y_test, seed=3)
    assert a == linear_probe(x_train, y_train, x_test, y_test, seed=3)
    assert 0.4 < a < 1.0  # overlapping classes: a real, non-trivial accuracy
    # MinMaxScaler fitted on the train codes: a positive per-feature affine map of all codes changes
    # nothing (up to rounding in the scaled inputs, hence a tolerance of one test example)
    scale, shift = np.array([100.0, 0.01]), np.array([-7.0, 3.0])
    b = linear_probe(x_train * scale + shift, y_train, x_test * scale + shift, y_test, seed=3)
    assert abs(a - b) <= 1 / len(y_test)


def test_convergence_warnings_are_silenced():
    rng = np.random.default_rng(3)
    x, y = blobs(rng, 40, CENTERS, std=3.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        linear_probe(x, y, x, y, max_iter=1)
    assert not [w for w in caught if "Converg" in type(w.message).__name__]


def test_probe_validates_inputs():
    x, y = np.zeros((4, 2)), np.array([0, 1, 0, 1])
    x[:, 0] = [0, 1, 2, 3]
    bad = x.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="train_codes hold 1 non-finite values"):
        linear_probe(bad, y, x, y)
    bad[1, 1] = np.inf
    with pytest.raises(ValueError, match="test_codes hold 1 non-finite values"):
        linear_probe(x, y, bad, y)
    with pytest.raises(ValueError, match=r"train_labels must be 1-D with one label per row of train_codes \(4\)"):
        linear_probe(x, y[:3], x, y)
    with pytest.raises(ValueError, match="test_labels must be 1-D"):
        linear_probe(x, y, x, y[:, None])
    with pytest.raises(ValueError, match="same width, got 2 and 3"):
        linear_probe(x, y, np.zeros((4, 3)), y)
    with pytest.raises(ValueError, match=r"2-D array \(n_examples, code_dim\)"):
        linear_probe(x[:, 0], y, x, y)
    with pytest.raises(ValueError, match="at least 2 classes"):
        linear_probe(x, np.zeros(4, dtype=int), x, y)
    with pytest.raises(ValueError, match="integer class labels"):
        linear_probe(x, y * 1.0, x, y)
    with pytest.raises(ValueError, match="max_iter"):
        linear_probe(x, y, x, y, max_iter=0)


def test_pixel_baseline_on_digits():
    d = load("digits")
    clean = pixel_baseline(d, 0.0, np.random.default_rng(0))
    assert clean == pixel_baseline(d, 0.0, np.random.default_rng(0))
    # measured: 0.84 (scikit-learn 1.9); the top half of an 8x8 digit is a fair but imperfect cue
    assert 0.78 < clean < 0.9
    noisy = pixel_baseline(d, 0.5, np.random.default_rng(0))
    assert noisy == pixel_baseline(d, 0.5, np.random.default_rng(0))
    assert noisy < clean


def test_cli_baseline_digits(capsys):
    assert main(["baseline", "--dataset", "digits", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    expected = pixel_baseline(load("digits"), 0.0, np.random.default_rng(0))
    assert "digits" in out and out.strip().endswith(f"test accuracy {expected:.4f}")


def test_cli_baseline_errors(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("MI_REF_DATA", raising=False)
    assert main(["baseline", "--dataset", "mnist"]) == 2
    err = capsys.readouterr().err
    assert "mi-ref baseline: error:" in err and "mi-ref download mnist --to DIR" in err
    assert main(["baseline", "--dataset", "mnist", "--data-dir", str(tmp_path)]) == 2
    assert "train-images-idx3-ubyte" in capsys.readouterr().err
    assert main(["baseline", "--noise-std", "-1"]) == 2
    assert "--noise-std must be >= 0" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.mnist
def test_mnist_pixel_baselines(mnist_dir):
    """The paper (its notebook): about 0.835 with noise std 0.05 (0.839 measured with scikit-learn 1.9), 0.851 clean.

    Measured here (seed 0): 0.8417 noisy, 0.8486 clean; seeds 0-4 span 0.8367-0.8417 and 0.8486-0.8511.
    """
    d = load("mnist", mnist_dir)
    noisy = pixel_baseline(d, 0.05, np.random.default_rng(0), seed=0)
    clean = pixel_baseline(d, 0.0, np.random.default_rng(0), seed=0)
    assert 0.83 <= noisy <= 0.85
    assert 0.84 <= clean <= 0.86


def test_probe_hits_round_trip_and_the_paired_se():
    from mi_ref.probe import decode_hits, encode_hits, paired_se
    rng = np.random.default_rng(0)
    for n in (1, 7, 8, 9, 2000):
        correct = rng.random(n) < 0.8
        text = encode_hits(correct)
        assert isinstance(text, str) and len(text) == 4 * -(-((n + 7) // 8) // 3)
        np.testing.assert_array_equal(decode_hits(text, n), correct)
    with pytest.raises(ValueError, match="expected 2001"):
        decode_hits(encode_hits(np.ones(2000, bool)), 2001)
    with pytest.raises(ValueError, match="base64"):
        decode_hits("not base64!", 8)
    a = np.array([1, 1, 0, 0, 1], bool)
    b = np.array([1, 0, 0, 0, 1], bool)
    d = np.array([0, 1, 0, 0, 0], float)
    assert paired_se(a, b) == pytest.approx(d.std(ddof=1) / np.sqrt(5))


def test_probe_outcomes_agree_with_the_accuracy():
    from mi_ref.probe import decode_hits, linear_probe, probe_outcomes
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((300, 5)), rng.integers(0, 3, 300)
    x[np.arange(300), y] += 2.0
    accuracy, hits = probe_outcomes(x[:200], y[:200], x[200:], y[200:])
    assert accuracy == linear_probe(x[:200], y[:200], x[200:], y[200:])
    assert decode_hits(hits, 100).mean() == accuracy

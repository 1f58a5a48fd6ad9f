"""The benchmark's floor model (scripts/bench_steps.py): the work list it times must describe the models the
presets build, or "x of floor" measures the wrong thing. These tests check the list against the models'
own parameters, and the cold-weight GEMM timing against its contract; they time nothing for a verdict."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
bench_steps = pytest.importorskip("bench_steps")


def matrix_shapes(params):
    """Every parameter leaf with at least two axes, as the (fan_in, fan_out) matrix its GEMMs use (a conv
    kernel (kh, kw, c_in, c_out) as (kh * kw * c_in, c_out))."""
    from mi_ref.tree import tree_flatten
    return sorted((int(np.prod(leaf.shape[:-1])), int(leaf.shape[-1]))
                  for _, leaf in tree_flatten(params) if np.ndim(leaf) >= 2)


def gemm_matrices(critic, params):
    """The parameter matrices as the step's GEMMs read them: :func:`matrix_shapes`, except that the concat
    critic's first layer (dim_u + dim_v, H) is read as its two row blocks (dim_u, H) and (dim_v, H) (the
    pairwise form: each half once per batch, not once per pair) and its last layer (H, 1) lives inside the
    pairwise kernel, which the floor counts as activation GEMMs."""
    from mi_ref import accel, critics
    weights = matrix_shapes(params)
    critic = accel.original(critic)
    if isinstance(critic, critics.Concat):
        hidden = critic.mlp.dims[0]
        weights.remove((critic.dim_u + critic.dim_v, hidden))
        weights.remove((hidden, 1))
        weights = sorted(weights + [(critic.dim_u, hidden), (critic.dim_v, hidden)])
    return weights


@pytest.mark.parametrize("config", bench_steps.CONFIGS + bench_steps.EXTRA_CONFIGS)
def test_each_weight_marked_gemm_touches_a_parameter_matrix_and_each_matrix_is_read_forward(config):
    work, n_params = bench_steps.step_work(config)
    _, _, critic, params = bench_steps.build(config)
    weights = gemm_matrices(critic, params)
    gemms = [w for w in work if w[0] == "gemm"]
    assert all(len(w) == 6 and w[5] in (None, "b", "out") for w in gemms), gemms[:3]
    forward_reads = []
    for _, phase, m, k, n, weight in gemms:
        if weight == "b":
            shape = (k, n) if phase == "forward" else (n, k)            # the input gradient reads W^T
            assert shape in weights, (config, phase, (m, k, n), weights)
            if phase == "forward":
                forward_reads.append(shape)
        elif weight == "out":
            assert (m, n) in weights, (config, phase, (m, k, n), weights)
    assert bench_steps.step_flops(config) == sum(2 * m * k * n for _, _, m, k, n, _ in gemms) > 0
    # the paper's models: each parameter matrix of the encoders and the critic is read once per forward pass
    assert sorted(forward_reads) == weights, (config, sorted(forward_reads), weights)


@pytest.mark.parametrize("cold", [None, "b", "out"])
def test_gemm_seconds_times_every_orientation_and_rejects_an_unknown_cold_operand(cold, monkeypatch):
    monkeypatch.setattr(bench_steps, "COLD_BYTES", 2 ** 20)     # small rotations: a contract test, not a timing
    seconds = bench_steps.gemm_seconds(16, 8, 4, min_time=1e-4, runs=2, cold=cold)
    assert np.isfinite(seconds) and seconds > 0
    with pytest.raises(ValueError, match="cold must be"):
        bench_steps.gemm_seconds(16, 8, 4, cold="a")

"""Section 4, Fig. 4c: with non-i.i.d. negatives, I_NCE and I_NWJ stop being lower bounds.

One fixed batch of 128 pairs (X_i, Y_i) in R x R, i.i.d. from N(0, Sigma_z + Sigma_eps) or sharing one
Z ~ N(0, Sigma_z) (see :mod:`mi_ref.synthetic`); a concat critic (5 hidden layers of 10 ReLU units)
trained with Adam lr 1e-4 for 20000 steps to maximize I_NCE or I_NWJ on that batch; the estimate at every
step, smoothed, against the true MI -1/2 log(1 - rho^2) = 0.0204 nats.
"""

from dataclasses import dataclass

import numpy as np
from autograd import value_and_grad

from .. import bounds, critics
from ..optim import Adam, owned, state_from_arrays, state_to_arrays
from ..synthetic import SIGMA_EPS, SIGMA_Z, gaussian_mi, gaussian_pairs
from ..train import Progress, variant_streams
from ..tree import tree_from_dict, tree_to_dict
from . import Experiment, register

SAMPLINGS = ("iid", "non-iid")


@dataclass(frozen=True)
class Config:
    n_iters: int = 20000
    batch_size: int = 128
    lr: float = 1e-4
    hidden: tuple = (10, 10, 10, 10, 10)
    record_every: int = 200
    sigma_z: tuple = SIGMA_Z
    sigma_eps: tuple = SIGMA_EPS
    samplings: tuple = SAMPLINGS
    estimators: tuple = ("infonce", "nwj")

    def check(self):
        for name in ("n_iters", "batch_size", "record_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (a bound needs negatives), got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        unknown = sorted(set(self.samplings) - set(SAMPLINGS))
        if unknown:
            raise ValueError(f"unknown samplings {unknown}; expected a subset of {list(SAMPLINGS)}")
        for est in self.estimators:
            bounds.get_estimator(est)
        gaussian_mi(np.add(self.sigma_z, self.sigma_eps))


def train_variant(config, store, seed, index, sampling, estimator, progress):
    """Train the critic on one fixed batch of pairs.

    The estimate on the batch at every step (before that step's update) goes to ``arrays/NAME.npz`` as
    ``trace``; every ``record_every`` steps, and at the end, a metrics row holds the mean of the last
    ``record_every`` estimates (the smoothing of the paper's plot) and the true MI.
    """
    name = f"{sampling}-{estimator}"
    init_rng, data_rng, _, _ = variant_streams(seed, index)
    x, y = gaussian_pairs(config.batch_size, sampling == "iid", data_rng, config.sigma_z, config.sigma_eps)
    critic = critics.concat(1, 1, hidden=config.hidden)
    bound = bounds.get_estimator(estimator)
    true_mi = gaussian_mi(np.add(config.sigma_z, config.sigma_eps))
    params = critic.init(init_rng)
    adam = Adam(config.lr)
    state = adam.init(params)
    trace, start = [], 0
    ckpt = store.load_checkpoint(name) if store is not None else None
    if ckpt is not None:
        arrays, meta = ckpt
        params = tree_from_dict(params, arrays, "params/")
        state = state_from_arrays(params, arrays)
        trace = list(arrays["trace"])
        start = int(meta["step"])
        store.truncate_variant(name, start)
    elif store is not None:
        store.truncate_variant(name, None)
    params, state = owned(params, state)       # Adam below overwrites them in place
    grad_fn = value_and_grad(lambda p: -bound(critic.apply(p, x, y)))
    bar = Progress(f"sampling/{name} seed {seed}", config.n_iters, enabled=progress)

    def record(step):
        row = {"variant": name, "step": step, "bound": float(np.mean(trace[-config.record_every:])),
               "true_mi": true_mi, "sampling": sampling, "estimator": estimator}
        if store is not None:
            store.append_metrics(row)
            store.save_arrays(name, {"trace": np.array(trace)})
            store.save_checkpoint(name, dict(tree_to_dict(params, "params/"), **state_to_arrays(state),
                                             trace=np.array(trace)), {"step": step})
        bar.update(step, estimate=row["bound"], true_mi=true_mi)

    for step in range(start, config.n_iters):
        if step % config.record_every == 0 and step > start:
            record(step)
        loss, grads = grad_fn(params)
        trace.append(-float(loss))
        params, state = adam.update(params, grads, state, inplace=True)
    record(config.n_iters)
    if store is not None:
        store.mark_done(name)
    return np.array(trace)


def run(config, store, seed, dataset=None, progress=True):
    done = store.done_variants() if store is not None else []
    index = 0
    for sampling in config.samplings:
        for estimator in config.estimators:
            if f"{sampling}-{estimator}" not in done:
                train_variant(config, store, seed, index, sampling, estimator, progress)
            index += 1


EXPERIMENT = register(Experiment(
    name="sampling", figure="Fig. 4c",
    summary="with non-i.i.d. negatives the I_NCE and I_NWJ estimates exceed the true MI",
    presets={"paper": Config(), "quick": Config(n_iters=1500, lr=1e-3, record_every=50)},
    run=run))

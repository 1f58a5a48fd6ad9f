"""Section 4, Fig. 4c: with non-i.i.d. negatives, I_NCE and I_NWJ stop being lower bounds.

At every step a FRESH batch of 128 pairs (X_i, Y_i) in R x R: i.i.d. from N(0, Sigma_z + Sigma_eps), or
non-i.i.d., a new Z ~ N(0, Sigma_z) shared by the whole batch plus new eps_i ~ N(0, Sigma_eps) (see
:mod:`mi_ref.synthetic`). A concat critic (5 hidden layers of 10 ReLU units) is trained with Adam, lr 1e-4,
for 20000 steps to maximize I_NCE or I_NWJ; the estimate on each step's batch (before that step's
update) is recorded, and the figure shows it smoothed with a Gaussian filter of sigma 100 steps
(``scipy.ndimage.gaussian_filter1d``) against the true MI -1/2 log(1 - rho^2) = 0.0204 nats.

Fresh batches are the paper's protocol: in its notebook the sampling ops are part of the TensorFlow graph,
so every training step draws new samples. ``batches="fixed"`` draws one batch per variant and trains on it
throughout: the critic then overfits that batch and even the i.i.d. estimates rise far above the true MI
(an instructive failure, not the paper's experiment).
"""

from dataclasses import dataclass

import numpy as np
from autograd import value_and_grad

from .. import bounds, critics
from ..accel import twin
from ..checks import nonempty, one_of, positive_int, positive_number, sizes
from ..loop import Loop
from ..optim import FORMS, Adam
from ..synthetic import SIGMA_EPS, SIGMA_Z, gaussian_mi, gaussian_pairs, smoothed
from ..progress import Progress
from . import Experiment, register

SAMPLINGS = ("iid", "non-iid")
BATCH_MODES = ("fresh", "fixed")


@dataclass(frozen=True)
class Config:
    n_iters: int = 20000
    batch_size: int = 128
    lr: float = 1e-4
    hidden: tuple = (10, 10, 10, 10, 10)
    record_every: int = 200
    smoothing_sigma: float = 100.0
    batches: str = "fresh"
    adam: str = "tf"
    sigma_z: tuple = SIGMA_Z
    sigma_eps: tuple = SIGMA_EPS
    samplings: tuple = SAMPLINGS
    estimators: tuple = ("infonce", "nwj")

    def check(self):
        positive_int(self.n_iters, "n_iters")
        positive_int(self.batch_size, "batch_size", minimum=2)
        positive_int(self.record_every, "record_every")
        positive_number(self.lr, "lr")
        positive_number(self.smoothing_sigma, "smoothing_sigma (steps)")
        one_of(self.batches, BATCH_MODES, "batches")
        one_of(self.adam, FORMS, "Adam form (adam)")
        sizes(self.hidden, "hidden", allow_empty=True)
        nonempty(self.estimators, "estimators")
        for sampling in nonempty(self.samplings, "samplings"):
            one_of(sampling, SAMPLINGS, "sampling")
        bounds.ESTIMATORS.check(self.estimators)
        gaussian_mi(np.add(self.sigma_z, self.sigma_eps))

    # the settings of a run's length and schedule (see mi_ref.train.MIConfig.LENGTH)
    LENGTH = ("n_iters", "record_every")

    def row_steps(self):
        """The steps of a variant's rows: every multiple of ``record_every`` after 0 and before ``n_iters``,
        then ``n_iters``."""
        return list(range(self.record_every, self.n_iters, self.record_every)) + [self.n_iters]

    def keeping_interval(self, shorter):
        return {}                       # record_every is the interval itself

    def continued_row(self, row):
        """A shorter run's row as this run holds it: the smoothed end (``bound_smoothed``) belongs to the
        last row only."""
        if row["step"] < self.n_iters and "bound_smoothed" in row:
            row = {k: v for k, v in row.items() if k != "bound_smoothed"}
        return row


def train_variant(config, store, seed, index, sampling, estimator, progress):
    """Train the critic on fresh batches (or one fixed batch, ``config.batches == "fixed"``).

    The estimate at every step (on that step's batch, before the update) goes to ``arrays/NAME.npz`` as
    ``trace``. Every ``record_every`` steps, and at the end, a metrics row holds ``bound``, the mean of the
    last ``record_every`` estimates, the true MI and ``seconds`` (the variant's wall time so far); the last
    row also holds ``bound_smoothed``, the
    smoothed trace (:func:`mi_ref.synthetic.smoothed`) at the final step: the end of the paper's curve.
    ``progress``: the run's :class:`mi_ref.progress.Progress`, or True / False for one of this variant's own.
    """
    name = f"{sampling}-{estimator}"
    loop = Loop(store, name, seed, index)
    data_rng = loop.rng["data"]
    iid = sampling == "iid"
    critic = twin(critics.concat(1, 1, hidden=config.hidden))
    bound = bounds.get_estimator(estimator)
    true_mi = gaussian_mi(np.add(config.sigma_z, config.sigma_eps))
    adam = Adam(config.lr, form=config.adam)
    params = critic.init(loop.rng["init"])
    fixed = None
    if config.batches == "fixed":
        fixed = gaussian_pairs(config.batch_size, iid, data_rng, config.sigma_z, config.sigma_eps)
    trees, states = loop.resume({"critic": params}, {"critic": adam.init(params)})
    params, state = trees["critic"], states["critic"]
    trace = list(loop.extra.get("trace", []))
    grad_fn = value_and_grad(lambda p, x, y: -bound(critic.apply(p, x, y)))
    bar = progress if isinstance(progress, Progress) else Progress(f"sampling seed {seed}", [config.n_iters],
                                                                   enabled=bool(progress))
    bar.variant(name, index if isinstance(progress, Progress) else 0, loop.start)

    def record(step):
        row = {"variant": name, "step": step, "bound": float(np.mean(trace[-config.record_every:])),
               "true_mi": true_mi, "sampling": sampling, "estimator": estimator}
        if step == config.n_iters:
            row["bound_smoothed"] = float(smoothed(trace, config.smoothing_sigma)[-1])
        row["seconds"] = loop.seconds()
        if store is not None:
            store.save_arrays(name, {"trace": np.array(trace)})
        loop.record(row)
        if step < config.n_iters:       # the last row's state is the final one (Loop.finish), not a checkpoint
            loop.checkpoint(step, {"critic": params}, {"critic": state}, extra={"trace": np.array(trace)})
        bar.evaluation(step, estimate=row["bound"], true_mi=true_mi)

    for step in range(loop.start, config.n_iters):
        # a row every record_every steps after 0 (a lost row of the step resumed at comes from the trace)
        if loop.evaluates(step, step % config.record_every == 0 and step > 0):
            record(step)
        x, y = fixed if fixed is not None else gaussian_pairs(config.batch_size, iid, data_rng, config.sigma_z,
                                                              config.sigma_eps)
        loss, grads = grad_fn(params, x, y)
        trace.append(-float(loss))
        params, state = loop.update(adam, params, grads, state)
        bar.step()
    record(config.n_iters)
    loop.finish(config.n_iters, {"critic": params}, {"critic": state}, extra={"trace": np.array(trace)})
    return np.array(trace)


def variant_names(config):
    """The variants in run order: SAMPLING-ESTIMATOR for every sampling and estimator."""
    return [f"{sampling}-{estimator}" for sampling in config.samplings for estimator in config.estimators]


def run(config, store, seed, dataset=None, progress=True, only=None):
    config.check()
    done = store.done_variants() if store is not None else []
    chosen = [name for name in variant_names(config) if only is None or name in only]
    progress = Progress(store.label(seed) if store is not None else f"sampling seed {seed}",
                        [config.n_iters] * len(chosen), enabled=progress, names=chosen,
                        heartbeat=store.heartbeat() if store is not None else None)
    index = 0
    for sampling in config.samplings:
        for estimator in config.estimators:
            name = f"{sampling}-{estimator}"
            if name not in done and (only is None or name in only):
                train_variant(config, store, seed, index, sampling, estimator, progress)
            index += 1


EXPERIMENT = register(Experiment(
    name="sampling", figure="Fig. 4c", order=6,
    summary="with non-i.i.d. negatives the I_NCE and I_NWJ estimates exceed the true MI",
    presets={"paper": Config(), "quick": Config(n_iters=800, lr=1e-3, record_every=50)},
    run=run, units=variant_names))

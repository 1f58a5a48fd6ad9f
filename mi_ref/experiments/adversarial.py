"""Section 3.1, Fig. 1c: an adversary makes a bijective encoder worse than raw pixels, MI unchanged.

g = RealNVP(392, 30 couplings, hidden [512, 512], affine with scale = 1e-7 + softplus(raw), kernels ~
truncated normal std 1e-4); a linear classifier c (dense 392 -> 10) on its codes.

    classifier loss:  CE(c(g(x1)), y)               = -(1/B) sum_b log softmax(c(g(x1_b)))[y_b]   Adam lr 1e-3
    encoder loss:     CE(c(g(x1)), uniform over 10) = -(1/B) sum_b (1/10) sum_k log softmax(...)[k]  Adam lr 1e-5

1000 classifier warm-up steps, then 4001 iterations of (10 classifier steps + 1 encoder step); every 400
iterations (from iteration 0) the linear probe of g's codes. Both optimizers are TensorFlow 1's Adam
(``adam="tf"``, see :mod:`mi_ref.optim`). g stays a bijection, so I(g(x1); x2) never
changes while the accuracy falls below the pixel baseline.
"""

import time
from dataclasses import dataclass

import autograd.numpy as anp
import numpy as np
from autograd import value_and_grad
from autograd.scipy.special import logsumexp

from .. import flows, nn
from ..data import BatchIterator
from ..optim import FORMS, Adam, owned, state_from_arrays, state_to_arrays
from ..train import Progress, make_views, probe_accuracy, variant_streams
from ..tree import tree_from_dict, tree_to_dict
from . import Experiment, register
from .common import check_common, record_pixel_baseline

VARIANT = "adversarial"


@dataclass(frozen=True)
class Config:
    dataset: str = "mnist"
    warmup_steps: int = 1000
    n_iters: int = 4001
    classifier_steps: int = 10
    probe_every: int = 400
    batch_size: int = 128
    classifier_lr: float = 1e-3
    encoder_lr: float = 1e-5
    n_couplings: int = 30
    hidden: tuple = (512, 512)
    init_std: float = 1e-4
    noise_std: float = 0.0
    adam: str = "tf"

    # the common checks read these two names
    @property
    def n_evals(self):
        return len(range(0, self.n_iters, self.probe_every))

    lr = property(lambda self: self.encoder_lr)

    def check(self):
        check_common(self)
        for name in ("warmup_steps", "classifier_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.probe_every < 1:
            raise ValueError(f"probe_every must be a positive integer, got {self.probe_every}")
        if not self.classifier_lr > 0:
            raise ValueError(f"classifier_lr must be > 0, got {self.classifier_lr}")
        if self.adam not in FORMS:
            raise ValueError(f"adam must be one of {list(FORMS)}, got {self.adam!r}")


def log_softmax(logits):
    """log softmax(z)_k = z_k - log sum_j exp z_j, row by row."""
    return logits - logsumexp(logits, axis=1, keepdims=True)


def classifier_loss(params, encoder, x, y):
    """Softmax cross-entropy of the linear classifier on the codes, against the true labels."""
    logits = nn.dense(params["classifier"], encoder.apply(params["encoder"], x))
    return -anp.mean(log_softmax(logits)[np.arange(len(y)), y])


def encoder_loss(params, encoder, x):
    """Cross-entropy of the classifier's prediction against the uniform distribution over the classes."""
    logits = nn.dense(params["classifier"], encoder.apply(params["encoder"], x))
    return -anp.mean(log_softmax(logits))


def run(config, store, seed, dataset, progress=True):
    views = make_views(dataset)
    record_pixel_baseline(store, dataset, config.noise_std, seed)
    if store is not None and VARIANT in store.done_variants():
        return
    init_rng, data_rng, noise_rng, eval_rng = variant_streams(seed, 0)[:4]
    dim, n_classes = views.x1_train.shape[1], int(views.y_train.max()) + 1
    encoder = flows.realnvp(dim, config.n_couplings, config.hidden, shift_only=False,
                            rng=np.random.default_rng(np.random.SeedSequence([int(seed), 0, 7])),
                            kernel_init=nn.truncated_normal(config.init_std))
    params = {"encoder": encoder.init(init_rng), "classifier": nn.Dense(dim, n_classes).init(init_rng)}
    opt_c, opt_e = Adam(config.classifier_lr, form=config.adam), Adam(config.encoder_lr, form=config.adam)
    state_c, state_e = opt_c.init(params["classifier"]), opt_e.init(params["encoder"])
    it = BatchIterator(len(views.x1_train), config.batch_size, data_rng)

    grad_c = value_and_grad(lambda pc, pe, x, y: classifier_loss({"classifier": pc, "encoder": pe}, encoder,
                                                                  x, y))
    grad_e = value_and_grad(lambda pe, pc, x: encoder_loss({"classifier": pc, "encoder": pe}, encoder, x))

    def batch():
        idx = next(it)
        x = views.x1_train[idx]
        if config.noise_std > 0:
            x = x + config.noise_std * noise_rng.standard_normal(x.shape)
        return x, views.y_train[idx]

    def classifier_step():
        nonlocal state_c
        x, y = batch()
        loss, g = grad_c(params["classifier"], params["encoder"], x, y)
        params["classifier"], state_c = opt_c.update(params["classifier"], g, state_c, inplace=True)
        return float(loss)

    start, resumed = 0, False
    ckpt = store.load_checkpoint(VARIANT) if store is not None else None
    if ckpt is not None:
        arrays, meta = ckpt
        params = tree_from_dict(params, arrays, "params/")
        state_c = state_from_arrays(params["classifier"], arrays, "adam_c/")
        state_e = state_from_arrays(params["encoder"], arrays, "adam_e/")
        it.restore(meta["iterator"])
        noise_rng.bit_generator.state = meta["noise_rng"]
        eval_rng.bit_generator.state = meta["eval_rng"]
        start, resumed = int(meta["iteration"]), True
        store.truncate_variant(VARIANT, start)
    # the updates below are in place: into arrays only this loop holds
    params["classifier"], state_c = owned(params["classifier"], state_c)
    params["encoder"], state_e = owned(params["encoder"], state_e)
    if ckpt is None:
        if store is not None:
            store.truncate_variant(VARIANT, None)
        for _ in range(config.warmup_steps):
            classifier_step()

    bar = Progress(f"adversarial seed {seed}", config.n_iters, enabled=progress)
    t0 = time.perf_counter()
    loss_c = loss_e = float("nan")
    for iteration in range(start, config.n_iters):
        if iteration % config.probe_every == 0 and not (resumed and iteration == start):
            row = {"variant": VARIANT, "step": iteration,
                   "accuracy": probe_accuracy(encoder.apply, params["encoder"], views.x1_train, views.y_train,
                                              views.x1_test, views.y_test, config.noise_std, eval_rng),
                   "classifier_loss": loss_c, "encoder_loss": loss_e,
                   "mean_log_det": float(np.mean(encoder.log_det(params["encoder"], views.x1_test[:512]))),
                   "seconds": time.perf_counter() - t0}
            if store is not None:
                store.append_metrics(row)
                arrays = dict(tree_to_dict(params, "params/"), **state_to_arrays(state_c, "adam_c/"),
                              **state_to_arrays(state_e, "adam_e/"))
                store.save_checkpoint(VARIANT, arrays, {"iteration": iteration, "iterator": it.state(),
                                                        "noise_rng": noise_rng.bit_generator.state,
                                                        "eval_rng": eval_rng.bit_generator.state})
            bar.update(iteration, acc=row["accuracy"])
        for _ in range(config.classifier_steps):
            loss_c = classifier_step()
        x, _ = batch()
        loss_e, g = grad_e(params["encoder"], params["classifier"], x)
        loss_e = float(loss_e)
        params["encoder"], state_e = opt_e.update(params["encoder"], g, state_e, inplace=True)
    if store is not None:
        store.mark_done(VARIANT)


EXPERIMENT = register(Experiment(
    name="adversarial", figure="Fig. 1c",
    summary="an adversarially trained bijective encoder falls below the raw-pixel baseline",
    presets={"paper": Config(),
             "quick": Config(dataset="mnist-subset", warmup_steps=200, n_iters=401, probe_every=100,
                             n_couplings=4, hidden=(128, 128), encoder_lr=1e-4)},
    run=run))

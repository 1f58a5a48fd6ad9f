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

from dataclasses import dataclass

import autograd.numpy as anp
import numpy as np
from autograd import value_and_grad
from autograd.scipy.special import logsumexp

from .. import flows, nn
from ..accel import twin
from ..batches import BATCHINGS, SHUFFLE_BUFFER
from ..checks import one_of, positive_int, positive_number, sizes
from ..datasets import DATASETS
from ..loop import Loop
from ..optim import FORMS, Adam
from ..progress import Progress
from ..train import make_views, probe_accuracy
from . import Experiment, register
from .common import PERMUTATIONS, check_batch, record_pixel_baseline, structure_rng

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
    batching: str = "shuffle_buffer"
    shuffle_buffer: int = SHUFFLE_BUFFER
    permutations: str = "shared"

    def check(self):
        one_of(self.dataset, DATASETS, "dataset")
        one_of(self.permutations, PERMUTATIONS, "permutations")
        one_of(self.batching, BATCHINGS, "batching")
        positive_int(self.shuffle_buffer, "shuffle_buffer")
        positive_int(self.warmup_steps, "warmup_steps", minimum=0)
        positive_int(self.n_iters, "n_iters")
        positive_int(self.classifier_steps, "classifier_steps", minimum=0)
        positive_int(self.probe_every, "probe_every")
        positive_int(self.batch_size, "batch_size", minimum=2)
        positive_int(self.n_couplings, "n_couplings")
        sizes(self.hidden, "hidden")
        positive_number(self.classifier_lr, "classifier_lr")
        positive_number(self.encoder_lr, "encoder_lr")
        positive_number(self.init_std, "init_std")
        if not self.noise_std >= 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std!r}")
        one_of(self.adam, FORMS, "Adam form (adam)")

    # the settings of a run's length and schedule (see mi_ref.train.MIConfig.LENGTH)
    LENGTH = ("n_iters", "probe_every")

    def row_steps(self):
        """The iterations of the adversarial variant's rows: every multiple of ``probe_every`` before
        ``n_iters``."""
        return list(range(0, self.n_iters, self.probe_every))

    def keeping_interval(self, shorter):
        return {}                       # probe_every is the interval itself

    def continued_row(self, row):
        return row


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


def run(config, store, seed, dataset, progress=True, only=None):
    config.check()
    views = make_views(dataset)
    if only is None or "baseline" in only:
        record_pixel_baseline(store, dataset, config.noise_std, seed)
    if (store is not None and VARIANT in store.done_variants()) or (only is not None and VARIANT not in only):
        return
    loop = Loop(store, VARIANT, seed, 0)
    rng = loop.rng
    dim, n_classes = views.x1_train.shape[1], int(views.y_train.max()) + 1
    encoder = twin(flows.realnvp(dim, config.n_couplings, config.hidden, shift_only=False,
                                 rng=structure_rng(config.permutations, seed, 0),
                                 kernel_init=nn.truncated_normal(config.init_std)))
    params = {"encoder": encoder.init(rng["init"]), "classifier": nn.Dense(dim, n_classes).init(rng["init"])}
    opt_c = Adam(config.classifier_lr, form=config.adam)
    opt_e = Adam(config.encoder_lr, form=config.adam)
    it = loop.iterator("data", len(views.x1_train), config.batch_size, config.batching, config.shuffle_buffer)
    params, states = loop.resume(params, {"classifier": opt_c.init(params["classifier"]),
                                          "encoder": opt_e.init(params["encoder"])})

    grad_c = value_and_grad(lambda pc, pe, x, y: classifier_loss({"classifier": pc, "encoder": pe}, encoder,
                                                                  x, y))
    grad_e = value_and_grad(lambda pe, pc, x: encoder_loss({"classifier": pc, "encoder": pe}, encoder, x))

    def batch():
        idx = next(it)
        x = views.x1_train[idx]
        if config.noise_std > 0:
            x = x + config.noise_std * rng["noise"].standard_normal(x.shape)
        return x, views.y_train[idx]

    def classifier_step():
        x, y = batch()
        loss, g = grad_c(params["classifier"], params["encoder"], x, y)
        params["classifier"], states["classifier"] = loop.update(opt_c, params["classifier"], g,
                                                                 states["classifier"])
        return float(loss)

    if not loop.resumed:
        for _ in range(config.warmup_steps):
            classifier_step()

    bar = Progress(store.label(seed) if store is not None else f"adversarial seed {seed}",
                   [config.n_iters], enabled=progress, heartbeat=store.heartbeat() if store is not None else None)
    bar.variant(VARIANT, 0, loop.start)
    # the losses of the last step before a row, as the checkpoint saved them (NaN before the first step)
    loss_c, loss_e = loop.meta.get("losses", [float("nan")] * 2) if loop.resumed else [float("nan")] * 2
    for iteration in range(loop.start, config.n_iters):
        if loop.evaluates(iteration, iteration % config.probe_every == 0):
            before_eval = loop.snapshot("eval")
            accuracy, hits = probe_accuracy(encoder.apply, params["encoder"], views.x1_train, views.y_train,
                                            views.x1_test, views.y_test, config.noise_std, rng["eval"])
            row = {"variant": VARIANT, "step": iteration, "accuracy": accuracy, "probe_hits": hits,
                   "classifier_loss": loss_c, "encoder_loss": loss_e,
                   "mean_log_det": float(np.mean(encoder.log_det(params["encoder"], views.x1_test[:512]))),
                   "seconds": loop.seconds()}
            loop.record(row)
            loop.checkpoint(iteration, params, states, before_eval=before_eval, losses=[loss_c, loss_e])
            bar.evaluation(iteration, acc=row["accuracy"])
        for _ in range(config.classifier_steps):
            loss_c = classifier_step()
        x, _ = batch()
        loss_e, g = grad_e(params["encoder"], params["classifier"], x)
        loss_e = float(loss_e)
        params["encoder"], states["encoder"] = loop.update(opt_e, params["encoder"], g, states["encoder"])
        bar.step()
    loop.finish(config.n_iters, params, states, evaluated=False, losses=[loss_c, loss_e])


EXPERIMENT = register(Experiment(
    name="adversarial", figure="Fig. 1c", order=2,
    summary="an adversarially trained bijective encoder falls below the raw-pixel baseline",
    presets={"paper": Config(),
             "quick": Config(dataset="mnist-subset", warmup_steps=200, n_iters=401, probe_every=100,
                             n_couplings=4, hidden=(128, 128), encoder_lr=1e-4)},
    # the paper's 30-block flows keep no final state unless asked (--keep-state): 24 bytes per parameter
    # (the parameters and Adam's two moments) make it 672 MB per variant for invertible (two flows of 14 M
    # parameters, 1.3 GB per seed) and 407 MB for adversarial; every other preset keeps it (52 MB or less per
    # variant)
    keep_state={"paper": False, "quick": True},
    run=run, units=lambda config: ["baseline", VARIANT],
    check_data=lambda config, dataset: check_batch(config.batch_size, dataset, test=False)))

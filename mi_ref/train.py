"""The one training loop of the paper's MI experiments (README, "The paper's settings").

For step = 0, 1, ..., n_iters - 1:

    1. draw a training batch of 128 examples (the paper's stream: a shuffle buffer of 1000 over the stored
       order, repeated, batches across epochs; :class:`mi_ref.batches.ShuffleBufferIterator`) of the two views
       (x1 = top half, x2 = bottom half) and, if noise_std > 0, add one Gaussian vector per example to
       BOTH views;
    2. if step is a multiple of n_iters // n_evals (n_evals evaluations, the first at step 0, all of
       them BEFORE that step's update), evaluate:
         (a) ``bound``: the bound the paper's figures plot (:func:`paper_bound`): I_EST on fresh TRAINING
             batches of the training batch size, one per 512-slice of the test set, averaged with the
             slice sizes as weights (19 x 512 + 272 for MNIST's 10000 test images). I_NCE is capped at
             log(batch size) there. ``loss`` is the training objective on the same batches (L_t for the
             encoders experiment, as its figure plots; -bound where the objective is -I_EST);
         (b) ``bound_test``: I_EST on the test set, in batches of the training batch size (the last
             incomplete one dropped), so that it shares the cap log K with ``bound`` and differs only in
             the data: a held-out measure the paper does not plot;
         (c) ``accuracy``: the linear probe on g1's codes of all train and test top halves (fresh noise
             of the same std), and ``probe_hits``, its outcome on every test image (packed bits);
         (d) optionally, the singular values of g1's Jacobian on this step's training batch, and the
             log condition numbers log(sigma_max / sigma_min) of its B examples (see
             :func:`jacobian_stats`);
    3. one Adam step on the loss (g1, g2 and the critic together).

That is the paper's schedule: its last evaluation comes n_iters // n_evals steps before the end. With
``eval_final`` (every preset but ``paper``) one more evaluation follows the last step, at step n_iters,
so that the last point of a curve is the trained model.

Why (a) uses training batches: the paper's notebook calls this number the test loss, but in its
TensorFlow 1 graph the loss reads the training input pipeline, not the test data it feeds; every one of
its 20 evaluations of the loss pulls a fresh training batch (and fresh noise).

Randomness: one seed per (run, variant) spawns independent streams for the initial params (and the
RealNVP permutations), the batch order, the training noise, the evaluation noise, and the batches and
noise of the plotted bound, so every variant can be resumed on its own, the evaluations never touch
the training stream, and the same seed gives the same numbers bit for bit.

A *store* (``mi_ref.results.RunDir``, or None for an in-memory run) receives metric rows, per-evaluation
arrays and a checkpoint at every evaluation; :func:`train_mi` resumes from the store's checkpoint.
"""

from dataclasses import dataclass

import numpy as np

from . import probe as probe_mod
from .accel import value_and_grad_by_key
from .batches import BATCHINGS, SHUFFLE_BUFFER
from .bounds import ESTIMATORS, get_estimator
from .checks import nonnegative_number, one_of, positive_int, positive_number
from .datasets import DATASETS
from .loop import Loop
from .optim import FORMS as ADAM_FORMS
from .optim import Adam
from .progress import Silent
from .views import add_shared_noise, split_views

PAPER_SLICE = 512          # the test-set slice size of the notebook's evaluation loop


@dataclass(frozen=True)
class Views:
    """The two views of a dataset: x1 = top halves, x2 = bottom halves (flattened), labels for the probe."""

    x1_train: np.ndarray
    x2_train: np.ndarray
    y_train: np.ndarray
    x1_test: np.ndarray
    x2_test: np.ndarray
    y_test: np.ndarray
    half_shape: tuple          # (H // 2, W): the shape of one view as an image


def make_views(dataset):
    """Split every image of a ``mi_ref.datasets.Dataset`` into its top and bottom halves."""
    x1_tr, x2_tr = split_views(dataset.x_train, dataset.image_shape)
    x1_te, x2_te = split_views(dataset.x_test, dataset.image_shape)
    h, w = dataset.image_shape
    return Views(x1_tr, x2_tr, dataset.y_train, x1_te, x2_te, dataset.y_test, (h // 2, w))


@dataclass(frozen=True)
class MIConfig:
    """The settings of every MI experiment on images (defaults: the paper's; README "The paper's settings").

    ``dataset``: a name in :data:`mi_ref.datasets.DATASETS` ("mnist-subset", "digits", "mnist"); ``n_iters``
    training steps with an evaluation every ``n_iters // n_evals`` steps (``n_evals`` of them, the first at
    step 0, before that step's update) and, with ``eval_final``, one more after the last step; ``batch_size``;
    Adam's ``lr`` and form ``adam`` ("tf": TensorFlow 1's, the paper's; "textbook": PyTorch's); ``noise_std``
    of the shared input noise; ``batching``: the training (and plotted-bound) batches, ``"shuffle_buffer"``
    (the paper's: a shuffle buffer of ``shuffle_buffer`` examples over the stored order, batches across
    epochs, nothing dropped) or ``"epoch_permutation"`` (a new permutation per epoch, its last incomplete
    batch dropped).
    Experiment configs subclass it and add their own fields (architectures, estimators, ...).
    """

    dataset: str = "mnist"
    n_iters: int = 21000
    n_evals: int = 21
    batch_size: int = 128
    lr: float = 1e-4
    noise_std: float = 0.0
    adam: str = "tf"
    eval_final: bool = False
    batching: str = "shuffle_buffer"
    shuffle_buffer: int = SHUFFLE_BUFFER

    def check(self):
        """Raise ``ValueError`` for a setting that cannot run (see :mod:`mi_ref.checks`)."""
        one_of(self.dataset, DATASETS, "dataset")
        positive_int(self.n_iters, "n_iters")
        positive_int(self.n_evals, "n_evals")
        positive_int(self.batch_size, "batch_size", minimum=2)
        one_of(self.batching, BATCHINGS, "batching")
        positive_int(self.shuffle_buffer, "shuffle_buffer")
        if self.n_evals > self.n_iters:
            raise ValueError(f"n_evals={self.n_evals} exceeds n_iters={self.n_iters}: evaluations happen every "
                             "n_iters // n_evals steps, so use n_evals <= n_iters")
        positive_number(self.lr, "lr")
        nonnegative_number(self.noise_std, "noise_std")
        one_of(self.adam, ADAM_FORMS, "Adam form (adam)")
        if not isinstance(self.eval_final, bool):
            raise ValueError(f"eval_final must be true or false, got {self.eval_final!r}")
        for name in getattr(self, "estimators", ()):
            ESTIMATORS.get(name)

    @property
    def eval_every(self):
        return self.n_iters // self.n_evals

    # the settings of a run's length and evaluation schedule: a longer run may change them and continue from
    # a shorter one's final state (mi_ref.extend)
    LENGTH = ("n_iters", "n_evals", "eval_final")

    def row_steps(self):
        """The steps of a variant's rows, in order: ``k * (n_iters // n_evals)`` for k < n_evals (before that
        step's update), and ``n_iters`` with ``eval_final``."""
        return [k * self.eval_every for k in range(self.n_evals)] + ([self.n_iters] if self.eval_final else [])

    def keeping_interval(self, shorter):
        """The settings that give this (longer) config the evaluation interval of the config ``shorter``:
        ``{"n_evals": k}`` with ``n_iters // k`` equal to ``shorter``'s interval, or ``{}`` if this config has
        that interval already or none gives it (``n_iters // n_evals`` takes only some values)."""
        every = shorter.eval_every
        k = self.n_iters // every
        if k < 1 or self.n_iters // k != every or k == self.n_evals:
            return {}
        return {"n_evals": k}

    def continued_row(self, row):
        """The row of a shorter run at ``row["step"]`` as a run of this config holds it (the same here)."""
        return row


def encode(apply, params, x, chunk=4096):
    """apply(params, x) in chunks of rows (bounded memory for 60000 MNIST images)."""
    return np.concatenate([np.asarray(apply(params, x[i:i + chunk])) for i in range(0, len(x), chunk)])


def probe_accuracy(apply, params, x_train, y_train, x_test, y_test, noise_std, rng, seed=0):
    """``(accuracy, probe_hits)``: the linear probe's test accuracy on the codes ``apply(params, x)`` (fresh
    noise where noise_std > 0) and its per-image outcomes (:func:`mi_ref.probe.encode_hits`)."""
    if noise_std > 0:
        x_train = x_train + noise_std * rng.standard_normal(x_train.shape)
        x_test = x_test + noise_std * rng.standard_normal(x_test.shape)
    return probe_mod.probe_outcomes(encode(apply, params, x_train), y_train,
                                    encode(apply, params, x_test), y_test, seed=seed)


def paper_bound_weights(n_test, slice_size=PAPER_SLICE):
    """The weights of the plotted bound: the sizes of the test-set slices the paper's notebook loops over,
    ``[512] * (n_test // 512)`` plus the remainder if any (19 x 512 + 272 for 10000 test images)."""
    weights = [slice_size] * (n_test // slice_size)
    if n_test % slice_size:
        weights.append(n_test % slice_size)
    return weights


def paper_bound(bound_and_loss, params, views, weights, batches, noise_std, noise_rng):
    """The bound the paper's figures plot, and the training objective measured the same way.

        bound = sum_k w_k I_EST(batch_k) / sum_k w_k,     loss = sum_k w_k L(batch_k) / sum_k w_k,

    where batch_k is a FRESH training batch of the training batch size (``next(batches)``, with fresh
    shared noise of std ``noise_std`` where it is used) and w_k are :func:`paper_bound_weights`.
    ``bound_and_loss(params, x1, x2) -> (I_EST, L)``. Returns ``(bound, loss)`` as floats.
    """
    total_bound = total_loss = 0.0
    for w in weights:
        idx = next(batches)
        x1, x2 = views.x1_train[idx], views.x2_train[idx]
        if noise_std > 0:
            x1, x2 = add_shared_noise(x1, x2, noise_std, noise_rng)
        bound, loss = bound_and_loss(params, x1, x2)
        total_bound += w * float(bound)
        total_loss += w * float(loss)
    return total_bound / sum(weights), total_loss / sum(weights)


def held_out_bound(bound_fn, params, x1, x2, batch_size, noise_std, rng):
    """Mean of ``bound_fn(params, x1_b, x2_b)`` over the consecutive test batches of ``batch_size`` (the
    last incomplete batch dropped, so every term has the same cap log K), with fresh shared noise of std
    ``noise_std`` where it is used."""
    n_batches = len(x1) // batch_size
    if n_batches < 1:
        raise ValueError(f"the test set ({len(x1)} examples) is smaller than one batch of {batch_size}")
    total = 0.0
    for i in range(0, n_batches * batch_size, batch_size):
        b1, b2 = x1[i:i + batch_size], x2[i:i + batch_size]
        if noise_std > 0:
            b1, b2 = add_shared_noise(b1, b2, noise_std, rng)
        total += float(bound_fn(params, b1, b2))
    return total / n_batches


def jacobian_stats(model, params, x):
    """Singular values of the encoder's Jacobian at each row of ``x`` and what the metrics row keeps of
    log(sigma_max / sigma_min): ``logcond_values``, the B values sorted (what Fig. 2c pools over runs), and
    this batch's own order statistics at index int(p (B - 1)), the notebook's rule:
    ``logcond_min, logcond_p20, logcond_p40, logcond_p60, logcond_p80, logcond_max`` and ``logcond_median``
    (p = 0.5)."""
    from .accel.jacobians import batch_jacobian
    from .accel.linalg import singular_values
    from .jacobian import PERCENTILE_KEYS, condition_percentiles, log_condition_numbers
    from .stats import order_statistics
    svals = singular_values(batch_jacobian(model, params, x))
    logc = np.sort(log_condition_numbers(svals))
    stats = {f"logcond_{k}": float(v) for k, v in zip(PERCENTILE_KEYS, condition_percentiles(logc))}
    stats["logcond_median"] = float(order_statistics(logc, (0.5,))[0])
    stats["logcond_values"] = [float(v) for v in logc]
    return svals, stats


def train_mi(*, g1, g2, critic, objective, estimator, views, config, seed, variant="", variant_index=0,
             store=None, extra_row=None, probe_seed=0, progress=None, jacobian=False, on_evaluation=None):
    """Train g1, g2 and the critic with Adam on ``objective`` and evaluate on the paper's schedule.

    ``objective(params, x1, x2) -> loss`` (e.g. ``-I_NCE``; see mi_ref.objectives) where
    ``params = {"g1", "g2", "critic"}``; ``estimator`` names the bound that is reported; ``config`` is an
    :class:`MIConfig`. Pass the models' accelerated twins (:func:`mi_ref.accel.twin`) for speed; the numbers
    are the models' own either way. Returns the list of metric rows of this variant (one per evaluation), each with
    the fields ``variant, step, bound, loss, bound_test, accuracy, train_loss, seconds`` (see the module
    docstring; ``train_loss`` is the mean training loss of the steps since the previous evaluation, None at
    step 0; ``seconds`` the wall time this variant has taken so far, evaluations included, summed over
    resumes) plus ``extra_row`` and, with ``jacobian``, the fields of :func:`jacobian_stats`: the batch's log
    condition numbers of g1's Jacobian (``logcond_values``) and their order statistics.
    ``on_evaluation(step, params, row)``, if given, is called after every evaluation with the params
    evaluated (read them, do not modify them: training continues from them) and the row recorded, e.g. to
    probe the codes in other ways (``scripts/finding_vs_scale.py``).
    """
    from .objectives import mi_bound
    config.check()
    loop = Loop(store, variant, seed, variant_index)
    rng = loop.rng
    bound_fn = lambda p, x1, x2: mi_bound(p, g1, g2, critic, estimator, x1, x2)  # noqa: E731
    bound_and_loss = lambda p, x1, x2: (bound_fn(p, x1, x2), objective(p, x1, x2))  # noqa: E731
    get_estimator(estimator)
    weights = paper_bound_weights(len(views.x1_test))
    optimizer = Adam(config.lr, form=config.adam)
    params = {"g1": g1.init(rng["init"]), "g2": g2.init(rng["init"]), "critic": critic.init(rng["init"])}
    it = loop.iterator("data", len(views.x1_train), config.batch_size, config.batching, config.shuffle_buffer)
    bound_it = loop.iterator("bound_data", len(views.x1_train), config.batch_size, config.batching,
                             config.shuffle_buffer)
    trees, states = loop.resume({"model": params}, {"model": optimizer.init(params)})
    params, state = trees["model"], states["model"]
    rows = loop.rows
    sv_history = list(store.load_arrays(variant).get("singular_values", []))[:len(rows)] if loop.resumed else []
    if jacobian and len(sv_history) != len(rows):
        raise ValueError(f"{store.arrays_path(variant)} holds the singular values of {len(sv_history)} "
                         f"evaluations, metrics.jsonl {len(rows)} rows of {variant}: the file was replaced. Restore "
                         f"it, or delete {store.checkpoint_path(variant)} and resume with --repair to recompute "
                         f"{variant}")
    grad_fn = value_and_grad_by_key(objective)      # autograd's numbers, no zero tree for the dict
    every = config.eval_every
    progress = progress or Silent([config.n_iters])
    progress.variant(variant, variant_index, loop.start)
    # the training loss since the last evaluation, as the checkpoint saved it (its evaluation resets it when
    # it is due at the step resumed; a final state after a step without a row carries it on)
    loss_sum, loss_count = loop.meta.get("train_loss", [0.0, 0]) if loop.resumed else (0.0, 0)

    def evaluate(step, x1, snapshot):
        """One evaluation of the current params (see the module docstring); stored with a checkpoint that
        resumes at ``step`` (``snapshot``: the training streams before this step's batch), or, for the
        evaluation after the last step (``snapshot`` None), without one."""
        before_eval = loop.snapshot("eval", "bound_data", "bound_noise")
        row = {"variant": variant, "step": step}
        row.update(extra_row or {})
        row["bound"], row["loss"] = paper_bound(bound_and_loss, params, views, weights, bound_it,
                                                config.noise_std, rng["bound_noise"])
        row["bound_test"] = held_out_bound(bound_fn, params, views.x1_test, views.x2_test, config.batch_size,
                                           config.noise_std, rng["eval"])
        row["accuracy"], row["probe_hits"] = probe_accuracy(g1.apply, params["g1"], views.x1_train, views.y_train,
                                                            views.x1_test, views.y_test, config.noise_std,
                                                            rng["eval"], seed=probe_seed)
        row["train_loss"] = loss_sum / loss_count if loss_count else None
        if jacobian:
            svals, pct = jacobian_stats(g1, params["g1"], x1)
            row.update(pct)
            sv_history.append(svals)
        row["seconds"] = loop.seconds()
        if store is not None and sv_history:
            store.save_arrays(variant, {"singular_values": np.stack(sv_history),
                                        "steps": np.array([r["step"] for r in rows] + [step])})
        loop.record(row)
        if snapshot is not None:
            loop.checkpoint(step, {"model": params}, {"model": state}, snapshot, before_eval=before_eval,
                            train_loss=[loss_sum, loss_count])
        progress.evaluation(step, bound=row["bound"], acc=row["accuracy"])
        if on_evaluation is not None:
            on_evaluation(step, params, row)

    def batch():
        idx = next(it)
        x1, x2 = views.x1_train[idx], views.x2_train[idx]
        if config.noise_std > 0:
            x1, x2 = add_shared_noise(x1, x2, config.noise_std, rng["noise"])
        return x1, x2

    for step in range(loop.start, config.n_iters):
        is_eval = step % every == 0 and step // every < config.n_evals
        snapshot = loop.snapshot("data", "noise") if is_eval else None
        x1, x2 = batch()
        if loop.evaluates(step, is_eval):
            evaluate(step, x1, snapshot)
        if is_eval:
            loss_sum, loss_count = 0.0, 0
        loss, grads = grad_fn(params, x1, x2)
        if not np.isfinite(loss):
            raise FloatingPointError(f"{variant}: the loss became {loss} at step {step}; lower the learning "
                                     "rate or check the inputs")
        loss_sum, loss_count = loss_sum + float(loss), loss_count + 1
        params, state = loop.update(optimizer, params, grads, state)
        progress.step()
    snapshot = loop.snapshot("data", "noise")         # where step n_iters of a longer run takes its batch
    if config.eval_final:
        evaluate(config.n_iters, batch()[0], None)    # the trained model itself (the Jacobian on that batch)
        loss_sum, loss_count = 0.0, 0                 # the next row's training loss starts after this one
    loop.finish(config.n_iters, {"model": params}, {"model": state}, snapshot,
                evaluated=config.eval_final, train_loss=[loss_sum, loss_count])
    return rows

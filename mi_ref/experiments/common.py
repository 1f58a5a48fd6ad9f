"""What the MI experiments share: their settings (:class:`mi_ref.train.MIConfig`), the pixel-baseline row
and the loop over variants."""

from dataclasses import dataclass, field

import numpy as np

from .. import probe
from ..accel import twin
from ..objectives import mi_loss
from ..progress import Progress
from ..train import MIConfig, make_views, train_mi

__all__ = ["MIConfig", "PERMUTATIONS", "Variant", "check_batch", "check_on_data", "make_objective",
           "record_pixel_baseline", "run_variants", "structure_rng", "units_of", "view_dim"]

# the seed-sequence entries that separate the baseline's noise and the shared fixed structure from every
# variant's streams
BASELINE_STREAM = 10 ** 6
STRUCTURE_STREAM = 2 * 10 ** 6

# where a variant's fixed random structure (the RealNVP permutations) comes from: "shared" by every seed of
# a configuration, as in the paper (its networks are built once per configuration and trained NRUNS times,
# so only the weights differ between runs), or drawn anew for every seed ("per_seed")
PERMUTATIONS = ("shared", "per_seed")


def structure_rng(permutations, seed, index):
    """The generator of variant ``index``'s fixed random structure (the RealNVP permutations):
    ``SeedSequence([STRUCTURE_STREAM, index])`` for ``permutations="shared"`` (the same for every seed),
    ``SeedSequence([seed, index, 7])`` for ``"per_seed"``."""
    if permutations == "shared":
        return np.random.default_rng(np.random.SeedSequence([STRUCTURE_STREAM, int(index)]))
    if permutations == "per_seed":
        return np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 7]))
    raise ValueError(f"unknown permutations {permutations!r}; expected one of {list(PERMUTATIONS)}")


def view_dim(dataset):
    """Number of values in one view (half image): 392 on MNIST, 32 on the 8x8 digits."""
    h, w = dataset.image_shape
    return (h // 2) * w


@dataclass(frozen=True)
class Variant:
    """One training run inside an experiment: a name, how to build (g1, g2, critic) and the loss."""

    name: str
    build: object               # build(structure_rng) -> (g1, g2, critic)
    estimator: str              # the bound that is reported (and optimized unless loss says otherwise)
    target: float = None        # L_t = |I_EST - t| when set
    loss: object = None         # loss(params, g1, g2, critic, x1, x2) overriding mi_loss, e.g. a triplet loss
    extra: dict = field(default_factory=dict)   # columns copied into every metric row


def record_pixel_baseline(store, dataset, noise_std, seed):
    """Probe accuracy on the raw (noisy) top-half pixels, stored once per run as variant "baseline"."""
    if store is not None and "baseline" in store.done_variants():
        return
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), BASELINE_STREAM]))
    acc, hits = probe.pixel_baseline(dataset, noise_std, rng, seed=0, hits=True)
    if store is not None:
        store.truncate_variant("baseline", None)
        store.append_metrics({"variant": "baseline", "step": 0, "accuracy": acc, "probe_hits": hits,
                              "noise_std": noise_std, "n_test": int(dataset.n_test)})
        store.mark_done("baseline")


def make_objective(variant, g1, g2, critic):
    """objective(params, x1, x2) -> loss for one variant: -I_EST, L_t = |I_EST - t|, or its own loss."""
    if variant.loss is not None:
        return lambda p, x1, x2: variant.loss(p, g1, g2, critic, x1, x2)
    return lambda p, x1, x2: mi_loss(p, g1, g2, critic, variant.estimator, x1, x2, variant.target)


def build_variant(variant, seed, index, permutations="shared"):
    """(g1, g2, critic) of one variant, as their accelerated twins (:func:`mi_ref.accel.twin`), with the
    variant's own structure stream (RealNVP permutations, :func:`structure_rng`)."""
    models = variant.build(structure_rng(permutations, seed, index))
    return tuple(twin(m) for m in models)


def check_batch(batch_size, dataset, test=True):
    """``ValueError`` if a batch of ``batch_size`` is larger than the training images of ``dataset`` or, with
    ``test`` (the held-out bound is measured in batches of that size), than its test images."""
    n_train, n_test = len(dataset.x_train), len(dataset.x_test)
    if batch_size > n_train:
        fits = (f"use batch_size <= {min(n_train, n_test)}" + (" (a batch must fit the test images too)"
                                                                  if test and n_test < n_train else "")
                if test else f"use batch_size <= {n_train}")
        raise ValueError(f"batch_size {batch_size} is larger than the {n_train} training images of {dataset.name}; "
                         f"{fits}")
    if test and batch_size > n_test:
        raise ValueError(f"batch_size {batch_size} is larger than the {n_test} test images of {dataset.name} (the "
                         f"held-out bound is measured in batches of batch_size); use batch_size <= {n_test}")


def check_on_data(config, dataset, variants):
    """The ``check_data`` of an MI experiment: ``ValueError`` if a batch does not fit ``dataset``
    (:func:`check_batch`) or the config cannot build the models of one of ``variants`` (built here, without
    their parameters, as the run would build them)."""
    check_batch(config.batch_size, dataset)
    for index, v in enumerate(variants):
        try:
            v.build(structure_rng(getattr(config, "permutations", "shared"), 0, index))
        except (ValueError, TypeError) as err:
            raise ValueError(f"the settings cannot build the models of {v.name}: {err}") from None


def units_of(variants):
    """``units(config)`` of an MI experiment whose variants are ``variants(config, dim)``: "baseline" (the
    pixel-baseline row), then the variants' names in order (their names do not depend on ``dim``)."""
    return lambda config: ["baseline"] + [v.name for v in variants(config, None)]


def run_variants(config, store, seed, dataset, variants, progress=True, jacobian=False, only=None):
    """Train every variant not yet finished in ``store`` (resuming a partial one), in order; with ``only``
    (a collection of unit names, "baseline" among them for the pixel baseline) just those. A variant keeps
    its index in ``variants`` (and with it its random streams) whichever others run."""
    views = make_views(dataset)
    config.check()
    if only is None or "baseline" in only:
        record_pixel_baseline(store, dataset, config.noise_std, seed)
    done = store.done_variants() if store is not None else []
    label = store.label(seed) if store is not None else f"run seed {seed}"
    chosen = [v.name for v in variants if only is None or v.name in only]
    bar = Progress(label, [config.n_iters] * len(chosen), enabled=progress, names=chosen,
                   heartbeat=store.heartbeat() if store is not None else None)
    for index, v in enumerate(variants):
        if v.name in done or (only is not None and v.name not in only):
            continue
        g1, g2, critic = build_variant(v, seed, index, getattr(config, "permutations", "shared"))
        train_mi(g1=g1, g2=g2, critic=critic, objective=make_objective(v, g1, g2, critic), estimator=v.estimator,
                 views=views, config=config, seed=seed, variant=v.name, variant_index=index, store=store,
                 extra_row=dict(v.extra), progress=bar, jacobian=jacobian)

"""Section 4: MI objectives behave like metric learning. The same encoders and inner-product critic
trained with I_NCE (= log K - the K-pair loss), I_NWJ, and two triplet losses; the linear-probe
accuracy over training shows whether the objectives that are not MI bounds at all do as well.

g1, g2 = MLP(392, [300, 300, 100]); critic S = g1(x1) g2(x2)^T (inner product, so that
I_NCE(S) = log K - L_K-pair(g1(x1), g2(x2)) holds exactly), or a separable critic; objectives
-I_NCE, -I_NWJ, the triplet loss averaged over all negatives and with the hardest negative (margin 1);
Adam lr 1e-4, batch 128, 21000 steps, 21 evaluations. The reported ``bound`` and ``bound_test`` (measured as
in :mod:`mi_ref.train`) are the objective's own estimator for I_NCE and I_NWJ, and I_NCE for the triplet
losses, which bound nothing.
"""

from dataclasses import dataclass

from .. import bounds, critics, metric_learning, nn
from ..checks import nonempty, sizes
from ..objectives import mi_scores
from . import Experiment, register
from .common import MIConfig, Variant, check_on_data, run_variants, units_of, view_dim

OBJECTIVES = ("infonce", "nwj", "triplet", "triplet_hardest")
SEPARABLE_CRITICS = ("inner_product", "separable")   # S = phi1(u) phi2(v)^T: then I_NCE is the K-pair loss


@dataclass(frozen=True)
class Config(MIConfig):
    encoder_dims: tuple = (300, 300, 100)
    critic: str = "inner_product"
    objectives: tuple = OBJECTIVES
    margin: float = 1.0

    def check(self):
        super().check()
        sizes(self.encoder_dims, "encoder_dims")
        nonempty(self.objectives, "objectives")
        known = bounds.ESTIMATORS.names() + metric_learning.LOSSES.names()
        unknown = [o for o in self.objectives if o not in known]
        if unknown:
            raise ValueError(f"unknown objectives {unknown}; expected estimators {bounds.ESTIMATORS.names()} or "
                             f"metric-learning losses {metric_learning.LOSSES.names()}")
        critics.CRITICS.get(self.critic)
        if self.critic not in SEPARABLE_CRITICS:
            raise ValueError(f"critic must be one of {list(SEPARABLE_CRITICS)} (a separable critic, so that I_NCE "
                             f"is the K-pair loss), got {self.critic!r}")
        if not self.margin >= 0:
            raise ValueError(f"margin must be >= 0, got {self.margin!r}")


def loss_objective(loss_fn, margin):
    """A metric-learning loss on the critic's scores as a training objective."""
    def loss(params, g1, g2, critic, x1, x2):
        return loss_fn(mi_scores(params, g1, g2, critic, x1, x2), margin)
    return loss


def variants(config, in_dim):
    def build(rng):
        code = config.encoder_dims[-1]
        return (nn.mlp(in_dim, config.encoder_dims), nn.mlp(in_dim, config.encoder_dims),
                critics.build(config.critic, code))
    out = []
    for objective in config.objectives:
        if objective in bounds.ESTIMATORS:
            out.append(Variant(objective, build, objective, extra={"objective": objective}))
        else:           # the reported bound stays I_NCE
            out.append(Variant(objective, build, "infonce",
                               loss=loss_objective(metric_learning.LOSSES.get(objective), config.margin),
                               extra={"objective": objective}))
    return out


def run(config, store, seed, dataset, progress=True, only=None):
    run_variants(config, store, seed, dataset, variants(config, view_dim(dataset)), progress, only=only)


EXPERIMENT = register(Experiment(
    name="metric", figure="Section 4", order=7,
    summary="I_NCE (the K-pair loss), I_NWJ and triplet losses give similar representations: metric learning",
    presets={"paper": Config(),
             "quick": Config(dataset="mnist-subset", n_iters=600, n_evals=2, eval_final=True, lr=1e-3)},
    run=run, units=units_of(variants),
    check_data=lambda config, dataset: check_on_data(config, dataset, variants(config, view_dim(dataset)))))

"""Section 3.2, Fig. 3: critics that give looser bounds (bilinear, separable) give better representations
than a high-capacity MLP ("concat") critic. (Which critic reaches the highest bound depends on the
estimator: under I_NWJ it is concat; under I_NCE, where every critic nears the cap log K, it need not be.)

g1, g2 = MLP(392, [300, 300, 100]) (Glorot init); critics bilinear (100 x 100), separable (MLPs [100, 100]
on each side) and concat (MLP on [u_i; v_j] with one hidden layer of 200); I_NCE and I_NWJ; Adam lr 1e-4,
batch 128, 21000 steps, 21 evaluations.
"""

from dataclasses import dataclass

from .. import critics, nn
from ..checks import nonempty, positive_int, sizes
from . import Experiment, register
from .common import MIConfig, Variant, check_on_data, run_variants, units_of, view_dim

CRITIC_NAMES = ("bilinear", "separable", "concat")       # the paper's three (any of critics.CRITICS may run)


@dataclass(frozen=True)
class Config(MIConfig):
    encoder_dims: tuple = (300, 300, 100)
    critics: tuple = CRITIC_NAMES
    separable_hidden: tuple = (100,)
    separable_out: int = 100
    concat_hidden: tuple = (200,)
    estimators: tuple = ("infonce", "nwj")

    def check(self):
        super().check()
        sizes(self.encoder_dims, "encoder_dims")
        sizes(self.separable_hidden, "separable_hidden", allow_empty=True)
        positive_int(self.separable_out, "separable_out")
        sizes(self.concat_hidden, "concat_hidden", allow_empty=True)
        critics.CRITICS.check(nonempty(self.critics, "critics"))
        nonempty(self.estimators, "estimators")


def critic_options(config):
    """The config's sizes of each critic (keyword arguments of its factory in :data:`mi_ref.critics.CRITICS`)."""
    return {"separable": {"hidden": config.separable_hidden, "out_dim": config.separable_out},
            "concat": {"hidden": config.concat_hidden}}


def make_critic(config, name, dim):
    """The critic ``name`` of :data:`mi_ref.critics.CRITICS` for codes of width ``dim`` (an unknown name is
    an error listing the known ones)."""
    return critics.build(name, dim, **critic_options(config).get(name, {}))


def variants(config, in_dim):
    out = []
    for critic_name in config.critics:
        for est in config.estimators:
            def build(rng, critic_name=critic_name):
                code = config.encoder_dims[-1]
                return (nn.mlp(in_dim, config.encoder_dims), nn.mlp(in_dim, config.encoder_dims),
                        make_critic(config, critic_name, code))
            out.append(Variant(f"{critic_name}-{est}", build, est,
                               extra={"critic": critic_name, "estimator": est}))
    return out


def run(config, store, seed, dataset, progress=True, only=None):
    run_variants(config, store, seed, dataset, variants(config, view_dim(dataset)), progress, only=only)


EXPERIMENT = register(Experiment(
    name="critics", figure="Fig. 3", order=4,
    summary="simpler critics with looser bounds give better representations: the concat (MLP) critic is worst",
    presets={"paper": Config(),
             "quick": Config(dataset="mnist-subset", n_iters=400, n_evals=2, eval_final=True, lr=1e-3)},
    run=run, units=units_of(variants),
    check_data=lambda config, dataset: check_on_data(config, dataset, variants(config, view_dim(dataset)))))

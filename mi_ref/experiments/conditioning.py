"""Section 3.1, Fig. 2a-c: when the encoder may become non-invertible, maximizing the bound drives it
towards ill-conditioned (hard-to-invert) maps.

g1, g2 = MLP(392, [392] * 5, shortcuts) with kernels ~ truncated normal std 1e-4 (so both start at the
identity, condition number 1); bilinear critic (392); I_NCE and I_NWJ; shared input noise std 0.05 (so the
inputs span the whole space); at every evaluation the singular values of g1's Jacobian on the current
training batch; 21000 steps, 21 evaluations. Plotted: percentiles of log(sigma_max / sigma_min).
"""

from dataclasses import dataclass

from .. import critics, nn
from ..checks import nonempty, positive_int, positive_number
from . import Experiment, register
from .common import MIConfig, Variant, check_on_data, run_variants, units_of, view_dim


@dataclass(frozen=True)
class Config(MIConfig):
    noise_std: float = 0.05        # shared input noise (the inputs span the whole space)
    n_layers: int = 5
    init_std: float = 1e-4
    estimators: tuple = ("infonce", "nwj")

    def check(self):
        super().check()
        positive_int(self.n_layers, "n_layers")
        positive_number(self.init_std, "init_std")
        nonempty(self.estimators, "estimators")


def variants(config, dim):
    def build(rng):
        def enc():
            return nn.mlp(dim, [dim] * config.n_layers, shortcuts=True,
                          kernel_init=nn.truncated_normal(config.init_std))
        return enc(), enc(), critics.bilinear(dim)
    return [Variant(est, build, est, extra={"estimator": est}) for est in config.estimators]


def run(config, store, seed, dataset, progress=True, only=None):
    run_variants(config, store, seed, dataset, variants(config, view_dim(dataset)), progress, jacobian=True,
                 only=only)


EXPERIMENT = register(Experiment(
    name="conditioning", figure="Fig. 2a, 2b, 2c", order=3,
    summary="residual-MLP encoders start at the identity and become ever more ill-conditioned",
    presets={"paper": Config(),
             "quick": Config(dataset="mnist-subset", n_iters=1000, n_evals=4, eval_final=True, n_layers=3,
                             lr=3e-4, estimators=("infonce",))},
    run=run, units=units_of(variants),
    check_data=lambda config, dataset: check_on_data(config, dataset, variants(config, view_dim(dataset)))))

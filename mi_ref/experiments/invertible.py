"""Section 3.1, Fig. 1a-b: with invertible encoders the true MI never changes, yet the bound and the
probe accuracy rise together during training.

g1, g2 = RealNVP(392, 30 couplings, hidden [512, 512], shift-only, kernels ~ truncated normal std 1e-4),
bilinear critic (392 x 392), I_NCE and I_NWJ, Adam lr 1e-4, batch 128, 21000 steps, 21 evaluations.
Since g1 and g2 are bijections, I(g1(x1); g2(x2)) = I(x1; x2) at every step. The flows' random
permutations are the same for every seed (``permutations="shared"``, as the paper builds its networks
once per configuration); only the initial weights differ between seeds.
"""

from dataclasses import dataclass

from .. import critics, flows, nn
from . import Experiment, register
from ..checks import nonempty, one_of, positive_int, positive_number, sizes
from .common import PERMUTATIONS, MIConfig, Variant, check_on_data, run_variants, units_of, view_dim


@dataclass(frozen=True)
class Config(MIConfig):
    n_couplings: int = 30
    hidden: tuple = (512, 512)
    init_std: float = 1e-4
    estimators: tuple = ("infonce", "nwj")
    permutations: str = "shared"        # or "per_seed" (see mi_ref.experiments.common.structure_rng)

    def check(self):
        super().check()
        one_of(self.permutations, PERMUTATIONS, "permutations")
        positive_int(self.n_couplings, "n_couplings")
        sizes(self.hidden, "hidden")
        positive_number(self.init_std, "init_std")
        nonempty(self.estimators, "estimators")


def variants(config, dim):
    def build(rng):
        def flow():
            return flows.realnvp(dim, config.n_couplings, config.hidden, shift_only=True, rng=rng,
                                 kernel_init=nn.truncated_normal(config.init_std))
        return flow(), flow(), critics.bilinear(dim)
    return [Variant(est, build, est, extra={"estimator": est}) for est in config.estimators]


def run(config, store, seed, dataset, progress=True, only=None):
    run_variants(config, store, seed, dataset, variants(config, view_dim(dataset)), progress, only=only)


EXPERIMENT = register(Experiment(
    name="invertible", figure="Fig. 1a, 1b", order=1,
    summary="bijective RealNVP encoders: MI is constant, yet the bound and probe accuracy rise",
    presets={"paper": Config(),
             "quick": Config(dataset="mnist-subset", n_iters=1200, n_evals=4, eval_final=True, n_couplings=6,
                             hidden=(256, 256), lr=1e-3, estimators=("infonce",))},
    # the paper's 30-block flows keep no final state unless asked (--keep-state): 24 bytes per parameter
    # (the parameters and Adam's two moments) make it 672 MB per variant for invertible (two flows of 14 M
    # parameters, 1.3 GB per seed) and 407 MB for adversarial; every other preset keeps it (52 MB or less per
    # variant)
    keep_state={"paper": False, "quick": True},
    run=run, units=units_of(variants),
    check_data=lambda config, dataset: check_on_data(config, dataset, variants(config, view_dim(dataset)))))

"""Section 3.3, Fig. 4a-b: at the same bound value, the encoder architecture decides the accuracy.

Encoders ConvNet (for the half images) vs MLP(392, [300, 300, 100]); bilinear critic (100 x 100); the loss
L_t = |I_EST - t| with target t in {2, 4} and I_EST in {I_NCE, I_NWJ}, so that every encoder is trained
to the same bound value; Adam lr 1e-4, batch 128, 21000 steps, 21 evaluations.
"""

from dataclasses import dataclass

from .. import critics, nn
from ..checks import nonempty, positive_int, sizes
from ..registry import Registry
from . import Experiment, register
from .common import MIConfig, Variant, check_on_data, run_variants, units_of


def convnet(config, half_shape):
    """The paper's ConvNet on the (h, w) half images, ``config.convnet_channels``, codes of ``config.code_dim``."""
    h, w = half_shape
    return nn.convnet(h, w, out_dim=config.code_dim, channels=tuple(config.convnet_channels))


def mlp(config, half_shape):
    """MLP(h * w, ``config.mlp_dims``) on the flattened half images (its last width is ``config.code_dim``)."""
    h, w = half_shape
    return nn.mlp(h * w, config.mlp_dims)


# name -> factory(config, half_shape) -> encoder, an object with init(rng) -> params and
# apply(params, x: (B, h * w)) -> codes (B, config.code_dim); a plugin may register more
ENCODERS = Registry("encoder")
ENCODERS.register("convnet", convnet, label="ConvNet")
ENCODERS.register("mlp", mlp, label="MLP")

ENCODER_NAMES = ("convnet", "mlp")          # the paper's two, compared by the findings


@dataclass(frozen=True)
class Config(MIConfig):
    encoders: tuple = ENCODER_NAMES
    convnet_channels: tuple = (64, 128)
    mlp_dims: tuple = (300, 300, 100)
    code_dim: int = 100
    targets: tuple = (2.0, 4.0)
    estimators: tuple = ("infonce", "nwj")

    def check(self):
        super().check()
        nonempty(self.encoders, "encoders")
        if len(sizes(self.convnet_channels, "convnet_channels")) != 2:
            raise ValueError(f"convnet_channels must be the channels of the ConvNet's two convolutions, e.g. "
                             f"(64, 128), got {self.convnet_channels!r}")
        sizes(self.mlp_dims, "mlp_dims")
        positive_int(self.code_dim, "code_dim")
        nonempty(self.targets, "targets", "number")
        nonempty(self.estimators, "estimators")
        ENCODERS.check(self.encoders, "encoders")
        if self.mlp_dims[-1] != self.code_dim:
            raise ValueError(f"mlp_dims must end with code_dim={self.code_dim} (both encoders feed the same "
                             f"bilinear critic), got {self.mlp_dims}")


def make_encoder(config, name, half_shape):
    """The encoder registered as ``name`` (see :data:`ENCODERS`) for the half images of ``half_shape``."""
    return ENCODERS.get(name)(config, half_shape)


def variants(config, half_shape):
    out = []
    for enc in config.encoders:
        for est in config.estimators:
            for t in config.targets:
                def build(rng, enc=enc):
                    return (make_encoder(config, enc, half_shape), make_encoder(config, enc, half_shape),
                            critics.bilinear(config.code_dim))
                out.append(Variant(f"{enc}-{est}-t{t:g}", build, est, target=float(t),
                                   extra={"encoder": enc, "estimator": est, "target": float(t)}))
    return out


def run(config, store, seed, dataset, progress=True, only=None):
    h, w = dataset.image_shape
    run_variants(config, store, seed, dataset, variants(config, (h // 2, w)), progress, only=only)


EXPERIMENT = register(Experiment(
    name="encoders", figure="Fig. 4a, 4b", order=5,
    summary="trained to the same bound value L_t, the ConvNet beats the MLP: architecture over estimator",
    presets={"paper": Config(),
             "quick": Config(dataset="mnist-subset", n_iters=400, n_evals=2, eval_final=True,
                             convnet_channels=(32, 64), lr=1e-3)},
    run=run, units=units_of(variants),
    check_data=lambda config, dataset: check_on_data(
        config, dataset, variants(config, (dataset.image_shape[0] // 2, dataset.image_shape[1])))))

"""The golden-vector components, declared as data: one entry per file, saying what to build (a builder kind
of :mod:`mi_ref.vectors.builders` and its config) and what it records (its summary and the mi-ref functions
it checks). The configs are the manifest's, so ``recompute`` can rebuild a component from its entry alone."""

from dataclasses import dataclass

TOO_BIG_FOR_FLOAT32 = ("scores up to 700 off the diagonal give exp(S) ~ 1e304, beyond float32's range (3.4e38); "
                       "a float32 implementation is expected to overflow here")


JACOBIAN_FUNCTIONS = ("mi_ref.jacobian.batch_jacobian", "mi_ref.jacobian.singular_values",
                      "mi_ref.jacobian.log_condition_numbers", "mi_ref.jacobian.condition_percentiles")


@dataclass(frozen=True)
class Component:
    """One golden-vector file: a named computation of mi-ref at a fixed small size.

    ``kind`` names its builder (:data:`mi_ref.vectors.builders.BUILDERS`); ``config`` (plus a
    ``structure_seed`` drawn at generation, the seed of fixed random structure such as permutations) is
    all the builder needs; ``float64_only`` says why float32 implementations are not expected to match.
    """

    name: str
    kind: str
    summary: str
    functions: tuple
    config: dict
    float64_only: str = None


# the two critics training steps differ only in the estimator
TRAIN_CRITICS = {'B': 5, 'dim': 8, 'encoder': 'mlp', 'encoder_dims': [10, 10, 6], 'shortcuts': False,
                 'critic': 'concat', 'critic_hidden': [12], 'estimator': 'infonce'}

# the two Adam components differ only in the form
ADAM_STEP = {'in': 3, 'dims': [4, 2], 'lr': 0.001, 'b1': 0.9, 'b2': 0.999, 'eps': 1e-08, 'step': 4,
             'form': 'textbook', 'grad_std': 3e-08, 'param_std': 0.0001}


COMPONENTS = [
    Component('bound_infonce', 'bound',
              'I_NCE on a fixed 6 x 6 score matrix',
              ('mi_ref.bounds.infonce',),
              {'K': 6, 'estimator': 'infonce', 'scores': 'normal'}),
    Component('bound_infonce_large', 'bound',
              'I_NCE on scores of magnitude up to ~1e3 (multiples of 1/64, a tie for the maximum of row 0): a '
              'naive exp overflows, logsumexp must subtract the row maximum',
              ('mi_ref.bounds.infonce',),
              {'K': 6, 'estimator': 'infonce', 'scores': 'large'}),
    Component('bound_nwj', 'bound',
              'I_NWJ on a fixed 6 x 6 score matrix',
              ('mi_ref.bounds.nwj',),
              {'K': 6, 'estimator': 'nwj', 'scores': 'normal'}),
    Component('bound_nwj_large', 'bound',
              'I_NWJ on scores of magnitude up to ~1e3 with off-diagonal entries <= 700 (one equals 700), so '
              'the value (~ -1e302) is finite in float64',
              ('mi_ref.bounds.nwj',),
              {'K': 6, 'estimator': 'nwj', 'scores': 'large'},
              TOO_BIG_FOR_FLOAT32),
    Component('bound_tuba', 'bound',
              'TUBA on a fixed 6 x 6 score matrix',
              ('mi_ref.bounds.tuba',),
              {'K': 6, 'estimator': 'tuba', 'scores': 'normal'}),
    Component('bound_tuba_large', 'bound',
              'TUBA on scores of magnitude up to ~1e3 with off-diagonal entries <= 700 (one equals 700), so the '
              'value (~ -1e302) is finite in float64',
              ('mi_ref.bounds.tuba',),
              {'K': 6, 'estimator': 'tuba', 'scores': 'large'},
              TOO_BIG_FOR_FLOAT32),
    Component('bound_tuba_baseline', 'bound',
              'TUBA with a log-baseline l_j per column: 1 + mean_i S_ii - mean_{i != j} exp(S_ij - l_j) - '
              'mean_j l_j',
              ('mi_ref.bounds.tuba',),
              {'K': 6, 'estimator': 'tuba', 'scores': 'normal', 'log_baseline': True}),
    Component('critic_inner_product', 'critic',
              'S = u v^T',
              ('mi_ref.critics.InnerProduct.apply',),
              {'K': 5, 'critic': 'inner_product', 'd_u': 4, 'd_v': 4}),
    Component('critic_bilinear', 'critic',
              'S = u (v W)^T with W (d_v, d_u), d_u != d_v so a transposed W cannot pass',
              ('mi_ref.critics.Bilinear.apply',),
              {'K': 5, 'critic': 'bilinear', 'd_u': 3, 'd_v': 4}),
    Component('critic_separable', 'critic',
              'S = f(u) h(v)^T, f and h MLPs with one ReLU hidden layer',
              ('mi_ref.critics.Separable.apply',),
              {'K': 5, 'critic': 'separable', 'd_u': 3, 'd_v': 4, 'hidden': [6], 'out_dim': 5}),
    Component('critic_concat', 'critic',
              'S[i, j] = m([u_i ; v_j]), m an MLP with two ReLU hidden layers and a scalar output',
              ('mi_ref.critics.Concat.apply',),
              {'K': 5, 'critic': 'concat', 'd_u': 3, 'd_v': 4, 'hidden': [6, 5]}),
    Component('dense', 'dense',
              'y = x W + b',
              ('mi_ref.nn.Dense.apply',),
              {'B': 4, 'in': 5, 'out': 3}),
    Component('mlp', 'mlp',
              'MLP(5, [7, 6, 3]): ReLU after every layer but the last',
              ('mi_ref.nn.MLP.apply',),
              {'B': 4, 'in': 5, 'dims': [7, 6, 3], 'shortcuts': False}),
    Component('mlp_residual', 'mlp',
              'MLP(5, [5, 5, 5], shortcuts): h <- relu(h W + b) + h, y = h W + b + h',
              ('mi_ref.nn.MLP.apply',),
              {'B': 4, 'in': 5, 'dims': [5, 5, 5], 'shortcuts': True}),
    Component('conv2d_odd', 'conv2d',
              "5x5 convolution, stride 2, 'same' padding, + bias, on 7 x 5 images (odd sizes: symmetric "
              'padding)',
              ('mi_ref.nn.Conv2D.apply', 'mi_ref.nn.conv2d'),
              {'B': 2,
               'H': 7,
               'W': 5,
               'C_in': 3,
               'C_out': 4,
               'kernel': 5,
               'stride': 2,
               'padding': {'H': {'out': 4, 'before': 2, 'after': 2}, 'W': {'out': 3, 'before': 2, 'after': 2}}}),
    Component('conv2d_even', 'conv2d',
              "5x5 convolution, stride 2, 'same' padding, + bias, on 8 x 6 images (even sizes: the extra pad "
              'pixel goes after)',
              ('mi_ref.nn.Conv2D.apply', 'mi_ref.nn.conv2d'),
              {'B': 2,
               'H': 8,
               'W': 6,
               'C_in': 3,
               'C_out': 4,
               'kernel': 5,
               'stride': 2,
               'padding': {'H': {'out': 4, 'before': 1, 'after': 2}, 'W': {'out': 3, 'before': 1, 'after': 2}}}),
    Component('layer_norm', 'layer_norm',
              'layer norm over (H, W, C), per-channel scale and bias, eps 1e-6',
              ('mi_ref.nn.layer_norm',),
              {'shape': [2, 3, 4, 5], 'eps': 1e-06}),
    Component('convnet_4x8', 'convnet',
              "the paper's ConvNet on 4 x 8 half images (8x8 digits), channels (4, 6), output 5",
              ('mi_ref.nn.ConvNet.apply',),
              {'B': 3, 'H': 4, 'W': 8, 'channels': [4, 6], 'out_dim': 5}),
    Component('convnet_14x28', 'convnet',
              "the paper's ConvNet exactly (channels 64, 128, output 100) on 14 x 28 MNIST half images",
              ('mi_ref.nn.ConvNet.apply',),
              {'B': 2, 'H': 14, 'W': 28, 'channels': [64, 128], 'out_dim': 100}),
    Component('convnet_relu_ties', 'convnet',
              "the paper's ConvNet (channels 8, 16) on 14 x 28 images that are blank (exact zeros) outside a "
              "6 x 12 ink box, with zero conv biases: many pre-activations are exactly 0, so the gradients "
              "check relu'(0) = 0 (TensorFlow, PyTorch and JAX); a port that takes 1/2 there fails grad/x and "
              "the conv biases' gradients",
              ('mi_ref.nn.ConvNet.apply', 'mi_ref.nn.relu'),
              {'B': 2, 'H': 14, 'W': 28, 'channels': [8, 16], 'out_dim': 10,
               'blank': {'ink_rows': [4, 10], 'ink_cols': [8, 20]}}),
    Component('realnvp_block_shift', 'flow',
              'one shift-only coupling block + permutation (d = 5, odd): forward, log-det, inverse',
              ('mi_ref.flows.AffineCoupling',),
              {'B': 4, 'dim': 5, 'hidden': [6], 'shift_only': True, 'n_couplings': None}),
    Component('realnvp_block_affine', 'flow',
              'one affine coupling block (scale = 1e-7 + softplus(r)) + permutation (d = 5): forward, log-det, '
              'inverse',
              ('mi_ref.flows.AffineCoupling',),
              {'B': 4, 'dim': 5, 'hidden': [6], 'shift_only': False, 'n_couplings': None}),
    Component('realnvp_chain', 'flow',
              'a chain of 3 affine coupling blocks with their permutations (d = 6): forward, log-det, inverse',
              ('mi_ref.flows.RealNVP',),
              {'B': 4, 'dim': 6, 'hidden': [5, 5], 'shift_only': False, 'n_couplings': 3}),
    Component('jacobian_mlp_residual', 'jacobian',
              'per-example Jacobians, singular values and log condition numbers of a residual MLP(5, [5] * 3) '
              "(grad/x is 0: a ReLU network's Jacobian is piecewise constant in x)",
              JACOBIAN_FUNCTIONS,
              {'B': 3, 'dim': 5, 'model': 'mlp_residual', 'n_layers': 3}),
    Component('jacobian_realnvp', 'jacobian',
              'per-example Jacobians, singular values and log condition numbers of a chain of 3 affine coupling '
              'blocks (d = 6)',
              JACOBIAN_FUNCTIONS,
              {'B': 3, 'dim': 6, 'model': 'realnvp', 'hidden': [5], 'shift_only': False, 'n_couplings': 3}),
    Component('adam_step', 'adam',
              "one Adam update in the textbook form (PyTorch's), lr 1e-3, of an MLP's params (std 1e-4, like "
              "the paper's initialization) from the state after 4 steps of gradients of std 3e-8; at this "
              "gradient scale the two forms' updates differ by ~40 % of a step; no gradients (an optimizer step "
              'is not differentiated)',
              ('mi_ref.optim.Adam.update',),
              ADAM_STEP),
    Component('adam_step_tf', 'adam',
              "one Adam update in TensorFlow 1's form (the paper's), lr 1e-3, of an MLP's params (std 1e-4, "
              "like the paper's initialization) from the state after 4 steps of gradients of std 3e-8; at this "
              "gradient scale the two forms' updates differ by ~40 % of a step; no gradients (an optimizer step "
              'is not differentiated)',
              ('mi_ref.optim.Adam.update',),
              dict(ADAM_STEP, form='tf')),
    Component('train_invertible', 'train',
              "one training step of the 'invertible' experiment at small size: g1, g2 = RealNVP(8, 3 shift-only "
              'couplings, hidden [6]), bilinear critic, loss -I_NCE',
              ('mi_ref.objectives.mi_loss',),
              {'B': 5,
               'dim': 8,
               'encoder': 'realnvp',
               'n_couplings': 3,
               'hidden': [6],
               'shift_only': True,
               'critic': 'bilinear',
               'estimator': 'infonce'}),
    Component('train_conditioning', 'train',
              "one training step of the 'conditioning' experiment at small size: g1, g2 = MLP(8, [8] * 5, "
              'shortcuts), bilinear critic, loss -I_NCE',
              ('mi_ref.objectives.mi_loss',),
              {'B': 5,
               'dim': 8,
               'encoder': 'mlp',
               'encoder_dims': [8, 8, 8, 8, 8],
               'shortcuts': True,
               'critic': 'bilinear',
               'estimator': 'infonce'}),
    Component('train_critics_infonce', 'train',
              "one training step of the 'critics' experiment at small size: g1, g2 = MLP(8, [10, 10, 6]), "
              'concat critic (hidden [12]), loss -I_NCE',
              ('mi_ref.objectives.mi_loss',),
              TRAIN_CRITICS),
    Component('train_critics_nwj', 'train',
              "one training step of the 'critics' experiment at small size: g1, g2 = MLP(8, [10, 10, 6]), "
              'concat critic (hidden [12]), loss -I_NWJ',
              ('mi_ref.objectives.mi_loss',),
              dict(TRAIN_CRITICS, estimator='nwj')),
    Component('train_step_invertible', 'train_step',
              "one whole training step of the 'invertible' experiment at small size, as the paper's loop takes "
              "it: g1, g2 = RealNVP(8, 3 shift-only couplings, hidden [6]) and a bilinear critic at the paper's "
              "initialization (kernels std 1e-4, so the flows' gradients are tiny), loss -I_NCE, then "
              "TensorFlow 1's Adam (lr 1e-4) from a fresh state; outputs the loss and the params and moments "
              'after the update',
              ('mi_ref.objectives.mi_loss', 'mi_ref.optim.Adam.update'),
              {'B': 5,
               'dim': 8,
               'encoder': 'realnvp',
               'n_couplings': 3,
               'hidden': [6],
               'shift_only': True,
               'init_std': 0.0001,
               'critic': 'bilinear',
               'estimator': 'infonce',
               'lr': 0.0001,
               'form': 'tf'}),
]


# The golden-vector spec of a registered kind is the component that checks its formula: for a critic of
# mi_ref.critics.CRITICS a 'critic' component with config["critic"] == its name, for an estimator of
# mi_ref.bounds.ESTIMATORS a 'bound' component with config["estimator"] == its name, for an encoder of
# mi_ref.experiments.encoders.ENCODERS a component of the kind of its name ('mlp', 'convnet'). A kind that has
# none on purpose is listed here with the reason; tests/test_registry.py checks that one of the two holds.
SPEC_KIND = {"critic": "critic", "estimator": "bound"}
WITHOUT_GOLDEN_SPEC = {"critic": {}, "estimator": {}, "encoder": {}}


def golden_specs(kind, name):
    """The names of the components that check the ``kind`` ("critic", "estimator" or "encoder") registered as
    ``name``."""
    if kind == "encoder":
        return [c.name for c in COMPONENTS if c.kind == name]
    return [c.name for c in COMPONENTS if c.kind == SPEC_KIND[kind] and c.config.get(kind) == name]

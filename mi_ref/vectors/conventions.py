"""The conventions of the golden vectors, written once: each entry's text goes to ``manifest.json
["conventions"]`` for a reader, its value (where it has one) to ``manifest.json["settings"]`` for a program.
README's "Conventions" section points here."""

from dataclasses import dataclass

FORMAT = "mi-ref golden vectors"
FORMAT_VERSION = 2      # 2: the manifest pins its components with a SHA-256 ("integrity")
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Convention:
    key: str
    text: str
    value: object = None


CONVENTION_LIST = [
    Convention('mode',
        'The settings follow the paper\'s companion notebook (README, "The paper\'s settings, and where '
        'mi-ref differs from the notebook").',
        'notebook'),
    Convention('arrays',
        'input/NAME: differentiable input; const/NAME: fixed integer structure (not differentiated); '
        'param/PATH: trainable parameter; output/NAME: what the component returns; cotangent/NAME: fixed '
        'array with the shape of output/NAME; aux/NAME: intermediate value, not part of L, optional when '
        'comparing; grad/NAME = dL/d input/NAME; grad/param/PATH = dL/d param/PATH.'),
    Convention('scalar',
        'L = sum over outputs k of sum(output_k * cotangent_k). Scalar outputs (bounds, losses) have '
        'cotangent 1.0, so their grads are plain gradients. PyTorch: torch.autograd.grad(outputs, inputs, '
        'grad_outputs=cotangents); JAX: jax.vjp(f, *primals)[1](cotangents); TensorFlow: '
        'tape.gradient(outputs, sources, output_gradients=cotangents).'),
    Convention('dtypes',
        'Float arrays are float64; const arrays int64. Every input, parameter and cotangent is exactly '
        'representable in float32 (drawn in float64, rounded to float32), so a float32 port starts from the '
        'same numbers. Outputs and gradients are float64 results of mi-ref.',
        'float64'),
    Convention('param_order',
        "param/PATH: PATH joins the keys of mi-ref's nested params with '/'; the canonical flattening order "
        'is sorted dict keys, list items in index order, depth first (mi_ref.tree.tree_flatten), e.g. '
        'layers/0/W, layers/0/b, layers/1/W, ... The param/ arrays of each file are listed in that order.'),
    Convention('dense',
        'A dense layer stores W with shape (in, out) and b with shape (out,) and computes y = x W + b on '
        'row-major batches x: (B, in). PyTorch nn.Linear(in, out): weight = W.T (shape (out, in)), bias = '
        'b. Keras Dense kernel = W; Flax nn.Dense kernel = W.',
        {'W_shape': '(in, out)', 'formula': 'y = x W + b'}),
    Convention('mlp',
        'MLP(dims): one dense layer per entry of dims (param layers/i/W, layers/i/b), ReLU after every '
        'layer but the last. With shortcuts every layer, the last too, is residual: h <- layer(h) + h, i.e. '
        'h <- relu(h W + b) + h for hidden layers and y = h W + b + h for the last.'),
    Convention('relu',
        "relu(x) = max(x, 0), relu'(x) = 1 for x > 0 and 0 for x <= 0: the derivative at exactly 0 is 0, as "
        'in TensorFlow (ReluGrad), PyTorch (torch.relu) and JAX (jax.nn.relu). Ties are common (a zero bias on '
        'an all-zero input window); the component convnet_relu_ties has many and fails a port that uses any '
        'other value. (autograd\'s np.maximum(x, 0) gives 1/2 there: mi-ref does not use it.)',
        {'derivative_at_0': 0.0}),
    Convention('softplus',
        'softplus(x) = log(1 + exp(x)), computed stably (logaddexp(0, x)).'),
    Convention('conv2d',
        "Images are NHWC (B, H, W, C); kernels are (kh, kw, C_in, C_out) (TensorFlow's HWIO). "
        'Cross-correlation: y[b, p, q, o] = sum_{i, j, c} xpad[b, p*s + i, q*s + j, c] * W[i, j, c, o] + '
        "bias[o]. Padding is TensorFlow's 'same' rule, per spatial axis of size n with kernel k and stride "
        's: out = ceil(n / s); pad_total = max((out - 1) * s + k - n, 0); pad_before = pad_total // 2; '
        'pad_after = pad_total - pad_before (the odd pixel goes after: bottom, right). PyTorch: weight = '
        'W.permute(3, 2, 0, 1) (C_out, C_in, kh, kw), input x.permute(0, 3, 1, 2) (NCHW), pad explicitly '
        "with F.pad(x, (left, right, top, bottom)) and call conv2d with padding=0 (PyTorch's symmetric "
        "padding and padding='same' do not reproduce this rule for stride 2).",
        {'layout': 'NHWC',
         'kernel': '(kh, kw, C_in, C_out)',
         'padding': 'tensorflow_same',
         'odd_padding_pixel': 'after'}),
    Convention('layer_norm',
        'For each example b: mu = mean(x[b]) and sigma = sqrt(mean((x[b] - mu)^2)) over all of (H, W, C) '
        '(the population standard deviation), y = (x - mu) / (sigma + eps) * scale[c] + bias[c], eps = 1e-6 '
        "added to sigma, NOT inside the square root (the paper's notebook divides by K.std(x) + 1e-6); "
        'scale and bias one value per channel (last axis). torch.nn.LayerNorm and tf.keras '
        'LayerNormalization compute (x - mu) / sqrt(var + eps) instead and differ by ~eps / (2 sigma) '
        'relative: write it out.',
        {'formula': '(x - mean) / (std + eps) * scale + bias',
         'axes': 'all but the batch axis',
         'std': 'population (divide by n)',
         'eps': 1e-06,
         'eps_added_to': 'std',
         'scale_and_bias': 'one per channel (last axis)'}),
    Convention('convnet',
        "x (B, H*W) is reshaped row-major to (B, H, W, 1); conv1 5x5 stride 2 'same' + bias, ReLU; conv2 "
        "5x5 stride 2 'same' + bias, ReLU; layer norm over (h, w, c) as 'layer_norm' (eps 1e-6 added to the "
        "std); mean over (h, w); dense 'out'. Params conv1/W, conv1/b, conv2/W, conv2/b, norm/scale, "
        'norm/bias, out/W, out/b.'),
    Convention('coupling',
        "RealNVP block on d values, h = d // 2: first the block's fixed permutation z = x[:, perm], then "
        "the coupling: z_a = z[:, :h] passes unchanged and feeds the conditioner MLP 'net' (ReLU hidden "
        'layers, linear output); z_b = z[:, h:]. Shift-only: the net outputs t (d - h values) and y_b = z_b '
        '+ t. Affine: the net outputs [t ; r] (first d - h values are t, the next d - h are r), scale = '
        '1e-7 + softplus(r), y_b = z_b * scale + t, log|det| = sum(log scale) (0 for shift-only). The '
        "block's output is y = concat(z_a, y_b). Inverse: z = concat(y_a, (y_b - t(y_a)) / scale(y_a)), x = "
        "z[:, argsort(perm)]. This is the paper's order: its notebook builds TFP's Chain([coupling_1, "
        'permute_1, ..., coupling_n, permute_n]), which applies its list from the end, so every block '
        'permutes and then couples, and the flow ends with a coupling.',
        {'block_order': ['permute', 'couple'],
         'permutation': 'z = x[:, perm]',
         'inverse_permutation': 'x = z[:, argsort(perm)]',
         'chain': 'blocks in index order',
         'ends_with': 'couple',
         'split': 'z[:, :d // 2] conditions, z[:, d // 2:] is transformed',
         'net_output': '[shift, raw scale]',
         'scale': '1e-7 + softplus(raw)',
         'no_permutation_is_self_inverse': True}),
    Convention('permutation',
        "z = x[:, perm]: column j of the permuted values is column perm[j] of the block's input (torch: "
        'x[:, perm]; TFP: tfb.Permute(perm)); the inverse is x = z[:, argsort(perm)]. A chain stores '
        'const/perms (n_blocks, d): block k starts with perms[k]; blocks run in index order forward and in '
        'reverse order for the inverse. No permutation in these files is its own inverse, so the two '
        'directions cannot be confused unnoticed. log_det of a chain is the sum over blocks (permutations '
        'have |det| = 1).'),
    Convention('scores',
        'Score matrices S (K, K): S[i, j] = f(u_i, v_j); rows index the view-1 codes u (x), columns the '
        'view-2 codes v (y); the diagonal S[i, i] holds the K positive pairs, the off-diagonal entries the '
        'negatives.',
        {'rows': 'u = g1(x1)', 'columns': 'v = g2(x2)', 'positives': 'diagonal'}),
    Convention('bounds',
        'I_NCE = log K + mean_i(S[i, i] - logsumexp_j S[i, j]). TUBA = 1 + mean_i S[i, i] - mean_{i != j} '
        'exp(S[i, j] - l_j) - mean_j l_j, with an optional log-baseline l (K,) per column (l = 0: 1 + '
        'mean_i S[i, i] - exp(logmeanexp_{i != j} S[i, j])). I_NWJ = TUBA(S - 1). All in nats.'),
    Convention('critics',
        'inner_product: S = u v^T. bilinear: param W (d_v, d_u), S = u (v W)^T, i.e. S[i, j] = sum_{a, b} '
        'u[i, a] W[b, a] v[j, b]. separable: S = f(u) h(v)^T with MLPs f (params f/...) and h (params '
        "h/...). concat: S[i, j] = m([u_i ; v_j]) with an MLP m (params layers/...) whose first kernel's "
        'rows 0..d_u-1 multiply u_i and rows d_u..d_u+d_v-1 multiply v_j; scalar output.'),
    Convention('objective',
        'Training steps: params {g1, g2, critic}; u = g1(x1), v = g2(x2), S = critic(u, v), loss = '
        '-I_EST(S) (mi_ref.objectives.mi_loss); output/loss with cotangent 1.0, so grad/param/... is the '
        'gradient of the loss that one optimizer step uses. The Adam update alone is adam_step (textbook) '
        'and adam_step_tf (TensorFlow 1); train_step_invertible is a whole step: loss, gradients and the '
        "TF-form Adam update from the paper's initialization."),
    Convention('jacobian',
        'J[b, o, i] = d y[b, o] / d x[b, i] (B, out, in) per example; singular values per example in '
        'descending order (B, min(out, in)); log condition number = log(sigma_max / sigma_min) (natural '
        'log). aux/condition_percentiles = (min, p20, p40, p60, p80, max) of the log condition numbers over '
        "the batch as the paper's notebook takes them: sorted, the entry at index int(p * (n - 1)) for "
        'p = 0, 0.2, ..., 1 (order statistics, no interpolation).'),
    Convention('adam',
        "Both forms keep m' = b1 m + (1 - b1) g and v' = b2 v + (1 - b2) g^2 with t = step + 1. Textbook "
        "(Kingma and Ba; torch.optim.Adam), config form 'textbook': param' = param - lr * (m' / (1 - b1^t)) "
        "/ (sqrt(v' / (1 - b2^t)) + eps). TensorFlow 1 (tf.train.AdamOptimizer; the paper's optimizer), "
        "config form 'tf': lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t), param' = param - lr_t * m' / (sqrt(v') "
        "+ eps): eps is added to sqrt(v') WITHOUT bias correction, i.e. the textbook form with eps / sqrt(1 "
        "- b2^t) (3.2e-7 at t = 1). With gradients near 1e-8, as here and as in the paper's "
        '1e-4-initialized flows, the forms differ by a large fraction of the step. const/step is the number '
        "of steps taken before this one (PyTorch's state['step'] before the call).",
        {'b1': 0.9,
         'b2': 0.999,
         'eps': 1e-08,
         'step': 'const/step = steps taken before; t = step + 1',
         'forms': {'textbook': 'p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)',
                   'tf': 'p - (lr * sqrt(1 - b2^t) / (1 - b1^t)) * m / (sqrt(v) + eps)'}}),
    Convention('constant_outputs',
        'An output that does not depend on the inputs or params (the log-det of a shift-only flow, always '
        '0) still has a cotangent array but adds nothing to L: leave it out of your VJP call (PyTorch '
        'refuses outputs that do not require grad).'),
    Convention('structure_seed',
        "Each component's config holds structure_seed, the seed mi-ref draws its fixed random structure "
        '(the RealNVP permutations) from, so that `recompute` can rebuild the component from its manifest '
        'entry. A port reads that structure from the const/ arrays instead and needs no seed.'),
]

CONVENTIONS = {c.key: c.text for c in CONVENTION_LIST}
SETTINGS = {c.key: c.value for c in CONVENTION_LIST if c.value is not None}

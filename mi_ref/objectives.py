"""The training objectives of the paper's MI experiments, as pure functions of (params, batch).

params = {"g1": encoder-1 params, "g2": encoder-2 params, "critic": critic params}

    u = g1(x1),  v = g2(x2),  S = critic(u, v)  (K x K, positives on the diagonal)
    bound = I_EST(S)                         (I_NCE, I_NWJ or TUBA; see mi_ref.bounds)
    loss  = -bound                           (Sections 3.1-3.2: maximize the bound)
    loss  = |bound - t|                      (Section 3.3, "encoders": L_t with target t)
"""

import autograd.numpy as np

from .bounds import get_estimator


def mi_scores(params, g1, g2, critic, x1, x2):
    """S = critic(g1(x1), g2(x2)): ``(K, K)`` scores, row i = view-1 code of example i."""
    return critic.apply(params["critic"], g1.apply(params["g1"], x1), g2.apply(params["g2"], x2))


def mi_bound(params, g1, g2, critic, estimator, x1, x2):
    """The estimated bound I_EST(critic(g1(x1), g2(x2))), in nats."""
    return get_estimator(estimator)(mi_scores(params, g1, g2, critic, x1, x2))


def mi_loss(params, g1, g2, critic, estimator, x1, x2, target=None):
    """-I_EST (target None) or the paper's L_t = |I_EST - t| (target t)."""
    bound = mi_bound(params, g1, g2, critic, estimator, x1, x2)
    return -bound if target is None else np.abs(bound - target)

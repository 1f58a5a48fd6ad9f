"""Lower bounds on mutual information, computed from a critic's score matrix.

``scores: (K, K)`` with S[i, j] = f(x_i, y_j): the diagonal holds the K positive pairs (samples of the joint
p(x, y)), the K (K - 1) off-diagonal entries serve as samples of the product of marginals p(x) p(y).
All bounds are in nats and return a scalar that autograd differentiates. Training maximizes a bound,
i.e. minimizes its negative.
"""

import autograd.numpy as np
from autograd.scipy.special import logsumexp

from .registry import Registry


def check_scores(scores):
    """Raise ``ValueError`` unless ``scores`` is a square (K, K) matrix with K >= 2."""
    shape = np.shape(scores)
    if len(shape) != 2 or shape[0] != shape[1] or shape[0] < 2:
        raise ValueError(f"scores must be a square (K, K) matrix with K >= 2 (rows index x, columns y, "
                         f"positives on the diagonal), got shape {shape}")
    return shape[0]


def infonce(scores):
    """I_NCE (van den Oord et al., 2018; paper Section 2):

        I_NCE = log K + (1/K) sum_i [ S[i, i] - log sum_j exp S[i, j] ].

    Always <= log K (each term is a log-softmax, <= 0). Stable for scores of any magnitude
    (log-sum-exp subtracts the row maximum).
    """
    k = check_scores(scores)
    return np.log(k) + np.mean(np.diag(scores) - logsumexp(scores, axis=1))


def logmeanexp_offdiag(scores):
    """log( (1 / (K (K - 1))) sum_{i != j} exp S[i, j] ), computed stably."""
    k = check_scores(scores)
    off = np.where(np.eye(k, dtype=bool), -np.inf, scores)
    return logsumexp(off) - np.log(k * (k - 1))


def tuba(scores, log_baseline=None):
    """TUBA (Poole et al., 2019), the "tractable unnormalized Barber-Agakov" bound:

        I_TUBA = 1 + (1/K) sum_i S[i, i]  -  mean_{i != j} exp(S[i, j] - l_j)  -  (1/K) sum_j l_j,

    where l_j = log a(y_j) is an optional log-baseline per column (shape ``(K,)`` or a scalar; default 0,
    i.e. a(y) = 1, which gives the paper's form 1 + mean_i S[i, i] - exp(logmeanexp_{i != j} S[i, j])).

    Finite whenever the result is representable: the off-diagonal mean is exp(logmeanexp), which overflows
    to inf (bound -inf) only when max_{i != j} S[i, j] - l_j exceeds about 709 + log(K (K - 1)).
    """
    k = check_scores(scores)
    if log_baseline is None:
        return 1.0 + np.mean(np.diag(scores)) - np.exp(logmeanexp_offdiag(scores))
    shape = np.shape(log_baseline)
    if shape not in ((), (k,)):
        raise ValueError(f"log_baseline must be a scalar or have shape ({k},) (one value per column y_j), "
                         f"got shape {shape}")
    shifted = scores - np.reshape(log_baseline, (1, -1)) if shape else scores - log_baseline
    return (1.0 + np.mean(np.diag(scores)) - np.exp(logmeanexp_offdiag(shifted))
            - np.mean(log_baseline * np.ones(k)))


def nwj(scores):
    """I_NWJ (Nguyen, Wainwright, Jordan, 2010; paper Section 2): TUBA applied to S - 1, i.e.

        I_NWJ = (1/K) sum_i S[i, i]  -  (1/e) mean_{i != j} exp S[i, j]
              = 1 + mean_i (S[i, i] - 1) - exp(logmeanexp_{i != j} (S[i, j] - 1)).
    """
    return tuba(scores - 1.0)


# name -> bound(scores); ``label`` and ``color`` are how figures show it
ESTIMATORS = Registry("estimator")
ESTIMATORS.register("infonce", infonce, label=r"$I_{NCE}$", color="tab:blue")
ESTIMATORS.register("nwj", nwj, label=r"$I_{NWJ}$", color="tab:orange")
ESTIMATORS.register("tuba", tuba, label=r"$I_{TUBA}$", color="tab:green")


def get_estimator(name):
    """The bound registered as ``name`` (see :data:`ESTIMATORS`)."""
    return ESTIMATORS.get(name)

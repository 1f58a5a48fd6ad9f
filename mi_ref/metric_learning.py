"""Section 4: the metric-learning view of MI maximization.

With a separable critic f(x, y) = phi1(x)^T phi2(y), the score matrix of a batch is S = A P^T with anchors
A = phi1(x1) and positives P = phi2(x2) (row i of both from the same image), and

    I_NCE(S) = log K - L_K-pair(A, P),

where L_K-pair is the multi-class K-pair loss of Sohn (2016). The paper relates I_NCE and I_NWJ to triplet
losses as well (anchor g1(x1_i), positive g2(x2_i), negatives g2(x2_j), j != i) and argues that the
success of these objectives is better explained by metric learning than by MI.

Every loss here takes the same (K, K) scores as the bounds (rows = anchors, columns = candidates,
diagonal = positives) and returns a scalar to *minimize*.
"""

import autograd.numpy as np
from autograd.scipy.special import logsumexp

from .bounds import check_scores
from .critics import check_pair
from .registry import Registry


def kpair_loss(anchors, positives):
    """Multi-class K-pair loss (Sohn, 2016), without its optional embedding-norm regularizer:

        L = (1/K) sum_i log( 1 + sum_{j != i} exp(a_i . p_j - a_i . p_i) )
          = (1/K) sum_i [ logsumexp_j (a_i . p_j) - a_i . p_i ]       (the 1 is the j = i term)
          = log K - I_NCE(A P^T).

    ``anchors: (K, d)``, ``positives: (K, d)``; row i of each comes from the same example.
    """
    check_pair(anchors, positives)
    if np.shape(anchors)[1] != np.shape(positives)[1]:
        raise ValueError(f"anchors and positives must have the same width, got {np.shape(anchors)} and "
                         f"{np.shape(positives)}")
    scores = np.dot(anchors, positives.T)
    return kpair_loss_from_scores(scores)


def kpair_loss_from_scores(scores):
    """The K-pair loss on a score matrix: (1/K) sum_i [logsumexp_j S[i, j] - S[i, i]]."""
    check_scores(scores)
    return np.mean(logsumexp(scores, axis=1) - np.diag(scores))


def _offdiag_hinges(scores, margin):
    """H[i, j] = max(0, margin + S[i, j] - S[i, i]) for j != i, and 0 on the diagonal."""
    k = check_scores(scores)
    if not margin >= 0:
        raise ValueError(f"the triplet margin must be >= 0, got {margin!r}")
    hinge = np.maximum(0.0, margin + scores - np.reshape(np.diag(scores), (k, 1)))
    return np.where(np.eye(k, dtype=bool), 0.0, hinge), k


def triplet_loss(scores, margin=1.0):
    """Triplet loss averaged over all negatives:

        L = (1 / (K (K - 1))) sum_i sum_{j != i} max(0, margin + S[i, j] - S[i, i]).

    Not differentiable where a hinge argument is exactly 0 (autograd then takes the subgradient 0).
    """
    hinges, k = _offdiag_hinges(scores, margin)
    return np.sum(hinges) / (k * (k - 1))


def triplet_loss_hardest(scores, margin=1.0):
    """Triplet loss with the hardest negative per anchor:

        L = (1/K) sum_i max(0, margin + max_{j != i} S[i, j] - S[i, i]).

    Not differentiable at hinge 0 nor where two negatives tie for the maximum (autograd's max passes
    the gradient to the tied entries equally).
    """
    k = check_scores(scores)
    if not margin >= 0:
        raise ValueError(f"the triplet margin must be >= 0, got {margin!r}")
    negatives = np.where(np.eye(k, dtype=bool), -np.inf, scores)
    hardest = np.max(negatives, axis=1)
    return np.mean(np.maximum(0.0, margin + hardest - np.diag(scores)))


# name -> loss(scores, margin) for training (the K-pair loss is -I_NCE + log K: train it as "infonce")
LOSSES = Registry("metric-learning loss")
LOSSES.register("triplet", triplet_loss, label="triplet (all negatives)", color="tab:green")
LOSSES.register("triplet_hardest", triplet_loss_hardest, label="triplet (hardest negative)", color="tab:red")

"""Context ids from a Gaussian mixture fitted to the training images (CN paper section IV-B).

"During training on CIFAR-10 and CIFAR-100, we fit a Gaussian mixture model by Maximum Likelihood
Estimation (MLE). We use K-means++ to initialize the centers of the mixture component and
Expectation-Maximization (EM) to estimate the parameters ... K = 3" (Faye et al.); each component is a
context. The paper does not say what the mixture is fitted on nor its covariance; our choice: the flattened
pixels in [0, 1] (3072 values for CIFAR), one diagonal covariance per component. A sample's context is its
most probable component (hard assignment), for the training and the test images alike (the authors' notebooks
load such per-image labels from files).

Fit: k-means++ seeding (Arthur & Vassilvitskii 2007) from a ``torch.Generator`` seeded by ``seed``, one hard
assignment to the nearest centre, then EM for a diagonal-covariance mixture (variances floored at
:data:`VARIANCE_FLOOR`, as scikit-learn's ``reg_covar``) until the mean log-likelihood changes by less than
:data:`TOLERANCE` or after :data:`MAX_ITERATIONS` rounds (scikit-learn's defaults). Responsibilities are
computed in log space, in float64. Cost per EM round: O(N K D) (two matrix products).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

VARIANCE_FLOOR = 1e-6
TOLERANCE = 1e-3
MAX_ITERATIONS = 100
METHOD = {"features": "pixels in [0, 1]", "covariance": "diagonal", "init": "k-means++", "assignment": "argmax"}
"""What the cache spec of a model trained on these contexts records (with K and the seed)."""


def kmeans_plus_plus(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """``k`` centres (k, D) chosen from the rows of ``x`` (N, D): the first uniformly, each next one with
    probability proportional to the squared distance to the nearest centre chosen so far."""
    first = int(torch.randint(len(x), (1,), generator=generator))
    centres = [x[first]]
    nearest = (x - x[first]).square().sum(dim=1)
    for _ in range(1, k):
        index = int(torch.multinomial(nearest.clamp(min=0) + 1e-300, 1, generator=generator))
        centres.append(x[index])
        nearest = torch.minimum(nearest, (x - x[index]).square().sum(dim=1))
    return torch.stack(centres)


def _log_densities(x: Tensor, means: Tensor, variances: Tensor, log_weights: Tensor) -> Tensor:
    """log(w_k N(x_i | mu_k, diag var_k)), shape (N, K)."""
    precision = 1.0 / variances  # (K, D)
    quadratic = (x.square() @ precision.T - 2.0 * x @ (means * precision).T
                 + (means.square() * precision).sum(dim=1))
    log_det = torch.log(variances).sum(dim=1)
    return log_weights - 0.5 * (quadratic + log_det + x.shape[1] * math.log(2 * math.pi))


def _m_step(x: Tensor, responsibilities: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    counts = responsibilities.sum(dim=0) + 1e-10  # (K,)
    means = responsibilities.T @ x / counts[:, None]
    variances = responsibilities.T @ x.square() / counts[:, None] - means.square()
    return means, variances.clamp(min=0) + VARIANCE_FLOOR, torch.log(counts / len(x))


def fit_gmm(x: Tensor, k: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """(means (K, D), variances (K, D), log weights (K,)) of a diagonal Gaussian mixture fitted to ``x`` (N, D)."""
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= len(x):
        raise ValueError(f"k must be an int in [1, {len(x)}] (the number of samples), got {k!r}")
    x = x.to(torch.float64)
    centres = kmeans_plus_plus(x, k, torch.Generator().manual_seed(seed))
    nearest = torch.cdist(x, centres).argmin(dim=1)
    means, variances, log_weights = _m_step(x, torch.nn.functional.one_hot(nearest, k).to(x.dtype))
    previous = -math.inf
    for _ in range(MAX_ITERATIONS):
        log_joint = _log_densities(x, means, variances, log_weights)
        log_likelihood = torch.logsumexp(log_joint, dim=1)
        means, variances, log_weights = _m_step(x, torch.exp(log_joint - log_likelihood[:, None]))
        mean_log_likelihood = float(log_likelihood.mean())
        if abs(mean_log_likelihood - previous) < TOLERANCE:
            break
        previous = mean_log_likelihood
    return means, variances, log_weights


def gmm_contexts(train: Tensor, test: Tensor, k: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Context ids (int64, (N_train,) and (N_test,)) of float images (N, C, H, W): the most probable component
    of a K-component mixture fitted to ``train`` (module docstring)."""
    means, variances, log_weights = fit_gmm(train.flatten(1), k, seed)
    train_ids, test_ids = (_log_densities(images.flatten(1).to(torch.float64), means, variances, log_weights)
                           .argmax(dim=1) for images in (train, test))
    return train_ids, test_ids

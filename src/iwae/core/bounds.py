"""Lower bounds on log p(x) as pure functions of the log weights.

Every bound maps log_w [k, B] to [B]: the reduction runs over the k samples of one
datapoint only, never across the batch.
"""
import math

import torch

from .validate import divisor, unit_interval


def _check(log_w):
    if log_w.dim() != 2:
        raise ValueError(f"log_w must have shape [k, batch], got {tuple(log_w.shape)}")
    return log_w.shape[0]


def elbo(log_w):
    """The k-sample VAE objective (1/k) sum_i log w_i [Kingma & Welling 2014]: [k, B] -> [B]."""
    _check(log_w)
    return log_w.mean(0)


def iwae_bound(log_w):
    """L_k = log (1/k) sum_i w_i = logsumexp_i log w_i - log k [Burda et al. 2016, eq. 8]."""
    k = _check(log_w)
    return torch.logsumexp(log_w, 0) - math.log(k)


def miwae_bound(log_w, m):
    """MIWAE(M, K) = (1/M) sum_m L_K over m groups of K = k / M samples [Rainforth et al. 2018].

    m = 1 is iwae_bound; m = k is elbo. The groups are contiguous blocks of samples.
    """
    k = _check(log_w)
    divisor("m", m, k)
    groups = log_w.reshape(m, k // m, log_w.shape[1])           # [m, K, B]
    return (torch.logsumexp(groups, 1) - math.log(k // m)).mean(0)


def ciwae_bound(log_w, beta):
    """CIWAE(beta) = beta * ELBO + (1 - beta) * IWAE [Rainforth et al. 2018]."""
    unit_interval("beta", beta)
    return beta * elbo(log_w) + (1.0 - beta) * iwae_bound(log_w)

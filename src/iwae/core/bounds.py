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


def renyi_bound(log_w, alpha):
    """The Renyi (VR) bound's estimate [Li & Turner 2016, eq. 10]: [k, B] -> [B],
        L_alpha = 1/(1 - alpha) log (1/k) sum_i w_i^(1 - alpha),
    for alpha in [0, 1], per datapoint. alpha = 0 is L_k (iwae_bound, returned as such);
    alpha = 1 is the ELBO (elbo, returned as such: the limit alpha -> 1); in between the bound
    decreases in alpha from L_k to the ELBO. Its gradient is sum_i wbar_i d log w_i with
    wbar = softmax((1 - alpha) log w).

    Written as m + log1p(mean_i expm1(e (log w_i - m))) / e with e = 1 - alpha and m the
    largest log w (held constant: the value does not depend on it): no term overflows, and as
    e -> 0 the log1p/expm1 pair keeps the O(e) difference from the mean of log w that a plain
    logsumexp / e would lose to rounding (1e-7 / e nats in float32). That pair runs in float64:
    compiled for the CPU, torch writes expm1 as exp - 1 (Inductor's vectorised code), which
    in float32 loses the same 1e-7 / e; in float64 the loss is 1e-16 / e.
    """
    _check(log_w)
    unit_interval("alpha", alpha)
    if alpha == 0:
        return iwae_bound(log_w)
    if alpha == 1:
        return elbo(log_w)
    e = 1.0 - alpha
    top = log_w.detach().amax(0)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))   # all -inf: -inf below
    tilted = torch.expm1(e * (log_w - top).double()).mean(0)        # [B]
    return top + (torch.log1p(tilted) / e).to(log_w.dtype)


def vr_max_bound(log_w):
    """VR-max [Li & Turner 2016, sec. 5.1]: max_i log w_i, [k, B] -> [B], the alpha -> -inf limit
    of the VR objective. Not a lower bound on log p(x) in general: it is >= L_k for every draw,
    and E[max_i log w_i] can exceed log p(x) (it grows to the largest log w as k grows). Its
    gradient is that of the largest log w."""
    _check(log_w)
    return log_w.amax(0)

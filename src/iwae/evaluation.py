"""The L_k estimate of log p(x), for any module with ``log_weights(x, k)``."""
import math

import torch


@torch.no_grad()
def log_likelihood(model, x, k=5000, *, batch_size=100, max_samples=16384, with_elbo=False):
    """L_k = logsumexp_i log w_i - log k per datapoint: x [N, D] -> float64 [N].

    Runs over x in batches of ``batch_size`` and over the k samples in chunks of at most
    ``max_samples`` (datapoints x samples), combining chunks with a running logsumexp, so
    memory depends on max_samples, not on k. Test NLL = -log_likelihood(...).mean().
    with_elbo: also return the k-sample ELBO (mean log w) from the same samples, [N].
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if batch_size < 1 or max_samples < 1:
        raise ValueError("batch_size and max_samples must be >= 1")
    out, elbo = [], []
    for xb in x.split(batch_size):
        chunk = max(1, max_samples // xb.shape[0])
        total = torch.full((xb.shape[0],), -math.inf, dtype=torch.float64, device=xb.device)
        mean = torch.zeros(xb.shape[0], dtype=torch.float64, device=xb.device)
        for start in range(0, k, chunk):
            log_w = model.log_weights(xb, min(chunk, k - start)).double()    # [c, b]
            total = torch.logaddexp(total, torch.logsumexp(log_w, 0))
            mean += log_w.sum(0) / k
        out.append(total - math.log(k))
        elbo.append(mean)
    return (torch.cat(out), torch.cat(elbo)) if with_elbo else torch.cat(out)


@torch.no_grad()
def active_units(model, x, threshold=1e-2):
    """Active units per stochastic layer [Burda et al. 2016, sec. 5.2].

    A_u = Cov_x(E_{q(u|x)}[u]) over the examples x [N, D]; a unit is active if A_u > threshold.
    The upper layers' means are taken at one sample of the layer below (as the paper's code).
    Returns (counts per layer, variances per layer [[d_l]]).
    """
    variances = [mu.var(0, correction=0) for mu in model.encode(x)]
    return [int((v > threshold).sum()) for v in variances], variances

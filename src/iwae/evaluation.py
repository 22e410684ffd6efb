"""The L_k estimate of log p(x), for any module with ``log_weights(x, k)``."""
import math

import torch


@torch.no_grad()
def log_likelihood(model, x, k=5000, *, batch_size=100, max_samples=16384):
    """L_k = logsumexp_i log w_i - log k per datapoint: x [N, D] -> float64 [N].

    Runs over x in batches of ``batch_size`` and over the k samples in chunks of at most
    ``max_samples`` (datapoints x samples), combining chunks with a running logsumexp, so
    memory depends on max_samples, not on k. Test NLL = -log_likelihood(...).mean().
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if batch_size < 1 or max_samples < 1:
        raise ValueError("batch_size and max_samples must be >= 1")
    out = []
    for xb in x.split(batch_size):
        chunk = max(1, max_samples // xb.shape[0])
        total = torch.full((xb.shape[0],), -math.inf, dtype=torch.float64, device=xb.device)
        for start in range(0, k, chunk):
            log_w = model.log_weights(xb, min(chunk, k - start))             # [c, b]
            total = torch.logaddexp(total, torch.logsumexp(log_w.double(), 0))
        out.append(total - math.log(k))
    return torch.cat(out)

"""The L_k estimate of log p(x), for any module with ``log_weights(x, k)``."""
import math
import os

import torch



CHUNK_BYTES = 24 << 20     # keep a chunk's [rows, D] float buffers below glibc's mmap limit
COMPILE_MIN_WORK = 1 << 24  # compile the Bernoulli kernel when k * N * D reaches this (L_5000)


def log_likelihood(model, x, k=5000, *, batch_size=100, max_samples=16384, with_elbo=False):
    """L_k = logsumexp_i log w_i - log k per datapoint: x [N, D] -> float64 [N].

    Runs over x in batches of ``batch_size`` and over the k samples in chunks of at most
    ``max_samples`` (datapoints x samples), combining chunks with a running logsumexp, so
    memory depends on max_samples, not on k. Test NLL = -log_likelihood(...).mean().
    with_elbo: also return the k-sample ELBO (mean log w) from the same samples, [N].

    Chunks are further capped at CHUNK_BYTES of [rows, D] data (8024 rows of 784 floats):
    larger buffers are fresh mmaps from the C allocator on every chunk, whose page faults
    cost as much as a third of the matrix products. Runs under torch.inference_mode. The
    paper's networks (see iwae.step.model_unsupported) run iwae.step.inference_log_weights:
    the same samples as model.log_weights, reused output buffers, and on the CPU for large
    chunks one compiled pass for the Bernoulli term (IWAE_COMPILE=0 turns compiling off).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if batch_size < 1 or max_samples < 1:
        raise ValueError("batch_size and max_samples must be >= 1")
    rows = max(1, min(max_samples, CHUNK_BYTES // max(1, x.element_size() * x[0].numel())))
    log_weights = _fast_log_weights(model, x, k) or model.log_weights
    out, elbo = [], []
    with torch.inference_mode():
        for xb in x.split(batch_size):
            chunk = max(1, rows // xb.shape[0])
            total = torch.full((xb.shape[0],), -math.inf, dtype=torch.float64, device=xb.device)
            mean = torch.zeros(xb.shape[0], dtype=torch.float64, device=xb.device)
            for start in range(0, k, chunk):
                log_w = log_weights(xb, min(chunk, k - start)).double()           # [c, b]
                total = torch.logaddexp(total, torch.logsumexp(log_w, 0))
                mean += log_w.sum(0) / k
            out.append(total - math.log(k))
            elbo.append(mean)
        out, elbo = torch.cat(out), torch.cat(elbo)
    out, elbo = out.clone(), elbo.clone()                  # ordinary tensors, not inference ones
    return (out, elbo) if with_elbo else out


def _fast_log_weights(model, x, k):
    """inference_log_weights bound to a workspace, or None where it does not apply."""
    from .step import (CompiledKernels, EagerKernels, ManualPlan, Workspace,
                       inference_log_weights, model_unsupported)
    if model_unsupported(model, training=False) is not None:
        return None
    p = next(model.parameters())
    if x.dtype != p.dtype or x.device != p.device:
        return None
    plan, ws = ManualPlan(model), Workspace()
    env = os.environ.get("IWAE_COMPILE", "")
    compiled = env == "1" or (env != "0" and p.device.type == "cpu" and k * x.numel() >= COMPILE_MIN_WORK)
    kernels = CompiledKernels if compiled else EagerKernels

    def log_weights(xb, c):
        return inference_log_weights(plan, xb, c, ws, kernels)
    return log_weights


@torch.no_grad()
def active_units(model, x, threshold=1e-2):
    """Active units per stochastic layer [Burda et al. 2016, sec. 5.2].

    A_u = Cov_x(E_{q(u|x)}[u]) over the examples x [N, D]; a unit is active if A_u > threshold.
    The upper layers' means are taken at one sample of the layer below (as the paper's code).
    Returns (counts per layer, variances per layer [[d_l]]).
    """
    variances = [mu.var(0, correction=0) for mu in model.encode(x)]
    return [int((v > threshold).sum()) for v in variances], variances


@torch.no_grad()
def unit_kl(model, x):
    """KL(q(u | z_{l-1}) || p(u | z_{l+1})) per unit of every stochastic layer, in nats,
    averaged over the examples x [N, D] at one sample per layer: [[d_l]].

    The prior of the top layer is N(0, I); a lower layer's is the generative layer above it.
    A unit with KL near 0 tells the decoder nothing about x that the layer above does not,
    even where Burda's A_u counts it active: a lower-layer unit whose posterior mean follows
    its prior's mean p(u | z_{l+1}) varies with x and passes the 1e-2 threshold.
    Needs a Model built from GaussianLayers (encoder, decoder_layers).
    """
    qs, h = [], x
    for layer in model.encoder:
        mu, log_sigma = layer(h)                                  # [N, d_l]
        h = mu + torch.exp(log_sigma) * torch.randn_like(mu)
        qs.append((mu, log_sigma, h))
    priors = [(torch.zeros_like(qs[-1][0]), torch.zeros_like(qs[-1][1]))]
    for layer, (_, _, above) in zip(model.decoder_layers, reversed(qs[1:])):
        priors.insert(0, layer(above))                            # p(z_l | z_{l+1})
    return [(log_sp - log_sq + (torch.exp(2 * log_sq) + (mu_q - mu_p).square())
             / (2 * torch.exp(2 * log_sp)) - 0.5).mean(0)
            for (mu_q, log_sq, _), (mu_p, log_sp) in zip(qs, priors)]

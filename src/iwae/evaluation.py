"""The L_k estimate of log p(x), for any module with ``log_weights(x, k)``."""
import math

import torch

from .compile import compiled, flushed_subnormals

CHUNK_BYTES = 24 << 20     # keep a chunk's [rows, D] float buffers below glibc's mmap limit
COMPILE_MIN_WORK = 1 << 24  # compile log_weights when k * N * D reaches this (L_5000)


def log_likelihood(model, x, k=5000, *, batch_size=100, max_samples=16384, with_elbo=False,
                   compile="auto"):
    """L_k = logsumexp_i log w_i - log k per datapoint: x [N, D] -> float64 [N].

    Runs over x in batches of ``batch_size`` and over the k samples in chunks of at most
    ``max_samples`` (datapoints x samples), combining chunks with a running logsumexp, so
    memory depends on max_samples, not on k. Test NLL = -log_likelihood(...).mean().
    with_elbo: also return the k-sample ELBO (mean log w) from the same samples, [N].

    Chunks are further capped at CHUNK_BYTES of [rows, D] data (8024 rows of 784 floats):
    larger buffers are fresh mmaps from the C allocator on every chunk, whose page faults
    cost as much as a third of the matrix products. Runs ``model.log_weights`` under
    torch.inference_mode with subnormals flushed (CPU); compile: "auto" compiles it
    (torch.compile, the same samples) when k * N * D reaches COMPILE_MIN_WORK, "step"
    always, "off" never.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if batch_size < 1 or max_samples < 1:
        raise ValueError("batch_size and max_samples must be >= 1")
    if compile not in ("auto", "off", "step"):
        raise ValueError(f"compile must be auto, off or step, got {compile!r}")
    rows = max(1, min(max_samples, CHUNK_BYTES // max(1, x.element_size() * x[0].numel())))
    log_weights = _log_weights
    if compile == "step" or (compile == "auto" and k * x.numel() >= COMPILE_MIN_WORK):
        log_weights = _compiled(x.device)
    out, elbo = [], []
    with torch.inference_mode(), flushed_subnormals(x.device):
        for xb in x.split(batch_size):
            chunk = max(1, rows // xb.shape[0])
            total = torch.full((xb.shape[0],), -math.inf, dtype=torch.float64, device=xb.device)
            mean = torch.zeros(xb.shape[0], dtype=torch.float64, device=xb.device)
            for start in range(0, k, chunk):
                log_w = log_weights(model, xb, min(chunk, k - start)).double()           # [c, b]
                total = torch.logaddexp(total, torch.logsumexp(log_w, 0))
                mean += log_w.sum(0) / k
            out.append(total - math.log(k))
            elbo.append(mean)
        out, elbo = torch.cat(out), torch.cat(elbo)
    out, elbo = out.clone(), elbo.clone()                  # ordinary tensors, not inference ones
    return (out, elbo) if with_elbo else out


def _log_weights(model, x, k):
    return model.log_weights(x, k)


_compiled_log_weights = {}


def _compiled(device):
    """_log_weights compiled for a device type (the model is an argument: one cache for all)."""
    if device.type not in _compiled_log_weights:
        _compiled_log_weights[device.type] = compiled(_log_weights, device)
    return _compiled_log_weights[device.type]


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


def effective_sample_size(log_w):
    """Kish's effective sample size of the normalised weights, 1 / sum_i w~_i^2 with
    w~ = softmax(log w) over the k samples of each datapoint: [k, B] -> [B], in [1, k]
    (k when all weights are equal, 1 when one sample carries all of it)."""
    return 1.0 / torch.softmax(log_w, 0).square().sum(0)

"""The inference gaps [Cremer, Li & Duvenaud 2018]: how far the ELBO of the amortized q is
from log p(x), and why.

    log p(x) - L[q] = (log p(x) - L[q*])  +  (L[q*] - L[q])
                      approximation gap     amortization gap

q* is a Gaussian of the same family as q, fitted to each example alone: its means and log
sigmas (every stochastic layer's, fully factorised) start at the encoder's output and are
optimized by Adam on the example's k-sample ELBO. log p(x) is estimated by AIS (iwae.ais);
L_5000 is reported for both q and q*.
"""
import time

import torch
import torch.nn as nn

from ..core.densities import normal_log_prob, reparameterize
from ..core.validate import positive_int
from ..runtime.rng import forked_rng
from .annealing import CHAINS, STEPS, ais, require_continuous
from .likelihood import log_likelihood


class LocalPosterior(nn.Module):
    """q*(z | x) for a fixed batch x [B, D]: one diagonal Gaussian per example and layer
    (means and log sigmas [B, d_l]); log_weights(x, k) = log p(x, z) - log q*(z) at k draws."""

    def __init__(self, model, x, means, log_sigmas):
        super().__init__()
        self.model, self.x = model, x
        self.means = nn.ParameterList(means)
        self.log_sigmas = nn.ParameterList(log_sigmas)

    def sample_q(self, x, k):
        return [reparameterize(mu, ls, torch.randn((k,) + mu.shape, dtype=mu.dtype, device=mu.device))
                for mu, ls in zip(self.means, self.log_sigmas)]

    def log_q(self, x, zs):
        return sum(normal_log_prob(z, mu, ls) for z, mu, ls in zip(zs, self.means, self.log_sigmas))

    def log_weights(self, x, k):
        if x.shape != self.x.shape:
            raise ValueError(f"a LocalPosterior scores the batch it was fitted to, {list(self.x.shape)}; "
                             f"got {list(x.shape)}")
        zs = self.sample_q(x, k)
        return self.model.log_joint(x, zs) - self.log_q(x, zs)


def fit_local_posterior(model, x, *, steps=500, k=10, lr=1e-2, seed=0):
    """q* for the batch x [B, D]: each layer's mean and log sigma start at the encoder's
    output (an upper layer's at the layer below's mean) and follow Adam(lr) on the sum over
    examples of the k-sample ELBO for `steps` steps. Seeded; the model is not changed."""
    positive_int("steps", steps)
    device = x.device
    with torch.no_grad():
        means, log_sigmas, h = [], [], x
        for layer in model.encoder:
            mu, log_sigma = layer(h)
            means.append(nn.Parameter(mu.clone()))
            log_sigmas.append(nn.Parameter(log_sigma.clone()))
            h = mu
    local = LocalPosterior(model, x, means, log_sigmas)
    params = list(model.parameters())
    saved = [p.requires_grad for p in params]
    opt = torch.optim.Adam(list(local.means) + list(local.log_sigmas), lr=lr)
    try:
        for p in params:
            p.requires_grad_(False)
        with forked_rng(device):
            torch.manual_seed(seed)
            for _ in range(steps):
                loss = -local.log_weights(x, k).mean(0).sum()          # -sum_b ELBO_k(x_b)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    finally:
        for p, s in zip(params, saved):
            p.requires_grad_(s)
    return local


def inference_gaps(model, x, *, q_steps=500, q_k=10, ais_steps=STEPS, chains=CHAINS, k=5000, seed=0):
    """Per-example and mean numbers in nats for x [B, D]: elbo_q, elbo_q_star (5000-sample
    ELBOs), l5000_q, l5000_q_star, ais, approximation_gap = ais - elbo_q_star,
    amortization_gap = elbo_q_star - elbo_q, and the seconds each part took. q* takes q_steps
    Adam steps on its q_k-sample ELBO."""
    require_continuous(model, "the inference gaps (a Gaussian q* per image, AIS)")
    seconds = {}
    started = time.perf_counter()
    torch.manual_seed(seed)
    l_q, elbo_q = log_likelihood(model, x, k, with_elbo=True)
    seconds["q"] = time.perf_counter() - started
    started = time.perf_counter()
    local = fit_local_posterior(model, x, steps=q_steps, k=q_k, seed=seed)
    torch.manual_seed(seed + 1)
    l_star, elbo_star = log_likelihood(local, x, k, batch_size=x.shape[0], with_elbo=True, compile="off")
    seconds["q_star"] = time.perf_counter() - started
    started = time.perf_counter()
    log_p = ais(model, x, steps=ais_steps, chains=chains, seed=seed + 2)
    seconds["ais"] = time.perf_counter() - started
    per = {"elbo_q": elbo_q, "elbo_q_star": elbo_star, "l5000_q": l_q, "l5000_q_star": l_star, "ais": log_p,
           "approximation_gap": log_p - elbo_star, "amortization_gap": elbo_star - elbo_q}
    return {"n": int(x.shape[0]), "q_steps": q_steps, "q_k": q_k, "ais_steps": ais_steps, "chains": chains, "k": k,
            "mean": {key: v.mean().item() for key, v in per.items()},
            "per_example": {key: v.tolist() for key, v in per.items()},
            "seconds": {key: round(v, 1) for key, v in seconds.items()}}

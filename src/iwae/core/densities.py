"""Log densities and observation likelihoods.

Every log density is summed over the last (event) dimension and includes its
full normalising constant, so that log weights are true log densities.
"""
import math

import torch
import torch.nn.functional as F

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def normal_log_prob(z, mu, log_sigma):
    """log N(z; mu, diag(exp(log_sigma))^2), summed over the last dimension.

    Shapes broadcast: z [k, B, d], mu and log_sigma [B, d] or [k, B, d] -> [k, B].
    Parameterised by log sigma so that exp/log round trips never lose precision.
    """
    scaled = (z - mu) * torch.exp(-log_sigma)
    return -(0.5 * scaled.square() + log_sigma).sum(-1) - HALF_LOG_2PI * z.shape[-1]


def reparameterize(mu, log_sigma, eps=None):
    """z = mu + sigma * eps, a draw from N(mu, diag(sigma^2)) that carries the gradient of
    mu and log sigma; eps ~ N(0, I) like mu unless given (shapes broadcast)."""
    eps = torch.randn_like(mu) if eps is None else eps
    return mu + torch.exp(log_sigma) * eps


def standard_normal_log_prob(z):
    """log N(z; 0, I), summed over the last dimension: z [..., d] -> [...]."""
    return -0.5 * z.square().sum(-1) - HALF_LOG_2PI * z.shape[-1]


class Bernoulli:
    """p(x | z) = prod_d Bernoulli(x_d; sigmoid(logits_d)).

    log p = sum_d x_d * l_d - softplus(l_d), exact for any finite logit (no clipping),
    and valid for x in [0, 1] (the continuous relaxation of the usual binary x).
    """

    params_per_dim = 1

    def log_prob(self, x, logits):
        """x [B, D], logits [k, B, D] -> [k, B]: a dot product (no [k, B, D] product
        tensor) minus one softplus pass, which a compiled step fuses into its reduction."""
        return torch.linalg.vecdot(logits, x.expand_as(logits)) - F.softplus(logits).sum(-1)

    def mean(self, logits):
        """The Bernoulli means sigmoid(logits) (grey-level images)."""
        return torch.sigmoid(logits)

    def sample(self, logits):
        """x ~ p(x | z): binary images [..., D]."""
        return torch.bernoulli(torch.sigmoid(logits))

    def config(self):
        return {"name": "bernoulli"}


class Gaussian:
    """p(x | z) = N(x; mu(z), diag sigma^2).

    scale=None: the decoder outputs [mu, log sigma] (2 numbers per dimension, learned);
    scale=s: sigma is the fixed number s and the decoder outputs mu only.
    """

    def __init__(self, scale=None):
        if scale is not None and not scale > 0:
            raise ValueError(f"Gaussian likelihood scale must be > 0, got {scale}")
        self.scale = scale
        self.params_per_dim = 1 if scale is not None else 2

    def _split(self, params):
        if self.scale is None:
            return params.chunk(2, dim=-1)
        return params, torch.full_like(params, math.log(self.scale))

    def log_prob(self, x, params):
        """x [B, D], params [k, B, D * params_per_dim] -> [k, B]."""
        mu, log_sigma = self._split(params)
        return normal_log_prob(x, mu, log_sigma)

    def mean(self, params):
        return self._split(params)[0]

    def sample(self, params):
        """x ~ N(mu, sigma^2): [..., D]."""
        mu, log_sigma = self._split(params)
        return mu + torch.exp(log_sigma) * torch.randn_like(mu)

    def config(self):
        return {"name": "gaussian", "scale": self.scale}

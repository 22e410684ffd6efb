"""Linear-Gaussian iwae.Models whose log p(x) is known in closed form (for checking AIS).

p(z) = N(0, I_d), p(x | z) = N(W z + b, s^2 I_D), W with orthogonal columns (so the exact
posterior is diagonal and the library's diagonal-Gaussian encoder can represent it):
    Sigma = (I + W^T W / s^2)^-1,  mu(x) = Sigma W^T (x - b) / s^2,
    log p(x) = log N(x; b, W W^T + s^2 I).
The encoder of ``model(mean_shift, log_sigma_shift)`` is the exact posterior moved by those
shifts: a deliberately poor proposal, so that AIS has work to do.
"""
import torch
import torch.nn as nn

import iwae
from iwae.core.densities import Gaussian


class LinearGaussian:
    def __init__(self, D=8, d=3, s=0.5, seed=0, scales=None):
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
        scales = torch.linspace(1.5, 0.7, d, dtype=torch.float64) if scales is None else \
            torch.tensor(scales, dtype=torch.float64)
        self.W = q[:, :d] * scales
        self.b = torch.randn(D, generator=g, dtype=torch.float64)
        self.s, self.D, self.d = s, D, d
        self.post_var = 1.0 / (1.0 + (self.W ** 2).sum(0) / s ** 2)           # [d]

    def model(self, mean_shift=0.0, log_sigma_shift=0.0):
        """The iwae.Model with q = the exact posterior, shifted (float64)."""
        enc = nn.Linear(self.D, 2 * self.d).double()
        dec = nn.Linear(self.d, self.D).double()
        A = (self.post_var[:, None] * self.W.T) / self.s ** 2                 # [d, D]
        with torch.no_grad():
            enc.weight.zero_()
            enc.weight[: self.d] = A
            enc.bias[: self.d] = -A @ self.b + mean_shift
            enc.bias[self.d:] = 0.5 * torch.log(self.post_var) + log_sigma_shift
            dec.weight.copy_(self.W)
            dec.bias.copy_(self.b)
        return iwae.Model(iwae.GaussianLayer(enc), dec, Gaussian(scale=self.s))

    def log_px(self, x):
        cov = self.W @ self.W.T + self.s ** 2 * torch.eye(self.D, dtype=torch.float64)
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(x)

    def data(self, n, seed=1):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.d, generator=g, dtype=torch.float64)
        return z @ self.W.T + self.b + self.s * torch.randn(n, self.D, generator=g, dtype=torch.float64)

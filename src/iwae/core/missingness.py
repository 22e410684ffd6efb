"""Missingness models p(s | x) for values missing not at random [Ipsen, Mattei & Frellsen 2021].

s [B, D] bool (True = observed), x [k, B, D] the complete data: x_o where observed, x_m drawn
from the likelihood p(x_m | z) at each importance sample (``iwae.Model(missingness=...)``).
Each model gives logits l(x) [k, B, D] of p(s_j = 1 | x) and

    log p(s | x) = sum_j s_j log sigmoid(l_j) + (1 - s_j) log sigmoid(-l_j)      [k, B]

- ``SelfMasking(D)``: l_j = -w_j (x_j - b_j), each feature's missingness depending on its own
  value only; w_j > 0: high values go missing. ``sign="positive"`` forces w_j = softplus(.) > 0
  (the direction known), ``sign="negative"`` w_j < 0; the default leaves it free.
- ``LinearMasking(D)``: l = W x + c, logistic on all of x.

The parameters belong to the generative side (``Model.decoder_parameters``): the estimators
treat them as theta.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .densities import Bernoulli, Columns

SIGNS = (None, "positive", "negative")


def log_prob_of_mask(logits, s):
    """sum_j log p(s_j | x) for logits [k, B, D] of p(s_j = 1) and s [B, D] bool: [k, B]."""
    return torch.where(s, F.logsigmoid(logits), F.logsigmoid(-logits)).sum(-1)


class SelfMasking(nn.Module):
    """logit p(s_j = 1 | x_j) = -w_j (x_j - b_j), w and b learned (one pair per feature)."""

    def __init__(self, features, sign=None):
        super().__init__()
        if sign not in SIGNS:
            raise ValueError(f"sign must be one of None, 'positive', 'negative', got {sign!r}")
        self.sign = sign
        self.raw_w = nn.Parameter(torch.zeros(features))
        self.b = nn.Parameter(torch.zeros(features))

    @property
    def w(self):
        if self.sign is None:
            return self.raw_w
        w = F.softplus(self.raw_w)
        return w if self.sign == "positive" else -w

    def logits(self, x):
        return -self.w * (x - self.b)

    def log_prob(self, s, x):
        """log p(s | x) [k, B] for s [B, D] bool, x [k, B, D]."""
        return log_prob_of_mask(self.logits(x), s)

    def config(self):
        return {"name": "self-masking", "sign": self.sign}


class LinearMasking(nn.Module):
    """logit p(s = 1 | x) = W x + c: every feature's missingness may depend on all of x."""

    def __init__(self, features):
        super().__init__()
        self.linear = nn.Linear(features, features)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def logits(self, x):
        return self.linear(x)

    def log_prob(self, s, x):
        return log_prob_of_mask(self.logits(x), s)

    def config(self):
        return {"name": "linear"}


def check_reparameterizable(likelihood):
    """Refuse (one line) a likelihood whose x_m cannot be drawn by reparameterisation."""
    parts = likelihood.parts if isinstance(likelihood, Columns) else [(likelihood, None)]
    for like, cols in parts:
        if (isinstance(like, Bernoulli) or not getattr(like, "reparameterised", True)
                or not callable(getattr(like, "sample", None))):
            where = "" if cols is None else f" (columns {', '.join(map(str, cols.tolist()))})"
            raise ValueError(f"a missingness model needs x_m drawn by reparameterisation, which a "
                             f"{type(like).__name__} likelihood{where} cannot give; use Gaussian or StudentT")

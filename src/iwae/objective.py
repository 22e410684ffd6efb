"""The training loss: a bound's value with a chosen gradient estimator's gradient.

``loss(model, x, k, bound, estimator)`` returns a scalar whose value is always
-mean_b bound(log w)_b, whatever the estimator, and whose gradient is the estimator's
(the stop-gradient surrogate trick), so logged numbers never depend on the estimator.
"""
import torch

from . import bounds
from .estimators import ESTIMATORS

BOUNDS = ("elbo", "iwae", "miwae", "ciwae", "piwae")
ALIASES = {"vae": "elbo"}


class Objective:
    """A bound with its settings, validated once.

    elbo: k-sample mean of log w (the VAE); iwae: L_k; miwae: M groups of K = k / M;
    ciwae: beta * ELBO + (1 - beta) * IWAE; piwae: the IWAE bound for the decoder and the
    MIWAE(M, K) bound for the encoder (its value is the IWAE bound) [Rainforth et al. 2018].
    """

    def __init__(self, name, k, m=None, beta=None):
        name = ALIASES.get(name, name)
        if name not in BOUNDS:
            raise ValueError(f"unknown bound {name!r}; expected one of {', '.join(BOUNDS)} (or 'vae')")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        grouped = name in ("miwae", "piwae")
        if grouped:
            if m is None:
                raise ValueError(f"{name} needs m, the number of groups (m must divide k={k})")
            if isinstance(m, bool) or not isinstance(m, int) or m < 1 or k % m:
                raise ValueError(f"m must be a positive divisor of k={k}, got {m!r}")
        elif m is not None:
            raise ValueError(f"m is used only by miwae and piwae, not {name}")
        if name == "ciwae":
            if beta is None or not 0.0 <= beta <= 1.0:
                raise ValueError(f"ciwae needs beta in [0, 1], got {beta!r}")
        elif beta is not None:
            raise ValueError(f"beta is used only by ciwae, not {name}")
        self.name, self.k, self.m, self.beta = name, k, m, beta
        self.encoder_groups = m if grouped else 1

    def value(self, log_w):
        """[k, B] -> [B]: the bound whose negative mean is the reported loss."""
        if self.name == "elbo":
            return bounds.elbo(log_w)
        if self.name == "miwae":
            return bounds.miwae_bound(log_w, self.m)
        if self.name == "ciwae":
            return bounds.ciwae_bound(log_w, self.beta)
        return bounds.iwae_bound(log_w)                          # iwae, piwae

    def decoder_surrogate(self, log_w):
        """The scalar whose gradient the decoder follows."""
        return -self.value(log_w).mean()

    def surrogate(self, log_w):
        """The scalar to differentiate, or per-group scalars for PIWAE."""
        if self.name == "piwae":
            return {"encoder": -bounds.miwae_bound(log_w, self.m).mean(),
                    "decoder": -bounds.iwae_bound(log_w).mean()}
        return -self.value(log_w).mean()


def check(bound, estimator, k, m=None, beta=None):
    """Validate a configuration; returns (Objective, estimator module). Raises ValueError."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; expected one of {', '.join(ESTIMATORS)}")
    objective = Objective(bound, k, m, beta)
    est = ESTIMATORS[estimator]
    if objective.name not in est.SUPPORTS:
        raise ValueError(f"estimator {estimator!r} does not apply to bound {objective.name!r}; "
                         f"it supports {', '.join(est.SUPPORTS)}")
    return objective, est


def loss(model, x, k, bound="iwae", estimator="standard", *, m=None, beta=None):
    """-mean(bound) over the batch x [B, D], with the estimator's gradient.

    model: anything with ``log_weights(x, k, stop_q=, stop_z=)``; estimators that treat
    q and p differently (dreg, rws, and the piwae bound) also need
    ``encoder_parameters()`` and ``decoder_parameters()``.
    """
    objective, est = check(bound, estimator, k, m, beta)
    log_w = model.log_weights(x, k, **est.log_weight_options)   # [k, B]
    surrogate = est.surrogates(log_w, objective)
    if not isinstance(surrogate, dict):
        return surrogate                                         # its value is -mean(bound)
    value = -objective.value(log_w).mean().detach()
    if not torch.is_grad_enabled() or not log_w.requires_grad:
        return value
    return value + _inject(model, surrogate)


def _inject(model, surrogates):
    """A zero-valued scalar whose gradient is each group's surrogate gradient.

    The DReG reference code differentiates one surrogate per parameter group; here each
    group's gradient g is computed once and re-attached as sum(p * g) - sum(p * g).detach().
    """
    groups = [(list(model.encoder_parameters()), surrogates["encoder"]),
              (list(model.decoder_parameters()), surrogates["decoder"])]
    total = 0.0
    for i, (params, surrogate) in enumerate(groups):
        params = [p for p in params if p.requires_grad]
        grads = torch.autograd.grad(surrogate, params, retain_graph=i == 0, allow_unused=True)
        total = total + sum((p * g).sum() for p, g in zip(params, grads) if g is not None)
    return total - total.detach()

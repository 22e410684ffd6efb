"""Log densities and observation likelihoods.

Every log density is summed over the last (event) dimension and includes its
full normalising constant, so that log weights are true log densities.
"""
import math
import os
import types
import warnings

import torch
import torch.nn.functional as F

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
KERNEL_MIN_NUMEL = 1 << 21      # Bernoulli.log_prob compiles its kernel from this many logits on


def normal_log_prob(z, mu, log_sigma):
    """log N(z; mu, diag(exp(log_sigma))^2), summed over the last dimension.

    Shapes broadcast: z [k, B, d], mu and log_sigma [B, d] or [k, B, d] -> [k, B].
    Parameterised by log sigma so that exp/log round trips never lose precision.
    """
    scaled = (z - mu) * torch.exp(-log_sigma)
    return -(0.5 * scaled.square() + log_sigma).sum(-1) - HALF_LOG_2PI * z.shape[-1]


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
        """x [B, D], logits [k, B, D] -> [k, B].

        Without gradients, on the CPU and for large inputs (evaluation at k = 5000), one
        compiled pass over the logits (``bernoulli_log_prob_kernel``); else plain torch ops.
        """
        if _kernel_applies(x, logits):
            return _compiled("bernoulli_log_prob", _bernoulli_log_prob, dynamic=(1,))(x, logits)
        return (x * logits).sum(-1) - F.softplus(logits).sum(-1)

    def mean(self, logits):
        """The Bernoulli means sigmoid(logits) (grey-level images)."""
        return torch.sigmoid(logits)

    def config(self):
        return {"name": "bernoulli"}


def softplus_sum(logits):
    """sum_d softplus(l_d) over the last dimension, written for a compiler to fuse.

    softplus(l) = max(l, 0) + log(1 + exp(-|l|)), with the logs taken of products: the D
    logits are viewed as [D / 16, 16] and the factors (1 + exp(-|l|)), each in (1, 2],
    multiplied down the columns (at most 2^120 for D / 16 <= 120: no overflow), so a row
    takes 16 logs instead of D log1p's and the products vectorise lane by lane. Exact for
    every finite logit (no clipping); it rounds differently from F.softplus(l).sum(-1) by a
    few ulps of the sum. Other widths take one log per logit.
    """
    D = logits.shape[-1]
    relu = logits.clamp(min=0)
    factor = torch.exp(-logits.abs()) + 1
    if D % 16 == 0 and D // 16 <= 120:
        lanes = (*logits.shape[:-1], D // 16, 16)
        return relu.view(lanes).sum(-2).sum(-1) + torch.log(factor.view(lanes).prod(-2)).sum(-1)
    return relu.sum(-1) + torch.log(factor).sum(-1)


def _lanes(t):
    D = t.shape[-1]
    return t.view(*t.shape[:-1], D // 16, 16)


def bernoulli_terms(x, logits):
    """sum_d x_d l_d - softplus(l_d) (= Bernoulli.log_prob) in the form of softplus_sum."""
    D = logits.shape[-1]
    if D % 16 == 0 and D // 16 <= 120:
        linear = _lanes(x * logits - logits.clamp(min=0)).sum(-2)
        return (linear - torch.log(_lanes(torch.exp(-logits.abs()) + 1).prod(-2))).sum(-1)
    return (x * logits).sum(-1) - softplus_sum(logits)


def _bernoulli_log_prob(x, logits):
    return bernoulli_terms(x, logits)


def _kernel_applies(x, logits):
    if torch.is_grad_enabled() and (x.requires_grad or logits.requires_grad):
        return False
    if logits.device.type != "cpu" or logits.numel() < KERNEL_MIN_NUMEL:
        return False
    return os.environ.get("IWAE_COMPILE", "") != "0" and not torch.compiler.is_compiling()


_COMPILED = {}


class _Compiled:
    """torch.compile(fn) that falls back to fn for good if compiling fails (no C++ compiler).

    dynamic: positional arguments whose first dimension varies from call to call (the
    number of samples in an evaluation chunk); it is compiled as a symbolic size once,
    instead of once per size. Other shapes are static (one compile per distinct shape)."""

    def __init__(self, fn, dynamic=()):
        self.fn, self.compiled, self.failed = fn, torch.compile(own_code(fn), dynamic=False), False
        self.dynamic = dynamic

    def __call__(self, *args):
        if not self.failed:
            for i in self.dynamic:
                if args[i].shape[0] > 1:
                    torch._dynamo.maybe_mark_dynamic(args[i], 0)
            try:
                return self.compiled(*args)
            except Exception as err:                          # pragma: no cover - platform
                self.failed = True
                warnings.warn(f"iwae: torch.compile failed here ({type(err).__name__}: {err}); "
                              "using plain torch ops", RuntimeWarning, stacklevel=2)
        return self.fn(*args)


def own_code(fn):
    """fn with a code object of its own. torch.compile keeps its cache of compiled graphs
    (at most torch._dynamo.config.recompile_limit = 8 of them) on the code object, which
    closures made by one def share: each compiled function needs its own."""
    own_code.count += 1
    code = fn.__code__.replace(co_name=f"{fn.__code__.co_name}_{own_code.count}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


own_code.count = 0


def _compiled(name, fn, dynamic=()):
    if name not in _COMPILED:
        _COMPILED[name] = _Compiled(fn, dynamic)
    return _COMPILED[name]


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

    def config(self):
        return {"name": "gaussian", "scale": self.scale}


def likelihood_from_config(config):
    """Inverse of ``Likelihood.config()``."""
    name = config["name"]
    if name == "bernoulli":
        return Bernoulli()
    if name == "gaussian":
        return Gaussian(config.get("scale"))
    raise ValueError(f"unknown likelihood {name!r}; expected 'bernoulli' or 'gaussian'")

"""The training objective: a bound's value with a chosen gradient estimator's gradient.

Every estimator (``iwae.estimators``) maps the model, as a pure function of its parameters
(``Functional``), to ``(loss, gradients)``: the loss is always -mean_b bound(log w)_b,
whatever the estimator, so logged numbers never depend on it, and the gradients are the
estimator's. The training step compiles exactly that function (``iwae.training.step``);
``loss(model, x, ...)`` wraps it as a scalar whose ``backward()`` leaves those gradients in
``p.grad``, for a plain PyTorch loop.
"""
import torch
import torch.nn as nn
from torch.func import functional_call, grad_and_value, vjp

from . import bounds
from .estimators import ESTIMATORS
from .estimators.pullback import discrete_layer, require_reparameterised
from .validate import divisor, positive_int, unit_interval

BOUNDS = ("elbo", "iwae", "miwae", "ciwae", "piwae", "renyi", "vr-max")
RUNNING_STATS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d,
                 nn.InstanceNorm2d, nn.InstanceNorm3d)     # modules that write buffers in forward
ALIASES = {"vae": "elbo"}


class Objective:
    """A bound with its settings, validated once.

    elbo: k-sample mean of log w (the VAE); iwae: L_k; miwae: M groups of K = k / M;
    ciwae: beta * ELBO + (1 - beta) * IWAE; piwae: the IWAE bound for the decoder and the
    MIWAE(M, K) bound for the encoder (its value is the IWAE bound) [Rainforth et al. 2018];
    renyi: 1/(1 - alpha) log (1/k) sum_i w_i^(1 - alpha), alpha in [0, 1] (0: iwae, 1: elbo);
    vr-max: max_i log w_i, k >= 2 [Li & Turner 2016].
    """

    def __init__(self, name, k, m=None, beta=None, alpha=None):
        name = ALIASES.get(name, name)
        if name not in BOUNDS:
            raise ValueError(f"unknown bound {name!r}; expected one of {', '.join(BOUNDS)} (or 'vae')")
        positive_int("k", k)
        grouped = name in ("miwae", "piwae")
        if grouped:
            if m is None:
                raise ValueError(f"{name} needs m, the number of groups (m must divide k={k})")
            divisor("m", m, k)
        elif m is not None:
            raise ValueError(f"m is used only by miwae and piwae, not {name}")
        for setting, value, owner in (("beta", beta, "ciwae"), ("alpha", alpha, "renyi")):   # in [0, 1]
            if name == owner and value is None:
                raise ValueError(f"{owner} needs {setting} in [0, 1], got None")
            if name == owner:
                unit_interval(setting, value)
            elif value is not None:
                raise ValueError(f"{setting} is used only by {owner}, not {name}")
        if name == "vr-max" and k < 2:
            raise ValueError(f"vr-max is the largest of k >= 2 log weights (with k=1 it is the elbo), got k={k}")
        self.name, self.k, self.m, self.beta, self.alpha = name, k, m, beta, alpha
        self.encoder_groups = m if grouped else 1

    def value(self, log_w):
        """[k, B] -> [B]: the bound whose negative mean is the reported loss."""
        if self.name == "elbo":
            return bounds.elbo(log_w)
        if self.name == "miwae":
            return bounds.miwae_bound(log_w, self.m)
        if self.name == "ciwae":
            return bounds.ciwae_bound(log_w, self.beta)
        if self.name == "renyi":
            return bounds.renyi_bound(log_w, self.alpha)
        if self.name == "vr-max":
            return bounds.vr_max_bound(log_w)
        return bounds.iwae_bound(log_w)                          # iwae, piwae

    def group_value(self, log_w, group="decoder"):
        """[k, B] -> [B]: the bound a parameter group follows: the value, except that PIWAE's
        encoder follows the MIWAE bound."""
        if group == "encoder" and self.name == "piwae":
            return bounds.miwae_bound(log_w, self.m)
        return self.value(log_w)

    def surrogate(self, log_w, group="decoder"):
        """The scalar whose gradient a parameter group follows: -mean(group_value)."""
        return -self.group_value(log_w, group).mean()

    def cotangent(self, log_w, group="decoder"):
        """(d surrogate / d log w [k, B], the surrogate's value) at log_w, held constant."""
        return grad_and_value(self.surrogate)(log_w.detach(), group)

    def group_weights(self, log_w):
        """w~ normalised within each of the encoder's groups of samples: [k, B] (softmax
        over all k samples for one group)."""
        k, batch = log_w.shape
        groups = log_w.detach().reshape(self.encoder_groups, k // self.encoder_groups, batch)
        return torch.softmax(groups, dim=1).reshape(k, batch)

    def dreg_factor(self, log_w):
        """[k, B]: what DReG multiplies the encoder's bound's weights by (iwae.estimators.dreg).
        The IWAE family: w~ within each group (the encoder gets w~^2). Renyi: alpha + (1 - alpha)
        wbar with wbar = softmax((1 - alpha) log w) (the encoder gets alpha wbar + (1 - alpha)
        wbar^2; see dreg's docstring)."""
        if self.name == "renyi":
            e = 1.0 - self.alpha
            return self.alpha + e * torch.softmax(e * log_w.detach(), 0)
        return self.group_weights(log_w)


def _tensors(value):
    """A tensor or a sequence of tensors, as a tuple of tensors."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _leaves(value):
    """value (a tensor or a sequence of them) as new leaves that require grad."""
    if isinstance(value, (tuple, list)):
        return type(value)(t.detach().requires_grad_() for t in value)
    return value.detach().requires_grad_()


def _detached(value):
    if isinstance(value, (tuple, list)):
        return type(value)(t.detach() for t in value)
    return value.detach()


class _Methods(nn.Module):
    """Calls a method of the wrapped model by name, so that functional_call reaches it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, method, *args, **kwargs):
        return getattr(self.model, method)(*args, **kwargs)


class Functional:
    """A model's methods as pure functions of its trainable parameters.

    ``log_weights(params, x, k, **options)`` runs ``model.log_weights`` with the tensors
    ``params`` (in the order of ``parameters()``) in place of the parameters
    (torch.func.functional_call): the model's own code, differentiated by ``vjp`` and
    compiled by torch.compile, never a copy of it. autograd: ``vjp`` differentiates by
    torch.autograd where it runs eagerly (a training step's; see ``vjp``).
    """

    def __init__(self, model, autograd=False):
        if not callable(getattr(model, "log_weights", None)):
            raise ValueError(f"{type(model).__name__} has no log_weights(x, k) method; iwae trains "
                             "modules that map a batch to log importance weights [k, batch]")
        for name, module in model.named_modules():
            if isinstance(module, RUNNING_STATS) and module.track_running_stats and module.training:
                raise ValueError(f"{type(model).__name__}.{name} is a {type(module).__name__} that updates "
                                 "running statistics as it runs, which iwae's torch.func gradients cannot do; "
                                 "build it with track_running_stats=False, or use nn.GroupNorm or nn.LayerNorm")
        self.model, self.autograd = model, autograd
        self.discrete = discrete_layer(model)       # a q layer without reparameterised draws, or None
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = tuple(n for n, _ in named)
        index = {id(p): i for i, (_, p) in enumerate(named)}
        self._slots, owners = [], set()    # every (module, attribute) holding a parameter, once
        for name, p in model.named_parameters(remove_duplicate=False):
            prefix, _, attr = name.rpartition(".")
            owner = (id(model.get_submodule(prefix)), attr)
            if id(p) in index and owner not in owners:
                owners.add(owner)
                self._slots.append((f"model.{name}", index[id(p)]))
        self._module = _Methods(model)
        self.has_sample_q = callable(getattr(model, "sample_q", None))
        self.has_densities = all(callable(getattr(model, name, None)) for name in ("sample_q", "log_joint", "log_q"))
        groups = getattr(model, "encoder_parameters", None)
        encoder = {id(p) for p in groups()} if callable(groups) else None
        self.encoder_mask = None if encoder is None else tuple(id(p) in encoder for _, p in named)

    def parameters(self):
        """The trainable parameters, in the order of every params tuple."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def call(self, method, params, *args, **kwargs):
        weights = {name: params[i] for name, i in self._slots}
        # every (module, attribute) swapped once, tie_weights=False: a parameter shared by two
        # modules is swapped in both; a module reached by two paths only once (swapped twice,
        # torch 2.13 leaves it holding the swapped-in tensor afterwards)
        return functional_call(self._module, weights, (method, *args), kwargs, tie_weights=False)

    def log_weights(self, params, x, k, **options):
        return self.call("log_weights", params, x, k, **options)

    def vjp(self, fn, *primals):
        """(fn(*primals), pullback) as torch.func.vjp: each primal a tensor or a sequence of
        them, fn's output too; pullback(cotangent) -> one gradient per primal, shaped like it.
        With autograd=True and outside torch.compile's tracing, by torch.autograd instead: the
        same values, gradients equal up to rounding, and a faster eager step (docs/speed.md),
        since torch.func's pullback differentiates with create_graph=True, recording a graph of
        the backward and taking each op's twice-differentiable formula (SiLU's as five
        elementwise passes, not one kernel); torch.compile traces torch.func's."""
        if not self.autograd or torch.compiler.is_compiling():
            return vjp(fn, *primals)
        leaves = [_leaves(p) for p in primals]
        with torch.enable_grad():
            out = fn(*leaves)
        flat = [t for p in leaves for t in _tensors(p)]

        def pullback(cotangent):
            pairs = [(o, c) for o, c in zip(_tensors(out), _tensors(cotangent)) if o.requires_grad]
            grads = iter(torch.autograd.grad([o for o, _ in pairs], flat, [c for _, c in pairs],
                                             retain_graph=True, allow_unused=True, materialize_grads=True))
            return tuple(type(p)(next(grads) for _ in p) if isinstance(p, (tuple, list)) else next(grads)
                         for p in leaves)
        return _detached(out), pullback

    def by_group(self, encoder, decoder, estimator):
        """Per parameter: the encoder's gradient for q's parameters, the decoder's otherwise."""
        if self.encoder_mask is None:
            raise ValueError(f"{estimator} treats q's and p's parameters differently: the model needs "
                             "encoder_parameters() (and decoder_parameters()), as iwae.Model has")
        return tuple(e if enc else d for e, d, enc in zip(encoder, decoder, self.encoder_mask))


def check(bound, estimator, k, m=None, beta=None, alpha=None, model=None):
    """Validate a configuration; returns (Objective, estimator module). Raises ValueError.

    With ``model``, also whether the estimator can train it: one that differentiates through
    the samples (standard, stl, dreg) refuses a model whose q has a layer without
    reparameterised draws (a BernoulliLayer)."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; expected one of {', '.join(ESTIMATORS)}")
    objective = Objective(bound, k, m, beta, alpha)
    est = ESTIMATORS[estimator]
    if objective.name not in est.SUPPORTS:
        raise ValueError(f"estimator {estimator!r} does not apply to bound {objective.name!r}; "
                         f"it supports {', '.join(est.SUPPORTS)}")
    min_k = getattr(est, "MIN_K", 1)
    if k < min_k:
        raise ValueError(f"estimator {estimator!r} needs k >= {min_k} samples (its baselines leave one "
                         f"out), got k={k}")
    if model is not None and getattr(est, "PATHWISE", False):
        require_reparameterised(discrete_layer(model), estimator)
    return objective, est


def loss(model, x, k, bound="iwae", estimator="standard", *, m=None, beta=None, alpha=None):
    """-mean(bound) over the batch x [B, D], whose backward() gives the estimator's gradient.

    model: anything with ``log_weights(x, k, stop_q=, stop_z=)``; estimators that treat
    q and p differently (dreg, rws, and the piwae bound) also need
    ``encoder_parameters()`` and ``decoder_parameters()``. The gradients are computed
    here, by the estimator, and attached to the returned scalar (its value is exactly the
    loss): ``loss.backward()`` then puts them in p.grad. alpha: the renyi bound's.
    """
    objective, est = check(bound, estimator, k, m, beta, alpha, model=model)
    f = Functional(model)
    params = f.parameters()
    if not torch.is_grad_enabled() or not params:
        return objective.surrogate(model.log_weights(x, k))
    value, grads = est.gradients(f, tuple(p.detach() for p in params), x, objective)
    attached = sum((p * g).sum() for p, g in zip(params, grads))
    return value + (attached - attached.detach())

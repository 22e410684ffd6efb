"""Deep latent models (Gaussian or Bernoulli stochastic layers) and their log importance weights.

A model with L stochastic layers z_1..z_L (z_L on top) is
    p(x, z) = p(z_L) p(z_{L-1} | z_L) ... p(z_1 | z_2) p(x | z_1),   p(z_L) = N(0, I) by default
    q(z | x) = q(z_1 | x) q(z_2 | z_1) ... q(z_L | z_{L-1})
and its single product is ``log_weights(x, k)``: the [k, batch] tensor of
    log w_i = log p(x | z_i) + log p(z_i) - log q(z_i | x)
at k samples z_i ~ q(z | x), every stochastic layer included [Burda et al. 2016, eq. 8].
Bounds and gradient estimators are functions of that tensor alone.

A layer is a ``GaussianLayer`` (diagonal Gaussian, reparameterised draws) or a
``BernoulliLayer`` (independent binary units, discrete draws without a gradient); a sigmoid
belief net (``sbn_model``) has Bernoulli layers only and a ``BernoulliPrior`` with learned
logits on top. Both give exact log q and log p, so log w means the same for either.

Missing data [Mattei & Frellsen 2019]. With a mask s (True = observed) the log weights are
    log w_i = log p(x_o | z_i) + log p(z_i) - log q(z_i | x_o),
log p(x_o | z) summing the likelihood over the observed entries only and the encoder reading
x with its missing entries set to 0 (and, with ``mask_input=True``, the mask beside it). The
mask reaches them in one of two ways:
- ``log_weights(x, k, mask=s)``, explicitly;
- carried by the data: a model built with ``missing=True`` reads NaN entries of x as missing
  wherever it reads x. This is how masked data goes through everything that passes x along
  untouched: the estimators (``f.log_weights(params, x, k, **options)``), the compiled
  training step, the loop's batches, L_k and the diagnostics. One tensor is indexed,
  shuffled, moved and checkpointed as before; no mask has to follow it through the stack.
The values at missing positions reach neither the log weights nor their gradients (they are
replaced by 0 through torch.where before any arithmetic). With mask=None (and missing=False,
or no NaN) the computation is that of a model without missing data, op for op; with an
all-True mask it is bitwise equal.

Values missing not at random [Ipsen, Mattei & Frellsen 2021]: with ``missingness=`` a model
p(s | x) (``iwae.core.missingness``) enters ``log_joint(x, zs, mask)`` as one more term,
    log w_i = log p(x_o | z_i) + log p(s | x_o, x_m,i) + log p(z_i) - log q(z_i | x_o),
x_m,i ~ p(x_m | z_i) drawn by reparameterisation from the likelihood at the decoded parameters
(after z_i, so the z draws are the MAR model's under the same RNG; ``xm=`` gives them instead).
The proposal is q(z | x_o) p(x_m | z), whose second factor cancels against the joint's. The
draw is a differentiable function of z and theta, so the path gradients through z (STL, DReG)
and theta's gradient include it; bounds and estimators read log w only and take it unchanged.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from .densities import (HALF_LOG_2PI, Bernoulli, normal_log_prob, observed_values, reparameterize,
                        standard_normal_log_prob)
from .missingness import check_reparameterizable
from .nets import glorot_, mlp
from .validate import positive_int

SCALES = ("exp", "softplus")
PAPER_LAYERS = (1, 2)       # stochastic layers of the paper's nets
LATENTS = ("gaussian", "bernoulli")     # the units of paper_model's stochastic layers


class GaussianLayer(nn.Module):
    """A diagonal Gaussian N(mu(h), sigma(h)^2) whose parameters a network computes from h.

    ``net`` maps [N, d_in] to [N, 2 d]: the first half is mu, the second the scale head s,
    with sigma = exp(s) (the paper's choice) or softplus(s) (``scale="softplus"``).
    Any leading dimensions of h are flattened for the net, so user networks (conv nets
    with an nn.Unflatten in front, say) only ever see a 2-d batch.

    A stochastic layer (this one, ``BernoulliLayer``) has ``forward(h, params=None)`` (the
    distribution's parameters, "stats"), ``draw(stats, k)`` -> (noise, z), ``log_prob(z, stats,
    eps=None)`` -> [k, B], ``mean(stats)``, and the flags ``reparameterised`` and ``support``.
    """

    reparameterised = True
    support = "real"

    def __init__(self, net, scale="exp"):
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        self.net = net
        self.scale = scale

    def forward(self, h, params=None):
        """h [..., d_in] -> (mu, log_sigma), each [..., d].

        ``params``: a replacement parameter dict (used to stop q's parameters).
        """
        flat = h.reshape(-1, h.shape[-1])
        out = self.net(flat) if params is None else functional_call(self.net, params, (flat,))
        out = out.reshape(*h.shape[:-1], out.shape[-1]).to(h.dtype)    # fp32 after bf16 matmuls
        mu, head = out.chunk(2, dim=-1)
        if self.scale == "exp":
            return mu, head
        return mu, torch.log(F.softplus(head))

    def draw(self, stats, k=None):
        """(eps, z): z = mu + sigma * eps, reparameterised, eps ~ N(0, I) shaped [k, B, d]
        (or like mu when k is None); ``stats`` = (mu, log_sigma) from forward."""
        mu, log_sigma = stats
        if k is None:
            eps = torch.randn_like(mu)
        else:
            eps = torch.randn((k,) + mu.shape[-2:], dtype=mu.dtype, device=mu.device)
        return eps, reparameterize(mu, log_sigma, eps)

    def log_prob(self, z, stats, eps=None):
        """log N(z; mu, sigma^2) summed over units: [k, B]. With the draw's eps, (z - mu) / sigma
        = eps exactly, so it is not recomputed."""
        mu, log_sigma = stats
        if eps is None:
            return normal_log_prob(z, mu, log_sigma)
        return -(0.5 * eps.square() + log_sigma).sum(-1) - HALF_LOG_2PI * z.shape[-1]

    def mean(self, stats):
        return stats[0]


class BernoulliLayer(nn.Module):
    """Independent Bernoulli units prod_j Bernoulli(z_j; sigmoid(l_j)), whose logits l a network
    computes from h: ``net`` maps [N, d_in] to [N, d].

    Used for q(z_l | z_{l-1}) or p(z_l | z_{l+1}); a sigmoid belief net (SBN) is a model whose
    every layer is one [Neal 1992; Mnih & Rezende 2016]. Its draws z in {0, 1}^d are discrete and
    carry no gradient (``reparameterised = False``): a model with a BernoulliLayer in q trains with a
    score-function estimator (``vimco``) or reweighted wake-sleep (``rws``); the estimators that
    differentiate through z refuse it. log q and log p are exact:
        log Bernoulli(z; sigmoid(l)) = sum_j z_j l_j - softplus(l_j).
    """

    reparameterised = False
    support = "binary"

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, h, params=None):
        """h [..., d_in] -> logits [..., d] (leading dimensions flattened for the net)."""
        flat = h.reshape(-1, h.shape[-1])
        out = self.net(flat) if params is None else functional_call(self.net, params, (flat,))
        return out.reshape(*h.shape[:-1], out.shape[-1]).to(h.dtype)

    def draw(self, logits, k=None):
        """(None, z): z_j = [u_j < sigmoid(l_j)], u ~ U(0, 1), shaped [k, B, d] (or like the
        logits when k is None); binary values in the logits' dtype, no gradient."""
        shape = logits.shape if k is None else (k,) + logits.shape[-2:]
        u = torch.rand(shape, dtype=logits.dtype, device=logits.device)
        return None, (u < torch.sigmoid(logits)).to(logits.dtype)

    def log_prob(self, z, logits, eps=None):
        """sum_j z_j l_j - softplus(l_j): [k, B] (exact for any finite logit)."""
        return (z * logits).sum(-1) - F.softplus(logits).sum(-1)

    def mean(self, logits):
        return torch.sigmoid(logits)


class StandardNormal(nn.Module):
    """p(z_L) = N(0, I), the paper's prior on the top layer (no parameters)."""

    reparameterised = True
    support = "real"
    size = None                 # the width is the top generative module's input

    def log_prob(self, z):
        return standard_normal_log_prob(z)

    def sample(self, n, size, like):
        return torch.randn(n, size, dtype=like.dtype, device=like.device)


class BernoulliPrior(nn.Module):
    """p(z_L) = prod_j Bernoulli(z_j; sigmoid(b_j)) with learned logits b [size] (0 at first):
    the top layer of a sigmoid belief net. Its logits are a parameter of p (the decoder's)."""

    reparameterised = False
    support = "binary"

    def __init__(self, size):
        super().__init__()
        self.size = positive_int("size", size)
        self.logits = nn.Parameter(torch.zeros(size))

    def log_prob(self, z):
        """z [..., size] -> [...]."""
        return (z * self.logits).sum(-1) - F.softplus(self.logits).sum()

    def sample(self, n, size, like):
        u = torch.rand(n, self.size, dtype=self.logits.dtype, device=self.logits.device)
        return (u < torch.sigmoid(self.logits)).to(self.logits.dtype)


def paper_gaussian_layer(sizes, latent, scale="exp"):
    """A tanh MLP ending in separate Glorot-initialised mean and scale heads (fused in one Linear)."""
    net = mlp(sizes, 2 * latent)
    head = net[-1]
    for half in (slice(0, latent), slice(latent, 2 * latent)):
        part = nn.Linear(sizes[-1], latent)
        glorot_(part)
        with torch.no_grad():
            head.weight[half] = part.weight
    return GaussianLayer(net, scale)


class Model(nn.Module):
    """p(x, z) and q(z | x) with Gaussian or Bernoulli stochastic layers.

    Args:
        encoder: stochastic layers (GaussianLayer, BernoulliLayer) q(z_1 | x), q(z_2 | z_1),
            ..., q(z_L | z_{L-1}).
        decoder: a module mapping z_1 [N, d_1] to the likelihood's parameters
            [N, D * likelihood.params_per_dim] (logits for Bernoulli).
        likelihood: ``Bernoulli()`` or ``Gaussian(scale)`` from ``iwae.core.densities``.
        decoder_layers: stochastic layers p(z_{L-1} | z_L), ..., p(z_1 | z_2), top-down
            (L - 1 of them; empty for one stochastic layer), each of the same kind (binary or
            real units) as the q layer of that z.
        prior: p(z_L): None for N(0, I) (``StandardNormal``), or ``BernoulliPrior(d_L)`` (learned
            logits) for a Bernoulli top layer, which needs it.
        missing: NaN entries of x are missing values (the mask is ~isnan(x)) wherever the
            model reads x; see the module docstring.
        mask_input: the first encoder layer reads [x with missing entries 0, mask] (2 D
            inputs; an all-True mask when none is given) instead of x.
        missingness: None (missing at random: MIWAE) or a module with ``log_prob(s, x)``
            (``iwae.core.missingness.SelfMasking`` or ``LinearMasking``): log p(s | x) joins the log
            weights (module docstring); it needs a Gaussian or Student's t likelihood.
    """

    def __init__(self, encoder, decoder, likelihood=None, decoder_layers=(), *, missing=False,
                 mask_input=False, missingness=None, prior=None):
        super().__init__()
        encoder = list(encoder) if isinstance(encoder, (list, tuple, nn.ModuleList)) else [encoder]
        if len(decoder_layers) != len(encoder) - 1:
            raise ValueError(
                f"{len(encoder)} encoder layers need {len(encoder) - 1} decoder_layers, "
                f"got {len(decoder_layers)}")
        prior = StandardNormal() if prior is None else prior
        _check_supports(encoder, decoder_layers, prior)
        self.encoder = nn.ModuleList(encoder)
        self.decoder_layers = nn.ModuleList(decoder_layers)
        self.decoder = decoder
        self.prior = prior
        self.likelihood = likelihood if likelihood is not None else Bernoulli()
        self.missing, self.mask_input = bool(missing), bool(mask_input)
        if missingness is not None:
            check_reparameterizable(self.likelihood)
        self.missingness = missingness

    def encoder_parameters(self):
        """phi: the parameters of q(z | x)."""
        return self.encoder.parameters()

    def decoder_parameters(self):
        """theta: the parameters of p(x, z)."""
        yield from self.prior.parameters()
        yield from self.decoder_layers.parameters()
        yield from self.decoder.parameters()
        if self.missingness is not None:
            yield from self.missingness.parameters()

    def observe(self, x, mask=None):
        """(x with its missing entries 0, mask [B, D] bool or None): the mask given, else
        ~isnan(x) for a model built with missing=True, else None (x is returned as it is)."""
        if mask is None and self.missing:
            mask = ~torch.isnan(x)
        if mask is None:
            return x, None
        if mask.shape != x.shape or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor shaped like x {list(x.shape)}, got "
                             f"{mask.dtype} {list(mask.shape)}")
        return observed_values(x, mask), mask

    def encoder_input(self, x, mask):
        """What q(z_1 | .) reads: x (missing entries 0), with the mask beside it if mask_input."""
        if not self.mask_input:
            return x
        observed = torch.ones_like(x) if mask is None else mask.to(x.dtype)
        return torch.cat([x, observed.expand_as(x)], -1)

    def log_weights(self, x, k, *, mask=None, stop_q=False, stop_z=False, zs=None, xm=None, params=None):
        """log w [k, B] for x [B, D] at k samples per datapoint:
        log w = log_joint(x, z) - log q(z | x).

        x broadcasts against the samples: neither x nor the first layer's outputs are
        copied k times.
        stop_q: log q(z | x) is evaluated with q's parameters stopped while z keeps its
            path gradient (STL, Roeder et al. 2017; DReG, Tucker et al. 2019).
        stop_z: the samples carry no gradient (score-function / wake-sleep updates).
        zs: evaluate at these samples ([[k, B, d_l]], bottom layer first, as ``sample_q``
            returns them) instead of drawing new ones; k is then their first dimension.
        mask: [B, D] bool, True = observed: log p(x_o | z) over the observed entries only
            (see the module docstring; NaN entries are the mask of a missing=True model).
        xm: with a missingness model, the draws x ~ p(x | z_1) [k, B, D] whose missing
            entries are x_m (``sample_missing``) instead of new ones.
        params: with zs, ``decode(zs[0])`` when the caller has it already (imputation reads
            the likelihood's parameters beside the weights): not decoded a second time.
        """
        if zs is None:
            positive_int("k", k)
        x, mask = self.observe(x, mask)
        log_q, drawn = 0.0, []
        posterior = self._posterior(self.encoder_input(x, mask), k, zs, stop_z)
        for depth, (layer, h, stats, eps, z) in enumerate(posterior):
            if stop_z or (zs is not None and not stop_q):
                log_q = log_q + layer.log_prob(z, stats)
            elif stop_q:
                if depth == 0:      # x carries no gradient: stopping the outputs stops phi
                    stats_q = _detached(stats)
                else:               # keep the dependence on z_{l-1}, stop only phi
                    frozen = {n: p.detach() for n, p in layer.net.named_parameters()}
                    stats_q = layer(h, frozen)
                log_q = log_q + layer.log_prob(z, stats_q)
            else:                   # a Gaussian's (z - mu) / sigma = eps exactly: not recomputed
                log_q = log_q + layer.log_prob(z, stats, eps)
            drawn.append(z)
        return self.log_joint(x, drawn, mask, xm, params) - log_q

    def sample_q(self, x, k, mask=None):
        """k draws z ~ q(z | x) of every layer: [[k, B, d_l]], bottom first (reparameterised for
        Gaussian layers; a Bernoulli layer's are binary and carry no gradient)."""
        x, mask = self.observe(x, mask)
        return [z for *_, z in self._posterior(self.encoder_input(x, mask), k)]

    def _posterior(self, x, k, zs=None, stop_z=False):
        """Per q layer, bottom first: (layer, its input h, stats, eps, z), stats the layer's
        output (a Gaussian's (mu, log sigma), a Bernoulli's logits), z drawn (a Gaussian's
        z = mu + sigma * eps, eps [k, B, d]; a Bernoulli's eps is None) or, with zs, given
        (eps None)."""
        h = x                                                   # [B, D], then [k, B, d]
        for depth, layer in enumerate(self.encoder):
            stats = layer(h)                                    # [B, d] or [k, B, d] each
            if zs is None:
                eps, z = layer.draw(stats, k)                  # z: [k, B, d]
                z = z.detach() if stop_z else z
            else:
                eps, z = None, zs[depth]
            yield layer, h, stats, eps, z
            h = z

    def log_joint(self, x, zs, mask=None, xm=None, params=None):
        """log p(x, z) = log p(z) + log p(x | z_1): [k, B] at samples zs [[k, B, d_l]]; with a
        mask, log p(x_o, z) (x's missing entries already 0: see ``observe``); with a
        missingness model, + log p(s | x_o, x_m) at x_m = xm or drawn from p(x_m | z_1).
        params: decode(zs[0]), if the caller has it."""
        if self.missingness is None:
            return self.log_prior(zs) + self.log_p_x_given_z(x, zs, mask, params)
        if mask is None:
            x, mask = self.observe(x)
        mask = torch.ones_like(x, dtype=torch.bool) if mask is None else mask
        params = self.decode(zs[0]) if params is None else params
        xm = self.likelihood.sample(params) if xm is None else xm       # [k, B, D], reparameterised
        complete = torch.where(mask, x, xm)
        return (self.log_prior(zs) + self.likelihood.log_prob(x, params, mask)
                + self.missingness.log_prob(mask, complete))

    def sample_missing(self, zs):
        """(likelihood parameters, x ~ p(x | z_1)) at samples zs: the draws ``xm=`` takes."""
        params = self.decode(zs[0])
        return params, self.likelihood.sample(params)

    def log_prior(self, zs):
        """log p(z) [k, B]: the prior on the top layer, the generative layers below it."""
        h = zs[-1]
        log_p = self.prior.log_prob(h)                          # [k, B]
        for layer, below in zip(self.decoder_layers, reversed(zs[:-1])):
            log_p = log_p + layer.log_prob(below, layer(h))
            h = below
        return log_p

    def log_p_x_given_z(self, x, zs, mask=None, params=None):
        """log p(x | z_1) [k, B] for x [B, D] at samples zs (bottom first); with a mask
        [B, D], log p(x_o | z_1) over the observed entries. (Not ``iwae.log_likelihood``,
        which estimates log p(x) by L_k.) params: decode(zs[0]), if the caller has it."""
        if mask is None:
            x, mask = self.observe(x)
        params = self.decode(zs[0]) if params is None else params
        if mask is None:
            return self.likelihood.log_prob(x, params)
        return self.likelihood.log_prob(x, params, mask)

    def log_q(self, x, zs, mask=None):
        """log q(z | x) [k, B] at samples zs [[k, B, d_l]] (bottom first)."""
        h = self.encoder_input(*self.observe(x, mask))
        return sum(layer.log_prob(z, stats) for layer, _, stats, _, z in self._posterior(h, None, zs))

    def sample_prior(self, n):
        """n draws z ~ p(z) of every layer: [[n, d_l]], bottom first."""
        top = self.decoder_layers[0] if len(self.decoder_layers) else self.decoder
        like = next(self.parameters())
        size = self.prior.size if self.prior.size is not None else _in_features(top)
        h = self.prior.sample(n, size, like)                    # z_L ~ p(z_L)
        zs = [h]
        for layer in self.decoder_layers:
            _, h = layer.draw(layer(h))
            zs.insert(0, h)
        return zs

    def decode(self, z):
        """z_1 [..., d_1] -> likelihood parameters [..., D * params_per_dim]."""
        out = self.decoder(z.reshape(-1, z.shape[-1])).to(z.dtype)      # fp32 after bf16 matmuls
        return out.reshape(*z.shape[:-1], out.shape[-1])

    @torch.no_grad()
    def encode(self, x, mask=None):
        """The mean of each q layer, the upper ones at one sample of the layer below: [[B, d_l]]."""
        means, h = [], self.encoder_input(*self.observe(x, mask))
        for layer in self.encoder:
            stats = layer(h)
            means.append(layer.mean(stats))
            _, h = layer.draw(stats)
        return means

    @torch.no_grad()
    def sample(self, n):
        """n draws of the likelihood's mean under the prior: [n, D]."""
        return self.likelihood.mean(self.decode(self.sample_prior(n)[0]))

    @torch.no_grad()
    def reconstruct(self, x, mask=None):
        """The likelihood's mean at z_1 = the mean of q(z_1 | x): [B, D]."""
        return self.likelihood.mean(self.decode(self.encode(x, mask)[0]))

    def set_output_bias(self, pixel_mean, clip=1e-3):
        """Decoder output bias = logit(clip(mean training pixel)) [Burda et al.'s code].

        pixel_mean: [D] mean of the binarized training images.
        """
        last = self.decoder[-1] if isinstance(self.decoder, nn.Sequential) else None
        if not isinstance(last, nn.Linear) or not isinstance(self.likelihood, Bernoulli):
            raise ValueError("set_output_bias needs a Bernoulli model whose decoder ends in nn.Linear")
        p = torch.as_tensor(pixel_mean, dtype=last.bias.dtype).clamp(clip, 1 - clip)
        with torch.no_grad():
            last.bias.copy_(torch.logit(p))


def _detached(stats):
    """A layer's output with its gradient stopped (a tensor, or a tuple of them)."""
    return tuple(t.detach() for t in stats) if isinstance(stats, tuple) else stats.detach()


def _check_supports(encoder, decoder_layers, prior):
    """p and q of each z must agree on its units: both binary or both real (a density against a
    probability mass is no importance weight). Layers without a ``support`` are not checked."""
    names = [f"z_{len(encoder)}"] + [f"z_{l}" for l in range(len(encoder) - 1, 0, -1)]
    ps = [prior] + list(decoder_layers)                         # top-down: p(z_L), p(z_{L-1} | z_L), ...
    for name, q, p in zip(names, reversed(encoder), ps):
        q_kind, p_kind = getattr(q, "support", None), getattr(p, "support", None)
        if q_kind is not None and p_kind is not None and q_kind != p_kind:
            hint = " (a Bernoulli top layer needs prior=BernoulliPrior(d))" if name == names[0] else ""
            raise ValueError(f"{name} has {q_kind} units under q ({type(q).__name__}) but {p_kind} units "
                             f"under p ({type(p).__name__}): p and q of a layer must agree{hint}")


def _in_features(module):
    """The input width of the first nn.Linear in module (the latent size it reads)."""
    first = next((m for m in module.modules() if isinstance(m, nn.Linear)), None)
    if first is None:
        raise ValueError("cannot tell the latent size: the top generative module has no nn.Linear")
    return first.in_features


def paper_model(layers=1, input_dim=784, likelihood=None, scale="exp", latent="gaussian"):
    """The networks of [Burda et al. 2016, sec. 5.1 and App. C].

    layers=1: q 784-200-200-(50 mean, 50 log sigma); p 50-200-200-784.
    layers=2: q(h1|x) 784-200-200-100, q(h2|h1) 100-100-100-50,
              p(h1|h2) 50-100-100-100, p(x|h1) 100-200-200-784; prior on h2 only.
    latent="bernoulli": the same nets with Bernoulli stochastic layers (each head gives the d
    logits instead of 2 d Gaussian parameters; ``scale`` does not apply) and a Bernoulli prior
    with learned logits on the top layer (``BernoulliPrior``): train with vimco or rws.
    """
    if latent not in LATENTS:
        raise ValueError(f"latent must be one of {', '.join(LATENTS)}, got {latent!r}")
    if layers not in PAPER_LAYERS:
        raise ValueError(f"layers must be 1 or 2, got {layers}")
    likelihood = likelihood if likelihood is not None else Bernoulli()
    out = input_dim * likelihood.params_per_dim
    if latent == "bernoulli":
        if scale != "exp":
            raise ValueError(f"scale is a Gaussian layer's setting; latent='bernoulli' has none, got {scale!r}")
        layer = lambda sizes, d: BernoulliLayer(mlp(sizes, d))
        prior = BernoulliPrior(50)
    else:
        layer = lambda sizes, d: paper_gaussian_layer(sizes, d, scale)
        prior = None
    if layers == 1:
        return Model([layer([input_dim, 200, 200], 50)], mlp([50, 200, 200], out), likelihood, prior=prior)
    return Model([layer([input_dim, 200, 200], 100), layer([100, 100, 100], 50)],
                 mlp([100, 200, 200], out), likelihood,
                 decoder_layers=[layer([50, 100, 100], 100)], prior=prior)


def sbn_model(sizes=(200, 200, 200), input_dim=784, likelihood=None):
    """A sigmoid belief net [Neal 1992]: Bernoulli layers whose logits are linear in the layer
    next to them, q mirroring p bottom up. sizes=(200, 200, 200) is the SBN of [Mnih & Rezende
    2016, sec. 6.1] on binarized MNIST: h_l of 200 units, p(h_3) Bernoulli(sigmoid(b)) with
    learned logits b, p(h_l | h_{l+1}) = Bernoulli(sigmoid(W h_{l+1} + c)), p(x | h_1) likewise;
    q(h_1 | x), q(h_2 | h_1), q(h_3 | h_2) linear-logit Bernoulli. Glorot weights, zero biases.
    Train with estimator vimco or rws.
    """
    sizes = [positive_int("sizes[i]", d) for d in sizes]
    if not sizes:
        raise ValueError("sizes must name at least one stochastic layer")
    likelihood = likelihood if likelihood is not None else Bernoulli()
    widths = [input_dim] + sizes
    encoder = [BernoulliLayer(mlp([a], b)) for a, b in zip(widths[:-1], widths[1:])]
    decoder_layers = [BernoulliLayer(mlp([a], b)) for a, b in zip(sizes[:0:-1], sizes[-2::-1])]
    return Model(encoder, mlp([sizes[0]], input_dim * likelihood.params_per_dim), likelihood,
                 decoder_layers=decoder_layers, prior=BernoulliPrior(sizes[-1]))

"""Deep latent Gaussian models and their log importance weights.

A model with L stochastic layers z_1..z_L (z_L on top) is
    p(x, z) = p(z_L) p(z_{L-1} | z_L) ... p(z_1 | z_2) p(x | z_1),   p(z_L) = N(0, I)
    q(z | x) = q(z_1 | x) q(z_2 | z_1) ... q(z_L | z_{L-1})
and its single product is ``log_weights(x, k)``: the [k, batch] tensor of
    log w_i = log p(x | z_i) + log p(z_i) - log q(z_i | x)
at k samples z_i ~ q(z | x), every stochastic layer included [Burda et al. 2016, eq. 8].
Bounds and gradient estimators are functions of that tensor alone.

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
or no NaN) the computation is today's, op for op; with an all-True mask it is bitwise equal.

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
from .missingness import check_likelihood
from .nets import glorot_, mlp
from .validate import positive_int

SCALES = ("exp", "softplus")
PAPER_LAYERS = (1, 2)       # stochastic layers of the paper's nets


class GaussianLayer(nn.Module):
    """A diagonal Gaussian N(mu(h), sigma(h)^2) whose parameters a network computes from h.

    ``net`` maps [N, d_in] to [N, 2 d]: the first half is mu, the second the scale head s,
    with sigma = exp(s) (the paper's choice) or softplus(s) (``scale="softplus"``).
    Any leading dimensions of h are flattened for the net, so user networks (conv nets
    with an nn.Unflatten in front, say) only ever see a 2-d batch.
    """

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
    """p(x, z) and q(z | x) with Gaussian stochastic layers.

    Args:
        encoder: GaussianLayers q(z_1 | x), q(z_2 | z_1), ..., q(z_L | z_{L-1}).
        decoder: a module mapping z_1 [N, d_1] to the likelihood's parameters
            [N, D * likelihood.params_per_dim] (logits for Bernoulli).
        likelihood: ``Bernoulli()`` or ``Gaussian(scale)`` from ``iwae.core.densities``.
        decoder_layers: GaussianLayers p(z_{L-1} | z_L), ..., p(z_1 | z_2), top-down
            (L - 1 of them; empty for one stochastic layer). p(z_L) = N(0, I).
        missing: NaN entries of x are missing values (the mask is ~isnan(x)) wherever the
            model reads x; see the module docstring.
        mask_input: the first encoder layer reads [x with missing entries 0, mask] (2 D
            inputs; an all-True mask when none is given) instead of x.
        missingness: None (missing at random: MIWAE) or a module with ``log_prob(s, x)``
            (``iwae.core.missingness.SelfMasking`` or ``Linear``): log p(s | x) joins the log
            weights (module docstring); it needs a Gaussian or Student's t likelihood.
    """

    def __init__(self, encoder, decoder, likelihood=None, decoder_layers=(), *, missing=False,
                 mask_input=False, missingness=None):
        super().__init__()
        encoder = list(encoder) if isinstance(encoder, (list, tuple, nn.ModuleList)) else [encoder]
        if len(decoder_layers) != len(encoder) - 1:
            raise ValueError(
                f"{len(encoder)} encoder layers need {len(encoder) - 1} decoder_layers, "
                f"got {len(decoder_layers)}")
        self.encoder = nn.ModuleList(encoder)
        self.decoder_layers = nn.ModuleList(decoder_layers)
        self.decoder = decoder
        self.likelihood = likelihood if likelihood is not None else Bernoulli()
        self.missing, self.mask_input = bool(missing), bool(mask_input)
        if missingness is not None:
            check_likelihood(self.likelihood)
        self.missingness = missingness

    def encoder_parameters(self):
        """phi: the parameters of q(z | x)."""
        return self.encoder.parameters()

    def decoder_parameters(self):
        """theta: the parameters of p(x, z)."""
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
        for depth, (layer, h, mu, log_sigma, eps, z) in enumerate(posterior):
            if stop_z or (zs is not None and not stop_q):
                log_q = log_q + normal_log_prob(z, mu, log_sigma)
            elif stop_q:
                if depth == 0:      # x carries no gradient: stopping the outputs stops phi
                    mu_q, log_sigma_q = mu.detach(), log_sigma.detach()
                else:               # keep the dependence on z_{l-1}, stop only phi
                    frozen = {n: p.detach() for n, p in layer.net.named_parameters()}
                    mu_q, log_sigma_q = layer(h, frozen)
                log_q = log_q + normal_log_prob(z, mu_q, log_sigma_q)
            else:                   # (z - mu) / sigma = eps exactly: no need to recompute it
                log_q = log_q - (0.5 * eps.square() + log_sigma).sum(-1) \
                    - HALF_LOG_2PI * z.shape[-1]
            drawn.append(z)
        return self.log_joint(x, drawn, mask, xm, params) - log_q

    def sample_q(self, x, k, mask=None):
        """k reparameterised draws z ~ q(z | x) of every layer: [[k, B, d_l]], bottom first."""
        x, mask = self.observe(x, mask)
        return [z for *_, z in self._posterior(self.encoder_input(x, mask), k)]

    def _posterior(self, x, k, zs=None, stop_z=False):
        """Per q layer, bottom first: (layer, its input h, mu, log sigma, eps, z), with
        z = mu + sigma * eps drawn (eps [k, B, d]) or, with zs, given (eps None)."""
        h = x                                                   # [B, D], then [k, B, d]
        for depth, layer in enumerate(self.encoder):
            mu, log_sigma = layer(h)                            # [B, d] or [k, B, d]
            if zs is None:
                eps = torch.randn((k,) + mu.shape[-2:], dtype=mu.dtype, device=mu.device)
                z = reparameterize(mu, log_sigma, eps)         # [k, B, d]
                z = z.detach() if stop_z else z
            else:
                eps, z = None, zs[depth]
            yield layer, h, mu, log_sigma, eps, z
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
        """log p(z) [k, B]: N(0, I) on the top layer, the generative layers below it."""
        h = zs[-1]
        log_p = standard_normal_log_prob(h)                     # [k, B]
        for layer, below in zip(self.decoder_layers, reversed(zs[:-1])):
            mu, log_sigma = layer(h)
            log_p = log_p + normal_log_prob(below, mu, log_sigma)
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
        return sum(normal_log_prob(z, mu, log_sigma) for _, _, mu, log_sigma, _, z in self._posterior(h, None, zs))

    def sample_prior(self, n):
        """n draws z ~ p(z) of every layer: [[n, d_l]], bottom first."""
        top = self.decoder_layers[0] if len(self.decoder_layers) else self.decoder
        like = next(self.parameters())
        h = torch.randn(n, _in_features(top), dtype=like.dtype, device=like.device)   # z_L ~ N(0, I)
        zs = [h]
        for layer in self.decoder_layers:
            mu, log_sigma = layer(h)
            h = reparameterize(mu, log_sigma)
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
            mu, log_sigma = layer(h)
            means.append(mu)
            h = reparameterize(mu, log_sigma)
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


def _in_features(module):
    """The input width of the first nn.Linear in module (the latent size it reads)."""
    first = next((m for m in module.modules() if isinstance(m, nn.Linear)), None)
    if first is None:
        raise ValueError("cannot tell the latent size: the top generative module has no nn.Linear")
    return first.in_features


def paper_model(layers=1, input_dim=784, likelihood=None, scale="exp"):
    """The networks of [Burda et al. 2016, sec. 5.1 and App. C].

    layers=1: q 784-200-200-(50 mean, 50 log sigma); p 50-200-200-784.
    layers=2: q(h1|x) 784-200-200-100, q(h2|h1) 100-100-100-50,
              p(h1|h2) 50-100-100-100, p(x|h1) 100-200-200-784; prior on h2 only.
    """
    likelihood = likelihood if likelihood is not None else Bernoulli()
    out = input_dim * likelihood.params_per_dim
    if layers == 1:
        return Model([paper_gaussian_layer([input_dim, 200, 200], 50, scale)],
                     mlp([50, 200, 200], out), likelihood)
    if layers == 2:
        return Model([paper_gaussian_layer([input_dim, 200, 200], 100, scale),
                      paper_gaussian_layer([100, 100, 100], 50, scale)],
                     mlp([100, 200, 200], out), likelihood,
                     decoder_layers=[paper_gaussian_layer([50, 100, 100], 100, scale)])
    raise ValueError(f"layers must be 1 or 2, got {layers}")

"""Log densities and observation likelihoods.

Every log density is summed over the last (event) dimension and includes its
full normalising constant, so that log weights are true log densities.

Missing data: each likelihood's ``log_prob(x, params, mask)`` takes an optional mask [B, D]
(bool, True = observed) and then sums over the observed entries only, log p(x_o | z); the
values of x at missing positions are never read (they may be NaN). With every entry
observed the masked sum is bitwise the unmasked one.
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


def observed_values(x, mask):
    """x with its missing entries (mask False) set to 0: whatever they held (NaN included)
    reaches neither a value nor a gradient."""
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_normal_log_prob(x, mu, log_sigma, mask):
    """normal_log_prob over the entries where mask [B, D] is True: [k, B].

    The constant is written as -HALF_LOG_2PI * D + HALF_LOG_2PI * (number missing), so that
    with every entry observed the result is bitwise normal_log_prob's."""
    m = mask.to(mu.dtype)
    scaled = (x - mu) * torch.exp(-log_sigma)
    missing = x.shape[-1] - m.sum(-1)
    return (-((0.5 * scaled.square() + log_sigma) * m).sum(-1) - HALF_LOG_2PI * x.shape[-1]
            + HALF_LOG_2PI * missing)


def reparameterize(mu, log_sigma, eps=None):
    """z = mu + sigma * eps, a draw from N(mu, diag(sigma^2)) that carries the gradient of
    mu and log sigma; eps ~ N(0, I) like mu unless given (shapes broadcast)."""
    eps = torch.randn_like(mu) if eps is None else eps
    return mu + torch.exp(log_sigma) * eps


def standard_normal_log_prob(z):
    """log N(z; 0, I), summed over the last dimension: z [..., d] -> [...]."""
    return -0.5 * z.square().sum(-1) - HALF_LOG_2PI * z.shape[-1]


SOFTPLUS_GROUP = 8     # factors 1 + exp(-|l|) in (1, 2] multiplied before one log: at most 2^8


def softplus_sum(logits, mask=None):
    """sum_d mask_d softplus(l_d) over the last dimension: [..., D] -> [...] (mask [..., D]
    broadcasting, 0/1 in logits' dtype; None: every entry).

    softplus(l) = relu(l) + log(1 + exp(-|l|)). Compiled without gradients (the evaluator's
    L_k), the second sum is taken as the log of products of SOFTPLUS_GROUP factors in (1, 2]
    (padded with ones): one log per 8 entries instead of a log1p per entry, which halves this
    pass, the largest elementwise cost of a k = 5000 L_k (docs/speed.md). Its error is
    float32's rounding of the factors, ~1e-7 nats per entry, as small as that of summing the
    softplus values. Eager (where the product's several passes cost what log1p saves) or
    differentiated (where a product's backward is slow), the plain softplus.
    """
    if not torch.compiler.is_compiling() or torch.is_grad_enabled():
        terms = F.softplus(logits)
        return (terms if mask is None else terms * mask).sum(-1)
    rest, factors = torch.relu(logits), torch.exp(-logits.abs())
    if mask is not None:
        rest, factors = rest * mask, factors * mask
    d = logits.shape[-1]
    columns = -(-d // SOFTPLUS_GROUP)
    factors = F.pad(1 + factors, (0, columns * SOFTPLUS_GROUP - d), value=1.0)
    products = factors.unflatten(-1, (SOFTPLUS_GROUP, columns)).prod(-2)    # [..., columns]
    return rest.sum(-1) + torch.log(products).sum(-1)


class Bernoulli:
    """p(x | z) = prod_d Bernoulli(x_d; sigmoid(logits_d)).

    log p = sum_d x_d * l_d - softplus(l_d), exact for any finite logit (no clipping),
    and valid for x in [0, 1] (the continuous relaxation of the usual binary x).
    """

    params_per_dim = 1

    def log_prob(self, x, logits, mask=None):
        """x [B, D], logits [k, B, D] -> [k, B]: a dot product (no [k, B, D] product
        tensor) minus one softplus pass, which a compiled step fuses into its reduction.
        mask [B, D]: the observed entries only (x's missing entries are read as 0, so that
        the dot product skips them)."""
        if mask is None:
            return torch.linalg.vecdot(logits, x.expand_as(logits)) - softplus_sum(logits)
        x = observed_values(x, mask)
        return torch.linalg.vecdot(logits, x.expand_as(logits)) - softplus_sum(logits, mask.to(logits.dtype))

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
    min_scale (learned scales only): per dimension, a float or a sequence of D floats (0: none);
    sigma = sqrt(s^2 + min_scale^2) for the decoder's s, a smooth floor. Values recorded at a
    resolution h (integers: h = 1) have no density above 1 / h; a Gaussian whose sigma
    shrinks below h / sqrt(2 pi) on a repeated value claims more, without bound, and a
    decoder trained on such a column learns to predict its ties (iwae.Imputer sets the floor
    from the data: docs/missing.md).
    """

    def __init__(self, scale=None, min_scale=None):
        if scale is not None and not scale > 0:
            raise ValueError(f"Gaussian likelihood scale must be > 0, got {scale}")
        floors = None if min_scale is None else [float(v) for v in
                                                 (min_scale if hasattr(min_scale, "__len__") else [min_scale])]
        if floors is not None and (scale is not None or not all(v >= 0 for v in floors)):
            raise ValueError(f"Gaussian min_scale must be >= 0 and with a learned scale, got {min_scale}")
        self.scale, self.min_scale = scale, floors
        # a tensor, not constants: a compiled step then takes it as an input, and a table's
        # new floors reuse the compiled code (as Columns' column indices do)
        self.log_floor = None if floors is None else torch.log(torch.tensor(floors, dtype=torch.float64))  # [D] or [1]
        self.params_per_dim = 1 if scale is not None else 2

    def _split(self, params):
        if self.scale is not None:
            return params, torch.full_like(params, math.log(self.scale))
        mu, log_s = params.chunk(2, dim=-1)
        if self.min_scale is None:
            return mu, log_s
        log_floor = self.log_floor.to(params.device, params.dtype)
        # log sqrt(s^2 + floor^2) through softplus, not logaddexp, whose eager CPU kernel is 3x slower
        return mu, log_s + 0.5 * F.softplus(2 * (log_floor - log_s))

    def log_prob(self, x, params, mask=None):
        """x [B, D], params [k, B, D * params_per_dim] -> [k, B]; mask [B, D]: the observed
        entries only."""
        mu, log_sigma = self._split(params)
        if mask is None:
            return normal_log_prob(x, mu, log_sigma)
        return masked_normal_log_prob(observed_values(x, mask), mu, log_sigma, mask)

    def mean(self, params):
        return params if self.scale is not None else params.chunk(2, dim=-1)[0]

    def sample(self, params):
        """x ~ N(mu, sigma^2): [..., D]."""
        mu, log_sigma = self._split(params)
        return mu + torch.exp(log_sigma) * torch.randn_like(mu)

    def config(self):
        floor = {} if self.min_scale is None else {"min_scale": self.min_scale}
        return {"name": "gaussian", "scale": self.scale, **floor}


class StudentT:
    """p(x | z) = prod_d t_nu_d(x_d; mu_d, sigma_d): Student's t with learned location, scale
    and degrees of freedom per entry (the observation model of Mattei & Frellsen 2019).

    The decoder outputs [mu, a, b] (3 numbers per dimension): sigma = softplus(a) + 1e-3,
    nu = softplus(b) + 3, so that nu >= 3 and the mean (mu) and variance
    (sigma^2 nu / (nu - 2)) exist.
    """

    params_per_dim = 3
    MIN_SCALE, MIN_DF = 1e-3, 3.0

    def _split(self, params):
        mu, a, b = params.chunk(3, dim=-1)
        return mu, F.softplus(a) + self.MIN_SCALE, F.softplus(b) + self.MIN_DF

    def log_prob(self, x, params, mask=None):
        """x [B, D], params [k, B, 3 D] -> [k, B]; mask [B, D]: the observed entries only."""
        mu, sigma, nu = self._split(params)
        if mask is not None:
            x = observed_values(x, mask)
        half = 0.5 * (nu + 1)
        terms = (torch.lgamma(half) - torch.lgamma(0.5 * nu) - 0.5 * torch.log(nu * math.pi)
                 - torch.log(sigma) - half * torch.log1p(((x - mu) / sigma).square() / nu))
        if mask is not None:
            terms = terms * mask.to(terms.dtype)
        return terms.sum(-1)

    def mean(self, params):
        return params.chunk(3, dim=-1)[0]

    def variance(self, params):
        _, sigma, nu = self._split(params)
        return sigma.square() * nu / (nu - 2)

    def sample(self, params):
        """x ~ t_nu(mu, sigma^2): a normal over the root of a scaled chi-square draw, the
        chi-square drawn by rsample so that the draw carries nu's gradient (validation off:
        nu >= 3 by construction, and checking it would cost a device sync)."""
        mu, sigma, nu = self._split(params)
        chi2 = torch.distributions.Chi2(nu, validate_args=False).rsample()
        return mu + sigma * torch.randn_like(mu) * torch.rsqrt(chi2 / nu)

    def config(self):
        return {"name": "student-t"}


class Columns:
    """A different likelihood for each group of columns (binary columns Bernoulli, the others
    Gaussian, say): ``Columns([(Bernoulli(), [0, 3]), (Gaussian(), [1, 2])])``; the mixed-table
    likelihoods of ``iwae.core.tabular`` too: ``Columns([(Gaussian(), [0, 2]),
    (Categorical(3), [1]), (Categorical(5), [3, 4])])``, one part per number of categories.

    The decoder's output is the parts' parameters side by side, part after part (each part's
    block laid out as that likelihood lays out its own), a part of n columns taking
    ``params_per_dim * n`` of them (C per column for a Categorical(C)); ``n_params`` is their
    number. ``statistics`` and ``point`` (single imputation of a mixture, see
    ``iwae.core.tabular``) are the parts' where they have them, else ``mean`` and the identity.
    """

    def __init__(self, parts):
        self.parts = [(like, torch.as_tensor(list(cols), dtype=torch.long)) for like, cols in parts]
        order = torch.cat([cols for _, cols in self.parts])
        if order.numel() == 0 or not torch.equal(order.sort().values, torch.arange(order.numel())):
            raise ValueError("Columns needs every column 0..D-1 in exactly one part")
        self.inverse = order.argsort()
        self.sizes = [like.params_per_dim * cols.numel() for like, cols in self.parts]
        self.statistic_sizes = [getattr(like, "statistics_per_dim", 1) * cols.numel()
                                for like, cols in self.parts]
        self.n_params = sum(self.sizes)
        self.plain = not any(hasattr(like, "statistics") for like, _ in self.parts)

    def _each(self, params):
        for (like, cols), block in zip(self.parts, params.split(self.sizes, dim=-1)):
            yield like, cols.to(params.device), block

    def log_prob(self, x, params, mask=None):
        """x [B, D], params [k, B, n_params] -> [k, B]; mask [B, D]: the observed entries only."""
        total = 0.0
        for like, cols, block in self._each(params):
            part_mask = None if mask is None else mask[..., cols]
            total = total + like.log_prob(x[..., cols], block, part_mask)
        return total

    def _joined(self, params, what):
        out = torch.cat([getattr(like, what)(block) for like, _, block in self._each(params)], -1)
        return out[..., self.inverse.to(params.device)]

    def mean(self, params):
        return self._joined(params, "mean")

    def sample(self, params):
        return self._joined(params, "sample")

    def statistics(self, params):
        """The parts' ``statistics`` (``mean`` where a part has none), part after part:
        [..., sum(statistic_sizes)], to be averaged over draws and read by ``point``. With no
        part that has statistics, ``mean`` (column order), and ``point`` is the identity, so
        that imputations are the plain weighted means op for op."""
        if self.plain:
            return self.mean(params)
        return torch.cat([getattr(like, "statistics", like.mean)(block)
                          for like, _, block in self._each(params)], -1)

    def point(self, statistics):
        """The parts' ``point`` of their statistics (the identity where a part has none), in
        column order: [..., D]."""
        if self.plain:
            return statistics
        blocks = statistics.split(self.statistic_sizes, dim=-1)
        out = torch.cat([like.point(block) if hasattr(like, "point") else block
                         for (like, _), block in zip(self.parts, blocks)], -1)
        return out[..., self.inverse.to(statistics.device)]

    def config(self):
        return {"name": "columns", "parts": [dict(like.config(), columns=cols.tolist()) for like, cols in self.parts]}

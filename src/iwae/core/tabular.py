"""Observation likelihoods for the column types of mixed tables [Nazabal et al. 2020, HI-VAE]:
categorical, ordinal, count (Poisson, negative binomial) and positive (log-normal) columns, and
real columns with a point mass (an inflated Gaussian).

They follow the contract of ``Bernoulli``, ``Gaussian`` and ``StudentT`` (``iwae.core.densities``;
a module of their own so that densities.py stays short): ``params_per_dim`` decoder outputs per
data column, ``log_prob(x, params, mask=None) -> [k, B]`` with the full normalising constant,
summed over the observed entries only (mask [B, D] bool, True = observed; x's values at missing
positions are never read, NaN included: they are replaced by a harmless constant before any
arithmetic, and the missing entries' terms by 0 with ``torch.where``, so that they reach neither
the value nor a gradient), ``mean`` (the single-z point used by ``Model.reconstruct``),
``sample``. ``Columns`` puts them side by side, one part per group of columns.

Data encoding: one float column per table column. A categorical or ordinal column holds the
category index 0..C-1 (as a float, NaN when missing); a count column a non-negative integer;
a positive column a value > 0. None of this is checked here (a data-dependent check would stop
torch.compile and the meta device): the caller validates its table.

Single imputation from importance samples: a weighted average of ``mean`` over draws z_l is
the mixture's mean, right for numbers but meaningless for categories (an average of category
indices). So each likelihood also gives ``statistics(params)`` [..., statistics_per_dim * D],
expectations under p(x | z) whose weighted average over draws is the same expectation under the
mixture sum_l w~_l p(x | z_l), and ``point(statistics)`` [..., D], the imputation read from
them: for a categorical column its probabilities and their argmax (the mode of the mixture, not
the average of the draws' modes).
"""
import math

import torch
import torch.nn.functional as F

from .densities import HALF_LOG_2PI, Gaussian

MAX_LOG_MEAN = 30.0          # counts: log mean smoothly capped at 30 (1.1e13: no float32 overflow)


def _filled(x, mask, value):
    """x with its missing entries (mask False) set to value (no NaN reaches any arithmetic)."""
    if mask is None:
        return x
    return torch.where(mask, x, torch.full((), value, dtype=x.dtype, device=x.device))


def _observed_sum(terms, mask):
    """sum over the last dimension of terms [..., D], the missing entries' terms exactly 0."""
    if mask is not None:
        terms = torch.where(mask, terms, torch.zeros((), dtype=terms.dtype, device=terms.device))
    return terms.sum(-1)


def _plus_normal(start, x, mu, log_sigma):
    """start + log N(x; mu, exp(log_sigma)^2) per entry: [..., D] (the log-normal's, start = -log x,
    the Jacobian; the inflated Gaussian's away from its point, start = log(1 - pi))."""
    scaled = (x - mu) * torch.exp(-log_sigma)
    return start - 0.5 * scaled.square() - log_sigma - HALF_LOG_2PI


def _by_column(params, categories):
    """params [..., D * C] -> [..., D, C]: each data column's C outputs side by side."""
    return params.unflatten(-1, (params.shape[-1] // categories, categories))


def _pick(table, x):
    """table [..., D, C] at the categories x [..., D] (float indices; broadcast): [..., D]."""
    index = x.long().unsqueeze(-1).expand(*table.shape[:-1], 1)
    return table.gather(-1, index).squeeze(-1)


def _gumbel_argmax(log_p):
    """One draw of a category per row of log_p [..., C] (unnormalised log probabilities):
    argmax(log_p + Gumbel noise), an exact draw for any leading shape."""
    gumbel = -torch.log(torch.empty_like(log_p).exponential_())
    return (log_p + gumbel).argmax(-1).to(log_p.dtype)


def _capped(eta):
    """eta - softplus(eta - MAX_LOG_MEAN): within exp(eta - MAX_LOG_MEAN) of eta (so exp of it
    is exp(eta) within 2e-9 relative up to eta = 10, a mean of 22,000), never above
    MAX_LOG_MEAN (exp of it cannot overflow), smooth, with the gradient sigmoid(MAX_LOG_MEAN -
    eta) > 0, so an eta past the cap is still pulled back (until ~90 past it in float32, where
    the sigmoid underflows)."""
    return eta - F.softplus(eta - MAX_LOG_MEAN)


def _categories(categories, name):
    if isinstance(categories, bool) or not isinstance(categories, int) or categories < 2:
        raise ValueError(f"{name} needs an int number of categories >= 2, got {categories!r}")
    return categories


class Categorical:
    """p(x_d = c | z) = softmax(l_d)_c over the column's C categories.

    The decoder outputs C logits per column (``params_per_dim = C``), column after column:
    params [..., D * C] is [..., D, C] flattened. x holds the category index 0..C-1 as a float.
    ``mean`` is the mode (argmax of the logits), ``sample`` a category drawn (never an
    average), ``statistics`` the C probabilities and ``point`` their argmax. Columns with
    different numbers of categories are different parts of a ``Columns``.
    """

    reparameterised = False      # no x_m by reparameterisation: no missingness model

    def __init__(self, categories):
        self.categories = _categories(categories, "Categorical")
        self.params_per_dim = self.statistics_per_dim = self.categories

    def logits(self, params):
        return _by_column(params, self.categories)

    def log_prob(self, x, params, mask=None):
        """x [B, D], params [k, B, D * C] -> [k, B]: log softmax at the observed categories
        (log_softmax, not logit - logsumexp: in float32 the latter rounds log p to the ulp of
        the largest logit, 4e-6 at logits of 40)."""
        return _observed_sum(_pick(self.log_probs(params), _filled(x, mask, 0.0)), mask)

    def log_probs(self, params):
        """log p(x_d = c | z) for every category: [..., D, C]."""
        return torch.log_softmax(self.logits(params), -1)

    def mean(self, params):
        """The mode, argmax_c l_dc: [..., D] (category indices as floats)."""
        return self.logits(params).argmax(-1).to(params.dtype)

    def sample(self, params):
        return _gumbel_argmax(self.logits(params))

    def statistics(self, params):
        return torch.softmax(self.logits(params), -1).flatten(-2)

    def point(self, statistics):
        """The mode of the mixture whose probabilities are ``statistics`` [..., D * C]."""
        return _by_column(statistics, self.categories).argmax(-1).to(statistics.dtype)

    def config(self):
        return {"name": "categorical", "categories": self.categories}


class Ordinal:
    """Cumulative logits [McCullagh 1980; HI-VAE]: x_d = c when the latent x* = eta + Logistic
    noise falls between the thresholds t_c and t_{c+1}, so

        P(x_d <= c | z) = sigmoid(t_{c+1} - eta),   c = 0..C-2,   t_1 < ... < t_{C-1}.

    The decoder outputs C numbers per column (column after column, like ``Categorical``): the
    location eta and C - 1 raw gaps a_j, with t = cumsum(softplus(a) + 1e-4) (HI-VAE's ordered
    thresholds; > 0, which eta's freedom makes no restriction). Each probability is computed in
    log space as log sigmoid(t_{c+1} - eta) + log sigmoid(eta - t_c) + log(1 - exp(-gap)), so
    no difference of two close sigmoids is ever taken. ``mean`` is the median category
    (#{t_c < eta}; the median minimises the expected |shift|, the usual ordinal error; HI-VAE
    imputes the mode), ``sample`` draws x* and counts the thresholds below it, ``point`` the
    median of the mixture's probabilities.
    """

    reparameterised = False
    MIN_GAP = 1e-4

    def __init__(self, categories):
        self.categories = _categories(categories, "Ordinal")
        self.params_per_dim = self.statistics_per_dim = self.categories

    def _split(self, params):
        """(eta [..., D], gaps [..., D, C-1], t - eta [..., D, C-1])."""
        per_column = _by_column(params, self.categories)
        eta, raw = per_column[..., 0], per_column[..., 1:]
        gaps = F.softplus(raw) + self.MIN_GAP
        return eta, gaps, gaps.cumsum(-1) - eta.unsqueeze(-1)

    def thresholds(self, params):
        """t_1 < ... < t_{C-1}: [..., D, C-1]."""
        _, gaps, _ = self._split(params)
        return gaps.cumsum(-1)

    def log_probs(self, params):
        """log P(x_d = c | z) for every category: [..., D, C]."""
        _, gaps, u = self._split(params)
        below = F.pad(F.logsigmoid(u), (0, 1))            # log P(x <= c), 0 for the last
        above = F.pad(F.logsigmoid(-u), (1, 0))           # log P(x > c - 1), 0 for the first
        between = F.pad(torch.log(-torch.expm1(-gaps[..., 1:])), (1, 1))
        return below + above + between

    def log_prob(self, x, params, mask=None):
        """x [B, D], params [k, B, D * C] -> [k, B]."""
        return _observed_sum(_pick(self.log_probs(params), _filled(x, mask, 0.0)), mask)

    def mean(self, params):
        """The median category, #{c : t_c < eta}: [..., D]."""
        _, _, u = self._split(params)
        return (u < 0).sum(-1).to(params.dtype)

    def sample(self, params):
        """x = #{c : t_c < eta + L}, L ~ Logistic(0, 1) = log U - log(1 - U)."""
        eta, _, u = self._split(params)
        uniform = torch.rand_like(eta)
        noise = torch.log(uniform) - torch.log1p(-uniform)
        return (u < noise.unsqueeze(-1)).sum(-1).to(params.dtype)

    def statistics(self, params):
        return torch.exp(self.log_probs(params)).flatten(-2)

    def point(self, statistics):
        """The median of the mixture: the first c with P(x <= c) >= 1/2."""
        cumulative = _by_column(statistics, self.categories).cumsum(-1)[..., :-1]
        return (cumulative < 0.5).sum(-1).to(statistics.dtype)

    def config(self):
        return {"name": "ordinal", "categories": self.categories}


class Poisson:
    """p(x_d | z) = Poisson(x_d; lambda_d), log lambda = eta (the canonical log link): one
    decoder output per column, on the log scale, so that counts of any magnitude are a small
    number for the net and log p = x eta - exp(eta) - log x! needs no log of a rate (softplus
    would make the net output the rate itself, hundreds for large counts, and its log
    underflow for very negative outputs). Overflow guard: eta is capped smoothly at 30
    (``MAX_LOG_MEAN``, rate 1.1e13), within 2e-9 of itself up to 10. ``mean`` (and so the
    single imputation) is the rate lambda: the mixture mean E[x_m | x_o], not an integer
    (round it for a mode-like imputation; the mixture's mode has no closed form); ``sample``
    draws counts.
    """

    params_per_dim = 1
    reparameterised = False

    def log_rate(self, params):
        return _capped(params)

    def log_prob(self, x, params, mask=None):
        """x [B, D] (non-negative integers), params [k, B, D] -> [k, B]."""
        x = _filled(x, mask, 0.0)
        eta = self.log_rate(params)
        return _observed_sum(x * eta - torch.exp(eta) - torch.lgamma(x + 1), mask)

    def mean(self, params):
        return torch.exp(self.log_rate(params))

    def sample(self, params):
        return torch.poisson(self.mean(params))

    def config(self):
        return {"name": "poisson"}


class NegativeBinomial:
    """p(x_d | z) = NB(x_d; r_d, p_d) = C(x + r - 1, x) (1 - p)^r p^x, over-dispersed counts:
    mean mu, variance mu + mu^2 / r (Poisson as r -> infinity).

    The decoder outputs [eta, rho] (2 numbers per column, as ``Gaussian`` lays out its own:
    all etas, then all rhos): log mu = eta (capped smoothly at 30, like ``Poisson``), the
    dispersion r = softplus(rho) + 1e-3, and torch.distributions.NegativeBinomial's
    (total_count, logits) = (r, eta - log r), whose log density this is:
    lgamma(x + r) - lgamma(r) - lgamma(x + 1) + r log sigmoid(-logits) + x log sigmoid(logits).
    (In float32 the lgamma difference loses digits once r exceeds ~1e4: a Poisson-like
    column is better modelled by ``Poisson``.) ``mean`` is mu (not an integer, as for
    ``Poisson``), ``sample`` a Gamma-Poisson draw.
    """

    params_per_dim = 2
    reparameterised = False
    MIN_TOTAL_COUNT = 1e-3

    def total_count_and_logits(self, params):
        eta, rho = params.chunk(2, dim=-1)
        r = F.softplus(rho) + self.MIN_TOTAL_COUNT
        return r, _capped(eta) - torch.log(r)

    def log_prob(self, x, params, mask=None):
        """x [B, D] (non-negative integers), params [k, B, 2 D] -> [k, B]."""
        x = _filled(x, mask, 0.0)
        r, logits = self.total_count_and_logits(params)
        terms = (torch.lgamma(x + r) - torch.lgamma(r) - torch.lgamma(x + 1)
                 + r * F.logsigmoid(-logits) + x * F.logsigmoid(logits))
        return _observed_sum(terms, mask)

    def mean(self, params):
        return torch.exp(_capped(params.chunk(2, dim=-1)[0]))

    def variance(self, params):
        r, _ = self.total_count_and_logits(params)
        mu = self.mean(params)
        return mu + mu.square() / r

    def sample(self, params):
        """x ~ Poisson(G), G ~ Gamma(r, scale exp(logits)) (mean mu)."""
        r, logits = self.total_count_and_logits(params)
        rate = torch.distributions.Gamma(r, torch.exp(-logits), validate_args=False).sample()
        return torch.poisson(rate)

    def config(self):
        return {"name": "negative-binomial"}


class LogNormal:
    """p(x_d | z) = LogNormal: log x_d ~ N(mu_d, sigma_d^2) for x_d > 0, so

        log p(x) = log N(log x; mu, sigma) - log x      (the Jacobian of x -> log x).

    The decoder outputs [mu, log sigma] (2 per column, laid out as ``Gaussian``'s). A missing
    entry is read as x = 1 (log x = 0) before its term is zeroed, so it reaches no log of 0.
    ``mean`` is the log-normal mean exp(mu + sigma^2 / 2) (so that the importance-weighted
    average is E[x_m | x_o], as for the numeric columns; it is heavy for large sigma and
    overflows float32 past mu + sigma^2 / 2 = 88), ``median`` exp(mu); ``sample`` =
    exp(mu + sigma eps), a reparameterised draw.
    """

    params_per_dim = 2
    reparameterised = True

    def log_prob(self, x, params, mask=None):
        """x [B, D] (> 0), params [k, B, 2 D] -> [k, B]."""
        mu, log_sigma = params.chunk(2, dim=-1)
        log_x = torch.log(_filled(x, mask, 1.0))
        return _observed_sum(_plus_normal(-log_x, log_x, mu, log_sigma), mask)

    def mean(self, params):
        mu, log_sigma = params.chunk(2, dim=-1)
        return torch.exp(mu + 0.5 * torch.exp(2 * log_sigma))

    def median(self, params):
        return torch.exp(params.chunk(2, dim=-1)[0])

    def sample(self, params):
        mu, log_sigma = params.chunk(2, dim=-1)
        return torch.exp(mu + torch.exp(log_sigma) * torch.randn_like(mu))

    def config(self):
        return {"name": "log-normal"}


class InflatedGaussian:
    """A Gaussian with a point mass: p(x_d | z) = pi_d [x_d = v_d] + (1 - pi_d) N(x_d; mu_d, sigma_d^2),
    for a real column of which a share of the values is exactly one value v_d (MNIST's zero
    pixels, a debt that is 0 for most people): zero-inflated where v_d = 0.

    points: v, a float or D floats, compared for equality with x (so taken from the same float
    tensor x is: iwae.Imputer takes each column's most common value). min_scale: the floor
    of the Gaussian part's scale (``Gaussian``'s). The decoder outputs [mu, log s, l] (3 per
    column, laid out as ``Gaussian``'s [mu, log s] then the logits l): pi = sigmoid(l). The
    density is with respect to Lebesgue measure plus a unit mass at v, so that

        log p(x) = log sigmoid(l)                          where x = v,
                   log sigmoid(-l) + log N(x; mu, sigma)   elsewhere,

    and the Gaussian no longer has to shrink its scale onto the tie to explain it (which a
    floor on the scale only resists: docs/missing.md, "Ties"). ``mean`` is pi v + (1 - pi) mu,
    whose importance-weighted average is E[x_m | x_o]; ``sample`` draws from the mixture
    (v or a normal draw), not by reparameterisation: no missingness model.
    """

    params_per_dim = 3
    reparameterised = False

    def __init__(self, points, min_scale=None):
        values = [float(v) for v in (points if hasattr(points, "__len__") else [points])]
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"InflatedGaussian points must be finite, got {points}")
        self.points = values
        self.mass_at = torch.tensor(values)                         # [D] or [1]: an input of a compiled step
        self.normal = Gaussian(min_scale=min_scale)

    def _parts(self, params):
        """(the Gaussian's params [..., 2 D], logit [..., D])."""
        return params.split([2 * params.shape[-1] // 3, params.shape[-1] // 3], dim=-1)

    def _split(self, params):
        """(mu, log sigma, logit) [..., D] each."""
        gaussian, logit = self._parts(params)
        mu, log_sigma = self.normal._split(gaussian)
        return mu, log_sigma, logit

    def log_prob(self, x, params, mask=None):
        """x [B, D], params [k, B, 3 D] -> [k, B]; mask [B, D]: the observed entries only."""
        mu, log_sigma, logit = self._split(params)
        x = _filled(x, mask, 0.0)
        continuous = _plus_normal(F.logsigmoid(-logit), x, mu, log_sigma)
        at_point = x == self.mass_at.to(x.device, x.dtype)
        return _observed_sum(torch.where(at_point, F.logsigmoid(logit), continuous), mask)

    def mean(self, params):
        gaussian, logit = self._parts(params)        # no scale: its floor's softplus is a pass over [k, B, D]
        mu, share = self.normal.mean(gaussian), torch.sigmoid(logit)
        return share * self.mass_at.to(mu.device, mu.dtype) + (1 - share) * mu

    def sample(self, params):
        mu, log_sigma, logit = self._split(params)
        normal = mu + torch.exp(log_sigma) * torch.randn_like(mu)
        return torch.where(torch.rand_like(mu) < torch.sigmoid(logit), self.mass_at.to(mu.device, mu.dtype), normal)

    def config(self):
        floor = {} if self.normal.min_scale is None else {"min_scale": self.normal.min_scale}
        return {"name": "inflated-gaussian", "points": self.points, **floor}

"""The likelihoods of mixed tables (iwae.core.tabular, docs/missing.md): categorical, ordinal,
Poisson, negative binomial, log-normal and inflated Gaussian columns, alone and inside a Columns.

Closed forms: scipy.stats (poisson, nbinom, lognorm, norm) and, for the categorical and ordinal
columns, exact enumeration of every category. Sampling: chi-square goodness of fit (or, for
the point mass's share, an exact binomial test) of 20,000 draws (fixed seeds) with p > 1e-3
per test; seven such tests, so the chance that correct samplers fail one for an unlucky seed
is below 0.7% (and, the seeds being fixed, the outcome never changes between runs). Sample
means: within 5 standard errors.
"""
import math

import numpy as np
import pytest
import torch
from scipy import stats

import iwae
from iwae.core.densities import Columns, Gaussian, StudentT
from iwae.core.missingness import SelfMasking
from iwae.core.tabular import (MAX_LOG_MEAN, Categorical, InflatedGaussian, LogNormal, NegativeBinomial, Ordinal,
                               Poisson)

NAN = float("nan")
P_MIN = 1e-3                 # chi-square tests: the false-alarm rate of each
DRAWS = 20000

pytestmark = pytest.mark.usefixtures("one_thread")

LIKELIHOODS = [Categorical(3), Ordinal(4), Poisson(), NegativeBinomial(), LogNormal(), InflatedGaussian(1.5)]
IDS = ["categorical", "ordinal", "poisson", "negative-binomial", "log-normal", "inflated-gaussian"]


def data(like, n=5, dim=4, seed=0):
    """Valid data for like: [n, dim]."""
    g = torch.Generator().manual_seed(seed)
    if isinstance(like, (Categorical, Ordinal)):
        return torch.randint(like.categories, (n, dim), generator=g).double()
    if isinstance(like, (Poisson, NegativeBinomial)):
        return torch.randint(0, 30, (n, dim), generator=g).double()
    x = torch.rand(n, dim, generator=g, dtype=torch.float64) * 5 + 1e-3
    if isinstance(like, InflatedGaussian):                    # a third of the entries at the point
        x = torch.where(torch.rand(n, dim, generator=g) < 1 / 3, torch.tensor(like.points, dtype=x.dtype), x)
    return x


def params_for(like, k=3, n=5, dim=4, seed=1, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(k, n, dim * like.params_per_dim, generator=g, dtype=torch.float64)


def owner(like, dim):
    """The data column each decoder output belongs to: [dim * params_per_dim]."""
    if isinstance(like, (Categorical, Ordinal)):              # column after column
        return torch.arange(dim).repeat_interleave(like.categories)
    return torch.arange(dim).repeat(like.params_per_dim)      # Gaussian's layout: block after block


def half_mask(n=5, dim=4, seed=2):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n, dim, generator=g) > 0.5
    mask[0] = False                                           # a row with nothing observed
    mask[1] = True                                            # and one with everything
    return mask


# ---- closed forms ----------------------------------------------------------------------------

def every_category(like, n, dim):
    """[C, n, dim]: x = c everywhere, for each category c."""
    return torch.arange(like.categories, dtype=torch.float64)[:, None, None].expand(-1, n, dim)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("like", [Categorical(2), Categorical(7), Ordinal(2), Ordinal(3), Ordinal(6)],
                         ids=["cat2", "cat7", "ord2", "ord3", "ord6"])
def test_categorical_and_ordinal_probabilities_sum_to_one_by_enumeration(like, dtype):
    n, dim = 6, 3
    for scale in (0.5, 3.0, 40.0):                            # extreme logits, gaps and locations too
        params = params_for(like, 2, n, dim, scale=scale).to(dtype)
        per_entry = torch.stack([torch.stack([like.log_prob(x[:, [d]], params[..., owner(like, dim) == d])
                                              for d in range(dim)], -1)
                                 for x in every_category(like, n, dim).to(dtype)])    # [C, k, n, dim]
        assert torch.isfinite(per_entry).all()
        total = torch.logsumexp(per_entry.double(), 0).exp()
        torch.testing.assert_close(total, torch.ones_like(total), atol=1e-6, rtol=0)
        torch.testing.assert_close(per_entry.movedim(0, -1), like.log_probs(params).to(per_entry.dtype))


def test_categorical_is_the_softmax_of_its_logits():
    like = Categorical(4)
    params = params_for(like)
    x = data(like)
    logits = params.unflatten(-1, (4, 4))                     # column after column
    expected = torch.log_softmax(logits, -1).gather(-1, x.long()[None, ..., None].expand(3, -1, -1, 1))
    torch.testing.assert_close(like.log_prob(x, params), expected.squeeze(-1).sum(-1))
    assert torch.equal(like.mean(params), logits.argmax(-1).double())


def test_ordinal_is_the_cumulative_logit_model():
    like = Ordinal(5)
    params = params_for(like)
    per_column = params.unflatten(-1, (4, 5))
    eta, raw = per_column[..., 0], per_column[..., 1:]
    t = torch.cumsum(torch.nn.functional.softplus(raw) + like.MIN_GAP, -1)
    assert bool((t.diff(dim=-1) > 0).all()) and torch.equal(like.thresholds(params), t)
    cdf = torch.sigmoid(t - eta[..., None])                   # P(x <= c), c = 0..C-2
    probs = torch.diff(cdf, dim=-1, prepend=torch.zeros_like(cdf[..., :1]), append=torch.ones_like(cdf[..., :1]))
    torch.testing.assert_close(like.log_probs(params).exp(), probs)
    # the median: the first category whose cumulative probability reaches 1/2
    median = (probs.cumsum(-1)[..., :-1] < 0.5).sum(-1).double()
    assert torch.equal(like.mean(params), median)


def test_poisson_matches_scipy():
    like = Poisson()
    x = torch.tensor([[0.0, 1, 7, 250], [3, 0, 40, 1e4]], dtype=torch.float64)
    params = torch.tensor([[-30.0, 0.0, 2.0, 5.5], [1.0, -2.0, 3.7, 9.2]], dtype=torch.float64)[None]
    rate = like.mean(params)
    torch.testing.assert_close(rate, params.exp(), rtol=3e-9, atol=0)      # the cap is far away
    expected = stats.poisson.logpmf(x.numpy(), rate[0].numpy()).sum(-1)
    np.testing.assert_allclose(like.log_prob(x, params)[0].numpy(), expected, rtol=1e-12)


def test_poisson_and_negative_binomial_rates_are_capped_smoothly():
    for like in (Poisson(), NegativeBinomial()):
        params = torch.tensor([[0.0, 10.0, 35.0, 1e4]], dtype=torch.float64).repeat(1, like.params_per_dim)
        params.requires_grad_(True)
        x = torch.tensor([[3.0, 0.0, 1e6, 5.0]], dtype=torch.float64)
        mean = like.mean(params)
        assert bool((mean <= math.exp(MAX_LOG_MEAN)).all()) and torch.isfinite(mean).all()
        torch.testing.assert_close(mean[0, :2], torch.tensor([1.0, math.exp(10)], dtype=torch.float64),
                                   rtol=3e-9, atol=0)
        log_p = like.log_prob(x, params)
        log_p.sum().backward()
        assert torch.isfinite(log_p).all() and torch.isfinite(params.grad).all()
        assert bool((params.grad[0, :3] != 0).all())          # never a dead gradient under the cap
        assert torch.isfinite(like.sample(params.detach())).all()


def test_negative_binomial_matches_scipy_and_torch():
    like = NegativeBinomial()
    x = data(like, 5, 4)
    params = params_for(like)
    r, logits = like.total_count_and_logits(params)
    eta = params.chunk(2, -1)[0]
    torch.testing.assert_close(like.mean(params), eta.exp())                  # log mean = eta
    torch.testing.assert_close(r * logits.exp(), eta.exp())                   # torch's mean r e^logits
    reference = torch.distributions.NegativeBinomial(r, logits=logits)
    torch.testing.assert_close(like.log_prob(x, params), reference.log_prob(x).sum(-1))
    p_scipy = torch.sigmoid(-logits)                                          # scipy's success is torch's failure
    expected = stats.nbinom.logpmf(x.numpy(), r.numpy(), p_scipy.numpy()).sum(-1)
    np.testing.assert_allclose(like.log_prob(x, params).numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(like.mean(params).numpy(), stats.nbinom.mean(r.numpy(), p_scipy.numpy()), rtol=1e-10)
    np.testing.assert_allclose(like.variance(params).numpy(), stats.nbinom.var(r.numpy(), p_scipy.numpy()),
                               rtol=1e-10)
    assert bool((r >= like.MIN_TOTAL_COUNT).all())


def test_log_normal_matches_scipy():
    like = LogNormal()
    x = data(like)
    params = params_for(like, scale=1.0)
    mu, log_sigma = params.chunk(2, -1)
    sigma, scale = log_sigma.exp().numpy(), mu.exp().numpy()
    expected = stats.lognorm.logpdf(x.numpy(), s=sigma, scale=scale).sum(-1)
    np.testing.assert_allclose(like.log_prob(x, params).numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(like.mean(params).numpy(), stats.lognorm.mean(s=sigma, scale=scale), rtol=1e-12)
    np.testing.assert_allclose(like.median(params).numpy(), stats.lognorm.median(s=sigma, scale=scale), rtol=1e-12)
    # the Jacobian: log p(x) = log N(log x; mu, sigma) - log x
    gaussian = Gaussian().log_prob(x.log(), params)
    torch.testing.assert_close(like.log_prob(x, params), gaussian - x.log().sum(-1))


def test_inflated_gaussian_is_a_point_mass_beside_a_floored_normal():
    points, floors = [0.0, -1.5, 2.0], [0.0, 0.3, 1e-3]
    like = InflatedGaussian(points, min_scale=floors)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    x[:3] = torch.tensor(points, dtype=torch.float64)         # rows 0-2 at the points
    params = params_for(like, n=6, dim=3, scale=1.5)
    mu, log_s, logit = params.chunk(3, -1)
    sigma = np.sqrt(log_s.exp().numpy() ** 2 + np.square(floors))
    share = torch.sigmoid(logit).numpy()
    at = x.numpy() == np.array(points)
    terms = np.where(at, np.log(share), np.log1p(-share) + stats.norm.logpdf(x.numpy(), mu.numpy(), sigma))
    np.testing.assert_allclose(like.log_prob(x, params).numpy(), terms.sum(-1), rtol=1e-12)
    assert at[:3].all() and not at[3:].any()
    np.testing.assert_allclose(like.mean(params).numpy(), share * np.array(points) + (1 - share) * mu.numpy(),
                               rtol=1e-12, atol=1e-15)
    assert like.config() == {"name": "inflated-gaussian", "points": points, "min_scale": floors}
    with pytest.raises(ValueError, match=r"InflatedGaussian points must be finite, got \[0.0, nan\]"):
        InflatedGaussian([0.0, NAN])


# ---- samples ---------------------------------------------------------------------------------

def chi_square_p(counts, probs):
    """p-value of observed counts [K] against probabilities [K] (summing to 1)."""
    expected = probs / probs.sum() * counts.sum()
    return stats.chisquare(counts, expected).pvalue


@pytest.mark.parametrize("like", [Categorical(5), Ordinal(5)], ids=["categorical", "ordinal"])
def test_categories_are_drawn_with_their_probabilities(like):
    torch.manual_seed(0)
    params = torch.randn(1, 1, 5, dtype=torch.float64)
    draws = like.sample(params.expand(DRAWS, 1, 5))[:, 0, 0]
    assert bool((draws == draws.round()).all())               # categories, never averages
    counts = torch.bincount(draws.long(), minlength=5).numpy()
    assert chi_square_p(counts, like.log_probs(params)[0, 0, 0].exp().numpy()) > P_MIN


def count_frequencies(draws, pmf, top):
    """(counts of 0..top-1 and of >= top, probabilities of the same bins)."""
    counts = np.bincount(np.minimum(draws, top), minlength=top + 1)
    probs = np.append(pmf[:top], 1 - pmf[:top].sum())
    return counts, probs


def test_counts_are_drawn_with_their_probabilities():
    torch.manual_seed(1)
    poisson, nb = Poisson(), NegativeBinomial()
    rate_param = torch.tensor([[1.5]], dtype=torch.float64)
    draws = poisson.sample(rate_param.expand(DRAWS, 1)).long().numpy()[:, 0]
    pmf = stats.poisson.pmf(np.arange(12), math.exp(1.5))
    assert chi_square_p(*count_frequencies(draws, pmf, 12)) > P_MIN
    nb_params = torch.tensor([[1.5, 0.3]], dtype=torch.float64)               # mu 4.5, r 0.85
    r, logits = nb.total_count_and_logits(nb_params)
    draws = nb.sample(nb_params.expand(DRAWS, 2)).long().numpy()[:, 0]
    pmf = stats.nbinom.pmf(np.arange(20), r.item(), torch.sigmoid(-logits).item())
    assert chi_square_p(*count_frequencies(draws, pmf, 20)) > P_MIN
    se = math.sqrt(nb.variance(nb_params).item() / DRAWS)
    assert abs(draws.mean() - nb.mean(nb_params).item()) < 5 * se


def test_positive_values_are_drawn_log_normally():
    torch.manual_seed(2)
    like = LogNormal()
    params = torch.tensor([[0.4, -0.5]], dtype=torch.float64)                 # mu 0.4, sigma 0.61
    draws = like.sample(params.expand(DRAWS, 2))[:, 0].numpy()
    assert bool((draws > 0).all())
    edges = stats.lognorm.ppf(np.linspace(0, 1, 11), s=math.exp(-0.5), scale=math.exp(0.4))
    counts = np.histogram(draws, edges)[0]
    assert chi_square_p(counts, np.full(10, 0.1)) > P_MIN
    se = math.sqrt(stats.lognorm.var(s=math.exp(-0.5), scale=math.exp(0.4)) / DRAWS)
    assert abs(draws.mean() - like.mean(params).item()) < 5 * se


def test_inflated_gaussian_draws_the_point_with_its_share_else_a_normal():
    torch.manual_seed(3)
    like = InflatedGaussian(-0.5)
    params = torch.tensor([[1.0, math.log(0.7), 0.4]], dtype=torch.float64)  # mu 1, sigma 0.7, pi sigmoid(0.4)
    draws = like.sample(params.expand(DRAWS, 3))[:, 0].numpy()
    at = draws == -0.5
    share = 1 / (1 + math.exp(-0.4))
    assert stats.binomtest(int(at.sum()), DRAWS, share).pvalue > P_MIN
    edges = stats.norm.ppf(np.linspace(0, 1, 11), 1.0, 0.7)
    assert chi_square_p(np.histogram(draws[~at], edges)[0], np.full(10, 0.1)) > P_MIN
    se = math.sqrt((share * 0.25 + (1 - share) * 0.49 + share * (1 - share) * 1.5 ** 2) / DRAWS)
    assert abs(draws.mean() - like.mean(params).item()) < 5 * se


def test_log_normal_draws_are_reparameterised():
    like = LogNormal()
    params = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    like.sample(params).sum().backward()
    assert bool((params.grad != 0).all())


# ---- masks -----------------------------------------------------------------------------------

def with_junk(x, mask, junk):
    out = x.clone()
    out[~mask] = junk
    return out


@pytest.mark.parametrize("like", LIKELIHOODS, ids=IDS)
def test_missing_entries_contribute_exactly_zero_and_no_gradient(like):
    x, mask = data(like), half_mask()
    params = params_for(like)
    everything = torch.ones_like(mask)
    assert torch.equal(like.log_prob(x, params, everything), like.log_prob(x, params))
    # per entry, one column at a time: the masked sum is the sum of the observed entries' terms
    columns = owner(like, 4)
    per_entry = torch.stack([like.log_prob(x[:, [d]], params[..., columns == d]) for d in range(4)], -1)
    torch.testing.assert_close(like.log_prob(x, params, mask), (per_entry * mask).sum(-1))
    values, grads = [], []
    for junk in (NAN, 7.5, -1e6, -3.0, 0.0):
        p = params.clone().requires_grad_(True)
        value = like.log_prob(with_junk(x, mask, junk), p, mask)
        value.sum().backward()
        assert torch.isfinite(value).all() and torch.isfinite(p.grad).all()
        missing_outputs = ~mask[:, columns]                   # [B, P]: the outputs of missing entries
        assert bool((p.grad[:, missing_outputs] == 0).all())
        assert torch.equal(value[:, 0], torch.zeros_like(value[:, 0]))    # a row with nothing observed
        values.append(value)
        grads.append(p.grad)
    assert all(torch.equal(v, values[0]) for v in values) and all(torch.equal(g, grads[0]) for g in grads)


# ---- Columns ---------------------------------------------------------------------------------

def mixed():
    """Columns of every kind: 8 data columns, 2 + 3 + 3 + 5 + 4 + 1 + 2 + 2 = 22 outputs."""
    return Columns([(Gaussian(), [0]), (Categorical(3), [1]), (Categorical(5), [6]),
                    (Ordinal(4), [2]), (Poisson(), [3]), (NegativeBinomial(), [4]),
                    (LogNormal(), [5]), (StudentT(), [7])])


def mixed_data(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    x[:, 1] = torch.randint(3, (n,), generator=g)
    x[:, 6] = torch.randint(5, (n,), generator=g)
    x[:, 2] = torch.randint(4, (n,), generator=g)
    x[:, [3, 4]] = torch.randint(0, 9, (n, 2), generator=g).float()
    x[:, 5] = torch.rand(n, generator=g) + 0.1
    return x


def test_columns_with_categorical_parts_is_the_sum_of_its_parts():
    like = mixed()
    assert like.n_params == 2 + 3 + 5 + 4 + 1 + 2 + 2 + 3
    assert like.statistic_sizes == [1, 3, 5, 4, 1, 1, 1, 1]
    torch.manual_seed(0)
    params = torch.randn(4, 6, like.n_params)
    x, mask = mixed_data(), half_mask(6, 8)
    blocks = params.split(like.sizes, -1)
    expected = sum(part.log_prob(x[:, cols], block, mask[:, cols])
                   for (part, cols), block in zip(like.parts, blocks))
    torch.testing.assert_close(like.log_prob(x, params, mask), expected)
    assert torch.equal(like.log_prob(x, params, torch.ones_like(mask)), like.log_prob(x, params))
    mean, sample = like.mean(params), like.sample(params)
    assert mean.shape == sample.shape == (4, 6, 8)
    for (part, cols), block in zip(like.parts, blocks):
        assert torch.equal(mean[..., cols], part.mean(block))
    for c, categories in ((1, 3), (6, 5), (2, 4)):
        assert bool((sample[..., c] == sample[..., c].round()).all())
        assert 0 <= sample[..., c].min() and sample[..., c].max() < categories
    # a single draw's statistics give back its means (the mode, the median: the same point)
    assert torch.equal(like.point(like.statistics(params)), mean)


def test_point_reads_the_mixture_not_an_average_of_points():
    """Two equally weighted draws, categories [0.45, 0.55, 0] and [0.45, 0, 0.55]: each one's
    mode is 1 or 2 (average 1.5), the mixture's mode is 0 ([0.45, 0.275, 0.275])."""
    like = Columns([(Categorical(3), [0]), (Ordinal(3), [1])])
    logits = torch.tensor([[0.45, 0.55, 1e-9], [0.45, 1e-9, 0.55]]).log()
    cat_stats = like.parts[0][0].statistics(logits)
    mixture = cat_stats.mean(0)
    torch.testing.assert_close(mixture, torch.tensor([0.45, 0.275, 0.275]))
    assert like.parts[0][0].point(mixture).item() == 0 and like.parts[0][0].mean(logits).mean().item() == 1.5
    # ordinal: the mixture's median
    ordinal = like.parts[1][0]
    assert ordinal.point(torch.tensor([0.3, 0.1, 0.6])).item() == 2
    assert ordinal.point(torch.tensor([0.3, 0.3, 0.4])).item() == 1
    assert ordinal.point(torch.tensor([0.6, 0.1, 0.3])).item() == 0


def test_constructor_arguments_are_checked():
    for bad in (1, 0, 2.0, "3", True):
        with pytest.raises(ValueError, match="needs an int number of categories >= 2"):
            Categorical(bad)
        with pytest.raises(ValueError, match="needs an int number of categories >= 2"):
            Ordinal(bad)
    assert Categorical(4).config() == {"name": "categorical", "categories": 4}
    assert mixed().config()["parts"][1] == {"name": "categorical", "categories": 3, "columns": [1]}


def test_a_missingness_model_refuses_discrete_columns():
    net = iwae.paper_model(1, input_dim=3, likelihood=Gaussian())
    for like in (Categorical(3), Ordinal(3), Poisson(), NegativeBinomial(), InflatedGaussian(0.0)):
        columns = Columns([(Gaussian(), [0, 1]), (like, [2])])
        with pytest.raises(ValueError, match=rf"{type(like).__name__} likelihood \(columns 2\) cannot give"):
            iwae.Model(list(net.encoder), net.decoder, columns, missingness=SelfMasking(3))
    iwae.Model(list(net.encoder), net.decoder, Columns([(Gaussian(), [0, 1]), (LogNormal(), [2])]),
               missingness=SelfMasking(3))


# ---- a model -----------------------------------------------------------------------------------

def mixed_model(**options):
    like = mixed()
    net = iwae.paper_model(1, input_dim=8, likelihood=Gaussian())
    return iwae.Model(list(net.encoder), iwae.mlp([50, 200, 200], like.n_params), like, **options)


def test_a_mixed_model_trains_on_nan_coded_data():
    from iwae.runtime.optim import make_optimizer
    from iwae.training.step import make_step
    torch.manual_seed(0)
    model = mixed_model(missing=True)
    x = with_junk(mixed_data(16), half_mask(16, 8), NAN)
    step = make_step(model, make_optimizer(model.parameters(), 1e-3), 4, "iwae", "dreg", compile="off")
    before = [p.detach().clone() for p in model.parameters()]
    losses = [step(x).item() for _ in range(5)]
    assert all(math.isfinite(v) for v in losses)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert all(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))


def test_mixed_log_weights_on_meta():
    meta = torch.device("meta")
    model = mixed_model(missing=True).to(meta)
    x = torch.empty(3, 8, device=meta)
    log_w = model.log_weights(x, 4)
    assert log_w.device == meta and log_w.shape == (4, 3)
    mask = torch.empty(3, 8, dtype=torch.bool, device=meta)
    assert model.log_weights(x, 4, mask=mask).shape == (4, 3)
    iwae.loss(model, x, 4, "iwae", "dreg").backward()
    assert all(p.grad.device == meta for p in model.parameters())
    params = model.decode(model.sample_q(x, 2)[0])
    for out in (model.likelihood.mean(params), model.likelihood.sample(params),
                model.likelihood.point(model.likelihood.statistics(params))):
        assert out.device == meta and out.shape == (2, 3, 8)


def inflated_model():
    """A model of 3 columns: a Gaussian one and two with point masses (at 0 and -1)."""
    like = Columns([(Gaussian(), [0]), (InflatedGaussian([0.0, -1.0], min_scale=[0.1, 0.0]), [1, 2])])
    net = iwae.paper_model(1, input_dim=3, likelihood=Gaussian())
    return iwae.Model(list(net.encoder), iwae.mlp([50, 64], like.n_params), like, missing=True)


def test_inflated_log_weights_on_meta():
    meta = torch.device("meta")
    model = inflated_model().to(meta)
    x = torch.empty(4, 3, device=meta)
    mask = torch.empty(4, 3, dtype=torch.bool, device=meta)
    assert model.log_weights(x, 5, mask=mask).shape == (5, 4)
    iwae.loss(model, x, 5, "iwae", "dreg").backward()
    assert all(p.grad.device == meta for p in model.parameters())
    params = model.decode(model.sample_q(x, 2)[0])
    for out in (model.likelihood.mean(params), model.likelihood.sample(params)):
        assert out.device == meta and out.shape == (2, 4, 3)


def mixed_case():
    """(the mixed model, NaN-coded data), float64."""
    return mixed_model(missing=True).double(), with_junk(mixed_data(6), half_mask(6, 8), NAN).double()


def inflated_case():
    """(the inflated model, NaN-coded data with entries at both points), float64."""
    x = torch.randn(6, 3, dtype=torch.float64)
    x[:3, 1], x[2:, 2] = 0.0, -1.0
    return inflated_model().double(), with_junk(x, half_mask(6, 3), NAN)


@pytest.mark.parametrize("case", [mixed_case, inflated_case], ids=["mixed", "inflated"])
def test_log_weights_compile(case):
    """torch.compile of log_weights (forward and backward, float64) gives eager's values (the
    inflated Gaussian's equality test with its points included)."""
    torch.manual_seed(0)
    model, x = case()
    zs = [z.detach() for z in model.sample_q(x, 5)]

    def loss(x, zs):
        return model.log_weights(x, 5, zs=zs).logsumexp(0).sum()

    eager = loss(x, zs)
    eager_grads = torch.autograd.grad(eager, list(model.parameters()))
    compiled = torch.compile(loss, fullgraph=True)(x, zs)
    grads = torch.autograd.grad(compiled, list(model.parameters()))
    torch.testing.assert_close(compiled, eager)
    for a, b in zip(grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# ---- imputation --------------------------------------------------------------------------------

def weighted_draws(model, x, mask, draws, seed):
    """(softmax weights [L, B, 1], likelihood parameters) as impute draws them under seed."""
    torch.manual_seed(seed)
    zs = model.sample_q(x, draws, mask)
    log_w = model.log_weights(x, draws, mask=mask, zs=zs)
    return torch.softmax(log_w, 0).unsqueeze(-1), model.decode(zs[0])


def test_single_imputation_of_categories_is_the_mixtures_mode():
    from iwae.evaluation.imputation import impute, multiple_impute
    torch.manual_seed(0)
    model = mixed_model(missing=True)
    x, mask = mixed_data(10), half_mask(10, 8)
    x_nan = with_junk(x, mask, NAN)
    torch.manual_seed(4)
    filled = impute(model, x_nan, draws=200)
    w, params = weighted_draws(model, x_nan, mask, 200, 4)
    like = model.likelihood
    expected = like.point((w * like.statistics(params)).sum(0))
    assert torch.equal(filled[~mask], expected[~mask]) and torch.equal(filled[mask], x[mask])
    draws = multiple_impute(model, x_nan, 7, draws=200)
    for c, categories in ((1, 3), (6, 5), (2, 4)):           # categories, never averages of them
        for values in (filled[:, c], draws[..., c]):
            assert bool((values == values.round()).all()) and 0 <= values.min() and values.max() < categories
    assert bool((filled[:, 5] > 0).all()) and bool((draws[..., [3, 4]] >= 0).all())


def test_imputation_without_categorical_parts_is_the_weighted_mean_op_for_op():
    from iwae.core.densities import Bernoulli
    from iwae.evaluation.imputation import impute
    like = Columns([(Bernoulli(), [0, 3]), (Gaussian(), [1, 2, 4])])
    net = iwae.paper_model(1, input_dim=5, likelihood=Gaussian())
    torch.manual_seed(0)
    model = iwae.Model(list(net.encoder), iwae.mlp([50, 200, 200], like.n_params), like, missing=True)
    x = torch.rand(6, 5)
    x[:, [0, 3]] = x[:, [0, 3]].round()
    mask = half_mask(6, 5)
    torch.manual_seed(4)
    filled = impute(model, with_junk(x, mask, NAN), draws=50)
    w, params = weighted_draws(model, with_junk(x, mask, NAN), mask, 50, 4)
    assert torch.equal(filled[~mask], (w * like.mean(params)).sum(0)[~mask])


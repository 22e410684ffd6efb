"""Missing data: log weights over the observed entries, the likelihoods' masked log densities,
imputation, and training with a mask (docs/missing.md).

The closed-form tests use probabilistic PCA as an iwae.Model, x = W z + b + s eps with
z ~ N(0, I_d): x ~ N(b, C), C = W W^T + s^2 I, so log p(x_o), E[x_m | x_o] and
Cov[x_m | x_o] are exact Gaussian formulas.
"""
import math

import pytest
import torch
import torch.nn as nn

import iwae
from iwae.core.densities import Bernoulli, Columns, Gaussian, StudentT
from iwae.core.model import GaussianLayer
from iwae.evaluation.imputation import impute, multiple_impute
from iwae.evaluation.units import effective_sample_size
from iwae.runtime.optim import make_optimizer
from iwae.training.step import make_step

NAN = float("nan")


def small_model(likelihood, layers=1, dim=12, **options):
    model = iwae.paper_model(layers, input_dim=dim, likelihood=likelihood)
    if not options:
        return model
    first = model.encoder[0].net[0]
    if options.get("mask_input"):
        model.encoder[0].net[0] = nn.Linear(2 * dim, first.out_features)
    return iwae.Model(list(model.encoder), model.decoder, likelihood, list(model.decoder_layers), **options)


def data_for(likelihood, n=6, dim=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, dim, generator=g)
    return (x > 0.5).float() if isinstance(likelihood, Bernoulli) else x


def half_mask(n, dim, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, dim, generator=g) > 0.5


LIKELIHOODS = [Bernoulli(), Gaussian(), Gaussian(0.3), StudentT(), Gaussian(min_scale=0.2)]
IDS = ["bernoulli", "gaussian", "gaussian-fixed", "student-t", "gaussian-floor"]


@pytest.mark.parametrize("likelihood", LIKELIHOODS, ids=IDS)
@pytest.mark.parametrize("layers", [1, 2])
def test_an_all_true_mask_gives_todays_log_weights_bitwise(likelihood, layers):
    torch.manual_seed(0)
    model = small_model(likelihood, layers)
    x = data_for(likelihood)
    everything = torch.ones_like(x, dtype=torch.bool)
    for options in ({}, {"stop_q": True}, {"stop_z": True}):
        torch.manual_seed(3)
        today = model.log_weights(x, 5, **options)
        torch.manual_seed(3)
        assert torch.equal(model.log_weights(x, 5, mask=everything, **options), today)
    zs = model.sample_q(x, 4)
    assert torch.equal(model.log_weights(x, 4, zs=zs, stop_q=True),
                       model.log_weights(x, 4, zs=zs, stop_q=True, mask=everything))


def test_a_gaussian_floor_is_the_scale_sqrt_of_s2_plus_floor2():
    g = torch.Generator().manual_seed(0)
    x, params = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(3, 6, 8, generator=g, dtype=torch.float64)
    floor = [0.1, 0.5, 0.0, 2.0]
    mu, log_s = params.chunk(2, -1)
    sigma = (torch.exp(2 * log_s) + torch.tensor(floor, dtype=torch.float64) ** 2).sqrt()
    expected = torch.distributions.Normal(mu, sigma).log_prob(x).sum(-1)
    torch.testing.assert_close(Gaussian(min_scale=floor).log_prob(x, params), expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(Gaussian(min_scale=[0.0] * 4).log_prob(x, params), Gaussian().log_prob(x, params))
    assert Gaussian(min_scale=floor).config() == {"name": "gaussian", "scale": None, "min_scale": floor}


@pytest.mark.parametrize("kwargs", [dict(min_scale=-0.1), dict(min_scale=[0.1, -1.0]), dict(scale=1.0, min_scale=0.1)])
def test_a_bad_gaussian_floor_is_refused(kwargs):
    with pytest.raises(ValueError, match="^Gaussian min_scale must be >= 0 and with a learned scale, got "):
        Gaussian(**kwargs)


@pytest.mark.parametrize("likelihood", LIKELIHOODS[:2], ids=IDS[:2])
def test_a_nan_reading_model_without_nan_gives_todays_log_weights_bitwise(likelihood):
    torch.manual_seed(0)
    model = small_model(likelihood)
    reader = iwae.Model(list(model.encoder), model.decoder, likelihood, missing=True)
    x = data_for(likelihood)
    torch.manual_seed(3)
    today = model.log_weights(x, 5)
    torch.manual_seed(3)
    assert torch.equal(reader.log_weights(x, 5), today)


def with_junk(x, mask, junk):
    out = x.clone()
    out[~mask] = junk
    return out


@pytest.mark.parametrize("likelihood", LIKELIHOODS, ids=IDS)
@pytest.mark.parametrize("mask_input", [False, True])
def test_values_at_missing_positions_change_neither_bound_gradients_nor_imputations(likelihood, mask_input):
    torch.manual_seed(0)
    model = small_model(likelihood, missing=True, mask_input=mask_input)
    x = data_for(likelihood)
    mask = half_mask(*x.shape)
    results = []
    for junk in (NAN, 7.5, -1e6):
        xj = with_junk(x, mask, junk)
        torch.manual_seed(5)
        explicit = model.log_weights(xj, 6, mask=mask)
        torch.manual_seed(5)
        carried = model.log_weights(with_junk(x, mask, NAN), 6)   # NaN-coded: the mask rides with x
        grads = []
        for estimator in ("standard", "stl", "dreg"):
            for loss in (lambda: _masked_loss(model, xj, mask, estimator),          # mask told
                         lambda: iwae.loss(model, with_junk(x, mask, NAN), 6, "iwae", estimator)):  # carried
                model.zero_grad()
                torch.manual_seed(5)
                loss().backward()
                grads.append([p.grad.clone() for p in model.parameters()])
            assert all(torch.equal(a, b) for a, b in zip(grads[-1], grads[-2]))
        torch.manual_seed(5)
        single = impute(model, xj, mask, draws=50)
        torch.manual_seed(5)
        multiple = multiple_impute(model, xj, 3, mask, draws=50)
        assert torch.equal(explicit, carried) and torch.isfinite(explicit).all()
        assert torch.equal(single[mask], x[mask]) and torch.equal(multiple[:, mask], x[mask].expand(3, -1))
        results.append((explicit, grads, single, multiple))
    first = results[0]
    for other in results[1:]:
        assert torch.equal(other[0], first[0])
        assert all(torch.equal(a, b) for ga, gb in zip(other[1], first[1]) for a, b in zip(ga, gb))
        assert torch.equal(other[2], first[2]) and torch.equal(other[3], first[3])


def _masked_loss(model, x, mask, estimator):
    """iwae.loss on x whose missing entries hold junk, through a model that is told the mask."""
    class Told(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def log_weights(self, x, k, **options):
            return self.inner.log_weights(x, k, mask=mask, **options)

        def sample_q(self, x, k):
            return self.inner.sample_q(x, k, mask)

        def encoder_parameters(self):
            return self.inner.encoder_parameters()

        def decoder_parameters(self):
            return self.inner.decoder_parameters()
    return iwae.loss(Told(), x, 6, "iwae", estimator)


def test_student_t_matches_torch_distributions_and_masks():
    torch.manual_seed(0)
    params = torch.randn(4, 3, 15)                                # [k, B, 3 D], D = 5
    x = torch.randn(3, 5)
    like = StudentT()
    mu, a, b = params.chunk(3, -1)
    reference = torch.distributions.StudentT(nn.functional.softplus(b) + 3, mu, nn.functional.softplus(a) + 1e-3)
    expected = reference.log_prob(x).sum(-1)
    torch.testing.assert_close(like.log_prob(x, params), expected)
    mask = half_mask(3, 5)
    torch.testing.assert_close(like.log_prob(x, params, mask), (reference.log_prob(x) * mask).sum(-1))
    assert bool((nn.functional.softplus(b) + 3 >= 3).all())
    draws = like.sample(params[:1].expand(40000, 3, 15))
    torch.testing.assert_close(draws.mean(0), like.mean(params[0]), atol=0.08, rtol=0)
    torch.testing.assert_close(draws.var(0), like.variance(params[0]), rtol=0.35, atol=0.01)


def test_columns_is_the_sum_of_its_parts_and_reassembles_the_means():
    torch.manual_seed(0)
    like = Columns([(Bernoulli(), [0, 3]), (Gaussian(), [1, 2, 4])])
    assert like.n_params == 2 + 6
    params = torch.randn(2, 3, 8)
    x = torch.rand(3, 5)
    x[:, [0, 3]] = x[:, [0, 3]].round()
    mask = half_mask(3, 5)
    expected = (Bernoulli().log_prob(x[:, [0, 3]], params[..., :2], mask[:, [0, 3]])
                + Gaussian().log_prob(x[:, [1, 2, 4]], params[..., 2:], mask[:, [1, 2, 4]]))
    torch.testing.assert_close(like.log_prob(x, params, mask), expected)
    mean = like.mean(params)
    assert torch.equal(mean[..., [0, 3]], torch.sigmoid(params[..., :2]))
    assert torch.equal(mean[..., [1, 2, 4]], params[..., 2:5])
    with pytest.raises(ValueError, match="every column"):
        Columns([(Bernoulli(), [0, 2])])


@pytest.mark.parametrize("estimator,bound", [("standard", "iwae"), ("stl", "iwae"), ("dreg", "iwae"),
                                             ("standard", "miwae"), ("dreg", "piwae"), ("rws", "iwae")])
def test_every_estimator_trains_with_a_mask(estimator, bound):
    torch.manual_seed(0)
    model = small_model(Gaussian(), 2, missing=True)
    x = with_junk(data_for(Gaussian(), n=16), half_mask(16, 12), NAN)
    before = [p.detach().clone() for p in model.parameters()]
    opt = make_optimizer(model.parameters(), 1e-2)
    step = make_step(model, opt, 4, bound, estimator, m=2 if bound in ("miwae", "piwae") else None, compile="off")
    losses = [step(x).item() for _ in range(5)]
    assert all(math.isfinite(v) for v in losses)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))


def test_fit_trains_on_nan_coded_data_and_refuses_infinity(tmp_path):
    torch.manual_seed(0)
    model = small_model(Gaussian(), missing=True)
    x = with_junk(data_for(Gaussian(), n=40), half_mask(40, 12), NAN)
    iwae.fit(model, x, out=tmp_path / "run", k=3, epochs=2, batch_size=10, eval_data=x[:10], quiet=True,
             compile="off")
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 2 and "NaN" not in metrics[-1]
    bad = x.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"^data holds infinite values \(missing entries are NaN\)$"):
        iwae.fit(small_model(Gaussian(), missing=True), bad, out=tmp_path / "bad", k=3, epochs=1, quiet=True)
    with pytest.raises(ValueError, match=r"^data holds NaN or infinite values$"):
        iwae.fit(small_model(Gaussian()), x, out=tmp_path / "plain", k=3, epochs=1, quiet=True)


# ---- probabilistic PCA, in closed form -------------------------------------------------------

D, LATENT, NOISE = 6, 2, 0.5
OBSERVED = torch.tensor([True, False, True, False, True, False])     # half the entries missing


def ppca(q_widen=1.5):
    """(model, W, b): a linear-Gaussian iwae.Model whose q(z | x_o) has the exact posterior's
    mean for the mask OBSERVED and marginal standard deviations q_widen times the posterior's."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(D, LATENT, generator=g, dtype=torch.float64)
    b = torch.randn(D, generator=g, dtype=torch.float64)
    decoder = nn.Linear(LATENT, D).double()
    encoder = nn.Linear(D, 2 * LATENT).double()
    wo = w[OBSERVED]
    precision = torch.eye(LATENT, dtype=torch.float64) + wo.T @ wo / NOISE ** 2
    cov = torch.linalg.inv(precision)
    gain = cov @ wo.T / NOISE ** 2                                    # [d, |o|]
    with torch.no_grad():
        decoder.weight.copy_(w)
        decoder.bias.copy_(b)
        encoder.weight.zero_()
        encoder.weight[:LATENT, OBSERVED] = gain
        encoder.bias[:LATENT] = -gain @ b[OBSERVED]
        encoder.bias[LATENT:] = torch.log(q_widen * cov.diagonal().sqrt())
    model = iwae.Model(GaussianLayer(encoder), decoder, Gaussian(NOISE), missing=True)
    return model, w, b


def ppca_data(model, w, b, n):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(n, LATENT, generator=g, dtype=torch.float64)
    x = z @ w.T + b + NOISE * torch.randn(n, D, generator=g, dtype=torch.float64)
    masked = x.clone()
    masked[:, ~OBSERVED] = NAN
    return x, masked


def exact(w, b, x):
    """(log p(x_o) [N], E[x_m | x_o] [N, |m|], Cov[x_m | x_o] [|m|, |m|])."""
    c = w @ w.T + NOISE ** 2 * torch.eye(D, dtype=torch.float64)
    o, m = OBSERVED, ~OBSERVED
    coo, cmo = c[o][:, o], c[m][:, o]
    log_p = torch.distributions.MultivariateNormal(b[o], coo).log_prob(x[:, o])
    gain = cmo @ torch.linalg.inv(coo)
    mean = b[m] + (x[:, o] - b[o]) @ gain.T
    return log_p, mean, c[m][:, m] - gain @ cmo.T


def test_single_imputation_converges_to_the_exact_conditional_mean():
    model, w, b = ppca()
    x, masked = ppca_data(model, w, b, 8)
    _, mean, cov = exact(w, b, x)
    draws = 20000
    torch.manual_seed(0)
    ess = effective_sample_size(model.log_weights(masked, draws)).min().item()
    assert ess > draws / 4                  # the stated standard error below assumes it
    torch.manual_seed(1)
    got = impute(model, masked, draws=draws)
    assert torch.equal(got[:, OBSERVED], x[:, OBSERVED])
    # the SNIS error of E[x_m | x_o] has sd sqrt(Var[E[x_m | z] | x_o] / ESS) <= sqrt(diag(cov) / ESS)
    se = (cov.diagonal() / (draws / 4)).sqrt()
    assert bool(((got[:, ~OBSERVED] - mean).abs() < 5 * se).all())
    torch.manual_seed(1)
    rough = impute(model, masked, draws=5)
    assert (rough[:, ~OBSERVED] - mean).abs().mean() > (got[:, ~OBSERVED] - mean).abs().mean()


def test_multiple_imputations_have_the_exact_conditional_covariance():
    model, w, b = ppca()
    x, masked = ppca_data(model, w, b, 1)
    _, mean, cov = exact(w, b, x)
    torch.manual_seed(2)
    draws = multiple_impute(model, masked, 20000, draws=50000)[:, 0]        # [m, D]
    assert torch.equal(draws[:, OBSERVED], x[:, OBSERVED].expand(20000, -1))
    missing = draws[:, ~OBSERVED]
    n = 50000 / 4 / 2      # resampling: at most ESS (> L / 4) distinct pairs, halved for duplicates
    se_cov = ((cov.square() + cov.diagonal()[:, None] * cov.diagonal()[None]) / n).sqrt()
    assert bool(((torch.cov(missing.T) - cov).abs() < 5 * se_cov).all())
    assert bool(((missing.mean(0) - mean[0]).abs() < 5 * (cov.diagonal() / n).sqrt()).all())


def test_an_imputations_bound_is_l_k_of_its_own_draws():
    model, w, b = ppca(q_widen=2.5)
    x, masked = ppca_data(model, w, b, 300)
    log_p, _, _ = exact(w, b, x)
    torch.manual_seed(3)
    filled, bound = impute(model, masked, draws=1000, bound=True)
    torch.manual_seed(3)
    assert torch.equal(filled, impute(model, masked, draws=1000))        # the same draws, the same fill
    assert bound.dtype == torch.float64 and bound.shape == (300,)
    torch.manual_seed(4)
    diff = bound - iwae.log_likelihood(model, masked, 1000, compile="off")   # two L_1000 on other draws
    assert abs(diff.mean().item()) < 4 * diff.std().item() / math.sqrt(300)  # mean 0: false alarm 6e-5
    gap = bound - log_p
    assert -0.5 < gap.mean().item() < 3 * gap.std().item() / math.sqrt(300)  # below log p(x_o), near it


def test_the_masked_bound_is_below_log_p_x_o_and_approaches_it_as_k_grows():
    model, w, b = ppca(q_widen=2.5)
    x, masked = ppca_data(model, w, b, 300)
    log_p, _, _ = exact(w, b, x)
    gaps = []
    for k in (1, 10, 100, 1000):
        torch.manual_seed(k)
        bound = iwae.log_likelihood(model, masked, k, compile="off")
        gap = (bound - log_p).mean().item()
        se = (bound - log_p).std().item() / math.sqrt(len(log_p))
        assert gap < 3 * se                      # below log p(x_o) in mean (within noise)
        gaps.append(gap)
    assert gaps[0] < gaps[1] < gaps[2] < gaps[3] < 0
    assert abs(gaps[3]) < abs(gaps[0]) / 20

"""Gradient estimators: values, exact gradient identities, unbiasedness and variance."""
import numpy as np
import pytest
import torch
from torch.distributions import Normal

import iwae


def grads(params):
    return torch.cat([p.grad.flatten() for p in params])


def estimator_grads(model, x, k, estimator, seed, bound="iwae", **kw):
    """(loss value, encoder gradient, decoder gradient) for one draw."""
    model.zero_grad()
    torch.manual_seed(seed)
    loss = iwae.loss(model, x, k, bound, estimator, **kw)
    loss.backward()
    return loss.item(), grads(model.encoder_parameters()), grads(model.decoder_parameters())


@pytest.fixture
def small_model():
    torch.manual_seed(0)
    model = iwae.Model(iwae.paper_gaussian_layer([12, 16], 3), iwae.mlp([3, 16], 12)).double()
    x = torch.rand(5, 12, dtype=torch.float64).bernoulli()
    return model, x


def test_normalised_weights_favour_large_log_weights(fixed_log_weights):
    # The seed write-up took softmax of the *negative* log weights: that puts the most
    # weight on the worst sample and fails here.
    log_w = torch.tensor([[-90.0, -3.0], [-85.0, -7.0], [-99.0, -1.0]], dtype=torch.float64)
    model = fixed_log_weights(log_w.clone())
    iwae.loss(model, None, 3).backward()
    weights = -model.log_w.grad * log_w.shape[1]                 # d(-L)/d log w, batch mean undone
    torch.testing.assert_close(weights, torch.softmax(log_w, 0))
    assert weights.argmax(0).tolist() == log_w.argmax(0).tolist() == [1, 2]


def test_standard_gradient_is_the_weighted_sum_of_log_weight_gradients(small_model):
    model, x = small_model
    k, B = 4, x.shape[0]
    _, enc, dec = estimator_grads(model, x, k, "standard", seed=3)
    torch.manual_seed(3)
    log_w = model.log_weights(x, k)
    w = torch.softmax(log_w.detach(), 0)
    params = list(model.encoder_parameters()) + list(model.decoder_parameters())
    expected = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64)
    for i in range(k):
        for b in range(B):
            g = torch.autograd.grad(log_w[i, b], params, retain_graph=True)
            expected -= w[i, b] * torch.cat([t.flatten() for t in g]) / B
    torch.testing.assert_close(torch.cat([enc, dec]), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bound,kw,estimators", [
    ("iwae", {}, ["standard", "stl", "dreg", "rws"]),
    ("miwae", {"m": 2}, ["standard", "stl", "dreg"]),
    ("piwae", {"m": 2}, ["standard", "stl", "dreg"]),
    ("elbo", {}, ["standard", "stl"]),
    ("ciwae", {"beta": 0.5}, ["standard", "stl"]),
])
def test_every_estimator_reports_the_same_loss_value(small_model, bound, kw, estimators):
    model, x = small_model
    values = [estimator_grads(model, x, 4, e, seed=5, bound=bound, **kw)[0] for e in estimators]
    torch.manual_seed(5)
    expected = -iwae.core.objective.Objective(bound, 4, **kw).value(model.log_weights(x, 4)).mean().item()
    assert values == pytest.approx([expected] * len(values), rel=1e-12)


def assert_autograd_gives_torch_funcs(model, x, k, bound="iwae", estimator="standard", m=None):
    """Functional(autograd=True)'s (loss, gradients) against torch.func's at one draw: the loss
    bitwise (the same forward), every gradient to float64 rounding."""
    objective, est = iwae.core.objective.check(bound, estimator, k, m, model=model)
    out = {}
    for autograd in (False, True):
        f = iwae.core.objective.Functional(model, autograd=autograd)
        torch.manual_seed(7)
        out[autograd] = est.gradients(f, tuple(p.detach() for p in f.parameters()), x, objective)
    assert out[True][0].item() == out[False][0].item()
    assert len(out[True][1]) == len(out[False][1]) == len(list(model.parameters()))
    for a, b in zip(out[True][1], out[False][1]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("bound,m,estimator", [("iwae", None, e) for e in ("standard", "stl", "dreg", "rws", "vimco")]
                         + [("piwae", 2, "standard"), ("piwae", 2, "dreg"), ("piwae", 2, "vimco")])
def test_autograd_pullback_gives_torch_funcs_gradients(small_model, bound, m, estimator):
    # Functional(autograd=True), a training step's when it runs eagerly, differentiates by
    # torch.autograd (first-order formulas) where torch.func's pullback uses create_graph=True:
    # the same forward (the loss bitwise), the gradients equal up to float64 rounding
    model, x = small_model
    assert_autograd_gives_torch_funcs(model, x, 4, bound, estimator, m)


def test_autograd_pullback_on_a_masked_silu_table_model():
    # the Imputer's kind of model (SiLU, a mask, point masses beside Gaussians), whose SiLU
    # backward torch.func takes as five elementwise passes: the same gradients in float64
    rng = np.random.default_rng(0)
    table = rng.normal(size=(200, 20)).round(1)
    table[:, 3] = np.where(rng.random(200) < 0.4, 0.0, rng.normal(size=200))  # a point mass at 0
    table[rng.random(table.shape) < 0.3] = np.nan
    imputer = iwae.Imputer(epochs=1, patience=None, compile="off", activation="silu").fit(table)
    assert imputer.point_masses_ == {"3": 0.0}
    x = torch.as_tensor(table[:16] - np.nanmean(table, 0))                  # NaN: missing
    assert_autograd_gives_torch_funcs(imputer.model_.double(), x, 5)


def test_stl_encoder_gradient_vanishes_at_the_exact_posterior(lg):
    model, x = lg.model(), lg.data(8)
    _, stl_enc, _ = estimator_grads(model, x, 5, "stl", seed=0)
    _, std_enc, _ = estimator_grads(model, x, 5, "standard", seed=0)
    assert stl_enc.abs().max() < 1e-10
    assert std_enc.abs().max() > 1e-2        # the score term STL drops is not zero per draw


@pytest.mark.parametrize("estimator", ["dreg", "stl"])
def test_decoder_gradient_is_the_standard_one(small_model, estimator):
    model, x = small_model
    _, _, dec = estimator_grads(model, x, 6, estimator, seed=2)
    _, _, std = estimator_grads(model, x, 6, "standard", seed=2)
    torch.testing.assert_close(dec, std, rtol=1e-10, atol=1e-12)


def paired_t(a, b, directions):
    """t statistics of the mean of (a - b) projected on each direction: [n, P] -> [directions]."""
    d = (a - b) @ directions.T
    return d.mean(0) / (d.std(0) / d.shape[0] ** 0.5)


def encoder_draws(model, x, k, estimator, n, bound="iwae"):
    return torch.stack([estimator_grads(model, x, k, estimator, seed=s, bound=bound)[1] for s in range(n)])


def test_dreg_is_unbiased_for_the_iwae_encoder_gradient(lg):
    # Paired over the same noise, the mean difference between DReG and the standard
    # estimator is zero; tolerance |t| < 4 on 5 random projections (false alarm ~3e-4).
    model, x = lg.model(mean_shift=0.4, log_sigma_shift=0.3), lg.data(4)
    dreg = encoder_draws(model, x, 8, "dreg", n=400)
    std = encoder_draws(model, x, 8, "standard", n=400)
    directions = torch.randn(5, dreg.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = paired_t(dreg, std, directions)
    assert t.abs().max() < 4, t
    # The same test detects STL's known bias for k > 1 [Tucker et al. 2019], so it has power.
    stl = encoder_draws(model, x, 8, "stl", n=400)
    assert paired_t(stl, std, directions).abs().max() > 8


def test_dreg_encoder_variance_is_lower_at_k64_near_the_posterior(lg):
    model, x = lg.model(mean_shift=0.05, log_sigma_shift=0.05), lg.data(4)
    dreg = encoder_draws(model, x, 64, "dreg", n=100)
    std = encoder_draws(model, x, 64, "standard", n=100)
    ratio = dreg.var(0).sum() / std.var(0).sum()
    assert ratio < 0.1, ratio


def test_rws_encoder_follows_the_wake_phase_update(lg):
    model, x, k = lg.model(mean_shift=0.3), lg.data(4), 6
    _, enc, dec = estimator_grads(model, x, k, "rws", seed=4)
    _, _, std_dec = estimator_grads(model, x, k, "standard", seed=4)
    torch.testing.assert_close(dec, std_dec, rtol=1e-10, atol=1e-12)    # decoder: the IWAE gradient
    # encoder: minus the gradient of mean_b sum_i w~_i log q(z_i | x) at fixed z and w~
    torch.manual_seed(4)
    log_w = model.log_weights(x, k).detach()
    torch.manual_seed(4)
    layer = model.encoder[0]
    mu, log_sigma = layer(x)
    z = (mu + log_sigma.exp() * torch.randn((k,) + mu.shape, dtype=mu.dtype)).detach()
    wake = (torch.softmax(log_w, 0) * Normal(mu, log_sigma.exp()).log_prob(z).sum(-1)).sum(0).mean()
    expected = torch.cat([g.flatten() for g in torch.autograd.grad(wake, list(layer.parameters()))])
    torch.testing.assert_close(enc, -expected, rtol=1e-10, atol=1e-12)


def test_piwae_splits_the_gradient(small_model):
    model, x = small_model
    _, enc, dec = estimator_grads(model, x, 8, "standard", seed=1, bound="piwae", m=4)
    _, miwae_enc, _ = estimator_grads(model, x, 8, "standard", seed=1, bound="miwae", m=4)
    _, _, iwae_dec = estimator_grads(model, x, 8, "standard", seed=1)
    torch.testing.assert_close(enc, miwae_enc, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dec, iwae_dec, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("estimator", ["standard", "stl", "dreg", "rws"])
def test_gradients_stay_finite_with_log_weights_near_minus_1e4(dtype, estimator):
    torch.manual_seed(0)
    model = iwae.Model(iwae.paper_gaussian_layer([12, 16], 3), iwae.mlp([3, 16], 12)).to(dtype)
    with torch.no_grad():
        model.decoder[-1].bias.fill_(-700.0)       # log p(x|z) ~ -700 * 12 ~ -8.4e3
    x = torch.ones(3, 12, dtype=dtype)
    loss = iwae.loss(model, x, 16, "iwae", estimator)
    loss.backward()
    assert 5e3 < loss.item() < 2e4
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("args,message", [
    (("elbo", "dreg"), "estimator 'dreg' does not apply to bound 'elbo'; it supports iwae, miwae, piwae, renyi"),
    (("miwae", "rws", 2), "estimator 'rws' does not apply to bound 'miwae'; it supports iwae"),
    (("iwae", "magic"), "unknown estimator 'magic'; expected one of standard, stl, dreg, rws, vimco, reinforce"),
    (("iwea", "standard"), "unknown bound 'iwea'; expected one of elbo, iwae, miwae, ciwae, piwae, renyi, vr-max (or 'vae')"),
    (("miwae", "standard", 3), "m must be a positive divisor of k=8, got 3"),
    (("miwae", "standard"), "miwae needs m, the number of groups (m must divide k=8)"),
    (("iwae", "standard", 2), "m is used only by miwae and piwae, not iwae"),
])
def test_invalid_configurations(small_model, args, message):
    model, x = small_model
    bound, estimator, *m = args
    with pytest.raises(ValueError) as err:
        iwae.loss(model, x, 8, bound, estimator, m=m[0] if m else None)
    assert str(err.value) == message


def test_ciwae_beta_and_k_are_validated(small_model):
    model, x = small_model
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\], got 2"):
        iwae.loss(model, x, 4, "ciwae", beta=2)
    with pytest.raises(ValueError, match="k must be an integer >= 1, got 0"):
        iwae.loss(model, x, 0)

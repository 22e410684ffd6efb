"""Discrete latents and Renyi bounds: Bernoulli layers and SBNs, VIMCO, RWS on binary units,
the Renyi and VR-max bounds, their estimators and their refusals.

Statistical tests are seeded (so deterministic); their tolerances are chosen so that a correct
implementation would fail them with the false-alarm rate stated in each.
"""
import json
import math
import re

import pytest
import torch
import torch.nn as nn
from torch.distributions import Bernoulli as TorchBernoulli

import iwae
from iwae import bounds
from iwae.core.estimators import vimco
from iwae.core.objective import Functional, Objective
from iwae.runtime.compile import compiled
from iwae.training.step import make_step

F64 = torch.float64


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def tiny_sbn(seed=0):
    """An SBN with 2 + 2 binary latents over 5 pixels, parameters moved off their init so that
    no gradient is zero by symmetry, and two different datapoints."""
    torch.manual_seed(seed)
    model = iwae.sbn_model((2, 2), input_dim=5).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.7 * torch.randn_like(p))
    x = torch.tensor([[1, 0, 1, 1, 0], [0, 1, 1, 0, 1]], dtype=F64)      # every pixel on somewhere
    return model, x


def every_latent(model, batch):
    """Every joint value of the latents: [[n, B, d_l]] with n = 2^(sum_l d_l), bottom first."""
    sizes = [layer.net[-1].out_features for layer in model.encoder]
    bits = torch.cartesian_prod(*[torch.tensor([0.0, 1.0], dtype=F64)] * sum(sizes))   # [n, sum d]
    return [z.unsqueeze(1).expand(-1, batch, -1) for z in bits.split(sizes, dim=1)]


# --- Bernoulli layers and the SBN ---------------------------------------------------------


def independent_sbn_log_weights(model, x, k, seed):
    """log w recomputed with torch.distributions at the same draws (the same uniform stream)."""
    torch.manual_seed(seed)
    log_q, zs, h = 0.0, [], x
    for layer in model.encoder:
        logits = layer.net(h.reshape(-1, h.shape[-1])).reshape(*h.shape[:-1], -1)
        u = torch.rand((k,) + logits.shape[-2:], dtype=F64)
        z = (u < torch.sigmoid(logits)).to(F64)
        log_q = log_q + TorchBernoulli(logits=logits).log_prob(z).sum(-1)
        zs.append(z)
        h = z
    log_p = TorchBernoulli(logits=model.prior.logits).log_prob(zs[-1]).sum(-1)
    for layer, below in zip(model.decoder_layers, reversed(zs[:-1])):
        log_p = log_p + TorchBernoulli(logits=layer.net(h)).log_prob(below).sum(-1)
        h = below
    logits = model.decoder(h)
    return log_p + TorchBernoulli(logits=logits).log_prob(x.expand_as(logits)).sum(-1) - log_q


@pytest.mark.parametrize("sizes", [(3,), (4, 3, 2)])
def test_sbn_log_weights_are_exact_log_p_minus_log_q(sizes):
    torch.manual_seed(0)
    model = iwae.sbn_model(sizes, input_dim=6).double()
    with torch.no_grad():
        model.prior.logits.normal_()
    x = torch.rand(3, 6, dtype=F64).bernoulli()
    torch.manual_seed(5)
    log_w = model.log_weights(x, 7)
    torch.testing.assert_close(log_w, independent_sbn_log_weights(model, x, 7, seed=5), rtol=1e-12, atol=1e-12)
    torch.manual_seed(5)
    zs = model.sample_q(x, 7)
    assert all(set(z.unique().tolist()) <= {0.0, 1.0} and not z.requires_grad for z in zs)
    torch.testing.assert_close(model.log_joint(x, zs) - model.log_q(x, zs), log_w, rtol=1e-12, atol=1e-12)


def test_exact_log_q_sums_to_one_over_every_latent():
    model, x = tiny_sbn()
    zs = every_latent(model, 2)
    assert torch.logsumexp(model.log_q(x, zs), 0).abs().max() < 1e-12
    assert torch.logsumexp(model.log_prior(zs), 0).abs().max() < 1e-12
    # and sum_z p(x, z) = p(x) <= 1 with E_q[w] = p(x): L_infinity
    log_px = torch.logsumexp(model.log_joint(x, zs), 0)
    assert (log_px < 0).all()


@pytest.mark.parametrize("layers", [1, 2])
def test_paper_nets_with_bernoulli_latents(layers):
    model = iwae.paper_model(layers, latent="bernoulli")
    gaussian = iwae.paper_model(layers)
    shapes = lambda m: [tuple(p.shape) for n, p in m.named_parameters() if not n.startswith("prior")]
    halve = lambda s: (s[0] // 2,) + s[1:]             # a Gaussian head has 2 d outputs, a Bernoulli d
    heads = {f"encoder.{i}.net.{len(layer.net) - 1}" for i, layer in enumerate(gaussian.encoder)} | \
        {f"decoder_layers.{i}.net.{len(layer.net) - 1}" for i, layer in enumerate(gaussian.decoder_layers)}
    expected = [halve(tuple(p.shape)) if n.rsplit(".", 1)[0] in heads else tuple(p.shape)
                for n, p in gaussian.named_parameters()]
    assert shapes(model) == expected
    assert model.prior.logits.shape == (50,) and isinstance(model.prior, iwae.BernoulliPrior)
    assert all(isinstance(layer, iwae.BernoulliLayer) for layer in [*model.encoder, *model.decoder_layers])


def test_sbn_200_200_200_is_linear_and_learns_its_prior():
    model = iwae.sbn_model()
    linears = lambda layers: [(l.net[0].in_features, l.net[0].out_features) for l in layers]
    assert linears(model.encoder) == [(784, 200), (200, 200), (200, 200)]
    assert linears(model.decoder_layers) == [(200, 200), (200, 200)]
    assert all(len(layer.net) == 1 for layer in [*model.encoder, *model.decoder_layers])
    assert (model.decoder[0].in_features, model.decoder[0].out_features) == (200, 784)
    assert model.prior.logits.requires_grad and model.prior.logits.shape == (200,)
    ids = {id(p) for p in model.decoder_parameters()}
    assert id(model.prior.logits) in ids and ids.isdisjoint(id(p) for p in model.encoder_parameters())
    assert len(ids) + sum(1 for _ in model.encoder_parameters()) == len(list(model.parameters()))


def test_a_gaussian_model_keeps_its_state_dict():
    # checkpoints of the Gaussian nets load as before: the N(0, I) prior has no state
    assert not any(name.startswith("prior") for name in iwae.paper_model(2).state_dict())


def test_sampling_reconstruction_and_means_of_an_sbn():
    torch.manual_seed(0)
    model = iwae.sbn_model((6, 4), input_dim=10)
    x = torch.rand(3, 10).bernoulli()
    samples = model.sample(5)
    assert samples.shape == (5, 10) and ((0 < samples) & (samples < 1)).all()
    zs = model.sample_prior(5)
    assert [tuple(z.shape) for z in zs] == [(5, 6), (5, 4)] and all(((z == 0) | (z == 1)).all() for z in zs)
    means = model.encode(x)
    assert [tuple(m.shape) for m in means] == [(3, 6), (3, 4)] and ((0 < means[0]) & (means[0] < 1)).all()
    assert model.reconstruct(x).shape == (3, 10)


@pytest.mark.parametrize("build,message", [
    (lambda: iwae.Model(iwae.BernoulliLayer(nn.Linear(5, 3)), nn.Linear(3, 5)),
     "z_1 has binary units under q (BernoulliLayer) but real units under p (StandardNormal): p and q of a "
     "layer must agree (a Bernoulli top layer needs prior=BernoulliPrior(d))"),
    (lambda: iwae.Model([iwae.BernoulliLayer(nn.Linear(5, 3)), iwae.BernoulliLayer(nn.Linear(3, 2))],
                        nn.Linear(3, 5), decoder_layers=[iwae.GaussianLayer(nn.Linear(2, 6))],
                        prior=iwae.BernoulliPrior(2)),
     "z_1 has binary units under q (BernoulliLayer) but real units under p (GaussianLayer): p and q of a "
     "layer must agree"),
    (lambda: iwae.paper_model(1, latent="binary"), "latent must be one of gaussian, bernoulli, got 'binary'"),
    (lambda: iwae.paper_model(1, latent="bernoulli", scale="softplus"),
     "scale is a Gaussian layer's setting; latent='bernoulli' has none, got 'softplus'"),
])
def test_inconsistent_models_are_refused(build, message):
    with pytest.raises(ValueError) as err:
        build()
    assert str(err.value) == message



# --- Renyi and VR-max -------------------------------------------------------------------


def rand_log_w(k=8, B=5, scale=3.0, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(k, B, generator=g, dtype=F64) - 90.0).to(dtype)


def test_renyi_at_alpha_0_is_the_iwae_bound_bitwise_and_at_1_the_elbo():
    log_w = rand_log_w()
    assert torch.equal(bounds.renyi_bound(log_w, 0.0), bounds.iwae_bound(log_w))
    assert torch.equal(bounds.renyi_bound(log_w, 0), bounds.iwae_bound(log_w))
    assert torch.equal(bounds.renyi_bound(log_w, 1.0), bounds.elbo(log_w))
    torch.manual_seed(0)
    model = iwae.paper_model(1, input_dim=6).double()
    x = torch.rand(4, 6, dtype=F64).bernoulli()
    values = []
    for bound, kw in (("renyi", {"alpha": 0.0}), ("iwae", {})):
        torch.manual_seed(3)
        values.append(iwae.loss(model, x, 5, bound, **kw))
    assert torch.equal(values[0], values[1])


def precise_renyi(log_w, alpha):
    """1/(1-alpha) log mean exp((1-alpha) log w) per column, in 60-digit decimal arithmetic."""
    from decimal import Decimal, localcontext
    with localcontext() as ctx:
        ctx.prec = 60
        e = 1 - Decimal(alpha)
        columns = [[Decimal(v) for v in column] for column in log_w.double().T.tolist()]
        return torch.tensor([float((sum((e * v).exp() for v in c) / len(c)).ln() / e) for c in columns], dtype=F64)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("alpha", [0.3, 1 - 1e-3, 1 - 1e-6])
def test_renyi_is_accurate_and_approaches_the_elbo_as_alpha_goes_to_1(dtype, alpha):
    # against 60-digit arithmetic at the same (rounded) inputs: a few ulps of 90 in float32 even
    # at 1 - alpha = 1e-6, where a plain logsumexp(e log w) / e loses ~0.1 nats to rounding
    log_w = rand_log_w(dtype=dtype)
    got = bounds.renyi_bound(log_w, alpha).double()
    tol = 3e-5 if dtype == torch.float32 else 1e-11
    torch.testing.assert_close(got, precise_renyi(log_w, alpha), rtol=0, atol=tol)
    # L_{1-d} = mean log w + d Var(log w) / 2 + O(d^2): the ELBO in the limit
    d = 1 - alpha
    gap = got - bounds.elbo(log_w).double()
    spread = log_w.double().var(0, correction=0) / 2
    assert ((gap - d * spread).abs() <= 0.1 * d * spread + tol).all() or d > 1e-2


def test_renyi_keeps_its_precision_when_compiled():
    # compiled for the CPU, expm1 becomes exp - 1: in float32 that alone is 7e-4 nats off at
    # 1 - alpha = 1e-5 (0.07 at 1e-7); the float64 tail keeps the eager function's few ulps
    log_w = rand_log_w(dtype=torch.float32)
    got = compiled(lambda lw: bounds.renyi_bound(lw, 1 - 1e-6), torch.device("cpu"))(log_w).double()
    torch.testing.assert_close(got, precise_renyi(log_w, 1 - 1e-6), rtol=0, atol=3e-5)


def test_renyi_decreases_from_iwae_to_elbo_for_every_draw():
    # L_alpha = log M_{1-alpha}(w), a power mean: non-increasing in alpha for any fixed draw
    log_w = rand_log_w(k=16, B=20)
    values = torch.stack([bounds.renyi_bound(log_w, a) for a in (0.0, 0.1, 0.5, 0.9, 0.999, 1.0)])
    assert (values[1:] <= values[:-1] + 1e-12).all()
    assert (values[1:-1] < values[0]).all() and (values[1:-1] > values[-1]).all()


def test_renyi_gradient_is_the_tempered_normalised_weights():
    log_w = rand_log_w(k=8, B=3).requires_grad_(True)
    bounds.renyi_bound(log_w, 0.4).sum().backward()
    torch.testing.assert_close(log_w.grad, torch.softmax(0.6 * log_w.detach(), 0), rtol=1e-10, atol=1e-12)


def test_vr_max_is_the_largest_log_weight():
    log_w = rand_log_w(k=8, B=6)
    assert torch.equal(bounds.vr_max_bound(log_w), log_w.max(0).values)
    assert (bounds.vr_max_bound(log_w) >= bounds.iwae_bound(log_w)).all()


@pytest.mark.parametrize("fn", [bounds.elbo, bounds.iwae_bound, lambda w: bounds.miwae_bound(w, 2),
                                lambda w: bounds.ciwae_bound(w, 0.3), lambda w: bounds.renyi_bound(w, 0.5),
                                lambda w: bounds.renyi_bound(w, 1 - 1e-6), bounds.vr_max_bound])
def test_a_batch_of_two_equals_the_two_alone(fn):
    log_w = rand_log_w(k=8, B=2, scale=30.0)           # two very different datapoints
    log_w[:, 1] -= 500
    alone = torch.cat([fn(log_w[:, :1]), fn(log_w[:, 1:])])
    torch.testing.assert_close(fn(log_w), alone, rtol=0, atol=0)


def closed_form_renyi(lg, x, alpha, mean_shift, log_sigma_shift):
    """L_alpha = 1/(1-alpha) log E_q[w^(1-alpha)] for lg.model(mean_shift, log_sigma_shift)."""
    delta2 = mean_shift ** 2                            # (mu_q - mu_p)^2, the same for every x
    var_p, var_q = lg.post_var, lg.post_var * math.exp(2 * log_sigma_shift)
    var_a = alpha * var_p + (1 - alpha) * var_q
    log_i = (0.5 * (1 - alpha) * var_q.log() + 0.5 * alpha * var_p.log() - 0.5 * var_a.log()
             - 0.5 * alpha * (1 - alpha) * delta2 / var_a)
    return lg.log_px(x) + log_i.sum() / (1 - alpha)


@pytest.mark.parametrize("alpha", [0.2, 0.5, 0.8])
def test_renyi_bound_tends_to_the_closed_form_on_a_linear_gaussian_model(lg, alpha):
    """Closed form. With p(z) = N(0, I), p(x | z) = N(W z + b, s^2 I) and W's columns
    orthogonal, the posterior is N(mu_p(x), diag(v)), and q = N(mu_p + m, diag(v e^(2 c)))
    (lg.model(m, c)). Since w = p(x) p(z | x) / q(z | x),
        L_alpha = log p(x) + 1/(1-alpha) sum_j log int q_j^alpha p_j^(1-alpha) dz_j,
    and for two normals q = N(mu_1, s_1^2), p = N(mu_2, s_2^2), with s_a^2 = alpha s_2^2 + (1-alpha) s_1^2,
        log int q^alpha p^(1-alpha) = (1-alpha)/2 log s_1^2 + alpha/2 log s_2^2 - 1/2 log s_a^2
                                      - alpha (1-alpha) (mu_1 - mu_2)^2 / (2 s_a^2)
    (0 at alpha = 0: L_0 = log p(x); -KL(q || p) / (1 - alpha) -> the ELBO as alpha -> 1).
    The estimate at k = 200,000 must be within 5 delta-method standard errors of it plus the
    O(1/k) bias (false alarm ~6e-7 per datapoint, 3 datapoints), and the closed form must lie
    more than 10 such tolerances below log p(x) and above the ELBO, so that the test tells them apart."""
    shift, log_shift = 0.6, 0.3
    model, x = lg.model(mean_shift=shift, log_sigma_shift=log_shift), lg.data(3)
    torch.manual_seed(0)
    with torch.no_grad():
        log_w = model.log_weights(x, 200_000)
    e = 1 - alpha
    v = torch.exp(e * (log_w - log_w.max(0).values))
    se = v.std(0) / (v.mean(0) * e * log_w.shape[0] ** 0.5)
    bias = e * se.square() / 2                          # -Var(v) / (2 k e mean(v)^2), its size
    tol = 5 * se + bias
    expected = closed_form_renyi(lg, x, alpha, shift, log_shift)
    torch.testing.assert_close(closed_form_renyi(lg, x, 0.0, shift, log_shift), lg.log_px(x))
    assert ((bounds.renyi_bound(log_w, alpha) - expected).abs() < tol).all()
    elbo = closed_form_renyi(lg, x, 1 - 1e-9, shift, log_shift)
    assert ((lg.log_px(x) - expected) > 10 * tol).all() and ((expected - elbo) > 10 * tol).all()


def encoder_draws(model, x, k, estimator, n, bound, **kw):
    rows = []
    for s in range(n):
        model.zero_grad()
        torch.manual_seed(s)
        iwae.loss(model, x, k, bound, estimator, **kw).backward()
        rows.append(flat([p.grad for p in model.encoder_parameters()]))
    return torch.stack(rows)


def paired_t(a, b, directions):
    d = (a - b) @ directions.T
    return d.mean(0) / (d.std(0) / d.shape[0] ** 0.5)


def test_dreg_is_unbiased_for_the_renyi_encoder_gradient(lg, monkeypatch):
    # Paired over the same noise, DReG's mean equals the standard (reparameterised) estimator's
    # at alpha = 0.5: |t| < 4 on 5 random projections (false alarm ~3e-4; seen |t| ~ 2). The test
    # has power: STL (score term dropped) and DReG with the IWAE factor (the encoder getting
    # wbar^2 instead of alpha wbar + (1 - alpha) wbar^2) both fail it (seen |t| ~ 30 and more).
    # Near the posterior, DReG's variance is a small fraction of the standard estimator's.
    model, x, alpha = lg.model(mean_shift=0.4, log_sigma_shift=0.3), lg.data(4), 0.5
    draws = {e: encoder_draws(model, x, 8, e, 300, "renyi", alpha=alpha) for e in ("dreg", "standard", "stl")}
    directions = torch.randn(5, draws["dreg"].shape[1], dtype=F64, generator=torch.Generator().manual_seed(0))
    assert paired_t(draws["dreg"], draws["standard"], directions).abs().max() < 4
    assert paired_t(draws["stl"], draws["standard"], directions).abs().max() > 10
    near = lg.model(mean_shift=0.05, log_sigma_shift=0.05)
    ratio = (encoder_draws(near, x, 32, "dreg", 50, "renyi", alpha=alpha).var(0).sum()
             / encoder_draws(near, x, 32, "standard", 50, "renyi", alpha=alpha).var(0).sum())
    assert ratio < 0.1, ratio
    monkeypatch.setattr(Objective, "dreg_factor", lambda self, lw: torch.softmax((1 - self.alpha) * lw.detach(), 0))
    wrong = encoder_draws(model, x, 8, "dreg", 300, "renyi", alpha=alpha)
    assert paired_t(wrong, draws["standard"], directions).abs().max() > 10


@pytest.mark.parametrize("estimator", ["standard", "stl", "dreg", "vimco"])
def test_renyi_through_iwae_loss(small_gaussian, estimator):
    model, x = small_gaussian
    torch.manual_seed(0)
    loss = iwae.loss(model, x, 6, "renyi", estimator, alpha=0.5)
    loss.backward()
    torch.manual_seed(0)
    expected = -bounds.renyi_bound(model.log_weights(x, 6), 0.5).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_vr_max_standard_gradient_is_the_best_samples():
    torch.manual_seed(0)
    model = iwae.paper_model(1, input_dim=6).double()
    x = torch.rand(3, 6, dtype=F64).bernoulli()
    torch.manual_seed(1)
    iwae.loss(model, x, 5, "vr-max").backward()
    got = flat([p.grad for p in model.parameters()])
    torch.manual_seed(1)
    log_w = model.log_weights(x, 5)
    best = log_w.gather(0, log_w.argmax(0, keepdim=True)).mean()
    torch.testing.assert_close(got, -flat(torch.autograd.grad(best, list(model.parameters()))))


@pytest.fixture
def small_gaussian():
    torch.manual_seed(0)
    model = iwae.Model(iwae.paper_gaussian_layer([12, 16], 3), iwae.mlp([3, 16], 12)).double()
    return model, torch.rand(5, 12, dtype=F64).bernoulli()


@pytest.mark.parametrize("call,message", [
    (lambda m, x: iwae.loss(m, x, 4, "renyi", alpha=1.5), "alpha must be in [0, 1], got 1.5"),
    (lambda m, x: iwae.loss(m, x, 4, "renyi", alpha=-0.5), "alpha must be in [0, 1], got -0.5"),
    (lambda m, x: iwae.loss(m, x, 4, "renyi", alpha=True), "alpha must be in [0, 1], got True"),
    (lambda m, x: iwae.loss(m, x, 4, "renyi"), "renyi needs alpha in [0, 1], got None"),
    (lambda m, x: iwae.loss(m, x, 4, "iwae", alpha=0.5), "alpha is used only by renyi, not iwae"),
    (lambda m, x: iwae.loss(m, x, 1, "vr-max"),
     "vr-max is the largest of k >= 2 log weights (with k=1 it is the elbo), got k=1"),
    (lambda m, x: iwae.loss(m, x, 1, "iwae", "vimco"),
     "estimator 'vimco' needs k >= 2 samples (its baselines leave one out), got k=1"),
    (lambda m, x: iwae.loss(m, x, 4, "vr-max", "dreg"),
     "estimator 'dreg' does not apply to bound 'vr-max'; it supports iwae, miwae, piwae, renyi"),
    (lambda m, x: iwae.loss(m, x, 4, "renyi", "rws", alpha=0.5),
     "estimator 'rws' does not apply to bound 'renyi'; it supports iwae"),
    (lambda m, x: bounds.renyi_bound(torch.zeros(4, 2), 2), "alpha must be in [0, 1], got 2"),
])
def test_bad_settings_are_one_line_errors(small_gaussian, call, message):
    with pytest.raises(ValueError) as err:
        call(*small_gaussian)
    assert str(err.value) == message


# --- VIMCO ------------------------------------------------------------------------------


def exact_gradient(model, x, objective):
    """grad of -mean_b E_q[F(log w_1..log w_k)] by summing over every joint draw of the k
    samples (n^k of them), the probabilities and the log weights differentiated by autograd."""
    zs = every_latent(model, x.shape[0])
    log_q = model.log_q(x, zs)                                       # [n, B]
    log_w = model.log_joint(x, zs) - log_q
    n, k = log_q.shape[0], objective.k
    draws = torch.cartesian_prod(*[torch.arange(n)] * k).reshape(-1, k)  # [n^k, k]
    prob = log_q[draws].sum(1).exp()                                 # [n^k, B]
    torch.testing.assert_close(prob.sum(0), torch.ones(x.shape[0], dtype=F64))
    values = objective.value(log_w[draws].transpose(0, 1).reshape(k, -1)).reshape(prob.shape)
    loss = -(prob * values).sum(0).mean()
    return flat(torch.autograd.grad(loss, list(model.parameters())))


def score_function_gradient(model, x, objective, baseline):
    """One draw of the score-function gradient of -mean_b F, written here with autograd:
    F's pathwise term plus (F - baseline) * grad log q(z_1..z_k | x) (baseline 0: REINFORCE;
    None: no score term at all, the gradient a pathwise estimator sees at discrete z)."""
    zs = [z.detach() for z in model.sample_q(x, objective.k)]
    log_q = model.log_q(x, zs)
    value = objective.value(model.log_joint(x, zs) - log_q)
    score = 0.0 if baseline is None else ((value.detach() - baseline) * log_q.sum(0))
    return flat(torch.autograd.grad(-(value + score).mean(), list(model.parameters())))


def library_gradient(model, x, objective, estimator):
    model.zero_grad()
    iwae.loss(model, x, objective.k, objective.name, estimator, m=objective.m, beta=objective.beta,
              alpha=objective.alpha).backward()
    return flat([p.grad for p in model.parameters()])


def batch_means(draw, x, calls, copies):
    """[calls, P]: each row the mean of ``copies`` independent draws per datapoint (x repeated
    in the batch: the loss averages over it)."""
    torch.manual_seed(11)
    xs = x.repeat(copies, 1)
    return torch.stack([draw(xs) for _ in range(calls)])


def test_vimco_learning_signal_is_the_papers_leave_one_out():
    # Mnih & Rezende eq. (8)-(10): Lhat_j = L - log (1/k) (sum_{i != j} w_i + exp(mean_{i != j} log w_i))
    g = torch.Generator().manual_seed(0)
    log_w = 4 * torch.randn(5, 3, generator=g, dtype=F64) - 80
    k = log_w.shape[0]
    L = torch.log(torch.exp(log_w).mean(0))
    expected = torch.stack([
        L - torch.log((torch.exp(torch.cat([log_w[:j], log_w[j + 1:]])).sum(0)
                       + torch.exp(torch.cat([log_w[:j], log_w[j + 1:]]).mean(0))) / k)
        for j in range(k)])
    got = vimco.learning_signals(Objective("iwae", k), log_w)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("bound,k,kw", [("iwae", 2, {}), ("iwae", 3, {}), ("elbo", 3, {}),
                                        ("miwae", 4, {"m": 2}), ("ciwae", 2, {"beta": 0.3}),
                                        ("renyi", 3, {"alpha": 0.5}), ("vr-max", 3, {})])
def test_vimco_and_reinforce_are_unbiased_by_exact_enumeration(bound, k, kw):
    # estimator="vimco" and estimator="reinforce" (no baseline).
    # E[gradient] against the exact gradient of E[F] summed over all 16^k joint draws.
    # Each of 100 rows is the mean of 100 draws per datapoint; per coordinate (41 parameters)
    # t = (mean - exact) / standard error, |t| < 5 (t with 99 d.o.f.: 2.6e-6 per coordinate,
    # 2e-4 for the two estimators' 82 coordinates; seen: |t| <= 3). The same test flags the
    # gradient without the score term (what a pathwise estimator computes at discrete z:
    # seen |t| > 60 on 20 rows), so it has power. VIMCO's variance is ~1-3% of REINFORCE's.
    model, x = tiny_sbn()
    objective = Objective(bound, k, **kw)
    exact = exact_gradient(model, x, objective)
    t = lambda rows: (rows.mean(0) - exact) / (rows.std(0) / rows.shape[0] ** 0.5)
    vim = batch_means(lambda xs: library_gradient(model, xs, objective, "vimco"), x, 100, 100)
    rf = batch_means(lambda xs: library_gradient(model, xs, objective, "reinforce"), x, 100, 100)
    assert t(vim).abs().max() < 5, t(vim)
    assert t(rf).abs().max() < 5, t(rf)
    assert vim.var(0).sum() < 0.1 * rf.var(0).sum()          # the baselines' point
    none = batch_means(lambda xs: score_function_gradient(model, xs, objective, None), x, 20, 100)
    assert t(none).abs().max() > 10


def vimco_wrapped(model):
    """The model seen through log_weights only (no sample_q / log_joint / log_q): VIMCO's two-pass path."""
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def log_weights(self, x, k, **options):
            return self.inner.log_weights(x, k, **options)

        def encoder_parameters(self):
            return self.inner.encoder_parameters()

        def decoder_parameters(self):
            return self.inner.decoder_parameters()
    return Wrapped()


@pytest.mark.parametrize("make", ["sbn", "gaussian"])
@pytest.mark.parametrize("bound,kw", [("iwae", {}), ("piwae", {"m": 2}), ("renyi", {"alpha": 0.3})])
def test_vimco_one_pass_equals_the_two_pull_backs_of_log_weights(make, bound, kw):
    torch.manual_seed(0)
    model = tiny_sbn()[0] if make == "sbn" else iwae.paper_model(2, input_dim=5).double()
    x = torch.rand(3, 5, dtype=F64).bernoulli()
    wrapped = vimco_wrapped(model)
    assert Functional(model).has_densities and not Functional(wrapped).has_densities
    out = []
    for m in (model, wrapped):
        model.zero_grad()
        torch.manual_seed(4)
        loss = iwae.loss(m, x, 4, bound, "vimco", **kw)
        loss.backward()
        out.append((loss.item(), flat([p.grad for p in model.parameters()])))
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-13)
    torch.testing.assert_close(out[0][1], out[1][1], rtol=1e-10, atol=1e-12)


def test_vimco_and_rws_share_the_decoder_gradient_and_rws_is_the_wake_update():
    # at the same draws both give the decoder sum_i w~_i grad log p(x, z_i); RWS's encoder is
    # minus the gradient of mean_b sum_i w~_i log q(z_i | x)
    model, x = tiny_sbn()
    decoder = [id(p) for p in model.decoder_parameters()]
    grads = {}
    for estimator in ("vimco", "rws"):
        model.zero_grad()
        torch.manual_seed(2)
        iwae.loss(model, x, 3, "iwae", estimator).backward()
        grads[estimator] = {id(p): p.grad.clone() for p in model.parameters()}
    for i in decoder:
        torch.testing.assert_close(grads["vimco"][i], grads["rws"][i], rtol=1e-12, atol=1e-14)
    torch.manual_seed(2)
    zs = [z.detach() for z in model.sample_q(x, 3)]
    log_q = model.log_q(x, zs)
    w = torch.softmax((model.log_joint(x, zs) - log_q).detach(), 0)
    encoder = list(model.encoder_parameters())
    wake = torch.autograd.grad((w * log_q).sum(0).mean(), encoder)
    torch.testing.assert_close(flat([grads["rws"][id(p)] for p in encoder]), -flat(wake), rtol=1e-12, atol=1e-14)


def test_vimco_trains_an_sbn():
    torch.manual_seed(0)
    model = iwae.sbn_model((8, 4), input_dim=12)
    x = torch.rand(16, 12).bernoulli()
    step = make_step(model, torch.optim.Adam(model.parameters(), lr=3e-2), 5, estimator="vimco", compile="off")
    first = step(x).item()
    for _ in range(60):
        last = step(x).item()
    assert last < first - 1.0                                  # it learns this batch


def test_a_compiled_step_runs_vimco_and_equals_the_eager_one():
    # one torch.compile of the whole VIMCO step (20-40 s); the same draws (fallback_random)
    model, x = tiny_sbn()
    steps = [make_step(model, torch.optim.SGD(model.parameters(), lr=0.1), 3, estimator="vimco", compile=c)
             for c in ("off", "step")]
    results = []
    for step in steps:
        torch.manual_seed(1)
        loss = step.forward_backward(x)
        results.append((loss, flat([p.grad for p in model.parameters()])))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-10, atol=1e-12)


# --- refusals ----------------------------------------------------------------------------

REFUSED = ("estimator '{}' differentiates through the samples z, and a BernoulliLayer draws discrete ones "
           "without a gradient; use estimator 'vimco' (any bound) or 'rws' (the iwae bound)")


@pytest.mark.parametrize("estimator", ["standard", "stl", "dreg"])
def test_pathwise_estimators_refuse_discrete_latents_in_one_line(estimator):
    model, x = tiny_sbn()
    with pytest.raises(ValueError) as err:
        iwae.loss(model, x, 3, "iwae", estimator)
    assert str(err.value) == REFUSED.format(estimator)
    f = Functional(model)                      # the step's path: the estimator checks f itself
    from iwae.core.estimators import ESTIMATORS
    with pytest.raises(ValueError) as err:
        ESTIMATORS[estimator].gradients(f, tuple(p.detach() for p in f.parameters()), x, Objective("iwae", 3))
    assert str(err.value) == REFUSED.format(estimator)
    with pytest.raises(ValueError) as err:
        iwae.core.objective.check("iwae", estimator, 3, model=model)
    assert str(err.value) == REFUSED.format(estimator)


def test_unit_kl_of_bernoulli_layers_is_the_closed_form():
    """units.unit_kl on an SBN: per unit, KL(Bernoulli(q) || Bernoulli(p)) at the drawn layer
    below, against torch.distributions' closed form (the top prior's logits the model's)."""
    from iwae.evaluation.units import unit_kl
    torch.manual_seed(3)
    model = iwae.sbn_model(sizes=(4, 3), input_dim=6).double()
    with torch.no_grad():
        model.prior.logits.normal_()
    x = torch.rand(50, 6, dtype=F64).bernoulli()
    torch.manual_seed(5)
    kl = unit_kl(model, x)
    torch.manual_seed(5)
    q1 = model.encoder[0](x)
    z1 = model.encoder[0].draw(q1)[1]
    q2 = model.encoder[1](z1)
    z2 = model.encoder[1].draw(q2)[1]
    p1 = model.decoder_layers[0](z2)
    Bern = torch.distributions.Bernoulli
    expected = [torch.distributions.kl_divergence(Bern(logits=q1), Bern(logits=p1)).mean(0),
                torch.distributions.kl_divergence(Bern(logits=q2), Bern(logits=model.prior.logits.expand_as(q2))).mean(0)]
    for got, want in zip(kl, expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_ais_and_the_gaps_refuse_binary_latents_in_one_line():
    model, x = iwae.sbn_model(sizes=(4,), input_dim=6), torch.zeros(2, 6)
    message = re.escape("needs continuous latent variables; this model has BernoulliLayers (binary units): "
                        "evaluate it by L_k (iwae.log_likelihood, iwae evaluate --method iwae)")
    with pytest.raises(ValueError, match=message):
        iwae.ais(model, x, steps=2, chains=1)
    from iwae.evaluation.gaps import inference_gaps
    with pytest.raises(ValueError, match=message):
        inference_gaps(model, x, q_steps=1, ais_steps=2, chains=1)


def cli(capsys, *argv):
    from iwae.app.cli import main
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.mark.parametrize("flags,message", [
    (["--bound", "renyi", "--alpha", "1.5"], "iwae: error: alpha must be in [0, 1], got 1.5"),
    (["--bound", "vr-max", "--k", "1"],
     "iwae: error: vr-max is the largest of k >= 2 log weights (with k=1 it is the elbo), got k=1"),
    (["--latent", "bernoulli"], "iwae: error: estimator 'standard' differentiates through the samples z, and a "
     "BernoulliLayer draws discrete ones without a gradient; use estimator 'vimco' (any bound) or 'rws' (the iwae bound)"),
    (["--net", "sbn", "--estimator", "dreg"], "iwae: error: estimator 'dreg' differentiates through the samples z, "
     "and a BernoulliLayer draws discrete ones without a gradient; use estimator 'vimco' (any bound) or 'rws' (the iwae bound)"),
])
def test_the_cli_refuses_bad_family_settings_in_one_line(tmp_path, data_dir, capsys, flags, message):
    rc, _, err = cli(capsys, "train", "--out", tmp_path / "run", "--data-dir", data_dir, "--limit-train", 40,
                     "--epochs", 1, "--final-k", 0, "--quiet", *flags)
    assert rc == 2 and err == message + "\n"
    assert not (tmp_path / "run").exists()


def test_an_sbn_trains_evaluates_and_resumes_from_the_cli(tmp_path, data_dir, capsys):
    """iwae train --net sbn --estimator vimco, then evaluate (L_k; units from Bernoulli KLs) and
    resume: the spec saved (net, alpha) is the one compared."""
    run = tmp_path / "run"
    base = ["train", "--out", run, "--data-dir", data_dir, "--net", "sbn", "--estimator", "vimco",
            "--limit-train", 40, "--eval-examples", 10, "--final-k", 20, "--final-limit-test", 10, "--quiet",
            "--compile", "off"]
    rc, out, err = cli(capsys, *base, "--epochs", 1)
    assert rc == 0, err
    assert "test NLL (L_20, 10 test images):" in out and "active units" in out
    config = json.loads((run / "config.json").read_text())
    assert (config["net"], config["estimator"], config["alpha"]) == ("sbn", "vimco", None)
    rc, out, err = cli(capsys, *base, "--epochs", 2, "--resume")
    assert rc == 0, err
    rc, _, err = cli(capsys, "train", "--out", run, "--resume", "--net", "paper", "--data-dir", data_dir)
    assert rc == 2 and "disagree" in err and "net" in err
    rc, out, err = cli(capsys, "evaluate", run, "--data-dir", data_dir, "--k", 10, "--limit-test", 5, "--json")
    assert rc == 0, err
    assert len(json.loads(out)["informative_units"]) == 3
    rc, out, err = cli(capsys, "diagnose", run, "--data-dir", data_dir, "--k", 5, "--estimators", "vimco,reinforce,rws",
                       "--draws", 3, "--examples", 5, "--quiet")
    assert rc == 0, err
    result = json.loads((run / "diagnose.json").read_text())
    assert result["reference"].startswith("iwae+vimco")      # unbiased where z is binary
    assert [r["estimator"] for r in result["results"]] == ["iwae+vimco", "iwae+reinforce", "iwae+rws",
                                                           "iwae+vimco (reference)"]

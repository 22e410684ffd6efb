"""Discrete latents and Renyi bounds: Bernoulli layers and SBNs, VIMCO, RWS on binary units,
the Renyi and VR-max bounds, their estimators and their refusals.

Statistical tests are seeded (so deterministic); their tolerances are chosen so that a correct
implementation would fail them with the false-alarm rate stated in each.
"""
import math

import pytest
import torch
import torch.nn as nn
from torch.distributions import Bernoulli as TorchBernoulli

import iwae
from iwae import bounds

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


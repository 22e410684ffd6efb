"""Closed-form identities of the bounds as functions of log w [k, B]."""
import math

import pytest
import torch

from iwae import bounds


def rand_log_w(k=8, B=5, scale=3.0, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(k, B, generator=g, dtype=dtype) - 90.0


def test_iwae_with_one_sample_is_the_elbo():
    log_w = rand_log_w(k=1)
    assert torch.equal(bounds.iwae_bound(log_w), bounds.elbo(log_w))


def test_iwae_is_log_mean_exp():
    log_w = rand_log_w()
    expected = torch.log(torch.exp(log_w).mean(0))
    torch.testing.assert_close(bounds.iwae_bound(log_w), expected, rtol=0, atol=1e-10)


def test_miwae_limits():
    log_w = rand_log_w(k=12)
    torch.testing.assert_close(bounds.miwae_bound(log_w, 1), bounds.iwae_bound(log_w), rtol=0, atol=1e-12)
    torch.testing.assert_close(bounds.miwae_bound(log_w, 12), bounds.elbo(log_w), rtol=0, atol=1e-12)


def test_miwae_groups_are_contiguous_blocks():
    log_w = rand_log_w(k=6)
    expected = (bounds.iwae_bound(log_w[:3]) + bounds.iwae_bound(log_w[3:])) / 2
    torch.testing.assert_close(bounds.miwae_bound(log_w, 2), expected, rtol=0, atol=1e-12)


def test_bounds_are_ordered_for_every_draw():
    # Jensen per datapoint: mean log w <= MIWAE(M, K) <= log mean w, for any fixed draw.
    log_w = rand_log_w(k=16, B=50)
    e, m, i = bounds.elbo(log_w), bounds.miwae_bound(log_w, 4), bounds.iwae_bound(log_w)
    assert (e <= m).all() and (m <= i).all() and (e < i).all()


def test_ciwae_mixes_elbo_and_iwae():
    log_w = rand_log_w()
    torch.testing.assert_close(bounds.ciwae_bound(log_w, 0.0), bounds.iwae_bound(log_w))
    torch.testing.assert_close(bounds.ciwae_bound(log_w, 1.0), bounds.elbo(log_w))
    torch.testing.assert_close(bounds.ciwae_bound(log_w, 0.25),
                               0.25 * bounds.elbo(log_w) + 0.75 * bounds.iwae_bound(log_w))


@pytest.mark.parametrize("fn", [bounds.elbo, bounds.iwae_bound,
                                lambda w: bounds.miwae_bound(w, 2),
                                lambda w: bounds.ciwae_bound(w, 0.3)])
def test_permuting_the_batch_permutes_the_bound(fn):
    log_w = rand_log_w(k=8, B=7)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(fn(log_w[:, perm]), fn(log_w)[perm], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_weights_near_minus_1e4_stay_finite(dtype):
    log_w = (rand_log_w(k=64, B=4, scale=5.0, dtype=torch.float64) - 1e4 + 90.0).to(dtype)
    reference = torch.logsumexp(log_w.double(), 0) - math.log(64)
    for fn in (bounds.elbo, bounds.iwae_bound, lambda w: bounds.miwae_bound(w, 8),
               lambda w: bounds.ciwae_bound(w, 0.5)):
        leaf = log_w.clone().requires_grad_(True)
        value = fn(leaf)
        value.sum().backward()
        assert torch.isfinite(value).all() and torch.isfinite(leaf.grad).all()
    tol = 1e-2 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(bounds.iwae_bound(log_w).double(), reference, rtol=0, atol=tol)


def test_iwae_gradient_is_the_normalised_weights():
    log_w = rand_log_w(k=8, B=3).requires_grad_(True)
    bounds.iwae_bound(log_w).sum().backward()
    torch.testing.assert_close(log_w.grad, torch.softmax(log_w.detach(), 0))


@pytest.mark.parametrize("call,message", [
    (lambda: bounds.miwae_bound(torch.zeros(6, 2), 4), "m must be a positive divisor of k=6, got 4"),
    (lambda: bounds.ciwae_bound(torch.zeros(6, 2), 1.5), "beta must be in [0, 1], got 1.5"),
    (lambda: bounds.iwae_bound(torch.zeros(6)), "log_w must have shape [k, batch], got (6,)"),
])
def test_bad_arguments_raise_clear_errors(call, message):
    with pytest.raises(ValueError) as err:
        call()
    assert str(err.value) == message

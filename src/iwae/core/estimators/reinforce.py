"""REINFORCE: the score-function gradient of a bound with no baseline [Williams 1992].

    grad E[F] = E[ sum_j F(log w) grad log q(z_j | x) + sum_j dF/d log w_j grad log w_j ],
VIMCO's estimator (iwae.core.estimators.vimco) with the learning signal Lhat_j = F itself
instead of F minus a leave-one-out baseline: unbiased for any q, Bernoulli layers included,
and of a variance that grows with |F| (hundreds of nats on MNIST), so that it trains poorly.
It is here as the plain estimator that VIMCO improves on: ``iwae diagnose --estimators
vimco,reinforce,rws`` measures how much the baselines buy.
"""
from . import vimco

SUPPORTS = vimco.SUPPORTS


def learning_signals(objective, log_w, group="encoder"):
    """Lhat [k, B]: F(log w) for every sample (held constant: no gradient)."""
    return objective.group_value(log_w.detach(), group).expand_as(log_w)


def gradients(f, params, x, objective):
    return vimco.score_gradients(f, params, x, objective, learning_signals, "reinforce")

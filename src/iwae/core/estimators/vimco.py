"""VIMCO: the score-function gradient with leave-one-out baselines [Mnih & Rezende 2016].

For a bound F(log w_1, ..., log w_k) of samples z_1..z_k ~ q(z | x) that need not be
reparameterisable (Bernoulli layers), at fixed samples,
    grad E[F] = E[ sum_j Lhat_j grad log q(z_j | x) + sum_j dF/d log w_j grad log w_j ],
the second term the gradient through the parameters at fixed z (the decoder's pathwise term,
and log q's direct dependence on phi), the first the score term with the learning signal
    Lhat_j = F(log w) - F(log w with log w_j replaced by (1/(k-1)) sum_{i != j} log w_i).
For F = L_k = log (1/k) sum_i w_i this is the paper's eq. (8)-(10):
    Lhat_j = L_k - log (1/k) (sum_{i != j} w_i + fhat_-j),  fhat_-j = exp(mean_{i != j} log w_i),
the geometric mean of the other weights standing in for w_j. The baseline F(... z_-j ...)
does not depend on z_j, so E[baseline * grad log q(z_j | x)] = 0: unbiased for the gradient
of E[F] for every bound of log w (elbo, iwae, miwae, ciwae, renyi, vr-max; piwae's encoder
follows MIWAE's), with variance far below the plain score function's (Lhat_j = F). Needs
k >= 2. For the ELBO, Lhat_j = (log w_j - mean_{i != j} log w_i) / k. Reference
implementation: y0ast/VIMCO; the SBN 200-200-200 of the paper is ``iwae.core.model.sbn_model``.

The samples carry no gradient, so VIMCO works for any q, Gaussian layers included. With
    c = d(-mean_b F) / d log w  (the decoder's cotangent; the encoder's bound's for piwae),
the loss's gradient is sum c grad log p(x, z) + sum (-c_enc - Lhat / B) grad log q(z | x): one
backward pass of (log p(x, z), log q(z | x)) at samples drawn first (``sample_q``, then
``log_joint`` and ``log_q``: the model's own densities, whose difference is log w), as cheap
as the standard estimator's. A model without them gets two pull-backs of
``log_weights(stop_z=True)`` (decoder: c; encoder: c_enc + Lhat / B, since grad_phi log w =
-grad_phi log q there), which needs ``encoder_parameters()``.

The k learning signals evaluate F at k substituted copies of log w: O(k^2 B) numbers a step
(k = 50, B = 20: 50,000), negligible beside the networks.
"""
import torch

SUPPORTS = ("elbo", "iwae", "miwae", "ciwae", "piwae", "renyi", "vr-max")
MIN_K = 2                   # the baselines leave one sample out


def learning_signals(objective, log_w, group="encoder"):
    """Lhat [k, B]: F(log w) - F(log w with log w_j replaced by the mean of the others), for
    the bound F the parameter group follows (held constant: no gradient)."""
    lw = log_w.detach()
    k, batch = lw.shape
    eye = torch.eye(k, dtype=torch.bool, device=lw.device).unsqueeze(-1)          # [j, i, 1]
    others = torch.where(eye, torch.zeros((), dtype=lw.dtype, device=lw.device), lw).sum(1) / (k - 1)
    held = torch.where(eye, others.unsqueeze(1), lw)                             # [j, i, B]: row j has z_j left out
    columns = held.transpose(0, 1).reshape(k, k * batch)                         # [i, (j, b)]
    baseline = objective.group_value(columns, group).reshape(k, batch)
    return objective.group_value(lw, group) - baseline


def gradients(f, params, x, objective):
    return score_gradients(f, params, x, objective, learning_signals, "vimco")


def score_gradients(f, params, x, objective, signals, name):
    """(loss, gradients) of the score-function estimator whose learning signal per sample is
    signals(objective, log_w) [k, B] (VIMCO's leave-one-out one, or REINFORCE's F)."""
    k = objective.k
    if f.has_densities:
        zs = [z.detach() for z in f.call("sample_q", params, x, k)]
        (log_p, log_q), pullback = f.vjp(
            lambda p: (f.call("log_joint", p, x, zs), f.call("log_q", p, x, zs)), params)
        log_w = log_p - log_q
        cot, value = objective.cotangent(log_w)
        encoder_cot = objective.cotangent(log_w, "encoder")[0] if objective.name == "piwae" else cot
        signal = signals(objective, log_w) / log_w.shape[1]
        (grads,) = pullback((cot, -encoder_cot - signal))
        return value, grads
    log_w, pullback = f.vjp(lambda p: f.log_weights(p, x, k, stop_z=True), params)
    cot, value = objective.cotangent(log_w)
    encoder_cot = objective.cotangent(log_w, "encoder")[0] if objective.name == "piwae" else cot
    (decoder,) = pullback(cot)
    (encoder,) = pullback(encoder_cot + signals(objective, log_w) / log_w.shape[1])
    return value, f.by_group(encoder, decoder, name)

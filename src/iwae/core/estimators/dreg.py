"""Doubly reparameterised gradients [Tucker, Lawson, Gu & Maddison 2019, eq. 5].

With log w computed with q's parameters stopped (z keeps its path gradient):
    encoder: sum_i w~_i^2  d log w_i / d z_i  d z_i / d phi
    decoder: sum_i w~_i    d log w_i / d theta      (the standard IWAE gradient)
with w~ = softmax(log w) held constant. Unbiased for the gradient of L_k, and its
signal-to-noise ratio does not decay with k. For MIWAE the weights are normalised within
each group of K samples and the groups averaged; for PIWAE the encoder takes the MIWAE
version and the decoder the IWAE gradient.

One backward pass, not the reference code's two: the samples z = sample_q(x) are made
first (the encoder's graph), the log weights are evaluated at them (the densities' and the
decoder's graph), and that graph is pulled back once with the decoder's cotangent
(-w~ / B). The gradient it leaves at each z_i, -w~_i d log w_i / d z_i / B, is multiplied
by w~_i and pulled back through the encoder's graph alone: the encoder receives w~^2, the
decoder w~, and every layer's z is scaled once (also for 2 stochastic layers, where z_2
depends on z_1). A model without ``sample_q`` gets the reference's two passes.

The Renyi bound [Li & Turner 2016] L = (1/e) log (1/k) sum_i w_i^e, e = 1 - alpha, has the
reparameterised gradient sum_i wbar_i d log w_i, wbar = softmax(e log w). Its score part,
-sum_i wbar_i d/dphi log q(z_i|x), is turned into a path term by the same identity Tucker et
al. use, E_q[f(z) d/dphi log q(z)] = E[df/dz dz/dphi] for f = wbar_i as a function of z_i
(smooth in z_i, phi held fixed inside it): d wbar_i / d log w_i = e wbar_i (1 - wbar_i), so
    encoder: sum_i (wbar_i - e wbar_i (1 - wbar_i)) d log w_i/d z_i d z_i/d phi
           = sum_i (alpha wbar_i + (1 - alpha) wbar_i^2) d log w_i/d z_i d z_i/d phi,
w~^2 at alpha = 0 (IWAE) and the ELBO's path (STL) term wbar_i = 1/k at alpha = 1. Unbiased
for the gradient of the same bound; tests/test_family.py checks it against the standard
estimator, and that the IWAE factor w~ in its place is detected as biased. (Doubly
reparameterised gradients of this bound, which Daudel et al. call VR-IWAE, are analysed in
arXiv 2210.06226 and 2410.12035.) The factor multiplying the decoder's weights is
``Objective.dreg_factor``. Not VR-max: its weights (an indicator of the best sample) are not
smooth in z, and the identity fails there.
"""
from .pullback import require_reparameterised

SUPPORTS = ("iwae", "miwae", "piwae", "renyi")
PATHWISE = True             # differentiates through the samples z


def gradients(f, params, x, objective):
    require_reparameterised(f.discrete, "dreg")
    k = objective.k
    if not f.has_sample_q:
        log_w, pullback = f.vjp(lambda p: f.log_weights(p, x, k, stop_q=True), params)
        cot, value = objective.cotangent(log_w)
        (decoder,) = pullback(cot)
        encoder_cot = objective.cotangent(log_w, "encoder")[0] if objective.name == "piwae" else cot
        (encoder,) = pullback(encoder_cot * objective.dreg_factor(log_w))
        return value, f.by_group(encoder, decoder, "dreg")
    zs, encoder_pullback = f.vjp(lambda p: f.call("sample_q", p, x, k), params)
    log_w, pullback = f.vjp(lambda p, z: f.log_weights(p, x, k, stop_q=True, zs=z), params, zs)
    cot, value = objective.cotangent(log_w)
    decoder, grad_zs = pullback(cot)                              # grad_zs: [[k, B, d_l]]
    if objective.name == "piwae":                                 # the encoder's bound: MIWAE
        _, grad_zs = pullback(objective.cotangent(log_w, "encoder")[0])
    w = objective.dreg_factor(log_w).unsqueeze(-1)                # [k, B, 1]
    (encoder,) = encoder_pullback([g * w for g in grad_zs])
    return value, f.by_group(encoder, decoder, "dreg")

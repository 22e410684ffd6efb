"""Reweighted wake-sleep, wake phase for both networks [Bornschein & Bengio 2015].

With samples that carry no gradient and w~ = softmax(log w) held constant:
    decoder: ascend sum_i w~_i d/dtheta log p(x, z_i)  (the IWAE gradient for theta)
    encoder: ascend sum_i w~_i d/dphi   log q(z_i | x) (the wake-phase q update, which
             fits q to the self-normalised posterior estimate, minimising KL(p(z|x) || q))
Since log w = log p - log q and the samples are fixed, one backward pass of
-sum_i w~_i log w_i gives the decoder's gradient and the encoder's with its sign flipped.
Nothing is differentiated through z, so it trains models with discrete layers too
(BernoulliLayer, ``sbn_model``), as Bornschein & Bengio trained sigmoid belief nets.
"""
import torch

SUPPORTS = ("iwae",)


def gradients(f, params, x, objective):
    log_w, pullback = f.vjp(lambda p: f.log_weights(p, x, objective.k, stop_z=True), params)
    w = torch.softmax(log_w.detach(), 0)                          # [k, B]
    (grads,) = pullback(w / -log_w.shape[1])                      # of -mean_b sum_i w~_i log w_i
    encoder = tuple(-g for g in grads)
    value = -objective.value(log_w.detach()).mean()
    return value, f.by_group(encoder, grads, "rws")

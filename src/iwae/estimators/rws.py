"""Reweighted wake-sleep, wake phase for both networks [Bornschein & Bengio 2015].

With samples that carry no gradient and w~ = softmax(log w) held constant:
    decoder: ascend sum_i w~_i d/dtheta log p(x, z_i)  (the IWAE gradient for theta)
    encoder: ascend sum_i w~_i d/dphi   log q(z_i | x) (the wake-phase q update, which
             fits q to the self-normalised posterior estimate, minimising KL(p(z|x) || q))
Since log w = log p - log q, both come from one weighted sum of log w with opposite signs.
"""
import torch

SUPPORTS = ("iwae",)
log_weight_options = {"stop_z": True}


def surrogates(log_w, objective):
    weighted = (torch.softmax(log_w.detach(), 0) * log_w).sum(0).mean()  # sum_i w~_i log w_i
    return {"encoder": weighted, "decoder": -weighted}

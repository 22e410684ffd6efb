"""Doubly reparameterised gradients [Tucker, Lawson, Gu & Maddison 2019, eq. 5].

With log w computed with q's parameters stopped (z keeps its path gradient):
    encoder: sum_i w~_i^2  d log w_i / d z_i  d z_i / d phi
    decoder: sum_i w~_i    d log w_i / d theta      (the standard IWAE gradient)
with w~ = softmax(log w) held constant. Unbiased for the gradient of L_k, and its
signal-to-noise ratio does not decay with k. For MIWAE the weights are normalised within
each group of K samples and the groups averaged; for PIWAE the encoder takes the MIWAE
version and the decoder the IWAE gradient.
"""
import torch

SUPPORTS = ("iwae", "miwae", "piwae")
log_weight_options = {"stop_q": True}


def _encoder_surrogate(log_w, m):
    """-(1/M) sum_groups sum_i w~_i^2 log w_i, batch-averaged: [k, B] -> scalar."""
    k, batch = log_w.shape
    groups = log_w.reshape(m, k // m, batch)                     # [M, K, B]
    w = torch.softmax(groups.detach(), dim=1)
    return -(w.square() * groups).sum(1).mean()


def surrogates(log_w, objective):
    return {"encoder": _encoder_surrogate(log_w, objective.encoder_groups),
            "decoder": objective.decoder_surrogate(log_w)}

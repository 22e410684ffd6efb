"""The reparameterised gradient of the bound itself [Burda et al. 2016, eq. 14].

For IWAE, d/d(theta, phi) L_k = sum_i w~_i d log w_i with w~ = softmax(log w) held
constant; autograd through logsumexp computes exactly that.
"""

SUPPORTS = ("elbo", "iwae", "miwae", "ciwae", "piwae")
log_weight_options = {}


def surrogates(log_w, objective):
    """log_w [k, B] -> scalar (or per-group dict for PIWAE)."""
    return objective.surrogate(log_w)

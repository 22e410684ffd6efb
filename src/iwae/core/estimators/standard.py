"""The reparameterised gradient of the bound itself [Burda et al. 2016, eq. 14].

For IWAE, d/d(theta, phi) L_k = sum_i w~_i d log w_i with w~ = softmax(log w) held
constant: the bound's gradient with respect to the log weights, pulled back through the
model by one vector-Jacobian product. For PIWAE the encoder takes the MIWAE bound's.
The same for every bound of log w: for Renyi [Li & Turner 2016, eq. 12] the gradient is
sum_i wbar_i d log w_i with wbar = softmax((1 - alpha) log w), for VR-max the gradient of the
largest log w. It differentiates through z, so q's draws must be reparameterised.
"""
from .pullback import pull_back

SUPPORTS = ("elbo", "iwae", "miwae", "ciwae", "piwae", "renyi", "vr-max")
PATHWISE = True             # differentiates through the samples z


def gradients(f, params, x, objective):
    return pull_back(f, params, x, objective, "standard")

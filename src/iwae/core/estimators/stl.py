"""Sticking the landing [Roeder, Wu & Duvenaud 2017].

log q(z|x) is evaluated with q's parameters stopped; z keeps its path gradient. This drops
the score term sum_i w~_i d/dphi log q(z_i|x)|_z, whose expectation is zero for the ELBO;
for k > 1 the resulting IWAE encoder gradient is biased (Tucker et al. 2019, sec. 3), which
DReG corrects. When q equals the exact posterior, the encoder gradient is zero per sample.
The same holds for the Renyi bound (biased for alpha < 1 and k > 1: the dropped term is
-sum_i wbar_i d/dphi log q(z_i|x), whose expectation is not zero) and VR-max (biased: the
dropped term is -d/dphi log q(z_max|x) at the best sample).
"""
from .pullback import pull_back

SUPPORTS = ("elbo", "iwae", "miwae", "ciwae", "piwae", "renyi", "vr-max")
PATHWISE = True             # differentiates through the samples z


def gradients(f, params, x, objective):
    return pull_back(f, params, x, objective, "stl", stop_q=True)

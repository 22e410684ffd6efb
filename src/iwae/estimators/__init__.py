"""Gradient estimators: each turns one tensor of log weights into surrogate losses.

An estimator has ``log_weight_options`` (how the model must compute log w) and
``surrogates(log_w, objective)``, which returns either one scalar whose gradient is the
estimator's for every parameter, or a dict {"encoder": s_phi, "decoder": s_theta} when
q's parameters phi and p's parameters theta take different gradients.
"""
from . import dreg, rws, standard, stl

ESTIMATORS = {"standard": standard, "stl": stl, "dreg": dreg, "rws": rws}

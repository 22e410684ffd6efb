"""Gradient estimators: each turns the model's log weights into (loss, gradients).

An estimator module has ``SUPPORTS`` (the bounds it applies to) and
``gradients(f, params, x, objective)``: f is the model as a pure function of its parameters
(``iwae.core.objective.Functional``), params a tuple of tensors; it returns the loss
-mean(bound) and one gradient per parameter. The math of each is in its docstring.
"""
from . import dreg, reinforce, rws, standard, stl, vimco

ESTIMATORS = {"standard": standard, "stl": stl, "dreg": dreg, "rws": rws, "vimco": vimco, "reinforce": reinforce}

"""The math: densities, networks, models and their log weights, bounds, the objective and
the gradient estimators. Imports torch only, nothing else of iwae's."""

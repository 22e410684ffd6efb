"""iwae: importance weighted autoencoders and the estimators that came after them.

The boundary of the library is one tensor: ``model.log_weights(x, k) -> [k, batch]``.
Bounds (``iwae.bounds``) and gradient estimators (``iwae.estimators``) are functions of it;
``iwae.fit`` trains any module that has it. The package is split by role, each folder
importing only those below it (docs/architecture.md): core (the math), runtime, data,
evaluation, training, missing (iwae.Imputer), app (the command line).
"""
from .core import bounds, estimators
from .core.densities import Bernoulli, Gaussian, StudentT
from .core.model import (BernoulliLayer, BernoulliPrior, GaussianLayer, Model, paper_gaussian_layer, paper_model,
                         sbn_model)
from .core.nets import mlp
from .core.objective import loss
from .evaluation.annealing import ais, bdmc
from .evaluation.imputation import impute, multiple_impute
from .evaluation.likelihood import log_likelihood
from .training.fit import fit
from .training.rundir import load_model

__all__ = ["Bernoulli", "BernoulliLayer", "BernoulliPrior", "Gaussian", "GaussianLayer", "Imputer", "Model",
           "StudentT", "ais", "bdmc", "bounds", "estimators", "fit", "impute", "log_likelihood", "load_model", "loss",
           "mlp", "multiple_impute", "paper_gaussian_layer", "paper_model", "sbn_model"]
__version__ = "0.1.0"


def __getattr__(name):
    """iwae.Imputer, imported on first use: it needs scikit-learn, which ``import iwae`` does not load."""
    if name == "Imputer":
        try:
            from .missing.imputer import Imputer
        except ModuleNotFoundError as err:
            raise ImportError(f"iwae.Imputer needs {err.name}: pip install \"iwae[missing]\"") from None
        return Imputer
    raise AttributeError(f"module 'iwae' has no attribute {name!r}")

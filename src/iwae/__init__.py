"""iwae: importance weighted autoencoders and the estimators that came after them.

The boundary of the library is one tensor: ``model.log_weights(x, k) -> [k, batch]``.
Bounds (``iwae.bounds``) and gradient estimators (``iwae.estimators``) are functions of it;
``iwae.fit`` trains any module that has it.
"""
from . import bounds
from .annealing import ais, bdmc
from .densities import Bernoulli, Gaussian
from .evaluation import log_likelihood
from .loop import fit
from .model import GaussianLayer, Model, paper_gaussian_layer, paper_model
from .nets import mlp
from .objective import loss
from .rundir import load_model

__all__ = ["Bernoulli", "Gaussian", "GaussianLayer", "Model", "ais", "bdmc", "bounds", "fit", "log_likelihood",
           "load_model", "loss", "mlp", "paper_gaussian_layer", "paper_model"]
__version__ = "0.1.0"

"""The reparameterised gradient of a bound, pulled back through the model once, and the
check that a model's samples can be differentiated at all."""
import torch.nn as nn


def discrete_layer(model):
    """The first module of q (``model.encoder``, else the whole model) whose draws are not
    reparameterised (``reparameterised = False``: a BernoulliLayer), or None."""
    q = getattr(model, "encoder", None)
    modules = q.modules() if isinstance(q, nn.Module) else model.modules()
    return next((m for m in modules if getattr(m, "reparameterised", True) is False), None)


def require_reparameterised(layer, estimator):
    """ValueError in one line when an estimator that differentiates through the samples z
    (``PATHWISE``) meets a q layer whose draws carry no gradient (``discrete_layer``)."""
    if layer is not None:
        raise ValueError(f"estimator {estimator!r} differentiates through the samples z, and a "
                         f"{type(layer).__name__} draws discrete ones without a gradient; use "
                         f"estimator 'vimco' (any bound) or 'rws' (the iwae bound)")


def pull_back(f, params, x, objective, estimator, **options):
    """(loss, gradients) of the reparameterised bound at log weights computed with options:
    one forward, one backward (two for PIWAE, whose encoder follows another bound)."""
    require_reparameterised(f.discrete, estimator)
    log_w, pullback = f.vjp(lambda p: f.log_weights(p, x, objective.k, **options), params)
    cot, value = objective.cotangent(log_w)
    (grads,) = pullback(cot)
    if objective.name == "piwae":
        (encoder,) = pullback(objective.cotangent(log_w, "encoder")[0])
        grads = f.by_group(encoder, grads, estimator)
    return value, grads

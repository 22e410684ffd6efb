"""The reparameterised gradient of a bound, pulled back through the model once."""
from torch.func import vjp


def pull_back(f, params, x, objective, estimator, **options):
    """(loss, gradients) of the reparameterised bound at log weights computed with options:
    one forward, one backward (two for PIWAE, whose encoder follows another bound)."""
    log_w, pullback = vjp(lambda p: f.log_weights(p, x, objective.k, **options), params)
    cot, value = objective.cotangent(log_w)
    (grads,) = pullback(cot)
    if objective.name == "piwae":
        (encoder,) = pullback(objective.cotangent(log_w, "encoder")[0])
        grads = f.by_group(encoder, grads, estimator)
    return value, grads

"""What a trained model's units do: active units, their KL to the prior, and the
effective sample size of the log weights."""
import torch
import torch.nn.functional as F

from ..core.densities import reparameterize
from ..runtime.rng import forked_rng
from .likelihood import EVAL_SEED, fixed_binarization

ACTIVE_UNIT_EXAMPLES = 500  # training images whose encodings count the active units
INFORMATIVE_NATS = 0.05     # a unit with mean KL(q || its prior) above this carries information


@torch.no_grad()
def active_units(model, x, threshold=1e-2):
    """Active units per stochastic layer [Burda et al. 2016, sec. 5.2].

    A_u = Cov_x(E_{q(u|x)}[u]) over the examples x [N, D]; a unit is active if A_u > threshold.
    The upper layers' means are taken at one sample of the layer below (as the paper's code).
    Returns (counts per layer, variances per layer [[d_l]]).
    """
    variances = [mu.var(0, correction=0) for mu in model.encode(x)]
    return [int((v > threshold).sum()) for v in variances], variances


@torch.no_grad()
def unit_kl(model, x):
    """KL(q(u | z_{l-1}) || p(u | z_{l+1})) per unit of every stochastic layer, in nats,
    averaged over the examples x [N, D] at one sample per layer: [[d_l]].

    The prior of the top layer is the model's p(z_L) (N(0, I), or a learned Bernoulli); a lower
    layer's is the generative layer above it. A unit with KL near 0 tells the decoder nothing
    about x that the layer above does not, even where Burda's A_u counts it active: a
    lower-layer unit whose posterior mean follows its prior's mean p(u | z_{l+1}) varies with x
    and passes the 1e-2 threshold. Needs a Model (encoder, decoder_layers, prior) whose layers
    are GaussianLayers or BernoulliLayers, q and p alike layer by layer.
    """
    qs, h = [], model.encoder_input(*model.observe(x)) if callable(getattr(model, "observe", None)) else x
    for layer in model.encoder:
        out = layer(h)                                            # (mu, log sigma) or logits [N, d_l]
        h = _draw(layer, out)
        qs.append((out, h))
    top = qs[-1][0]
    priors = [(torch.zeros_like(top[0]), torch.zeros_like(top[1])) if isinstance(top, tuple)
              else model.prior.logits.expand_as(top)]
    for layer, (_, above) in zip(model.decoder_layers, reversed(qs[1:])):
        priors.insert(0, layer(above))                            # p(z_l | z_{l+1})
    return [_kl(q, p).mean(0) for (q, _), p in zip(qs, priors)]


def _draw(layer, out):
    """One sample of a layer's units from its output."""
    if isinstance(out, tuple):
        return reparameterize(*out)
    return layer.draw(out)[1]


def _kl(q, p):
    """KL per unit: of two diagonal Gaussians (mu, log sigma), or two Bernoullis (logits)."""
    if isinstance(q, tuple):
        (mu_q, log_sq), (mu_p, log_sp) = q, p
        return log_sp - log_sq + (torch.exp(2 * log_sq) + (mu_q - mu_p).square()) / (2 * torch.exp(2 * log_sp)) - 0.5
    prob = torch.sigmoid(q)            # KL = q (log q - log p) + (1 - q) (log(1 - q) - log(1 - p))
    return (prob * (F.logsigmoid(q) - F.logsigmoid(p))
            + (1 - prob) * (F.logsigmoid(-q) - F.logsigmoid(-p)))


def effective_sample_size(log_w):
    """Kish's effective sample size of the normalised weights, 1 / sum_i w~_i^2 with
    w~ = softmax(log w) over the k samples of each datapoint: [k, B] -> [B], in [1, k]
    (k when all weights are equal, 1 when one sample carries all of it)."""
    return 1.0 / torch.softmax(log_w, 0).square().sum(0)


def units(model, train_x, binarization, seed=EVAL_SEED):
    """Active and informative units of a model on the first ACTIVE_UNIT_EXAMPLES training
    images: active_units and unit_variances (Burda's A_u), informative_units and unit_kl."""
    with forked_rng(train_x.device):
        torch.manual_seed(seed)
        units_x = fixed_binarization(train_x[:ACTIVE_UNIT_EXAMPLES].cpu(), binarization, seed).to(train_x.device)
        counts, variances = active_units(model, units_x)
        kl = unit_kl(model, units_x)
    return {"active_units": counts, "unit_variances": [v.tolist() for v in variances],
            "informative_units": [int((u > INFORMATIVE_NATS).sum()) for u in kl],
            "unit_kl": [u.tolist() for u in kl]}

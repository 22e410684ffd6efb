"""Imputation of missing entries by importance sampling [Mattei & Frellsen 2019, sec. 3].

For x = (x_o, x_m) with mask s (True = observed), at L draws z_l ~ q(z | x_o) with
normalised weights w~_l = softmax_l(log w_l), log w_l = log p(x_o | z_l) + log p(z_l)
- log q(z_l | x_o) (the model's masked ``log_weights``):

- single imputation: E[x_m | x_o] ~= sum_l w~_l E[x_m | z_l], self-normalised importance
  sampling with the likelihood's conditional *mean* at each z_l (not a sampled x, whose
  noise would only add variance); for a likelihood with ``statistics`` and ``point``
  (categorical and ordinal columns, ``iwae.core.tabular``) the weighted average is taken of
  its statistics (the category probabilities: the mixture sum_l w~_l p(x_m | z_l)) and
  ``point`` reads the imputation from them (the mixture's mode or median, a category);
- multiple imputation: sampling importance resampling: L pairs (z_l, x_l ~ p(x | z_l)),
  then m draws of l with probabilities w~_l (with replacement, by inverse-CDF sampling),
  each giving x_m = x_l's missing entries.

Values missing not at random [Ipsen, Mattei & Frellsen 2021]: for a model with a missingness
model p(s | x) (``model.missingness``) the weights include log p(s | x_o, x_m,l) at a draw
x_m,l ~ p(x_m | z_l), so the single imputation is sum_l w~_l x_m,l (the sampled x_m,l the
weights were computed at, not the likelihood's mean: p(s | x) weighs the draws, not z alone)
and the multiple imputations resample those same pairs (z_l, x_m,l).

Observed entries come back exactly as given. A row with nothing observed is imputed from
the prior (its weights are p(z) / q(z | 0)). Both need a model with ``sample_q(x, k,
mask)``, ``log_weights(x, k, mask=, zs=, params=)``, ``decode`` and ``likelihood`` (iwae.Model).
"""
import torch

from ..core.bounds import iwae_bound
from ..core.validate import positive_int

DRAWS = 1000               # L, the importance samples per row
CHUNK_ELEMENTS = 2 ** 18   # rows are taken in chunks of about this many L x rows x D numbers (a chunk's
                           # activations then stay in cache: docs/speed.md)


def _mask_of(x, mask):
    if mask is None:
        mask = ~torch.isnan(x)
    if mask.shape != x.shape or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor shaped like x {list(x.shape)}, got "
                         f"{mask.dtype} {list(mask.shape)}")
    return mask


def _chunks(x, draws):
    rows = max(1, CHUNK_ELEMENTS // max(1, draws * x.shape[1]))
    return range(0, x.shape[0], rows), rows


def _weighted_draws(model, x, mask, draws):
    """(log w [L, B], likelihood parameters [L, B, P], x ~ p(x | z) [L, B, D] or None) at L
    draws z ~ q(z | x_o); the draws x are those a missingness model's weights were taken at."""
    zs = model.sample_q(x, draws, mask)
    if getattr(model, "missingness", None) is None:
        params = model.decode(zs[0])
        return model.log_weights(x, draws, mask=mask, zs=zs, params=params), params, None
    params, xm = model.sample_missing(zs)
    return model.log_weights(x, draws, mask=mask, zs=zs, xm=xm, params=params), params, xm


def _resample(log_w, m):
    """m indices l per column of log_w [L, B], drawn with probabilities softmax(log w)
    (inverse-CDF sampling of the normalised weights; with replacement): [m, B]."""
    cdf = torch.softmax(log_w.double(), 0).cumsum(0).T.contiguous()      # [B, L]
    u = torch.rand(cdf.shape[0], m, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).clamp_max(log_w.shape[0] - 1).T


@torch.no_grad()
def impute(model, x, mask=None, draws=DRAWS, *, bound=False):
    """Single imputation: x [B, D] with each missing entry replaced by sum_l w~_l E[x_j | z_l].

    mask: [B, D] bool, True = observed (default: ~isnan(x)). Returns a new tensor; the
    observed entries are x's, bit for bit. bound: also return L_draws of log p(x_o) (of
    log p(x_o, s) with a missingness model) per row, float64 [B]: iwae_bound of the same
    draws' log weights, so that the imputation and the bound take one pass (the filled
    tensor is the same, bit for bit).
    """
    positive_int("draws", draws)

    def fill(xb, mb, log_w, params, xm):
        w = torch.softmax(log_w, 0).unsqueeze(-1)                       # [L, B, 1]
        if xm is not None:
            filled = torch.where(mb, xb, (w * xm).sum(0).to(xb.dtype))
        else:
            like = model.likelihood
            mean = (w * getattr(like, "statistics", like.mean)(params)).sum(0)          # [B, S]
            point = getattr(like, "point", None)
            filled = torch.where(mb, xb, (mean if point is None else point(mean)).to(xb.dtype))
        return (filled, iwae_bound(log_w.double())) if bound else filled
    out = _fill_chunks(model, x, mask, draws, fill)
    if not bound:
        return torch.cat(out) if out else x.clone()
    if not out:
        return x.clone(), torch.zeros(0, dtype=torch.float64, device=x.device)
    return torch.cat([f for f, _ in out]), torch.cat([b for _, b in out])


@torch.no_grad()
def multiple_impute(model, x, m, mask=None, draws=DRAWS):
    """m multiple imputations by sampling importance resampling: [m, B, D].

    Each of the m draws picks one of L pairs (z_l, x_l ~ p(x | z_l)) with probability w~_l
    (independently, with replacement) and fills the missing entries with x_l's; the observed
    entries are x's, bit for bit.
    """
    positive_int("m", m)
    positive_int("draws", draws)

    def fill(xb, mb, log_w, params, xm):
        sampled = model.likelihood.sample(params) if xm is None else xm  # [L, B, D]
        pick = _resample(log_w, m)                                      # [m, B]: l per draw
        index = pick.unsqueeze(-1).expand(m, xb.shape[0], xb.shape[1])  # [m, B, D]
        return torch.where(mb, xb, sampled.gather(0, index).to(xb.dtype))
    out = _fill_chunks(model, x, mask, draws, fill)
    return torch.cat(out, 1) if out else x.expand(m, *x.shape).clone()


def _fill_chunks(model, x, mask, draws, fill):
    """fill(x_chunk, mask_chunk, log_w, params, x_m) over chunks of x's rows, each with its
    L = draws weighted draws (_weighted_draws); the list of what fill returns."""
    mask = _mask_of(x, mask)
    starts, rows = _chunks(x, draws)
    out = []
    for start in starts:
        xb, mb = x[start:start + rows], mask[start:start + rows]
        out.append(fill(xb, mb, *_weighted_draws(model, xb, mb, draws)))
    return out

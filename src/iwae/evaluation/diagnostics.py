"""Gradient diagnostics (``iwae diagnose``): signal-to-noise ratio, variance and bias of every estimator.

At fixed parameters (a run's checkpoint, or any model), each estimator's gradient is drawn
``draws`` times on one fixed minibatch, every draw with its own seed, and summarised
separately for the encoder (phi) and the decoder (theta):

- per-parameter SNR = |mean| / std over the draws, summarised as its mean and median over
  parameters, and the norm SNR ||E g|| / sqrt(E ||g - E g||^2) [Rainforth et al. 2018];
- the gradient variance, sum over parameters of the per-parameter variances;
- a bias check against the standard IWAE gradient at the same k, drawn with independent
  seeds: per-parameter Welch t statistics (max |t|, the fraction with |t| > 3) and Welch t
  on a few fixed random projections of the whole gradient.

The t statistics only test for a bias when the estimator targets the same expectation as
the reference: each result carries ``same_expectation`` (per group) to say whether it does.
STL's IWAE encoder gradient is biased for k > 1, DReG's is not [Tucker et al. 2019]; RWS's
encoder follows the wake-phase q update, MIWAE/CIWAE follow other bounds.
Nothing is stored per draw but a few projections: moments run in float64 (Welford).
"""
import math
import time
from dataclasses import dataclass

import torch

from ..core.estimators.pullback import discrete_layer
from ..core.objective import ALIASES, check
from ..core.objective import loss as iwae_loss
from ..runtime.compile import flushed_subnormals
from ..runtime.rng import forked_rng

DEFAULT_K = (1, 10, 100, 1000)
REFERENCE = "iwae+standard"
REFERENCE_SEED_OFFSET = 1_000_003     # the reference draws' seeds: independent of the estimators'
PROJECTIONS = 8
BIAS_T = 3.0

# short names for the configurations the library supports
SHORT = {"standard": "iwae+standard", "stl": "iwae+stl", "dreg": "iwae+dreg", "rws": "iwae+rws",
         "vimco": "iwae+vimco", "reinforce": "iwae+reinforce",
         "miwae": "miwae+standard", "piwae": "piwae+standard", "ciwae": "ciwae+standard",
         "vae": "elbo+standard", "elbo": "elbo+standard"}
DEFAULT_ESTIMATORS = ("standard", "stl", "dreg", "rws", "miwae", "piwae", "ciwae")


@dataclass(frozen=True)
class Spec:
    """One estimator configuration: a bound and a gradient estimator (M = K = sqrt(k) by default)."""

    objective: str
    estimator: str
    beta: float | None = None
    m: int | None = None               # None: M = sqrt(k) for miwae/piwae

    @property
    def name(self):
        return f"{self.objective}+{self.estimator}"

    @property
    def grouped(self):
        return self.objective in ("miwae", "piwae")

    def groups(self, k):
        """M for this k, or (None, why it is skipped)."""
        if not self.grouped:
            return None, None
        if self.m is not None:
            return (self.m, None) if k % self.m == 0 else (None, f"M={self.m} does not divide k={k}")
        root = math.isqrt(k)
        if root * root != k:
            return None, f"M = K = sqrt(k) needs a perfect square k, got {k}"
        return root, None

    def targets(self):
        """What the estimator's expectation is, in words."""
        bound = {"iwae": "L_k", "elbo": "the k-sample ELBO", "miwae": "MIWAE(M, K)",
                 "ciwae": f"CIWAE(beta={self.beta})", "piwae": "L_k (decoder), MIWAE(M, K) (encoder)"}
        what = bound[self.objective]
        if self.estimator == "rws":
            return "decoder: grad L_k; encoder: the wake-phase q update (fits KL(p||q), not L_k)"
        if self.estimator == "stl":
            return f"grad {what}, encoder biased for k > 1 (score term dropped)"
        if self.estimator == "dreg":
            return f"grad {what} (unbiased, doubly reparameterised encoder)"
        return f"grad {what}"

    def same_expectation(self, k, m):
        """Whether E[g] equals the standard IWAE gradient's, per group, at this k and M."""
        if self.objective == "iwae":
            encoder = self.estimator in ("standard", "dreg") or (self.estimator == "stl" and k == 1)
            return {"encoder": encoder, "decoder": True}
        same_bound = k == 1 or (self.grouped and m == 1)      # the bound is L_k there
        encoder = same_bound and (self.estimator != "stl" or k == 1)
        if self.objective == "piwae":                          # its decoder follows L_k
            return {"encoder": encoder, "decoder": True}
        return {"encoder": encoder, "decoder": same_bound}


def parse_estimators(text, beta=0.5, m=None):
    """'standard,stl,dreg' or 'miwae+dreg,ciwae' -> [Spec]; ValueError for unknown/invalid ones."""
    names = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if not names:
        raise ValueError("no estimators given")
    specs = []
    for name in names:
        full = SHORT.get(name, name)
        if "+" not in full:
            raise ValueError(f"unknown estimator {name!r}; use one of {', '.join(DEFAULT_ESTIMATORS)} "
                             f"or bound+estimator (e.g. miwae+dreg)")
        objective, estimator = full.split("+", 1)
        objective = ALIASES.get(objective, objective)
        spec = Spec(objective, estimator, beta if objective == "ciwae" else None,
                    m if objective in ("miwae", "piwae") else None)
        groups = (m or 2) if spec.grouped else None
        check(objective, estimator, 2 * (groups or 2), groups, spec.beta)    # raises ValueError
        if spec in specs:
            raise ValueError(f"estimator {spec.name} given twice")
        specs.append(spec)
    return specs


def specs_of(estimators):
    """Specs as given, or parsed from names (parse_estimators)."""
    if not isinstance(estimators, str) and all(isinstance(e, Spec) for e in estimators):
        return list(estimators)
    return parse_estimators(estimators)


def parse_ks(text):
    """'1,10,100' -> [1, 10, 100] (sorted, unique); ValueError otherwise."""
    try:
        ks = sorted({int(t) for t in str(text).split(",") if t.strip()})
    except ValueError:
        raise ValueError(f"--k expects comma-separated integers, got {text!r}") from None
    if not ks or ks[0] < 1:
        raise ValueError(f"--k expects integers >= 1, got {text!r}")
    return ks


class _Moments:
    """Running mean and variance (Welford, float64) of flat gradients, plus fixed projections."""

    def __init__(self, size, projections):
        self.n, self.mean, self.m2 = 0, torch.zeros(size, dtype=torch.float64), torch.zeros(size, dtype=torch.float64)
        self.projections, self.projected = projections, []

    def add(self, g):
        """One draw g [size] (on any device: the moments move there with the first draw)."""
        if self.n == 0:
            self.mean, self.m2 = self.mean.to(g.device), self.m2.to(g.device)
            self.projections = self.projections.to(g.device)
        self.n += 1
        delta = g - self.mean                      # Welford: m2 += delta * (g - new mean)
        self.mean.add_(delta, alpha=1.0 / self.n)
        self.m2.addcmul_(delta, delta, value=1.0 - 1.0 / self.n)
        self.projected.append(self.projections @ g)

    @property
    def var(self):
        return self.m2 / max(self.n - 1, 1)


def _flat(grads, params):
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                      for g, p in zip(grads, params)]).double()


def draw_moments(model, x, k, spec, m, draws, seed, groups, projections):
    """Moments of each parameter group's gradient over `draws` seeded draws."""
    params = [p for _, ps in groups for p in ps]
    sizes = [sum(p.numel() for p in ps) for _, ps in groups]
    stats = {name: _Moments(size, proj) for (name, _), size, proj in zip(groups, sizes, projections)}
    for d in range(draws):
        torch.manual_seed(seed + d)
        loss = iwae_loss(model, x, k, spec.objective, spec.estimator, m=m, beta=spec.beta)
        flat = _flat(torch.autograd.grad(loss, params, allow_unused=True), params)
        for (name, _), part in zip(groups, flat.split(sizes)):
            stats[name].add(part)
    return stats


def random_projections(sizes):
    """PROJECTIONS fixed random unit directions per group (the same for every estimator)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for size in sizes:
        p = torch.randn(PROJECTIONS, size, generator=g, dtype=torch.float64)
        out.append(p / p.norm(dim=1, keepdim=True))
    return out


def _welch(mean1, var1, n1, mean2, var2, n2):
    se = torch.sqrt(var1 / n1 + var2 / n2)
    ok = se > 0
    return (mean1[ok] - mean2[ok]) / se[ok], int((~ok).sum())


def summarize(stats, reference=None):
    """One group's moments -> SNR, variance and (against reference moments) the bias check."""
    mean, var = stats.mean, stats.var
    std = var.sqrt()
    varying = std > 0
    snr = mean[varying].abs() / std[varying]
    total_var = var.sum().item()
    out = {"n_params": mean.numel(), "n_constant": int((~varying).sum()),
           "snr_mean": snr.mean().item() if snr.numel() else float("nan"),
           "snr_median": snr.median().item() if snr.numel() else float("nan"),
           "snr_norm": mean.norm().item() / math.sqrt(total_var) if total_var > 0 else float("inf"),
           "mean_norm": mean.norm().item(), "variance": total_var}
    if reference is not None:
        t, skipped = _welch(mean, var, stats.n, reference.mean, reference.var, reference.n)
        a, b = torch.stack(stats.projected), torch.stack(reference.projected)      # [n, P]
        pt, _ = _welch(a.mean(0), a.var(0), a.shape[0], b.mean(0), b.var(0), b.shape[0])
        out["bias"] = {"max_abs_t": t.abs().max().item() if t.numel() else 0.0,
                       "frac_abs_t_gt_3": (t.abs() > BIAS_T).double().mean().item() if t.numel() else 0.0,
                       "mean_abs_t": t.abs().mean().item() if t.numel() else 0.0,
                       "n_tested": t.numel(), "projection_t": [round(v, 4) for v in pt.tolist()],
                       "max_abs_projection_t": pt.abs().max().item() if pt.numel() else 0.0}
    return out


def diagnose_model(model, x, ks=DEFAULT_K, estimators=DEFAULT_ESTIMATORS, *, draws=100, seed=0,
                   progress=None):
    """Gradient diagnostics at the model's current parameters on the minibatch x [B, D].

    estimators: Specs or names (see ``parse_estimators``). Returns a JSON-ready dict with
    "estimators" (what each targets), "results" (one entry per estimator and k, each with
    "encoder" and "decoder" summaries) and "skipped". The caller's RNG state is untouched.
    """
    check_draws(draws)
    specs = specs_of(estimators)
    ks = parse_ks(",".join(map(str, ks)))
    groups = [("encoder", [p for p in model.encoder_parameters() if p.requires_grad]),
              ("decoder", [p for p in model.decoder_parameters() if p.requires_grad])]
    reference = reference_of(model)
    projections = random_projections([sum(p.numel() for p in ps) for _, ps in groups])
    results, skipped = [], []
    with forked_rng(x.device), flushed_subnormals(x.device):
        for k in ks:
            started = time.perf_counter()
            ref = draw_moments(model, x, k, reference, None, draws, seed + REFERENCE_SEED_OFFSET, groups,
                        projections)
            ref_seconds = time.perf_counter() - started
            for spec in specs:
                m, why = spec.groups(k)
                if why:
                    skipped.append({"estimator": spec.name, "k": k, "reason": why})
                    continue
                started = time.perf_counter()
                stats = draw_moments(model, x, k, spec, m, draws, seed, groups, projections)
                entry = {"estimator": spec.name, "k": k, "m": m,
                         "same_expectation": spec.same_expectation(k, m),
                         "seconds": round(time.perf_counter() - started, 3)}
                for name, _ in groups:
                    entry[name] = summarize(stats[name], ref[name])
                results.append(entry)
                if progress:
                    progress(entry)
            results.append({"estimator": f"{reference.name} (reference)", "reference": True, "k": k, "m": None,
                            "seconds": round(ref_seconds, 3),
                            **{name: summarize(ref[name]) for name, _ in groups}})
    return {"k": ks, **header(specs, draws, int(x.shape[0]), seed, reference.name), "results": results,
            "skipped": skipped}


def reference_of(model):
    """The unbiased gradient of L_k the others are compared with: the reparameterised one
    (REFERENCE), or VIMCO's for a model whose q draws binary units (no reparameterisation)."""
    return Spec("iwae", "vimco") if discrete_layer(model) is not None else Spec(*REFERENCE.split("+"))


def check_draws(draws):
    """draws if it is an integer >= 2 (a variance needs two), else ValueError."""
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 2:
        raise ValueError(f"draws must be an integer >= 2, got {draws!r}")
    return draws


def header(specs, draws, examples, seed, reference=REFERENCE):
    """The settings a diagnosis records beside its results."""
    return {"draws": draws, "examples": examples, "seed": seed,
            "reference": f"{reference}, drawn with independent seeds (seed + {REFERENCE_SEED_OFFSET} + draw)",
            "estimators": [{"name": s.name, "objective": s.objective, "estimator": s.estimator,
                            "beta": s.beta, "m": s.m if s.m is not None else ("sqrt(k)" if s.grouped else None),
                            "targets": s.targets()} for s in specs]}


def format_table(result):
    """A plain-text table of the results (one line per estimator and k)."""
    lines = [f"{'estimator':<18} {'k':>5} {'M':>3} | {'enc SNR mean':>12} {'median':>8} {'norm':>8} "
             f"{'variance':>10} | {'dec SNR mean':>12} {'norm':>8} | {'enc max|t|':>10} {'>3':>6} "
             f"{'proj':>6} | {'dec max|t|':>10} | same E[g] (enc/dec)"]
    for r in result["results"]:
        e, d = r["encoder"], r["decoder"]
        eb, db = e.get("bias"), d.get("bias")
        same = r.get("same_expectation")
        lines.append(
            f"{r['estimator'][:18]:<18} {r['k']:>5} {r['m'] if r['m'] else '':>3} | {e['snr_mean']:>12.4g} "
            f"{e['snr_median']:>8.3g} {e['snr_norm']:>8.3g} {e['variance']:>10.4g} | {d['snr_mean']:>12.4g} "
            f"{d['snr_norm']:>8.3g} | "
            + (f"{eb['max_abs_t']:>10.3g} {eb['frac_abs_t_gt_3']:>6.3f} {eb['max_abs_projection_t']:>6.2f} | "
               f"{db['max_abs_t']:>10.3g} | {'yes' if same['encoder'] else 'no'}/{'yes' if same['decoder'] else 'no'}"
               if eb else f"{'':>10} {'':>6} {'':>6} | {'':>10} | (reference)"))
    for s in result["skipped"]:
        lines.append(f"skipped {s['estimator']} at k={s['k']}: {s['reason']}")
    return "\n".join(lines)

"""Annealed importance sampling with HMC, and bidirectional Monte Carlo.

L_5000 is a lower bound on log p(x); how far below, AIS says [Neal 2001; Wu, Burda,
Salakhutdinov & Grosse 2017]. For each x, chains move along the geometric path
    log f_b(z) = log f_0(z) + b * g(z),   g = log p(x, z) - log f_0(z),   b: 0 -> 1,
from f_0 = q(z | x) (init="q") or the prior p(z) (init="prior") to f_1 = p(x, z), whose
normaliser is p(x). Each chain accumulates log w = sum_t (b_t - b_{t-1}) g(z_{t-1}) in
float64, with z_t from an HMC transition that leaves f_{b_t} invariant (``leapfrog``
steps); the estimate is log mean_chains w, a stochastic lower bound on log p(x) (E[w] =
p(x)). A transition leaves f_{b_t} invariant only if its step size does not depend on the
chain's own state or history: the step sizes (one per datapoint and block of temperatures,
toward TARGET_ACCEPT acceptance) come from a short pilot run with its own random numbers and
are frozen before the counted chains start (pilot_step_sizes); each transition multiplies its
step size by a random factor (STEP_JITTER), drawn independently of the chains' states.
Adapting them from the
counted chains' own acceptances made the estimate too high: +0.026 +- 0.006 nats on a
linear-Gaussian model with a closed-form log p(x) (issue 30).

BDMC [Grosse, Ghahramani & Adams 2015]: on data simulated from the model, (x, z) ~ p, the
exact posterior sample z starts the reverse chain (b: 1 -> 0), whose weight has
E[w_rev] = 1 / p(x): -log mean w_rev is a stochastic upper bound. The gap between the two
bounds bounds the error of forward AIS on such data.

A model needs ``log_joint``, ``log_prior``, ``log_p_x_given_z``, ``log_q``, ``sample_q`` and
``sample_prior`` (iwae.Model has them), with latents as lists [[chains, B, d_l]].
"""
import math
import time
import weakref

import torch
from tqdm import tqdm

from ..core.validate import positive_int
from ..runtime.compile import compiled, flushed_subnormals
from ..runtime.decisions import compiles_gradients, decide
from ..runtime.rng import forked_rng

SCHEDULES = ("sigmoid", "linear")
STEPS, CHAINS, LEAPFROG = 2000, 8, 5   # the defaults, from results/ais_study.md (python -m benchmarks.ais_study)
INITS = ("q", "prior")
TARGET_ACCEPT = 0.65
PILOT_ADAPT = 0.5               # the pilot's log step size moves by PILOT_ADAPT * (mean accepted - TARGET_ACCEPT)
PILOT_WARMUP = 20               # the pilot's first transitions, at b = 0, move eps from step_size
STEP_JITTER = 0.9               # each transition's step size is eps x U(1 - STEP_JITTER, 1 + STEP_JITTER)
PILOT_REPEATS = 1               # the pilot's transitions (and adaptations) at each of its temperatures
PILOT_FRACTION = 0.1            # pilot="auto": the pilot runs through this fraction of the steps' temperatures
NEEDS = ("log_joint", "log_prior", "log_p_x_given_z", "log_q", "sample_q", "sample_prior")


def inverse_temperatures(steps, kind="sigmoid", sharpness=4.0):
    """The inverse temperatures b_0 = 0 < b_1 < ... < b_T = 1: float64 [steps + 1].

    linear: t / T; sigmoid: sigma(sharpness (2t/T - 1)) rescaled to [0, 1], denser at both
    ends [Grosse et al. 2015]."""
    if kind not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {kind!r}")
    t = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if kind == "linear":
        return t
    s = torch.sigmoid(sharpness * (2 * t - 1))
    return (s - s[0]) / (s[-1] - s[0])


def require_continuous(model, what):
    """ValueError unless every stochastic layer of model's q draws continuous z; `what` starts
    the message ("... needs continuous ones")."""
    discrete = [type(layer).__name__ for layer in getattr(model, "encoder", ())
                if not getattr(layer, "reparameterised", True)]
    if discrete:
        raise ValueError(f"{what} needs continuous latent variables; this model has {discrete[0]}s (binary "
                         "units): evaluate it by L_k (iwae.log_likelihood, iwae evaluate --method iwae)")


def check(model, steps, chains, leapfrog, init, kind):
    missing = [name for name in NEEDS if not callable(getattr(model, name, None))]
    if missing:
        raise ValueError(f"AIS needs the model's {', '.join(missing)} (iwae.Model has them); "
                         f"{type(model).__name__} lacks them")
    require_continuous(model, "AIS moves the latent variables by Hamiltonian Monte Carlo, which")
    for name, value in (("steps", steps), ("chains", chains), ("leapfrog", leapfrog)):
        positive_int(name, value)
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    inverse_temperatures(1, kind)


def _terms(model, init, x, zs):
    """(log f_0, g) at zs [[C, B, d_l]] for x [B, D], each [C, B]."""
    if init == "q":
        log_f0 = model.log_q(x, zs)
        return log_f0, model.log_joint(x, zs) - log_f0
    return model.log_prior(zs), model.log_p_x_given_z(x, zs)


def _energy(zs, model, init, x, beta):
    log_f0, g = _terms(model, init, x, zs)
    log_f = log_f0 + beta * g                                     # [C, B]
    return log_f.sum(), (log_f, g)


def _start(model, init, x, chains):
    """zs ~ f_0: [[C, B, d_l]]."""
    if init == "q":
        return [z.detach() for z in model.sample_q(x, chains)]
    return [z.detach().view(chains, x.shape[0], -1) for z in model.sample_prior(chains * x.shape[0])]


def hmc(model, x, zs, beta, step_size, leapfrog, init="q"):
    """One HMC transition leaving f_beta invariant, for every chain and datapoint at once.

    x [B, D]; zs [[C, B, d_l]]; beta: a 0-d tensor; step_size [C, B]. Returns (zs, accepted
    [C, B] bool, g [C, B] at the zs it started from). A proposal with a non-finite energy is
    rejected. A pure function of tensors (gradients by torch.func.grad), compiled whole."""
    at = torch.func.grad(_energy, has_aux=True)
    grad0, (log_f0, g0) = at(zs, model, init, x, beta)
    eps = step_size.unsqueeze(-1).to(zs[0].dtype)                 # [C, B, 1]
    momenta = [torch.randn_like(z) for z in zs]
    kinetic0 = sum(0.5 * m.square().sum(-1) for m in momenta)
    p = [m + 0.5 * eps * g for m, g in zip(momenta, grad0)]
    q = list(zs)
    for i in range(leapfrog):
        q = [a + eps * b for a, b in zip(q, p)]
        grads, (log_f, _) = at(q, model, init, x, beta)
        half = 0.5 if i == leapfrog - 1 else 1.0
        p = [b + half * eps * g for b, g in zip(p, grads)]
    kinetic = sum(0.5 * m.square().sum(-1) for m in p)
    log_ratio = (log_f.double() - kinetic.double()) - (log_f0.double() - kinetic0.double())
    accepted = torch.log(torch.rand_like(log_ratio)) < torch.nan_to_num(log_ratio, nan=-math.inf)
    keep = accepted.unsqueeze(-1)
    return [torch.where(keep, a, z) for a, z in zip(q, zs)], accepted, g0


_compiled_hmc = {}
_compilable = weakref.WeakKeyDictionary()     # model -> decisions.compiles_gradients


def _transition(x, steps, compile):
    """hmc, or its compiled form when compile is "step", or "auto" and steps x N is large
    (iwae.runtime.decisions)."""
    if x.device.type == "meta" or decide(compile, "ais", steps * x.shape[0], x.device) == "off":
        return hmc
    return _compiled_transition


def _compiled_transition(model, x, zs, beta, step_size, leapfrog, init):
    """hmc compiled once per (device, dtype, batch, chains, leapfrog, init): each compiled
    function sees one shape, so that no shape exhausts another's recompile limit."""
    if model not in _compilable:
        _compilable[model] = compiles_gradients("ais", model, x)
    key = (x.device.type, x.dtype, tuple(x.shape), tuple(zs[0].shape), leapfrog, init, _compilable[model])
    if key not in _compiled_hmc:
        _compiled_hmc[key] = compiled(hmc, x.device) if _compilable[model] else hmc
    return _compiled_hmc[key](model, x, zs, beta, step_size, leapfrog, init)


def _anneal(model, init, x, zs, betas, transition, leapfrog, eps, bar):
    """Run the chains through betas (increasing: forward; decreasing: reverse), starting at
    zs [[C, B, d_l]], the transition to betas[i] with the fixed step sizes eps[i] [C, B];
    returns the float64 log weights [C, B] sum_t (b_t - b_{t-1}) g(z_{t-1})."""
    chains, B = zs[0].shape[:2]
    log_w = torch.zeros(chains, B, dtype=torch.float64, device=x.device)
    for i, (previous, beta) in enumerate(zip(betas[:-1].tolist(), betas[1:].tolist()), 1):
        b = torch.tensor(beta, dtype=zs[0].dtype, device=x.device)
        zs, _, g = transition(model, x, zs, b, _jittered(eps[i]), leapfrog, init)
        log_w += (beta - previous) * g.double()
        bar.update(1)
    return log_w


def pilot_step_sizes(model, init, x, chains, steps, pilot, schedule, transition, leapfrog, step_size, bar):
    """Step sizes for the counted chains, float64 [steps + 1, chains, B]: row i for the
    transition that leaves f_{b_i} invariant. A pilot AIS run of its own (its own chains
    from f_0, on the caller's random stream, which the caller forks) through `pilot`
    temperatures of the same schedule adapts one step size per datapoint from its chains'
    mean acceptance, log eps += PILOT_ADAPT * (mean accepted - TARGET_ACCEPT), first for
    PILOT_WARMUP transitions at b_0 = 0, then once at each temperature, and records it there; temperature i of the counted run takes the pilot's at the same
    point of the schedule (a block of steps / pilot temperatures each). pilot=0: step_size
    throughout."""
    B = x.shape[0]
    rows = torch.full((pilot + 1, B), step_size, dtype=torch.float64, device=x.device)
    if pilot:
        zs = _start(model, init, x, chains)
        eps = rows[0]
        warmup = [0.0] * PILOT_WARMUP                     # at f_0, from which the chains start exactly
        for j, beta in enumerate(warmup + inverse_temperatures(pilot, schedule)[1:].tolist(), 1 - PILOT_WARMUP):
            b = torch.tensor(beta, dtype=zs[0].dtype, device=x.device)
            for _ in range(PILOT_REPEATS if j > 0 else 1):
                zs, accepted, _ = transition(model, x, zs, b, _jittered(eps.expand(chains, B)), leapfrog, init)
                eps = (eps * torch.exp(PILOT_ADAPT * (accepted.double().mean(0) - TARGET_ACCEPT))).clamp(1e-4, 1.0)
            rows[max(j, 0)] = eps
            bar.update(1)
        rows[0] = rows[1]
    index = torch.ceil(torch.arange(steps + 1, dtype=torch.float64) * pilot / steps).long() if pilot else \
        torch.zeros(steps + 1, dtype=torch.long)
    return rows[index.to(x.device)].unsqueeze(1).expand(-1, chains, -1).contiguous()


def _jittered(eps):
    """eps [C, B] times a factor uniform in [1 - STEP_JITTER, 1 + STEP_JITTER] for each chain,
    drawn afresh for each transition and independent of the chains' states (so each
    transition is a mixture of HMC kernels, each leaving f_b invariant): it breaks the
    periodic trajectories of a fixed eps x leapfrog, which mix badly in well-conditioned
    directions."""
    if not STEP_JITTER:
        return eps.contiguous()
    return eps * (1 + STEP_JITTER * (2 * torch.rand_like(eps) - 1))


def _steps_and_pilot(steps, pilot):
    """The pilot's temperatures: pilot, or for "auto" PILOT_FRACTION of steps (at least 1)."""
    if pilot == "auto":
        return max(1, round(steps * PILOT_FRACTION))
    if isinstance(pilot, bool) or not isinstance(pilot, int) or pilot < 0:
        raise ValueError(f"pilot must be 'auto' or an integer >= 0, got {pilot!r}")
    return pilot


def ais(model, x, *, steps=STEPS, chains=CHAINS, leapfrog=LEAPFROG, schedule="sigmoid", init="q", seed=0,
        step_size=0.05, pilot="auto", batch_size=100, progress=False, with_chains=False, compile="auto",
        timings=None, step_sizes=None):
    """log p^(x) per datapoint by AIS: x [N, D] -> float64 [N] (a stochastic lower bound).

    steps: intermediate distributions; chains per datapoint; leapfrog steps per HMC
    transition; schedule "sigmoid" | "linear"; init "q" (start at q(z | x)) | "prior". The
    defaults (2000 steps, 8 chains, 5 leapfrog steps) come from results/ais_study.md: mean
    absolute errors of 0.032 and 0.073 nats on its two closed-form models (500 steps, 10
    leapfrog: 0.070 and 0.157); their cost per image: docs/evaluation.md.
    Step sizes: HMC leaves f_b invariant only with a step size that does not depend on the
    chain's state or history, so the step sizes of the counted chains are fixed before they
    start (pilot_step_sizes): a pilot run of `pilot` temperatures (default "auto":
    PILOT_FRACTION of steps) with its own random numbers adapts, from step_size, one step
    size per datapoint and block of temperatures toward TARGET_ACCEPT acceptance, and they
    are frozen; each transition then scales them by an independent uniform factor in
    [1 - STEP_JITTER, 1 + STEP_JITTER], which keeps each transition f_b-invariant and avoids
    the poor mixing of periodic HMC trajectories. (Adapting each chain's step size from its
    own acceptances during the counted run, as this function did before, biased the
    estimate upward, above log p(x).) pilot=0: step_size (jittered) throughout. Memory grows with chains x batch_size (the batches of x
    run one after another). Seeded: the caller's RNG is left as it was; the counted chains
    draw the same numbers whatever the pilot. Model parameters are not differentiated.
    with_chains: also return every chain's log weight, float64 [chains, N] (for standard
    errors). compile: "auto" compiles the HMC transition whole (torch.compile; the same
    random draws) when steps x N is large (iwae.runtime.decisions), where compiling repays
    its cost; "step" always; "off" never. timings: a dict to receive the seconds of the
    "pilot" and of the counted "chains". step_sizes: a list to receive each batch's step
    sizes [steps + 1, chains, b] (bdmc reuses them).
    """
    check(model, steps, chains, leapfrog, init, schedule)
    pilot = _steps_and_pilot(steps, pilot)
    betas = inverse_temperatures(steps, schedule)
    transition = _transition(x, steps, compile)
    clock = {"pilot": 0.0, "chains": 0.0}
    batches = iter(range(10 ** 9))

    def forward(xb, bar):
        started = time.perf_counter()
        with forked_rng(xb.device):
            torch.manual_seed(_pilot_seed(seed, next(batches)))
            eps = pilot_step_sizes(model, init, xb, chains, steps, pilot, schedule, transition, leapfrog,
                                   step_size, bar)
        middle = time.perf_counter()
        zs = _start(model, init, xb, chains)
        log_w = _anneal(model, init, xb, zs, betas, transition, leapfrog, eps, bar).T     # [b, C]
        clock["pilot"] += middle - started
        clock["chains"] += time.perf_counter() - middle
        if step_sizes is not None:
            step_sizes.append(eps)
        return log_w
    log_w = _batched(model, x, batch_size, seed, progress, steps + pilot + PILOT_WARMUP * bool(pilot), forward).T     # [C, N]
    if timings is not None:
        timings.update(clock)
    return (_lse(log_w), log_w) if with_chains else _lse(log_w)


def _pilot_seed(seed, batch):
    """The pilot's own stream for a batch, apart from the counted chains' (seed)."""
    return (seed * 1_000_003 + 7_919 * (batch + 1)) % (2 ** 63)


def bdmc(model, n, *, steps=STEPS, chains=CHAINS, leapfrog=LEAPFROG, schedule="sigmoid", init="q", seed=0,
         step_size=0.05, pilot="auto", batch_size=100, progress=False, compile="auto", timings=None):
    """Bidirectional Monte Carlo on n examples simulated from the model.

    Returns {"x": [n, D], "lower": float64 [n] (forward AIS), "upper": float64 [n] (reverse
    AIS from the exact posterior sample), "gap": mean upper - lower, a 0-d tensor}. E[lower] <= log p(x)
    <= E[upper] for each x; the gap shrinks as steps grow. The reverse chains of an example
    all start at its one exact posterior sample and run with the forward run's frozen step
    sizes (from its pilot, independent of both runs' chains), so that each reverse transition
    leaves its f_b invariant too. compile, pilot, timings: as for ais (timings: the forward
    run's "pilot" and "chains", and the "reverse" chains).
    """
    check(model, steps, chains, leapfrog, init, schedule)
    positive_int("n", n)
    if not callable(getattr(model.likelihood, "sample", None)):
        raise ValueError(f"BDMC simulates data from the model, and its likelihood "
                         f"{type(model.likelihood).__name__} cannot be sampled")
    betas = inverse_temperatures(steps, schedule)
    device = next(model.parameters()).device
    with forked_rng(device), torch.no_grad():
        torch.manual_seed(seed)
        zs = model.sample_prior(n)                                    # [[n, d_l]]
        x = model.likelihood.sample(model.decode(zs[0]))
    clock, eps = {}, []
    lower = ais(model, x, steps=steps, chains=chains, leapfrog=leapfrog, schedule=schedule, init=init,
                seed=seed + 1, step_size=step_size, pilot=pilot, batch_size=batch_size, progress=progress,
                compile=compile, timings=clock, step_sizes=eps)
    transition = _transition(x, steps, compile)
    exact = iter(zip(range(0, n, batch_size), eps))

    def reverse(xb, bar):
        start, eps_b = next(exact)
        posterior = [z[start:start + xb.shape[0]].unsqueeze(0).expand(chains, -1, -1).clone() for z in zs]
        return -_lse(_anneal(model, init, xb, posterior, betas.flip(0), transition, leapfrog, eps_b.flip(0), bar))
    started = time.perf_counter()
    upper = _batched(model, x, batch_size, seed + 2, progress, steps, reverse)
    if timings is not None:
        timings.update(clock, reverse=time.perf_counter() - started)
    return {"x": x, "lower": lower, "upper": upper, "gap": (upper - lower).mean()}


def _lse(log_w):
    """log mean_chains w: [C, B] -> [B]."""
    return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])


def _batched(model, x, batch_size, seed, progress, steps, fn):
    """fn(x_batch, bar) -> [b] over the batches of x, seeded, parameters frozen, subnormals flushed."""
    if x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"x must be a float tensor [N, D], got {x.dtype} {list(x.shape)}")
    if x.device.type != "meta" and not bool(torch.isfinite(x).all()):
        raise ValueError("x holds NaN or infinite values")
    params = list(model.parameters())
    saved = [p.requires_grad for p in params]
    out = []
    bar = tqdm(total=steps * math.ceil(x.shape[0] / batch_size), disable=not progress, desc="AIS", unit="step")
    try:
        for p in params:
            p.requires_grad_(False)
        with forked_rng(x.device), flushed_subnormals(x.device):
            torch.manual_seed(seed)
            for xb in x.split(batch_size):
                out.append(fn(xb, bar))
    finally:
        for p, s in zip(params, saved):
            p.requires_grad_(s)
        bar.close()
    return torch.cat(out)

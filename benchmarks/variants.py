"""The training steps the benchmark compares, each a callable step(x) -> loss.

All start from copies of one model and use Adam(lr 1e-3, betas (0.9, 0.999), eps 1e-4).
Every step checks the loss for finiteness after it, as ``iwae train`` does.
"""
import copy
import importlib.util
import logging
import math

import torch
import torch.nn.functional as F
from torch.distributions import Normal

import iwae
from iwae.runtime.optim import make_optimizer
from iwae.training.step import make_step

LR, BETAS, EPS = 1e-3, (0.9, 0.999), 1e-4
PAPER_STEPS = 3280 * 3000            # the paper's schedule: 3280 passes of 3000 batches


def _check(loss):
    if not torch.isfinite(loss):
        raise FloatingPointError("non-finite loss in the benchmark")
    return loss


def trainer_guard(opt):
    """The non-finite check ``iwae.fit`` registers on its optimizer."""
    from iwae.training.guards import FiniteGuard
    return FiniteGuard(opt)


def project(model, k, bound="iwae", estimator="standard", m=None, beta=None, planned_steps=PAPER_STEPS,
            device="cpu", precision="fp32", compile="auto"):
    """The project's step as ``iwae train`` builds it (make_optimizer + make_step for a run
    of the paper's length; compile="off": eagerly), with the trainer's non-finite guard on
    the optimizer."""
    model = copy.deepcopy(model)
    opt = make_optimizer(model.parameters(), LR, BETAS, EPS, capturable=device == "cuda")
    trainer_guard(opt)
    step = make_step(model, opt, k, bound, estimator, m=m, beta=beta, planned_steps=planned_steps,
                     precision=precision, compile=compile)

    def run(x):
        return _check(step(x))
    run.step = step
    return run


def baseline(model, k, package, compile="auto"):
    """The previous main's step, as its ``iwae train`` built it (compile="off": eagerly):
    ``package`` is that version of iwae (loaded by common.load_baseline), the model a copy of
    this one in its classes. Its modules are looked up by name, in this layout's place first,
    then the older ones."""
    twin = package.paper_model(len(model.encoder))
    twin.load_state_dict(model.state_dict())
    opt = _find(package, "make_optimizer", "runtime.optim", "optim", "step").make_optimizer(
        twin.parameters(), LR, BETAS, EPS)
    try:                                       # the guard's module and name since the run object
        _find(package, "FiniteGuard", "training.guards").FiniteGuard(opt)
    except ValueError:
        _find(package, "_FiniteGuard", "training.loop", "loop", "train")._FiniteGuard(opt)
    make_step = _find(package, "make_step", "training.step", "step").make_step
    step = make_step(twin, opt, k, planned_steps=PAPER_STEPS, compile=compile)

    def run(x):
        return _check(step(x))
    return run


def _find(package, attribute, *modules):
    """The first of the modules (dotted names under package) that defines attribute."""
    for name in modules:
        try:
            module = importlib.import_module(f"{package.__name__}.{name}")
        except ModuleNotFoundError:
            continue
        if hasattr(module, attribute):
            return module
    raise ValueError(f"{package.__name__} has no {attribute} in {', '.join(modules)}")


def plain(model, k):
    """Plain PyTorch, as a user writes it: the bound of model.log_weights, backward,
    torch.optim.Adam (its default implementation)."""
    model = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters(), lr=LR, betas=BETAS, eps=EPS)

    def run(x):
        loss = -iwae.core.bounds.iwae_bound(model.log_weights(x, k)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return _check(loss.detach())
    return run


def tutorial(model, k):
    """The common tutorial IWAE: the encoder's outputs and x repeated k times
    (Tensor.repeat), torch.distributions densities, binary_cross_entropy_with_logits, and
    the softmax-weighted surrogate -sum_i w~_i log w_i with w~ detached; default Adam."""
    model = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters(), lr=LR, betas=BETAS, eps=EPS)

    def loss_fn(x):
        B = x.shape[0]
        mu, log_sigma = model.encoder[0](x)
        mu, std = mu.repeat(k, 1), log_sigma.exp().repeat(k, 1)           # [k*B, d]
        z = mu + std * torch.randn_like(mu)
        log_q = Normal(mu, std).log_prob(z).sum(-1)
        zs = [z]
        for layer in model.encoder[1:]:
            mu, log_sigma = layer(z)
            std = log_sigma.exp()
            z = mu + std * torch.randn_like(mu)
            log_q = log_q + Normal(mu, std).log_prob(z).sum(-1)
            zs.append(z)
        log_p = Normal(torch.zeros_like(z), torch.ones_like(z)).log_prob(z).sum(-1)
        h = z
        for layer, below in zip(model.decoder_layers, reversed(zs[:-1])):
            mu, log_sigma = layer(h)
            log_p = log_p + Normal(mu, log_sigma.exp()).log_prob(below).sum(-1)
            h = below
        logits = model.decoder(h)
        log_px = -F.binary_cross_entropy_with_logits(logits, x.repeat(k, 1), reduction="none").sum(-1)
        log_w = (log_px + log_p - log_q).view(k, B)
        w = torch.softmax(log_w, 0).detach()
        return -(w * log_w).sum(0).mean()

    def run(x):
        loss = loss_fn(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return _check(loss.detach())
    return run


def pyro_available():
    return importlib.util.find_spec("pyro") is not None


_PYRO_MODELS = [0]


def pyro_svi(model, k):
    """Pyro SVI with RenyiELBO(alpha=0) (the IWAE bound), k vectorised particles, the same
    networks (registered with pyro.module) and pyro.optim.Adam with the same settings.
    Validation is off (pyro.enable_validation(False)), Pyro's fastest setting."""
    import pyro
    import pyro.distributions as dist
    from pyro.infer import SVI, RenyiELBO

    pyro.enable_validation(False)
    logging.getLogger("pyro").setLevel(logging.WARNING)     # "Guessed max_plate_nesting"
    model = copy.deepcopy(model)
    _PYRO_MODELS[0] += 1
    tag = f"bench{_PYRO_MODELS[0]}"
    L = len(model.encoder)
    top = model.encoder[-1].net[-1].out_features // 2

    def generative(x):
        pyro.module(f"{tag}.decoder", model.decoder)
        pyro.module(f"{tag}.decoder_layers", model.decoder_layers)
        with pyro.plate("data", x.shape[0]):
            zero = x.new_zeros(x.shape[0], top)
            z = pyro.sample(f"z{L}", dist.Normal(zero, 1.0).to_event(1))
            for j, layer in enumerate(model.decoder_layers):
                mu, log_sigma = layer(z)
                z = pyro.sample(f"z{L - 1 - j}", dist.Normal(mu, log_sigma.exp()).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=model.decoder(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module(f"{tag}.encoder", model.encoder)
        with pyro.plate("data", x.shape[0]):
            h = x
            for i, layer in enumerate(model.encoder):
                mu, log_sigma = layer(h)
                h = pyro.sample(f"z{i + 1}", dist.Normal(mu, log_sigma.exp()).to_event(1))

    svi = SVI(generative, guide, pyro.optim.Adam({"lr": LR, "betas": BETAS, "eps": EPS}),
              RenyiELBO(alpha=0, num_particles=k, vectorize_particles=True))

    def run(x):
        loss = svi.step(x) / x.shape[0]          # Pyro returns the batch sum
        if not math.isfinite(loss):
            raise FloatingPointError("non-finite loss in the benchmark")
        return loss
    return run

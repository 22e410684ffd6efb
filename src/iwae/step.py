"""The training step `iwae train` runs: the loss, zero_grad, backward and the optimizer's step.

    opt = make_optimizer(model.parameters(), lr, betas, eps)      # Adam(fused=True)
    step = make_step(model, opt, k, bound, estimator, m=m, beta=beta, planned_steps=n)
    loss = step(x)   # = loss; opt.zero_grad(set_to_none=True); loss.backward(); opt.step()

``step.forward_backward(x)`` and ``step.update()`` are the two halves; the loss may be NaN
(the gradients then are too), and the caller checks it, as before. The benchmark
(``python -m benchmarks.step``) times exactly this code.

Paths (``Step.path``):

- "autograd": ``iwae.objective.loss`` then ``loss.backward()``: any model, bound and
  estimator; bitwise the plain loop (tests/test_step.py).
- "manual": the paper's networks (Gaussian stochastic layers with sigma = exp(head) and a
  Bernoulli decoder, all tanh MLPs) with the standard estimator and any bound but piwae:
  one hand-written forward and backward pass, no autograd tape. It draws the same samples
  (the same torch.randn calls, in the same order, as ``Model.log_weights``) and computes
  the same loss and gradients up to float rounding (float64 agreement to 1e-12 in the
  tests). The Gaussian constants are added once; sum_d x_d l_d is a dot product, never an
  [N, D] temporary; the Bernoulli gradient (sigmoid(l) - x) * w / B is one pass written
  over the logits. On the CPU (``compile``, see make_step) the whole forward+backward is
  compiled for long runs (for small k*B it removes the per-op overhead that dominates
  them); otherwise, for large k*B, the two passes over the [k*B, 784] logits become
  compiled kernels (the decoder's bias added inside them).
  Normalised importance weights below eps(dtype)^2 (float32: 1.4e-14) count as zero in the
  backward pass (``flush=True``): they cannot change a float sum of weights that is 1, and
  carried through the backward pass they become subnormal floats, which x86 CPUs process
  ~100x slower (a freshly initialised model has log-weight spreads of 50-100 nats, so
  without this the first few hundred steps of a run are several times slower).
- "cuda-graph": on CUDA, forward+backward and the optimizer's step each captured once as a
  CUDA graph over static buffers, then replayed (``CudaGraphStep``).

``make_optimizer`` builds Adam with fused=True; ``FusedAdamUpdate`` then calls its fused
kernel directly (bitwise Adam.step, hooks included, without its per-call bookkeeping).
"""
import math
import os
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from .densities import HALF_LOG_2PI, Bernoulli, _compiled, bernoulli_terms, own_code
from .model import GaussianLayer, Model
from .objective import check
from .objective import loss as objective_loss

PATHS = ("auto", "autograd", "manual", "cuda-graph")
COMPILES = ("auto", "off", "kernels", "step")
STEP_MIN_STEPS = 30_000      # compile the whole step (CPU) for runs of this many steps (10 epochs)
KERNEL_MIN_ROWS = 500        # else compile the Bernoulli kernels when k * batch >= this (CPU) ...
KERNEL_MIN_STEPS = 1_000     # ... unless the run is known to be shorter than this


def make_optimizer(params, lr, betas=(0.9, 0.999), eps=1e-4, *, capturable=False):
    """Adam with fused=True (one kernel per tensor) where this torch supports it."""
    params = list(params)
    if params and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params):
        try:
            return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, fused=True,
                                    capturable=capturable)
        except (RuntimeError, TypeError, ValueError):    # an older torch without CPU fusion
            pass
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, capturable=capturable)


def make_step(model, optimizer, k, bound="iwae", estimator="standard", *, m=None, beta=None,
              path="auto", compile="auto", planned_steps=None, flush=True):
    """The training step for ``model`` and ``optimizer`` at k samples per datapoint.

    path: "auto" picks "cuda-graph" for a model on CUDA, else "manual" where the model and
    objective allow it, else "autograd".
    compile (manual path, CPU): "off"; "kernels": the two Bernoulli passes as compiled
    kernels (a few seconds of compiling); "step": the whole forward+backward compiled by
    torch.compile (C++ wrapper, 10-20 s of compiling; it removes the per-op overhead that
    dominates small steps and fuses the elementwise work of large ones); "auto": "step" for
    runs known to be long (planned_steps >= STEP_MIN_STEPS), else "kernels" when k * batch
    >= KERNEL_MIN_ROWS (unless planned_steps < KERNEL_MIN_STEPS), else "off". The
    environment variable IWAE_COMPILE=0 turns compiling off; IWAE_COMPILE=1 treats every run
    as long. Compiling falls back to the eager code, with a warning, where it fails.
    planned_steps: the number of steps the run will take, if known (the trainer's epochs x
    batches). flush: zero the normalised weights below eps^2 in the manual backward pass
    (see the module docstring).
    """
    objective, _ = check(bound, estimator, k, m, beta)
    if path not in PATHS:
        raise ValueError(f"path must be one of {', '.join(PATHS)}, got {path!r}")
    if compile is True or compile is False:
        compile = "step" if compile else "off"
    if compile not in COMPILES:
        raise ValueError(f"compile must be one of {', '.join(COMPILES)}, got {compile!r}")
    why = manual_unsupported(model, objective, estimator)
    if path == "manual" and why:
        raise ValueError(f"the manual step does not apply: {why}")
    on_cuda = _device(model).type == "cuda"
    if path == "cuda-graph" and not on_cuda:
        raise ValueError("the cuda-graph step needs the model on a CUDA device")
    if path == "auto":
        path = "cuda-graph" if on_cuda else ("autograd" if why else "manual")
    if path == "cuda-graph":
        return CudaGraphStep(model, optimizer, objective, estimator, manual=not why, flush=flush)
    return Step(model, optimizer, objective, estimator, path=path, compile=compile,
                planned_steps=planned_steps, flush=flush)


def _device(model):
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


class Step:
    """step(x): one optimizer step on the batch x [B, D]; see the module docstring."""

    def __init__(self, model, optimizer, objective, estimator, *, path="autograd",
                 compile="auto", planned_steps=None, flush=True):
        if path not in ("autograd", "manual"):
            raise ValueError(f"Step runs the 'autograd' or 'manual' path, not {path!r}")
        self.model, self.optimizer = model, optimizer
        self.objective, self.estimator, self.k = objective, estimator, objective.k
        self.path, self.compile, self.flush = path, compile, flush
        self.planned_steps = planned_steps
        self.plan = ManualPlan(model) if path == "manual" else None
        self._adam = FusedAdamUpdate(optimizer)
        self._compiled_steps = {}

    def forward_backward(self, x):
        """The loss (detached) at x, with this step's gradient in every p.grad.

        Like ``loss = iwae.loss(...); opt.zero_grad(set_to_none=True); loss.backward()``:
        the gradients are always replaced (NaN ones when the loss is not finite).
        """
        if self.plan is None or x.requires_grad:
            loss = objective_loss(self.model, x, self.k, self.objective.name, self.estimator,
                                  m=self.objective.m, beta=self.objective.beta)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            return loss.detach()
        mode = self.compile_mode(x.shape[0], x.device)
        if mode == "step":
            return self._compiled_step(x)
        kernels = CompiledKernels if mode == "kernels" else EagerKernels
        return manual_forward_backward(self.plan, x, self.k, self.objective, kernels, flush=self.flush)

    def update(self):
        """The optimizer's step on the gradients of the last ``forward_backward``."""
        if not self._adam():
            self.optimizer.step()

    def __call__(self, x):
        """forward_backward(x), then update(); returns the loss (it may be NaN: check it)."""
        loss = self.forward_backward(x)
        self.update()
        return loss

    def compile_mode(self, batch, device):
        """The compile mode, "off", "kernels" or "step", for a batch of this size (see make_step)."""
        if self.plan is None or device.type != "cpu":
            return "off"
        env = os.environ.get("IWAE_COMPILE")
        if env == "0":
            return "off"
        if self.compile != "auto":
            return self.compile
        rows = self.k * batch
        planned = math.inf if env == "1" else self.planned_steps
        if planned is not None and planned >= STEP_MIN_STEPS:
            return "step"
        if rows >= KERNEL_MIN_ROWS and (planned is None or planned >= KERNEL_MIN_STEPS):
            return "kernels"
        return "off"

    def _compiled_step(self, x):
        key = (tuple(x.shape), x.dtype)
        compiled = self._compiled_steps.get(key)
        if compiled is None:
            compiled = self._compiled_steps[key] = _compile_step(self)
        return compiled(x)


def _compile_step(step):
    """The manual forward+backward as one torch.compile'd function (the parameters' grads
    are its outputs); falls back to the eager function, with a warning, if compiling fails.
    fallback_random keeps torch.randn's stream, so the samples equal the eager step's."""
    params = list(step.model.parameters())
    plan, k, objective, flush = step.plan, step.k, step.objective, step.flush

    def forward_backward(x):
        loss = manual_forward_backward(plan, x, k, objective, EagerKernels, flush=flush)
        return loss, [p.grad for p in params]

    compiled = torch.compile(own_code(forward_backward), dynamic=False,
                             options={"fallback_random": True, "cpp_wrapper": True})
    state = {"failed": False}

    def run(x):
        if not state["failed"]:
            try:
                loss, grads = compiled(x)
                for p, g in zip(params, grads):
                    p.grad = g
                return loss
            except Exception as err:                       # pragma: no cover - platform
                state["failed"] = True
                warnings.warn(f"iwae: compiling the training step failed here ({type(err).__name__}: "
                              f"{err}); using the eager step", RuntimeWarning, stacklevel=3)
        return manual_forward_backward(plan, x, k, objective, EagerKernels, flush=flush)
    return run


class FusedAdamUpdate:
    """``optimizer.step()`` for a plain fused Adam, without Optimizer.step's per-call set-up.

    torch's Adam.step rebuilds its lists of parameters, gradients and moments and checks
    every setting on each call (~0.15 ms for the paper's 12 tensors, a tenth of a k=1 step).
    This makes the same two calls it ends in (``_foreach_add_`` on the step counts and
    ``_fused_adam_``), so the result is bitwise the same (tests/test_step.py), and runs the
    optimizer's step pre- and post-hooks around them as Optimizer.step does. It applies
    only to torch.optim.Adam(fused=True) with float hyper-parameters and no weight decay,
    amsgrad, maximize or capturable, after the first step has created the state; calling
    it returns False (having done nothing) otherwise, and the caller runs optimizer.step().
    """

    def __init__(self, optimizer):
        self.opt = optimizer

    def _settings_ok(self):
        if type(self.opt) is not torch.optim.Adam:
            return False
        from torch.optim import optimizer as module
        if module._global_optimizer_pre_hooks or module._global_optimizer_post_hooks:
            return False
        for g in self.opt.param_groups:
            if not (g.get("fused") and not g["amsgrad"] and not g["maximize"]
                    and not g["capturable"] and not g["differentiable"]
                    and not g.get("decoupled_weight_decay", False) and g["weight_decay"] == 0
                    and not isinstance(g["lr"], torch.Tensor)
                    and not any(isinstance(b, torch.Tensor) for b in g["betas"])):
                return False
        return True

    def __call__(self):
        opt = self.opt
        if not self._settings_ok():
            return False
        groups = []
        for g in opt.param_groups:
            states = [opt.state.get(p) for p in g["params"]]
            if any(not s or "exp_avg" not in s or p.grad is None or p.grad.is_sparse
                   for p, s in zip(g["params"], states)):
                return False                   # first step, a missing grad: the full step
            groups.append((g, states))
        for hook in opt._optimizer_step_pre_hooks.values():
            if hook(opt, (opt,), {}) is not None:
                raise RuntimeError("FusedAdamUpdate does not support pre-hooks that return arguments")
        for g, states in groups:
            params = [p for p in g["params"] if p.grad is not None]   # a hook may drop grads
            if not params:
                continue
            if len(params) < len(g["params"]):
                states = [opt.state[p] for p in params]
            steps = [s["step"] for s in states]
            torch._foreach_add_(steps, 1)
            beta1, beta2 = g["betas"]
            torch._fused_adam_(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                               [s["exp_avg_sq"] for s in states], [], steps, amsgrad=False,
                               lr=g["lr"], beta1=beta1, beta2=beta2, weight_decay=0.0,
                               eps=g["eps"], maximize=False)
        for hook in opt._optimizer_step_post_hooks.values():
            hook(opt, (opt,), {})
        return True


# ----------------------------------------------------------------------------- manual path

def _is_tanh_mlp(seq):
    if type(seq) is not nn.Sequential or len(seq) % 2 == 0:
        return False
    return all(type(m) is (nn.Linear if i % 2 == 0 else nn.Tanh) for i, m in enumerate(seq))


def manual_unsupported(model, objective, estimator):
    """Why the manual path cannot run this model and objective, or None if it can."""
    if estimator != "standard":
        return f"the {estimator!r} estimator (only 'standard')"
    if objective.name == "piwae":
        return "the piwae bound"
    return model_unsupported(model)


def model_unsupported(model, *, training=True):
    """Why the manual forward (and, if training, backward) cannot run this model, or None."""
    if not isinstance(model, Model) or type(model).log_weights is not Model.log_weights \
            or type(model)._decode is not Model._decode:
        return "not an iwae.Model"
    if type(model.likelihood) is not Bernoulli:
        return "the likelihood is not Bernoulli"
    for layer in list(model.encoder) + list(model.decoder_layers):
        if type(layer) is not GaussianLayer or layer.scale != "exp" or not _is_tanh_mlp(layer.net):
            return "a stochastic layer is not a GaussianLayer over a tanh MLP with scale 'exp'"
    if not _is_tanh_mlp(model.decoder):
        return "the decoder is not a tanh MLP"
    params = list(model.parameters())
    if not params or (training and not all(p.requires_grad for p in params)):
        return "some parameters are frozen"
    if len({(p.dtype, p.device) for p in params}) != 1:
        return "parameters of mixed dtype or device"
    modules = list(model.modules())
    if any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
           for m in modules) or any(p._backward_hooks or p._post_accumulate_grad_hooks
                                    for p in params) or _global_module_hooks():
        return "the model has hooks"
    return None


def _global_module_hooks():
    mod = nn.modules.module
    return any(getattr(mod, name, None) for name in (
        "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
        "_global_backward_pre_hooks"))


class _MLP:
    """A tanh MLP (nn.Sequential of Linear, Tanh, ..., Linear) run without autograd."""

    def __init__(self, seq):
        self.linears = [m for m in seq if isinstance(m, nn.Linear)]

    def forward(self, h, bias_last=True):
        """h [N, d_in] -> activations [h, t_1, ..., t_{n-1}, out] (t_i: the tanh outputs)."""
        acts, last = [h], len(self.linears) - 1
        for i, lin in enumerate(self.linears):
            if i < last:
                h = F.linear(h, lin.weight, lin.bias).tanh_()
            else:
                h = F.linear(h, lin.weight, lin.bias if bias_last else None)
            acts.append(h)
        return acts

    def backward(self, acts, g, grads, input_grad=True, last_bias_grad=None):
        """g = dL/d out [N, d_out] -> dL/d input (or None); parameter grads go to ``grads``."""
        for i in range(len(self.linears) - 1, -1, -1):
            lin = self.linears[i]
            grads.add(lin.weight, torch.mm(g.t(), acts[i]))
            grads.add(lin.bias, g.sum(0) if last_bias_grad is None else last_bias_grad)
            last_bias_grad = None
            if i == 0 and not input_grad:
                return None
            g = torch.mm(g, lin.weight)
            if i > 0:
                g = torch.ops.aten.tanh_backward(g, acts[i])
        return g


class _Grads:
    """This step's gradients, written to p.grad (replacing the last step's, as zero_grad)."""

    def __init__(self):
        self.done = set()

    def add(self, p, g):
        if id(p) in self.done:                   # a parameter used twice: accumulate
            p.grad = p.grad + g
        else:
            p.grad = g
            self.done.add(id(p))


class ManualPlan:
    """The MLPs of a supported model, in the order Model.log_weights runs them."""

    def __init__(self, model):
        self.encoder = [_MLP(layer.net) for layer in model.encoder]
        self.decoder_layers = [_MLP(layer.net) for layer in model.decoder_layers]
        self.decoder = _MLP(model.decoder)


_vecdot = torch.linalg.vecdot


@torch.no_grad()
def manual_forward_backward(plan, x, k, objective, kernels, *, flush=True):
    """Model.log_weights and the standard estimator's backward pass, by hand; the loss.

    Notation: log w = sum of the terms below + ``const`` (the Gaussians' normalising
    constants, which move the loss but no gradient); gneg = -d loss / d log w >= 0.
    """
    B = x.shape[0]
    N = k * B
    q_saved, zs, h, log_w, const = [], [], x, None, 0.0
    for mlp in plan.encoder:                                   # q(z_l | z_{l-1}), l = 1..L
        acts = mlp.forward(h.reshape(-1, h.shape[-1]))
        out = acts[-1].view(*h.shape[:-1], acts[-1].shape[-1])
        d = out.shape[-1] // 2
        mu, log_sigma = out[..., :d], out[..., d:]
        eps = torch.randn((k,) + mu.shape[-2:], dtype=mu.dtype, device=mu.device)
        noise = eps * log_sigma.exp()                          # z - mu = sigma * eps
        z = mu + noise                                         # [k, B, d]
        neg_log_q = torch.add(log_sigma.sum(-1), _vecdot(eps, eps), alpha=0.5)
        log_w = neg_log_q if log_w is None else log_w.add_(neg_log_q)
        const += HALF_LOG_2PI * d
        q_saved.append((acts, noise))
        zs.append(z)
        h = z
    log_w.add_(_vecdot(z, z), alpha=-0.5)                      # log p(z_L) = log N(z_L; 0, I)
    const -= HALF_LOG_2PI * z.shape[-1]
    p_saved = []
    for mlp, below in zip(plan.decoder_layers, reversed(zs[:-1])):   # p(z_{l-1} | z_l)
        acts = mlp.forward(h.reshape(N, -1))
        out = acts[-1].view(k, B, -1)
        d = out.shape[-1] // 2
        mu, log_sigma = out[..., :d], out[..., d:]
        inv_sigma = log_sigma.neg().exp_()
        scaled = (below - mu).mul_(inv_sigma)
        log_w.sub_(torch.add(log_sigma.sum(-1), _vecdot(scaled, scaled), alpha=0.5))
        const -= HALF_LOG_2PI * d
        p_saved.append((acts, scaled, inv_sigma))
        h = below
    dec_acts = plan.decoder.forward(h.reshape(N, -1), bias_last=kernels.bias_in_matmul)
    bias = plan.decoder.linears[-1].bias
    log_w.add_(kernels.log_px(x, dec_acts[-1].view(k, B, -1), bias))     # log p(x | z_1)

    loss, gneg = loss_and_grad(log_w, objective, const, flush=flush)     # gneg [k, B]
    grads = _Grads()
    gcol = gneg.unsqueeze(-1)
    g_logits, g_bias = kernels.grad_logits(x, dec_acts[-1], bias, gcol)   # [N, D], [D]
    grad_z = [None] * len(zs)
    grad_z[0] = plan.decoder.backward(dec_acts, g_logits, grads, last_bias_grad=g_bias).view(k, B, -1)
    grad_z[-1] = _add(grad_z[-1], gcol * zs[-1])               # from log p(z_L)
    for j, (mlp, (acts, scaled, inv_sigma)) in enumerate(zip(plan.decoder_layers, p_saved)):
        upper, lower = len(zs) - 1 - j, len(zs) - 2 - j        # p(z_lower | z_upper)
        g_below = gcol * scaled * inv_sigma                    # = -d loss / d mu
        grad_z[lower] = _add(grad_z[lower], g_below)
        g_log_sigma = gcol * (1 - scaled.square())
        g_up = mlp.backward(acts, torch.cat([g_below.neg(), g_log_sigma], -1).view(N, -1), grads)
        grad_z[upper] = _add(grad_z[upper], g_up.view(k, B, -1))
    for depth in range(len(zs) - 1, -1, -1):                   # q, top layer first
        acts, noise = q_saved[depth]
        gz = grad_z[depth]                                     # complete: all users are done
        g_log_sigma = torch.addcmul(gcol.neg(), gz, noise)     # -log q(z) has +log sigma
        if depth == 0:                                         # mu, log sigma: [B, d], shared by k
            g_out = torch.cat([gz, g_log_sigma], -1).sum(0)
        else:
            g_out = torch.cat([gz, g_log_sigma], -1).view(N, -1)
        g_in = plan.encoder[depth].backward(acts, g_out, grads, input_grad=depth > 0)
        if depth > 0:
            grad_z[depth - 1] = _add(grad_z[depth - 1], g_in.view(k, B, -1))
    return loss


class Workspace:
    """Reusable output buffers for the inference forward, one per role, grown as needed.

    Large tensors freshly allocated on every chunk are fresh mmaps from the C allocator,
    whose page faults can cost as much as the matrix products that fill them."""

    def __init__(self):
        self.flat = {}

    def get(self, key, shape, like):
        n = math.prod(shape)
        buf = self.flat.get(key)
        if buf is None or buf.numel() < n or buf.dtype != like.dtype or buf.device != like.device:
            buf = self.flat[key] = torch.empty(n, dtype=like.dtype, device=like.device)
        return buf[:n].view(shape)


def _mlp_into(mlp, h, ws, key, bias_last=True):
    """mlp(h) into workspace buffers (tanh in place); the last layer's bias optional."""
    last = len(mlp.linears) - 1
    for i, lin in enumerate(mlp.linears):
        out = ws.get((key, i), (h.shape[0], lin.out_features), h)
        if i == last and not bias_last:
            torch.mm(h, lin.weight.t(), out=out)
        else:
            torch.addmm(lin.bias, h, lin.weight.t(), out=out)
        if i < last:
            out.tanh_()
        h = out
    return h


@torch.no_grad()
def inference_log_weights(plan, x, k, ws, kernels):
    """Model.log_weights(x, k) without gradients, for a model ``model_unsupported`` accepts:
    the same torch.randn calls in the same order, equal values up to float rounding; output
    buffers from ``ws``; the decoder's last bias is added inside the Bernoulli kernel."""
    B = x.shape[0]
    N = k * B
    zs, h, neg_log_q = [], x, None
    for depth, mlp in enumerate(plan.encoder):
        out = _mlp_into(mlp, h.reshape(-1, h.shape[-1]), ws, ("q", depth))
        out = out.view(*h.shape[:-1], out.shape[-1])
        d = out.shape[-1] // 2
        mu, log_sigma = out[..., :d], out[..., d:]
        eps = torch.randn((k,) + mu.shape[-2:], dtype=mu.dtype, device=mu.device)
        term = eps.square().sum(-1).mul_(0.5).add_(log_sigma.sum(-1)).add_(HALF_LOG_2PI * d)
        neg_log_q = term if neg_log_q is None else neg_log_q.add_(term)
        z = eps.mul_(log_sigma.exp()).add_(mu)                # eps is not needed again
        zs.append(z)
        h = z
    log_w = neg_log_q.sub_(z.square().sum(-1).mul_(0.5)).sub_(HALF_LOG_2PI * z.shape[-1])
    for j, (mlp, below) in enumerate(zip(plan.decoder_layers, reversed(zs[:-1]))):
        out = _mlp_into(mlp, h.reshape(N, -1), ws, ("p", j)).view(k, B, -1)
        d = out.shape[-1] // 2
        mu, log_sigma = out[..., :d], out[..., d:]
        scaled = (below - mu).mul_(log_sigma.neg().exp_())
        log_w.sub_(scaled.square().mul_(0.5).add_(log_sigma).sum(-1)).sub_(HALF_LOG_2PI * d)
        h = below
    product = _mlp_into(plan.decoder, h.reshape(N, -1), ws, "x", bias_last=False)
    bias = plan.decoder.linears[-1].bias
    return log_w.add_(kernels.bernoulli_log_prob_biased(x, product.view(k, B, -1), bias))


def _add(a, b):
    return b if a is None else a + b


def loss_and_grad(log_w, objective, const=0.0, *, flush=True):
    """(loss, -d loss / d log w) of the standard estimator's surrogate -mean_b bound(log w),
    where the log weights are log_w + const (const: a Python float)."""
    k, B = log_w.shape
    tiny = torch.finfo(log_w.dtype).eps ** 2
    if objective.name == "iwae":
        loss = (math.log(k) - const) - torch.logsumexp(log_w, 0).mean()
        w = torch.softmax(log_w, 0)
        if flush:
            w = F.threshold_(w, tiny, 0.0)
        return loss, w.mul_(1.0 / B)
    if objective.name == "elbo":
        return -const - log_w.mean(), torch.full_like(log_w, 1.0 / (k * B))
    leaf = (log_w + const).requires_grad_()
    with torch.enable_grad():
        surrogate = objective.surrogate(leaf)
        (g,) = torch.autograd.grad(surrogate, leaf)
    if flush:
        g = g.masked_fill(g.abs() < tiny / B, 0.0)
    return surrogate.detach(), g.neg()


# ----------------------------------------------------------------------------- kernels

class EagerKernels:
    """The Bernoulli terms of the manual step in plain torch ops (small k * batch)."""

    bias_in_matmul = True                      # the decoder's last layer adds its bias

    @staticmethod
    def bernoulli_log_prob_biased(x, product, bias):
        """log p(x | l) with l = product + bias: x [B, D], product [k, B, D] -> [k, B]."""
        logits = product.add_(bias)
        return _vecdot(logits, x) - F.softplus(logits).sum(-1)

    @staticmethod
    def log_px(x, logits, bias):
        """sum_d x_d l_d - softplus(l_d): x [B, D], logits [k, B, D] -> [k, B]."""
        return _vecdot(logits, x) - F.softplus(logits).sum(-1)

    @staticmethod
    def grad_logits(x, logits, bias, gcol):
        """(-d loss / d l) * (sigmoid(l) - x) as [k*B, D] (logits overwritten), and its sum
        over rows (the bias's gradient)."""
        k, B = gcol.shape[:2]
        g = logits.sigmoid_()
        g.view(k, B, -1).sub_(x).mul_(gcol)
        return g, g.sum(0)


def _log_px_biased(x, product, bias):
    return bernoulli_terms(x, product + bias)


def _grad_logits_biased(x, product, bias, gcol):
    k, B = gcol.shape[:2]
    g = (gcol * (torch.sigmoid(product.view(k, B, -1) + bias) - x)).view(product.shape)
    return g, g.sum(0)


class CompiledKernels:
    """The same terms as two compiled passes over the decoder's [k*B, D] output, to which
    they add the bias themselves (no extra pass for it); they fall back to plain torch ops,
    with a warning, where compiling fails."""

    bias_in_matmul = False

    @staticmethod
    def log_px(x, product, bias):
        return _compiled("log_px", _log_px_biased)(x, product, bias)

    @staticmethod
    def grad_logits(x, product, bias, gcol):
        return _compiled("grad_logits", _grad_logits_biased)(x, product, bias, gcol)

    @staticmethod
    def bernoulli_log_prob_biased(x, product, bias):
        return _compiled("bernoulli_log_prob_biased", _log_px_biased, dynamic=(1,))(x, product, bias)


# ----------------------------------------------------------------------------- CUDA graphs

class CudaGraphStep(Step):
    """Forward+backward and the optimizer's step, each captured once as a CUDA graph.

    Static buffers: the input (each batch is copied in), the loss, every p.grad and the
    optimizer's state. The optimizer must be capturable (``make_optimizer(...,
    capturable=True)``); its learning rate becomes a device tensor, and a float the
    trainer assigns to ``group["lr"]`` is copied into it before the next update. A new
    batch shape is captured anew. The warm-up passes a capture needs run on copies of the
    parameters' values and the optimizer's state, which are put back, so capturing does not
    change the model; it does consume random numbers. Optimizer hooks do not run on replay.
    """

    def __init__(self, model, optimizer, objective, estimator, *, manual=True, flush=True):
        super().__init__(model, optimizer, objective, estimator,
                         path="manual" if manual else "autograd", compile="off", flush=flush)
        self.path = "cuda-graph"
        device = _device(model)
        for group in optimizer.param_groups:
            if not group.get("capturable", False):
                raise ValueError("the cuda-graph step needs make_optimizer(..., capturable=True)")
            if not isinstance(group["lr"], torch.Tensor):
                group["lr"] = torch.tensor(float(group["lr"]), device=device)
        self._lr = [group["lr"] for group in optimizer.param_groups]
        self._shape = None
        self.graphs = 0                                        # captures so far

    def _eager_forward_backward(self, x):
        params = list(self.model.parameters())
        if self.plan is None:
            loss = objective_loss(self.model, x, self.k, self.objective.name, self.estimator,
                                  m=self.objective.m, beta=self.objective.beta)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for p, g in zip(params, grads):
                if g is None:
                    p.grad.zero_()
                else:
                    p.grad.copy_(g)
            return loss.detach()
        loss = manual_forward_backward(self.plan, x, self.k, self.objective, EagerKernels,
                                       flush=self.flush)
        return loss

    def _capture(self, x):
        device = x.device
        params = list(self.model.parameters())
        for p in params:                                       # static gradient buffers
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self._x = x.detach().clone()
        saved_params = [p.detach().clone() for p in params]
        saved_state = {p: {n: v.clone() if isinstance(v, torch.Tensor) else v
                           for n, v in self.optimizer.state[p].items()}
                       for p in params if p in self.optimizer.state}
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):                          # warm-up: allocations, lazy init
            for _ in range(3):
                self._eager_forward_backward(self._x)
                self.optimizer.step()
        torch.cuda.current_stream(device).wait_stream(side)
        with torch.no_grad():                                  # undo the warm-up's updates
            for p, v in zip(params, saved_params):
                p.copy_(v)
            for p in params:
                state = self.optimizer.state.get(p, {})
                for n, v in state.items():
                    if isinstance(v, torch.Tensor):
                        if p in saved_state:
                            v.copy_(saved_state[p][n])
                        else:
                            v.zero_()
        # the manual path writes new .grad tensors: capture makes them static graph memory
        self._fb_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._fb_graph):
            self._loss = self._eager_forward_backward(self._x)
        self._opt_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._opt_graph):
            self.optimizer.step()
        self._shape = tuple(x.shape)
        self.graphs += 1

    def forward_backward(self, x):
        if self._shape != tuple(x.shape):
            self._capture(x)
        self._x.copy_(x, non_blocking=True)
        self._fb_graph.replay()
        return self._loss

    def update(self):
        for group, lr in zip(self.optimizer.param_groups, self._lr):
            if group["lr"] is not lr:                          # a float set by the trainer
                lr.fill_(float(group["lr"]))
                group["lr"] = lr
        self._opt_graph.replay()

"""The optimizer update: Adam as the paper runs it, and its fused kernel called directly.

    opt = make_optimizer(model.parameters(), lr, betas, eps)      # Adam(fused=True)
    update = AdamUpdate(opt)
    update()                                                      # = opt.step()
"""
import torch

from . import torch_private


def make_optimizer(params, lr, betas=(0.9, 0.999), eps=1e-4, *, capturable=False):
    """Adam with fused=True (one kernel per tensor) where this torch supports it; capturable
    (its step count and learning rate on the device) for a CUDA-graph step."""
    params = list(params)
    if params and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params):
        try:
            return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, fused=True,
                                    capturable=capturable)
        except (RuntimeError, TypeError, ValueError):    # an older torch without CPU fusion
            pass
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, capturable=capturable)


class AdamUpdate:
    """``optimizer.step()``, by the fused kernel directly where that is the same update.

    torch's Adam.step rebuilds its lists of parameters, gradients and moments and checks
    every setting on each call, a cost that matters at small k (docs/speed.md). For a plain
    torch.optim.Adam(fused=True) (float hyper-parameters, no weight decay, amsgrad, maximize
    or capturable), once the first step has created its state, this makes the two calls
    Adam.step ends in, so the result is bitwise the same (tests/test_step.py), and runs the
    optimizer's step pre- and post-hooks around them as Optimizer.step does (the trainer's
    non-finite check is one). Every other case calls optimizer.step().
    """

    def __init__(self, optimizer):
        self.opt = optimizer

    def __call__(self):
        if not self._direct():
            self.opt.step()

    def _settings_ok(self):
        if type(self.opt) is not torch.optim.Adam or torch_private.global_optimizer_hooks():
            return False
        return all(g.get("fused") and not g["amsgrad"] and not g["maximize"]
                   and not g["capturable"] and not g["differentiable"]
                   and not g.get("decoupled_weight_decay", False) and g["weight_decay"] == 0
                   and not isinstance(g["lr"], torch.Tensor)
                   and not any(isinstance(b, torch.Tensor) for b in g["betas"])
                   for g in self.opt.param_groups)

    def _direct(self):
        """The fused update without Optimizer.step's set-up; False (nothing done) where it
        does not apply."""
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
        pre, post = torch_private.step_hooks(opt)
        for hook in pre:
            if hook(opt, (opt,), {}) is not None:
                raise RuntimeError("AdamUpdate does not support pre-hooks that return arguments")
        for g, states in groups:
            params = [p for p in g["params"] if p.grad is not None]   # a hook may drop grads
            if not params:
                continue
            if len(params) < len(g["params"]):
                states = [opt.state[p] for p in params]
            beta1, beta2 = g["betas"]
            torch_private.fused_adam_(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                                      [s["exp_avg_sq"] for s in states], [s["step"] for s in states],
                                      lr=g["lr"], beta1=beta1, beta2=beta2, eps=g["eps"])
        for hook in post:
            hook(opt, (opt,), {})
        return True

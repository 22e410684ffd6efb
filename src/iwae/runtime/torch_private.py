"""Every private torch API iwae uses, each behind one function with the reason it is needed.

Nothing else in iwae touches a name that starts with an underscore in torch; a torch
upgrade that moves one of these breaks this module alone.
"""
import torch
from torch.optim import optimizer as _optimizer


def global_optimizer_hooks():
    """Whether any global optimizer step hook is registered: AdamUpdate skips
    Optimizer.step, so it must not run when such hooks expect to be called."""
    return bool(_optimizer._global_optimizer_pre_hooks or _optimizer._global_optimizer_post_hooks)


def step_hooks(optimizer):
    """An optimizer's own (pre, post) step hooks: AdamUpdate and CudaGraphStep run them
    (torch has no public accessor for registered hooks)."""
    return optimizer._optimizer_step_pre_hooks.values(), optimizer._optimizer_step_post_hooks.values()


def fused_adam_(params, grads, exp_avgs, exp_avg_sqs, steps, *, lr, beta1, beta2, eps):
    """The two calls Adam(fused=True).step ends in, without its per-call list building and
    checks (runtime.optim.AdamUpdate); bitwise the same update."""
    torch._foreach_add_(steps, 1)
    torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=lr,
                       beta1=beta1, beta2=beta2, weight_decay=0.0, eps=eps, maximize=False)


def grad_norms(grads):
    """One fused norm per tensor: the non-finite check of every step in one kernel
    (torch.nn.utils.get_total_norm would add a stack, a norm and a host sync per call)."""
    return torch._foreach_norm(grads)


def step_without_hooks(optimizer):
    """optimizer.step() without its step hooks (Optimizer.profile_hook_step's wrapped
    function): a CUDA graph must not capture the host-side non-finite check, which syncs;
    CudaGraphStep runs the hooks itself around each replay."""
    type(optimizer).step.__wrapped__(optimizer)


def has_inductor_option(name):
    """Whether this torch's Inductor has the config option name ("cpp.use_decompose_tanh"):
    torch.compile(options=) refuses an unknown one, and that one is new in torch 2.8."""
    from torch._inductor import config
    section, _, option = name.rpartition(".")
    return hasattr(getattr(config, section) if section else config, option)

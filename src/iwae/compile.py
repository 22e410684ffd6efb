"""How a step's function is compiled: torch.compile on the CPU, CUDA graphs on CUDA.

Both wrap the one function a training step computes (iwae.step.Step.eager_gradients); a
compiled function is always that function, traced, never a second copy of the math.
"""
import contextlib
import types
import warnings

import torch

from . import torch_private


@contextlib.contextmanager
def flushed_subnormals(device):
    """Subnormal floats read and written as zero on this thread, for the block (CPU)."""
    if device.type != "cpu" or not torch.set_flush_denormal(True):
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def own_code(fn):
    """fn with a code object of its own. torch.compile keeps its cache of compiled graphs
    (at most torch.compiler.config's recompile limit of them) on the code object, which
    closures made by one def share: each compiled function needs its own."""
    own_code.count += 1
    code = fn.__code__.replace(co_name=f"{fn.__code__.co_name}_{own_code.count}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


own_code.count = 0


def compiled(fn, device, *, dynamic=False):
    """torch.compile(fn) that falls back to fn for good, with a warning, if compiling fails
    (no C++ compiler, say). fallback_random keeps torch.randn's stream, so the samples equal
    the eager function's; on the CPU the C++ wrapper removes Python's per-kernel overhead."""
    options = {"fallback_random": True}
    if device.type == "cpu":
        options["cpp_wrapper"] = True
    wrapped = fn.__func__ if isinstance(fn, types.MethodType) else fn
    fast = torch.compile(own_code(wrapped), dynamic=dynamic, options=options)
    if isinstance(fn, types.MethodType):
        fast = types.MethodType(fast, fn.__self__)
    state = {"failed": False}

    def run(*args):
        if not state["failed"]:
            try:
                return fast(*args)
            except Exception as err:                       # pragma: no cover - platform
                state["failed"] = True
                warnings.warn(f"iwae: torch.compile failed here ({type(err).__name__}: {err}); "
                              "running eagerly", RuntimeWarning, stacklevel=2)
        return fn(*args)
    return run


def compiled_step(gradients, device, model):
    """A step's (params, x) -> (loss, gradients): one compiled function per batch (shape,
    dtype, device), grad mode and model.training, each of which only ever sees that batch
    and the step's own parameter tensors, so that after its first call its guards are
    skipped (torch.compiler.set_stance(skip_guard_eval_unsafe=True)): checking the 13
    input tensors and the modules costs 0.1-0.3 ms a call, a tenth of a k=1 step."""
    by_batch = {}

    def run(params, x):
        key = (tuple(x.shape), x.dtype, x.device, torch.is_grad_enabled(), model.training)
        if key not in by_batch:
            by_batch[key] = compiled(gradients, device)
            return by_batch[key](params, x)                     # compiles, guards checked
        with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
            return by_batch[key](params, x)
    return run


class CudaGraphStep:
    """step(x) on CUDA: the step's function and the optimizer's update, each captured once
    as a CUDA graph (torch.cuda.graph) over static buffers, then replayed.

    Static buffers: the input (each batch is copied in), the loss, every p.grad and the
    optimizer's state. The optimizer must be capturable (``make_optimizer(...,
    capturable=True)``); its learning rate becomes a device tensor, and a float the trainer
    assigns to ``group["lr"]`` is copied into it before the next update. A new batch shape
    is captured anew. The warm-up passes a capture needs run on copies of the parameters'
    values and the optimizer's state, which are put back, so capturing does not change the
    model; it does consume random numbers. The optimizer's step hooks (the trainer's
    non-finite check) are not captured: they run on the host around each replay.
    """

    def __init__(self, model, optimizer, objective, estimator, *, compiled=True):
        from .step import Step
        self.inner = Step(model, optimizer, objective, estimator,
                          compile="step" if compiled else "off")
        self.model, self.optimizer, self.k = model, optimizer, objective.k
        self.compile = self.inner.compile
        device = next(model.parameters()).device
        for group in optimizer.param_groups:
            if not group.get("capturable", False):
                raise ValueError("the CUDA-graph step needs make_optimizer(..., capturable=True)")
            if not isinstance(group["lr"], torch.Tensor):
                group["lr"] = torch.tensor(float(group["lr"]), device=device)
        self._lr = [group["lr"] for group in optimizer.param_groups]
        self._shape = None
        self.graphs = 0                                        # captures so far

    def _forward_backward(self, x):
        params = self.inner.params
        loss, grads = self.inner.gradients(self.inner.values, x)
        for p, g in zip(params, grads):
            p.grad.copy_(g)
        return loss

    def _capture(self, x):
        params = self.inner.params
        for p in params:                                       # static gradient buffers
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self._x = x.detach().clone()
        saved_params = [p.detach().clone() for p in params]
        saved_state = {p: {n: v.clone() if isinstance(v, torch.Tensor) else v
                           for n, v in self.optimizer.state[p].items()}
                       for p in params if p in self.optimizer.state}
        device = x.device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):                          # warm-up: compiling, allocations
            for _ in range(3):
                self._forward_backward(self._x)
                torch_private.step_without_hooks(self.optimizer)
        torch.cuda.current_stream(device).wait_stream(side)
        with torch.no_grad():                                  # undo the warm-up's updates
            for p, v in zip(params, saved_params):
                p.copy_(v)
            for p in params:
                for n, v in self.optimizer.state.get(p, {}).items():
                    if isinstance(v, torch.Tensor):
                        v.copy_(saved_state[p][n]) if p in saved_state else v.zero_()
        self._fb_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._fb_graph):
            self._loss = self._forward_backward(self._x)
        self._opt_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._opt_graph):
            torch_private.step_without_hooks(self.optimizer)
        self._shape = tuple(x.shape)
        self.graphs += 1

    def forward_backward(self, x):
        if self._shape != tuple(x.shape):
            self._capture(x)
        self._x.copy_(x, non_blocking=True)
        self._fb_graph.replay()
        return self._loss

    def update(self):
        """The optimizer's update: its pre-hooks (the non-finite check may drop the gradients,
        which then skips the replay), the captured step, its post-hooks."""
        for group, lr in zip(self.optimizer.param_groups, self._lr):
            if group["lr"] is not lr:                          # a float set by the trainer
                lr.fill_(float(group["lr"]))
                group["lr"] = lr
        pre, post = torch_private.step_hooks(self.optimizer)
        for hook in pre:
            hook(self.optimizer, (self.optimizer,), {})
        if all(p.grad is not None for p in self.inner.params):
            self._opt_graph.replay()
        else:                                                  # dropped: restore the static buffers
            for p in self.inner.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            self._shape = None                                 # recapture over the new buffers
        for hook in post:
            hook(self.optimizer, (self.optimizer,), {})

    def __call__(self, x):
        loss = self.forward_backward(x)
        self.update()
        return loss

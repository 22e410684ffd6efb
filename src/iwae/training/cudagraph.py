"""The training step on CUDA, captured as CUDA graphs and replayed."""
import torch

from ..runtime import torch_private
from ..runtime.compile import tf32_matmuls


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

    def __init__(self, inner):
        """inner: the iwae.training.step.Step whose function and optimizer are captured."""
        self.inner = inner
        model, optimizer = inner.model, inner.optimizer
        self.model, self.optimizer, self.k = model, optimizer, inner.k
        self.compile = inner.compile
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
        tf32 = self.inner.precision == "tf32"                # cuBLAS picks its kernels at capture
        with torch.cuda.stream(side), tf32_matmuls(tf32):      # warm-up: compiling, allocations
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
        with torch.cuda.graph(self._fb_graph), tf32_matmuls(tf32):
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

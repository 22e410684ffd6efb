"""The training step: the estimator's (loss, gradients), the optimizer's update.

    opt = make_optimizer(model.parameters(), lr, betas, eps)      # iwae.runtime.optim: fused Adam
    step = make_step(model, opt, k, bound, estimator, m=m, beta=beta, planned_steps=n)
    loss = step(x)     # the loss; p.grad = the estimator's gradients; the optimizer's update

One function computes every step: ``estimator.gradients(Functional(model), params, x,
objective)`` (see iwae.core.objective), i.e. ``model.log_weights`` differentiated by
vector-Jacobian products (``Functional.vjp``), for any model, bound and estimator. ``compile``
decides how it runs:

- "off": eagerly, the products by torch.autograd.
- "step": compiled by torch.compile (forward and backward in one graph, traced through
  torch.func's products; on the CPU with the C++ wrapper, which removes the per-op overhead
  that dominates small steps and fuses the elementwise work of large ones), compiled once per
  batch shape (its cost: docs/speed.md).
- "auto": "step" for runs known to be long and for any run on CUDA, else "off"
  (iwae.runtime.decisions).

On CUDA the compiled function and the capturable fused Adam update are each captured as a
CUDA graph and replayed (``iwae.training.cudagraph.CudaGraphStep``). On the CPU every step runs with
subnormal floats flushed to zero (``torch.set_flush_denormal``): normalised weights of
samples 50-100 nats below the best are subnormal, which x86 CPUs process slowly
(docs/speed.md). The loss may be NaN
(the gradients then are too); the caller checks it.
"""
import torch

from ..core.nets import matmul_dtype
from ..core.objective import Functional, check
from ..runtime.compile import compiled_step, flushed_subnormals, tf32_matmuls
from ..runtime.decisions import check_bf16, decide
from ..runtime.optim import AdamUpdate
from .cudagraph import CudaGraphStep

PRECISIONS = ("fp32", "bf16", "tf32")
MATMUL_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "tf32": None}   # tf32: a CUDA switch


def make_step(model, optimizer, k, bound="iwae", estimator="standard", *, m=None, beta=None, alpha=None,
              compile="auto", planned_steps=None, parallel=None, precision="fp32"):
    """The training step for ``model`` and ``optimizer`` at k samples per datapoint.

    m, beta, alpha: the bound's settings (iwae.core.objective.check, which also refuses an
    estimator that cannot train the model). compile: "auto" | "off" | "step" (see the module docstring). planned_steps: the number
    of steps the run will take, if known (the trainer's epochs x batches). parallel: an
    iwae.runtime.distributed.DataParallel; the step then computes this rank's share of each global
    batch and averages the gradients over the ranks (it runs eagerly). precision: "fp32";
    "bf16": the nets' large matmuls in bf16 (iwae.core.nets.matmul_dtype), everything else
    (log densities, log w, the bound, gradients, parameters, Adam's state) fp32; "tf32": CUDA's
    fp32 matmuls on TF32 tensor cores (ValueError elsewhere).
    """
    objective, est = check(bound, estimator, k, m, beta, alpha, model=model)
    check_precision(precision)
    device = _device(model)
    if precision == "tf32" and device.type != "cuda":
        raise ValueError(f"precision tf32 is for CUDA matmuls only, and this step runs on {device.type}; "
                         "use fp32 or bf16")
    if precision == "bf16":
        check_bf16(device)
    compile = "off" if parallel is not None else decide(compile, "step", planned_steps, device)
    if device.type == "cuda" and parallel is None:
        return CudaGraphStep(Step(model, optimizer, objective, est, compile=compile, precision=precision))
    return Step(model, optimizer, objective, est, compile=compile, parallel=parallel, precision=precision)


def check_precision(precision):
    """precision if it is one of PRECISIONS, else ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def _device(model):
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


class Step:
    """step(x): one optimizer step on the batch x [B, D]; see the module docstring."""

    def __init__(self, model, optimizer, objective, estimator, *, compile="off", parallel=None,
                 precision="fp32"):
        self.precision, self.matmul_dtype = precision, MATMUL_DTYPES[check_precision(precision)]
        self.model, self.optimizer, self.objective, self.estimator = model, optimizer, objective, estimator
        self.k, self.compile, self.parallel = objective.k, compile, parallel
        self.functional = Functional(model, autograd=True)   # eagerly: torch.autograd's backward (Functional.vjp)
        self.params = self.functional.parameters()
        # detached aliases of the parameters, made once: they share storage, so they follow
        # the optimizer's in-place updates (and a checkpoint's load_state_dict)
        self.values = tuple(p.detach() for p in self.params)
        self.device = _device(model)
        self.update = AdamUpdate(optimizer)
        self.gradients = self.eager_gradients
        if compile == "step" and parallel is None:
            self.gradients = compiled_step(self.eager_gradients, self.device, model)

    def eager_gradients(self, params, x):
        """(loss, gradients) at the parameter values params: the function a step computes
        (and compiles: the matmul precision is set inside it, so its casts are traced)."""
        with matmul_dtype(self.matmul_dtype):
            return self.estimator.gradients(self.functional, params, x, self.objective)

    def forward_backward(self, x):
        """The loss (detached) at x, with this step's gradient in every p.grad (replaced, like
        zero_grad(set_to_none=True) then backward; NaN ones when the loss is not finite)."""
        with tf32_matmuls(self.precision == "tf32"):
            if self.parallel is not None:
                loss, grads = self.parallel.gradients(self.eager_gradients, self.model, self.values, x, self.k)
            else:
                loss, grads = self.gradients(self.values, x)
        for p, g in zip(self.params, grads):
            p.grad = g
        return loss

    def __call__(self, x):
        """forward_backward(x), then the optimizer's update; returns the loss (it may be NaN:
        check it)."""
        with flushed_subnormals(self.device):
            loss = self.forward_backward(x)
            self.update()
        return loss

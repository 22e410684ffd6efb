"""How a function of the math is compiled (torch.compile), and subnormals flushed on the CPU.

A compiled function is always the function itself, traced (the training step's
iwae.training.step.Step.eager_gradients, the evaluation's log weights), never a second
copy of the math. The CUDA-graph step is iwae.training.cudagraph; whether to compile is
iwae.runtime.decisions.
"""
import contextlib
import threading
import types
import warnings

import torch

from . import decisions, torch_private

TANH = "cpp.use_decompose_tanh"      # Inductor's tanh as 2 / (1 + exp(-2a)) - 1 (compiled, below)


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


@contextlib.contextmanager
def tf32_matmuls(on):
    """CUDA fp32 matmuls on TF32 tensor cores for the block, if on (a cuBLAS switch read when a
    kernel is launched or captured, not traced)."""
    if not on:
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


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
    the eager function's. On the CPU the C++ wrapper removes Python's per-kernel overhead, and
    tanh is computed as 2 / (1 + exp(-2a)) - 1 (TANH, where this torch has it): one exp
    where the vectorised library tanh costs 2-3 (docs/speed.md); its error is an absolute
    ~1e-7 near 0 (a relative one there), which a hidden unit's activation does not feel."""
    options = {"fallback_random": True}
    if device.type == "cpu":
        options["cpp_wrapper"] = True
        if torch_private.has_inductor_option(TANH):
            options[TANH] = True
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
                if _refused_recompile(err):                # compiled_step's probe of a shared graph
                    raise
                state["failed"] = True
                warnings.warn(f"iwae: torch.compile failed here ({type(err).__name__}: {err}); "
                              "running eagerly", RuntimeWarning, stacklevel=2)
        return fn(*args)
    return run


_compiled_steps = {}     # (a model's structure, its batch, ...) -> the step's functions, compiled
_first_calls = threading.Lock()   # a probe's stance is the process's: no other first call beside it


def compiled_step(gradients, device, model):
    """A step's (params, x) -> (loss, gradients), gradients being a step's bound method: one
    compiled function per model structure (repr(model): its modules and their sizes), batch
    (shape, dtype, device), grad mode and model.training (the eager one where
    decisions.compiles_gradients says so), shared by the steps of that structure with the
    step an argument: a new model like the last (the Imputer's next fit, a cross-validation's
    next fold) reuses its traced graph instead of tracing again, where the graph's guards hold
    for it (else it gets a function and a graph of its own: _first_call). Each function so
    holds one graph, and after a step's first call its guards are skipped
    (torch.compiler.set_stance(skip_guard_eval_unsafe=True)): checking the 13 input tensors
    and the modules on every call is a cost that matters at small k (docs/speed.md)."""
    owner, function, structure = gradients.__self__, gradients.__func__, repr(model)
    mine = {}

    def run(params, x):
        batch = (tuple(x.shape), x.dtype, x.device, torch.is_grad_enabled(), model.training)
        if batch not in mine and not decisions.compiles_gradients("step", model, x):
            mine[batch] = function                                  # eager, for good
        if batch not in mine:
            mine[batch], out = _first_call((structure, function, batch), device, (owner, params, x))
            return out
        with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
            return mine[batch](owner, params, x)
    return run


def _first_call(key, device, args):
    """(the compiled function a step keeps for a batch, its first result): the first of key's
    functions whose graph's guards hold for args (each probed under the stance
    "fail_on_recompile", which refuses to trace before anything runs), else a new one, added
    to key's (models of one repr alternating between two likelihoods trace each once)."""
    with _first_calls:
        for shared in _compiled_steps.get(key, ()):
            try:
                with torch.compiler.set_stance("fail_on_recompile"):
                    return shared, shared(*args)
            except RuntimeError as err:
                if not _refused_recompile(err):
                    raise
        fresh = compiled(key[1], device)
        _compiled_steps.setdefault(key, []).append(fresh)
        return fresh, fresh(*args)


def _refused_recompile(err):
    """Whether err is torch.compile refusing to trace again under the "fail_on_recompile" stance."""
    return isinstance(err, RuntimeError) and "fail_on_recompile" in str(err)

"""How iwae runs on this machine: whether compiling a function repays compiling it.

The one owner of these decisions (docs/speed.md, "Decisions"). Each is a ``Decision``, the
choice and its reason, which ``iwae COMMAND --verbose`` prints (the "iwae" logger, INFO) and
the evaluation of ``iwae train`` records in eval.json (``iwae evaluate --json`` prints it).

- The evaluator's L_k ("likelihood") decides by measurement. Compiling its log weights fuses
  the eager passes over each chunk's [rows, D] decoder output into one, so the time it saves
  is proportional to k x N x D times what one more pass over such a buffer costs here, which
  differs between machines (docs/speed.md, per machine type): ``probe_ns`` times it once per
  CPU, torch version and thread count, and caches it in CACHE. Compiled when the predicted
  saving exceeds COMPILE_SECONDS.
  Off the CPU, where the probe does not apply, the earlier threshold (AUTO_MIN_WORK).
- Training steps and AIS compile from a number of steps (AUTO_MIN_WORK), where the per-op
  overhead that compiling removes repays it on every machine type measured (docs/speed.md).
- A compiled function that differentiates the model by torch.func (training steps, AIS) runs
  eagerly where the model uses a custom torch.autograd.Function (``compiles_gradients``).
- precision="bf16" on the CPU: ``bf16_speedup`` times a bf16 matmul against fp32's once per
  CPU and torch version (CACHE); where bf16 is slower (no bf16 units: AVX2 CPUs such as Zen 3,
  where it ran at 0.04x fp32's speed), ``check_bf16`` warns in one line before training.
"""
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .atomic import write_json
from .devices import cpu_model
from .rng import forked_rng

COMPILES = ("auto", "off", "step")     # auto: decision() by the work and the machine
AUTO_MIN_WORK = {                      # compile="auto" compiles a step once its work reaches this
    "step": 30_000,                    # training steps of a run on images (10 epochs of MNIST)
    "table step": 1_000,               # training steps of iwae.Imputer's small nets
    "ais": 50_000,                     # AIS steps x images
    "likelihood": 1 << 36,             # k N D of L_k off the CPU (~17,500 MNIST images at k=5000)
}
COMPILE_SECONDS = 15.0     # compiling the evaluator's log weights on a cold cache (docs/speed.md)
PER_PROBE = 2.5            # the evaluator's saving per element of k N D over probe_ns's (docs/speed.md)
MAX_PROBE_NS = 5.0         # no machine measured saves more per element: below, no probe is needed
PROBE_SHAPE = (2006, 784)  # one chunk of the evaluator (likelihood.CHUNK_BYTES of MNIST rows)
PROBE_REPEATS = 30
PROBE_WARMUP = 5           # untimed first calls: a process's first buffers of this size fault their pages in
BF16_SHAPE = (1000, 200, 784)   # the paper decoder's output layer at k x batch = 1000 rows
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "iwae" / "probes.json"

log = logging.getLogger("iwae")


@dataclass(frozen=True)
class Decision:
    what: str      # the kind of function: a key of AUTO_MIN_WORK, "likelihood", or "bf16"
    choice: str    # "step" (compiled) or "off" (eager); for "bf16": "faster" or "slower" than fp32
    reason: str

    def record(self):
        """The decision as eval.json keeps it."""
        return {"compile": self.choice, "reason": self.reason}


def decide(compile, what, work, device):
    """decision(...).choice: "step" or "off"."""
    return decision(compile, what, work, device).choice


def decision(compile, what, work, device):
    """compile ("auto" | "off" | "step") resolved for a function of kind `what` doing `work`
    (steps, or k * N * D for "likelihood"; None: unknown) on device, as a Decision.
    A training step on CUDA is always compiled (it is then captured as a CUDA graph)."""
    if compile not in COMPILES:
        raise ValueError(f"compile must be one of {', '.join(COMPILES)}, got {compile!r}")
    if compile != "auto":
        return Decision(what, compile, f"compile={compile!r} given")
    if device.type == "meta":
        made = Decision(what, "off", "the meta device runs nothing")
    elif device.type == "cuda" and what in ("step", "table step"):
        made = Decision(what, "step", "a CUDA step is compiled to be captured as a CUDA graph")
    elif what == "likelihood" and device.type == "cpu":
        made = _likelihood(work)
    else:
        pays = work is not None and work >= AUTO_MIN_WORK[what]
        made = Decision(what, "step" if pays else "off",
                        f"{work} {'>=' if pays else '<'} {AUTO_MIN_WORK[what]} (AUTO_MIN_WORK[{what!r}])")
    _say(made)
    return made


def _likelihood(work):
    """Compile L_k on the CPU where PER_PROBE x probe_ns x k N D exceeds COMPILE_SECONDS."""
    if work is None:
        return Decision("likelihood", "off", "unknown work")
    if PER_PROBE * MAX_PROBE_NS * 1e-9 * work < COMPILE_SECONDS:
        return Decision("likelihood", "off", f"k*N*D = {work:.3g} is too little to repay a compile on any machine")
    threads = torch.get_num_threads()
    ns = probe_ns(threads)
    saving = PER_PROBE * ns * 1e-9 * work
    pays = saving > COMPILE_SECONDS
    return Decision("likelihood", "step" if pays else "off",
                    f"predicted saving {saving:.0f} s {'>' if pays else '<='} {COMPILE_SECONDS:.0f} s of compiling "
                    f"(k*N*D = {work:.3g}; a pass over a chunk costs {ns:.2f} ns per element at {threads} "
                    f"thread(s) here)")


def compiles_gradients(what, model, x):
    """Whether a compiled function of kind `what` may differentiate model by torch.func at a
    batch like x: False (the decision logged, a one-line warning) where model.log_weights uses a
    custom torch.autograd.Function, whose backward torch.compile drops under torch.func's
    transforms, differentiating its forward instead: a silently different gradient
    (pytorch/pytorch#193279, torch 2.13). The function then runs eagerly."""
    names = custom_backwards(model, x)
    if not names:
        return True
    made = Decision(what, "off", f"the model's log weights use torch.autograd.Function {', '.join(names)}, whose "
                                 "backward torch.compile drops under torch.func (pytorch/pytorch#193279)")
    _say(made)
    warnings.warn(f"iwae: {what} runs eagerly: {made.reason}", RuntimeWarning, stacklevel=3)
    return False


def custom_backwards(model, x):
    """The names of the custom torch.autograd.Function classes in the autograd graph of
    model.log_weights(x[:1], 1), sorted (the random state kept as it was; recorded inside
    torch.no_grad and torch.inference_mode too, where AIS runs)."""
    with forked_rng(x.device), torch.inference_mode(False), torch.enable_grad():
        # a clone (x may be an inference tensor) that requires grad, so that a path from it
        # is recorded where the parameters require none (AIS freezes them)
        row = x[:1].clone().requires_grad_(x.is_floating_point())
        log_w = model.log_weights(row, 1)
    names, seen, stack = set(), set(), [log_w.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            names.add(type(node).__name__.removesuffix("Backward"))
        stack.extend(parent for parent, _ in node.next_functions)
    return sorted(names)


def probe_ns(threads):
    """What one more pass over a chunk of the evaluator costs here, in ns per element, at
    `threads` torch threads: the eager Bernoulli log density (x l - softplus(l)).sum(-1)
    against softplus(l).sum(-1), the pass a fused kernel keeps (the best of PROBE_REPEATS
    each after PROBE_WARMUP, interleaved). Measured once per CPU, torch version and thread count: CACHE."""
    return _cached(f"{cpu_model()} | torch {torch.__version__} | {threads} threads", _measure)


def check_bf16(device):
    """Warn in one line (and log the decision) where precision="bf16" would make the step
    slower: on a CPU whose bf16 matmuls are slower than its fp32 ones."""
    if device.type != "cpu":
        return
    speedup = bf16_speedup()
    faster = speedup >= 1
    reason = f"a bf16 matmul of the paper decoder's shape runs at {speedup:.2f}x fp32's speed on this CPU ({cpu_model()})"
    _say(Decision("bf16", "faster" if faster else "slower", reason))
    if not faster:
        warnings.warn(f"precision='bf16' will be slower than 'fp32' here: {reason}, which has no bf16 matmul "
                      "units; use precision='fp32'", UserWarning, stacklevel=3)


def bf16_speedup():
    """fp32's time over bf16's for a [1000, 200] x [200, 784] matmul on one thread (best of
    PROBE_REPEATS each after PROBE_WARMUP, interleaved), once per CPU and torch version: CACHE."""
    return _cached(f"{cpu_model()} | torch {torch.__version__} | bf16 matmul speedup", _measure_bf16)


def _measure_bf16():
    rows, inner, cols = BF16_SHAPE
    best = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pairs = {dtype: (torch.randn(rows, inner, dtype=dtype), torch.randn(inner, cols, dtype=dtype))
                 for dtype in (torch.float32, torch.bfloat16)}
        for repeat in range(PROBE_WARMUP + PROBE_REPEATS):
            for dtype, (a, b) in pairs.items():
                began = time.perf_counter()
                a @ b
                if repeat >= PROBE_WARMUP:
                    best[dtype] = min(best.get(dtype, float("inf")), time.perf_counter() - began)
    finally:
        torch.set_num_threads(threads)
    return best[torch.float32] / best[torch.bfloat16]


def _cached(key, measure):
    """measure() once per key, kept in CACHE (measured again where CACHE cannot be written)."""
    cached = _read_cache()
    if key not in cached:
        cached[key] = measure()
        try:
            CACHE.parent.mkdir(parents=True, exist_ok=True)
            write_json(CACHE, cached)
        except OSError:          # a read-only home: measured again by the next process
            pass
    return cached[key]


def _measure():
    x = torch.rand(PROBE_SHAPE).round()
    logits = torch.randn(PROBE_SHAPE)
    best = {"all": float("inf"), "one": float("inf")}
    with torch.inference_mode():
        for repeat in range(PROBE_WARMUP + PROBE_REPEATS):
            for name, fn in (("all", lambda: (x * logits - F.softplus(logits)).sum(-1)),
                             ("one", lambda: F.softplus(logits).sum(-1))):
                began = time.perf_counter()
                fn()
                if repeat >= PROBE_WARMUP:
                    best[name] = min(best[name], time.perf_counter() - began)
    return max(0.0, best["all"] - best["one"]) / x.numel() * 1e9


def _read_cache():
    try:
        cached = json.loads(CACHE.read_text())
    except (OSError, ValueError):
        return {}
    return cached if isinstance(cached, dict) else {}


_said = set()


def _say(made):
    """Log each distinct decision once per process (the loop decides at every epoch)."""
    if made not in _said:
        _said.add(made)
        log.info("%s %s: %s (%s)", "precision" if made.what == "bf16" else "compile", made.what, made.choice,
                 made.reason)

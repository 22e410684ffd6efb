"""What the Bernoulli likelihood's softplus sum costs per element, and why only the compiled
evaluator takes the grouped form (core.densities.softplus_sum; docs/speed.md).

    python -m benchmarks.softplus            # one thread, a [2000, 784] buffer of logits

Prints ns per element (best of 20 each, the variants taking turns) of: the sum of softplus and
the grouped sum (relu(l) + log of products of eight factors 1 + exp(-|l|)), each compiled
without gradients, compiled with its gradient (torch.func.vjp, as the training step takes it),
and eager without gradients.
"""
import sys
import time
from unittest import mock

import torch
import torch.nn.functional as F

from iwae.core.densities import softplus_sum
from iwae.runtime.compile import compiled

ROWS, COLUMNS, REPEATS = 2000, 784, 20


def plain(logits):
    return F.softplus(logits).sum(-1)


def grouped(logits):
    """softplus_sum's compiled, gradient-free form, written out so that it can be differentiated."""
    factors = (1 + torch.exp(-logits.abs())).unflatten(-1, (8, COLUMNS // 8)).prod(-2)
    return torch.relu(logits).sum(-1) + torch.log(factors).sum(-1)


def with_gradient(fn):
    def run(logits):
        value, pullback = torch.func.vjp(lambda t: fn(t).sum(), logits)
        return value, pullback(torch.ones(()))[0]
    return run


def eager_grouped(logits):
    with mock.patch.object(torch.compiler, "is_compiling", lambda: True):
        return softplus_sum(logits)


def main(argv=None):
    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    logits = 3 * torch.randn(ROWS, COLUMNS, generator=torch.Generator().manual_seed(0))
    variants = {"compiled softplus": (compiled(plain, cpu), True), "compiled grouped": (compiled(softplus_sum, cpu), True),
                "compiled softplus + gradient": (compiled(with_gradient(plain), cpu), False),
                "compiled grouped + gradient": (compiled(with_gradient(grouped), cpu), False),
                "eager softplus": (plain, True), "eager grouped": (eager_grouped, True)}
    best = dict.fromkeys(variants, float("inf"))
    for repeat in range(REPEATS + 1):                  # the first round compiles
        for name, (fn, inference) in variants.items():
            with torch.inference_mode(inference):
                began = time.perf_counter()
                fn(logits)
                if repeat:
                    best[name] = min(best[name], time.perf_counter() - began)
    for name, seconds in best.items():
        print(f"{name}: {seconds / logits.numel() * 1e9:.2f} ns per element")


if __name__ == "__main__":
    sys.exit(main())

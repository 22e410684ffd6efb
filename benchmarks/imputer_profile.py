"""Where a default iwae.Imputer fit's time goes: a cProfile of the fits of one process.

    python -m benchmarks.imputer_profile --dataset breast_cancer
    python -m benchmarks.imputer_profile --dataset iris --fits 2 --compile off

benchmarks.imputation's table and 50% MCAR holes (seed --seed), one torch thread, --fits
default fits one after another in a fresh process (the first imports the compiler and traces
the step; the later ones reuse it: docs/missing.md, "Where a default fit's time goes"). Per
fit: seconds, epochs, steps, the best epoch, and the seconds in the compiled step's kernel,
the first call of a compiled step (importing the compiler, tracing and loading the step) and
Dynamo's trace inside it, the construction of the optimizer (torch's Adam imports
torch._dynamo on its first construction in a process, compiled or not), the held-out scoring,
the Adam update and the refit (cumulative, so the refit's steps are also in the kernel's), and the
matmul floor of its steps: the fit's model's matrix products of one step (forward and
backward, benchmarks.common.MatmulFloor, median of 300 CPU-timed calls after the fit) times
the steps it trained, what no cheaper per-step overhead can go below at that many steps.
cProfile adds its own overhead to the Python parts.
"""
import argparse
import cProfile
import pstats
import time

import numpy as np

from .common import MatmulFloor, interleaved, linear_shapes, medians
from .imputation import DATASETS, EXTRA, load, mcar

PARTS = {                    # (file suffix, function name or prefix): what the part is
    "kernel": ("", "inductor_entry_cpp"),
    "first compiled call": ("runtime/compile.py", "_first_call"),
    "of which Dynamo's trace": ("_dynamo/convert_frame.py", "_compile"),
    "Adam's construction": ("runtime/optim.py", "make_optimizer"),
    "held-out scoring": ("missing/imputer.py", "score"),
    "Adam update": ("runtime/optim.py", "__call__"),
    "refit": ("training/loop.py", "refit"),
}


def seconds_in(stats, where, name):
    """Cumulative seconds of the functions named `name` in files ending with `where` (a
    built-in's name, "<built-in method module.name>", ends with it)."""
    return sum(ct for (path, _, func), (_, _, _, ct, _) in stats.stats.items()
               if path.replace("\\", "/").endswith(where) and (func == name or func.endswith(f".{name}>")))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="breast_cancer", choices=DATASETS + EXTRA)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fits", type=int, default=2)
    p.add_argument("--compile", default="auto", choices=("auto", "step", "off"))
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    import iwae
    x = load(args.dataset)
    holes = np.where(mcar(x.shape, args.seed), np.nan, x)
    holes = holes[:, np.nanmax(holes, 0) > np.nanmin(holes, 0)]     # as benchmarks.imputation drops them
    for fit in range(args.fits):
        profile = cProfile.Profile()
        began = time.perf_counter()
        profile.enable()
        imputer = iwae.Imputer(seed=args.seed, compile=args.compile).fit(holes)
        profile.disable()
        total = time.perf_counter() - began
        stats = pstats.Stats(profile)
        per_epoch = x.shape[0] // imputer.batch_size
        parts = ", ".join(f"{name} {seconds_in(stats, *where):.2f} s" for name, where in PARTS.items())
        steps = imputer.n_epochs_ * per_epoch
        floor = floor_ms(imputer)
        print(f"{args.dataset} fit {fit + 1}: {total:.2f} s, {imputer.n_epochs_} epochs "
              f"({steps} steps), best epoch {imputer.best_epoch_} "
              f"({imputer.best_epoch_ * per_epoch} steps); {parts}; matmul floor {floor:.3f} ms a step, "
              f"{floor * steps / 1e3:.2f} s for its steps", flush=True)


def floor_ms(imputer):
    """The median CPU milliseconds of one step's matrix products at the fitted model's shapes."""
    floor = MatmulFloor(linear_shapes(imputer.model_, imputer.k_, imputer.batch_size))
    return medians(interleaved({"floor": floor}, 300), "cpu")["floor"]


if __name__ == "__main__":
    main()

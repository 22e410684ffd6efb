"""A user's first iwae.Imputer fit: one default fit_transform in a fresh process, on a new
machine (an empty torch compile cache), again (the cache warm), and eagerly (issue 40).

    python -m benchmarks.imputer_first --dataset breast_cancer --seed 0

benchmarks.imputation's table and 50% MCAR holes (seed --seed), one torch thread. Each case
runs in a process of its own, one after another, so each pays what a user's first call pays:
importing iwae and torch, and with compile="auto" the compiler's import, the step's trace and,
on an empty cache (a fresh TORCHINDUCTOR_CACHE_DIR), its C++ build. Prints, per case, the
process's wall seconds (the interpreter's start and every import included), the seconds to import
torch and iwae and load the table ("imports"), the fit_transform's, and the epochs trained (an
eager fit rounds differently, so it may stop at another epoch).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from .imputation import DATASETS, EXTRA

CASES = (("new machine", "auto"), ("warm cache", "auto"), ("eager", "off"))   # in turn, one compile cache: empty, then warm


def child(dataset, seed, compile):
    """One fit in this process; its seconds as a JSON line."""
    began = time.perf_counter()
    import numpy as np
    import torch
    torch.set_num_threads(1)
    import iwae
    from .imputation import load, mcar
    x = load(dataset)
    holes = np.where(mcar(x.shape, seed), np.nan, x)
    ready = time.perf_counter()
    imputer = iwae.Imputer(seed=seed, compile=compile)
    imputer.fit_transform(holes)
    done = time.perf_counter()
    print(json.dumps({"imports": round(ready - began, 2), "fit_transform": round(done - ready, 2),
                      "fit": round(imputer.fit_seconds_, 2), "epochs": imputer.n_epochs_}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="breast_cancer", choices=DATASETS + EXTRA)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", metavar="COMPILE", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args.dataset, args.seed, args.child)
    with tempfile.TemporaryDirectory() as cache:
        for name, compile in CASES:
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "OMP_NUM_THREADS": "1"}
            began = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "benchmarks.imputer_first", "--dataset", args.dataset,
                                  "--seed", str(args.seed), "--child", compile], env=env, check=True,
                                 capture_output=True, text=True).stdout
            wall = time.perf_counter() - began
            r = json.loads(out.strip().splitlines()[-1])
            print(f"{args.dataset} seed {args.seed}, {name} (compile={compile!r}): process {wall:.1f} s, imports "
                  f"{r['imports']:.1f} s, fit_transform {r['fit_transform']:.1f} s (fit {r['fit']:.1f} s, "
                  f"{r['epochs']} epochs)", flush=True)


if __name__ == "__main__":
    main()

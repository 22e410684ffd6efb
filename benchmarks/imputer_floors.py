"""One fit of iwae.Imputer() under another rule for its Gaussian floors (issue 40, "Ties").

    python -m benchmarks.imputer_floors mnist_pixels 0                        # the default rule
    python -m benchmarks.imputer_floors mnist_pixels 0 --floor 0.3            # every real column 0.3
    python -m benchmarks.imputer_floors digits 1 --share 0.5 --cap 0.5        # see below
    python -m benchmarks.imputer_floors mnist_pixels 0 --settings '{"latent": 30, "hidden": 256}'

--share C --cap K: each column's floor is max(resolution / sqrt(2 pi), min(C x the share of its
most common value where that occurs twice or more, K)), at most 1, on every column however
finely recorded (the default applies the share to columns of FINE_LEVELS+ distinct values only).
The table, its 50% MCAR holes and the score are benchmarks.imputation's; prints one JSON line.
"""
import argparse
import json
import math
import sys
import time

import numpy as np
import torch

import iwae
import iwae.missing.imputer as imputer_module

from .imputation import load, mcar


def tie_shares(levels):
    """Per column of imputer._levels: the share of its most common observed value where it
    occurs twice or more, else 0."""
    return np.array([c.max() / c.sum() if len(c) and c.max() > 1 else 0.0 for _, c in levels])


def floor_rule(args):
    """The _floors replacement (of each column's _levels) that args ask for, or None (the default)."""
    if args.floor is not None:
        return lambda levels: np.full(len(levels), args.floor)
    if args.share is not None:
        def rule(levels):
            resolution = imputer_module._resolution(levels) / math.sqrt(2 * math.pi)
            return np.minimum(np.maximum(resolution, np.minimum(args.share * tie_shares(levels), args.cap)), 1.0)
        return rule
    return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dataset")
    p.add_argument("seed", type=int)
    p.add_argument("--floor", type=float, help="every real column's floor")
    p.add_argument("--share", type=float, help="C: the floor is at least C x the most common value's share")
    p.add_argument("--cap", type=float, default=1.0, help="K: ... at most K")
    p.add_argument("--settings", default="{}", help="iwae.Imputer keyword arguments, as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rule = floor_rule(args)
    if rule is not None:
        imputer_module._floors = rule
    x = load(args.dataset)
    removed = mcar(x.shape, args.seed) & ~np.isnan(x)
    holes = np.where(removed, np.nan, x)
    varied = np.nanmax(holes, 0) > np.nanmin(holes, 0)
    x, removed, holes = x[:, varied], removed[:, varied], holes[:, varied]
    began = time.perf_counter()
    model = iwae.Imputer(seed=args.seed, **json.loads(args.settings))
    error = (model.fit_transform(holes) - x) / np.nanstd(x, 0)
    print(json.dumps({"dataset": args.dataset, "seed": args.seed, "floor": args.floor, "share": args.share,
                      "cap": args.cap, "settings": args.settings, "mse": float(np.mean(error[removed] ** 2)),
                      "seconds": round(time.perf_counter() - began, 1), "epochs": model.n_epochs_}))


if __name__ == "__main__":
    sys.exit(main())

"""iwae.Imputer's transform (the fill by importance sampling) side by side with another revision's.

    python -m benchmarks.imputer_transform --baseline 0be0df5
    python -m benchmarks.imputer_transform --baseline 0be0df5 --datasets breast_cancer mnist_pixels --calls 5

For each table (benchmarks.imputation's, with its 50% MCAR holes of seed 0, one torch thread),
this package's and --baseline's iwae.Imputer are fitted alike (--epochs epochs, K = 20, no
early stopping: the transform's cost depends on the net's shape, not on how well it is trained),
then their transforms of the table are timed in turns (benchmarks.common.interleaved, --calls
calls each, CPU seconds of this thread) and scored (MSE on the removed cells, standardised).
The two fills draw their importance samples in different chunks, so their MSEs differ by the
sampling's noise; the fits are the same only where the two revisions train alike.
"""
import argparse
import statistics

import numpy as np

from .common import interleaved, load_baseline
from .imputation import DATASETS, EXTRA, load, mcar


def fitted(package, holes, epochs):
    return package.Imputer(seed=0, k=20, epochs=epochs, patience=None).fit(holes)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", required=True, metavar="REV", help="git revision to time against")
    p.add_argument("--datasets", nargs="+", default=["breast_cancer", "iris", "digits"], choices=DATASETS + EXTRA)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--calls", type=int, default=3)
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    import iwae
    from iwae.app.provenance import cpu_model, revision
    base = load_baseline(args.baseline)
    print(f"transform seconds (median CPU of {args.calls} calls, one thread), {cpu_model()}: "
          f"{revision()} against {args.baseline}")
    for name in args.datasets:
        x = load(name)
        removed = mcar(x.shape, 0) & ~np.isnan(x)
        holes = np.where(removed, np.nan, x)
        kept = np.nanmax(holes, 0) > np.nanmin(holes, 0)
        x, removed, holes = x[:, kept], removed[:, kept], holes[:, kept]
        imputers = {"this": fitted(iwae, holes, args.epochs), "base": fitted(base, holes, args.epochs)}
        times = interleaved({k: (lambda m=m: m.transform(holes)) for k, m in imputers.items()},
                            args.calls, warmup=1, block=1)
        cpu = {k: statistics.median(t["cpu"]) for k, t in times.items()}
        mse = {k: float(np.mean(((m.transform(holes) - x) / np.nanstd(x, 0))[removed] ** 2))
               for k, m in imputers.items()}
        print(f"{name} {list(x.shape)}: {cpu['this']:.2f} s against {cpu['base']:.2f} s "
              f"({cpu['base'] / cpu['this']:.2f}x); MSE {mse['this']:.4f} against {mse['base']:.4f}", flush=True)


if __name__ == "__main__":
    main()

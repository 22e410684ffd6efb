"""iwae.Imputer inside a scikit-learn Pipeline under cross-validation, beside MICE and missForest.

    python -m benchmarks.imputer_cv                        # results/imputer_cv/imputer_cv.md
    python -m benchmarks.imputer_cv --datasets diabetes --out results/imputer_cv/diabetes.md

The workflow issue 40 names: X with a share of its cells removed at random (seeded), a
Pipeline(StandardScaler, imputer, Ridge or LogisticRegression) scored by cross_val_score on y
(5-fold, R² or accuracy), every imputer in one process, one thread, one after another. The
seconds are the whole cross-validation's; iwae.Imputer's later folds reuse the compiled step
of the first (docs/missing.md, "Where a default fit's time goes"), so its first fold also
carries the process's compile.
"""
import argparse
import os
import time
from pathlib import Path

import numpy as np

from iwae.app.provenance import cpu_model, revision

RESULTS = Path(__file__).resolve().parents[1] / "results"
DATASETS = {"diabetes": "regression", "breast_cancer": "classification"}
IMPUTERS = ("mice", "missforest", "iwae")
LABELS = {"mice": "MICE (BayesianRidge)", "missforest": "missForest (ExtraTrees 100)", "iwae": "iwae.Imputer()"}


def imputer(name, seed):
    from sklearn.ensemble import ExtraTreesRegressor
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer
    import iwae
    return {"mice": lambda: IterativeImputer(random_state=seed),
            "missforest": lambda: IterativeImputer(ExtraTreesRegressor(n_estimators=100, random_state=seed),
                                                   random_state=seed),
            "iwae": lambda: iwae.Imputer(seed=seed)}[name]()


def run(name, method, folds, rate, seed):
    """(mean score, its standard deviation over folds, seconds) of one cross-validation."""
    from sklearn import datasets
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    x, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    holes = np.where(np.random.default_rng(seed).random(x.shape) < rate, np.nan, x)
    model = Ridge() if DATASETS[name] == "regression" else LogisticRegression(max_iter=1000)
    pipe = make_pipeline(StandardScaler(), imputer(method, seed), model)
    began = time.perf_counter()
    scores = cross_val_score(pipe, holes, y, cv=folds)
    return float(scores.mean()), float(scores.std()), time.perf_counter() - began


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--imputers", nargs="+", default=list(IMPUTERS), choices=IMPUTERS)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--rate", type=float, default=0.3, help="the share of X's cells removed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS / "imputer_cv" / "imputer_cv.md")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    torch.set_num_threads(1)
    lines = ["| imputer | " + " | ".join(f"{n} score | seconds" for n in args.datasets) + " |",
             "|---|" + "---|---|" * len(args.datasets)]
    for method in args.imputers:
        cells = []
        for name in args.datasets:
            mean, sd, seconds = run(name, method, args.folds, args.rate, args.seed)
            print(f"{name} {method}: score {mean:.4f} ± {sd:.4f}, {seconds:.1f} s", flush=True)
            cells += [f"{mean:.3f} ± {sd:.3f}", f"{seconds:.1f}"]
        lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
    head = (f"# iwae.Imputer under cross-validation\n\n`python -m benchmarks.imputer_cv` (its docstring): "
            f"{args.folds}-fold cross_val_score of Pipeline(StandardScaler, imputer, Ridge (diabetes: R²) or "
            f"LogisticRegression (breast_cancer: accuracy)), {args.rate:.0%} of X's cells removed (seed "
            f"{args.seed}); mean ± standard deviation over folds, seconds of the whole cross-validation, one "
            f"thread, the imputers one after another in one process; {cpu_model()}; at {revision()}.\n\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(head + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

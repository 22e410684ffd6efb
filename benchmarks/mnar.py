"""Values missing not at random: not-MIWAE's missingness models against MAR imputers
(docs/missing.md, issue 28).

    python -m benchmarks.mnar                       # results/imputation_mnar.{jsonl,md}
    python -m benchmarks.mnar --seeds 2 --datasets wine --methods mar self-masking

MNAR by self-masking (the not-MIWAE paper's protocol): in the first half of the columns every
value above the column's mean is removed (a fixed mask; the seed changes the imputers' own
randomness only). Score: RMSE on the removed cells of the data standardised with the complete
data's mean and standard deviation (scoring only). Methods: iwae.Imputer(mechanism="mar"),
"self-masking", "linear" (at the Imputer's defaults otherwise), MICE (IterativeImputer with
BayesianRidge) and missForest (IterativeImputer with ExtraTreesRegressor(100)), the last two
given the table standardised with its observed values' statistics (benchmarks.imputation.fill).
One thread. Resumable: one JSON line per (data set, seed, method) in imputation_mnar.jsonl.
"""
import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks.imputation import done, fill, imputer, load, run_missing

RESULTS = Path(__file__).resolve().parents[1] / "results"
DATASETS = ("breast_cancer", "wine")
METHODS = ("mar", "self-masking", "linear", "mice", "missforest")
EXTRA = ("self-masking-positive",        # sign="positive": "high values go missing" known
         "self-masking-no-mask")         # mask_input=False: the encoder without the mask
LABELS = {"mar": "iwae.Imputer(mechanism='mar')", "self-masking": "iwae.Imputer(mechanism='self-masking')",
          "linear": "iwae.Imputer(mechanism='linear')",
          "self-masking-positive": "iwae.Imputer(mechanism='self-masking', sign='positive')",
          "self-masking-no-mask": "iwae.Imputer(mechanism='self-masking', mask_input=False)",
          "mice": "MICE (BayesianRidge)", "missforest": "missForest (ExtraTrees 100)"}


def self_masked(x):
    """True = removed: in the first half of the columns, every value above its column's mean."""
    removed = np.zeros(x.shape, dtype=bool)
    half = x.shape[1] // 2
    removed[:, :half] = x[:, :half] > x[:, :half].mean(0)
    return removed


def model(method, seed):
    if method in ("mice", "missforest"):
        return imputer(method, seed)
    import iwae
    if method == "self-masking-positive":
        return iwae.Imputer(mechanism="self-masking", sign="positive", seed=seed)
    if method == "self-masking-no-mask":
        return iwae.Imputer(mechanism="self-masking", mask_input=False, seed=seed)
    return iwae.Imputer(mechanism=method, seed=seed)


def run_one(name, seed, method):
    from iwae.app.provenance import cpu_model, revision
    x = load(name)
    removed = self_masked(x)
    holes = np.where(removed, np.nan, x)
    began = time.perf_counter()
    filled = fill(model(method, seed), holes)
    seconds = time.perf_counter() - began
    error = (filled - x) / x.std(0)
    return {"dataset": name, "seed": seed, "method": method, "shape": list(x.shape),
            "missing": int(removed.sum()), "rmse": float(np.sqrt(np.mean(error[removed] ** 2))),
            "seconds": round(seconds, 2), "cpu": cpu_model(), "revision": revision()}


def table(rows, datasets, methods):
    """RMSE mean ± standard error over seeds (seconds per fit, seeds), and the ratio to "mar"."""
    from benchmarks.common import mean_se        # (common imports torch: after run_missing's thread settings)
    lines = ["| method | " + " | ".join(f"{n} RMSE | / mar" for n in datasets) + " |",
             "|---|" + "---|---|" * len(datasets)]
    for method in methods:
        cells = []
        for name in datasets:
            got = {r["seed"]: r for r in rows.values() if r["dataset"] == name and r["method"] == method}
            mar = {r["seed"]: r["rmse"] for r in rows.values() if r["dataset"] == name and r["method"] == "mar"}
            if not got:
                cells += ["", ""]
                continue
            rmse, se = mean_se([r["rmse"] for r in got.values()])
            seconds = np.mean([r["seconds"] for r in got.values()])
            cells.append(f"{rmse:.3f} ± {se:.3f} ({seconds:.1f} s, n={len(got)})")
            paired = [got[s]["rmse"] / mar[s] for s in got if s in mar]
            cells.append(f"{np.mean(paired):.2f}x" if paired else "")
        lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(rows, datasets, methods, out):
    text = ["# Imputation of values missing not at random (self-masking MNAR)", "",
            "`python -m benchmarks.mnar` (docs/missing.md): in the first half of the columns every value above "
            "the column's mean removed; RMSE on the removed cells of the data standardised with the complete "
            "data's statistics (scoring only), mean ± standard error over seeds, seconds per fit in brackets; "
            "'/ mar' is the mean over seeds of the RMSE over iwae.Imputer(mechanism='mar')'s at the same seed. "
            f"One thread; by machine and revision: {provenance(rows)}.", "",
            table(rows, datasets, methods), ""]
    (out / "imputation_mnar.md").write_text("\n".join(text))


def provenance(rows):
    """Which machine and revision ran which (table, method)s, e.g. "Intel Xeon at 845f322: wine mice"."""
    by = {}
    for r in rows.values():
        by.setdefault(f"{r['cpu']} at {r['revision']}", set()).add(f"{r['dataset']} {r['method']}")
    return "; ".join(f"{who}: {', '.join(sorted(what))}" for who, what in sorted(by.items()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS + EXTRA)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--report", action="store_true", help="only rewrite the table from the lines found")
    args = p.parse_args(argv)
    log = args.out / "imputation_mnar.jsonl"
    rows = done(log) if args.report else run_missing(log, args, run_one)
    write_report(rows, args.datasets, args.methods, args.out)


if __name__ == "__main__":
    main()

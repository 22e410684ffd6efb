"""How iwae.Imputer's training budget trades time for MSE: the settings behind its defaults (issue 40).

    python -m benchmarks.imputer_budget                       # results/imputer_budget.{jsonl,md}
    python -m benchmarks.imputer_budget --configs default b256-s600 --datasets breast_cancer --seeds 3
    python -m benchmarks.imputer_budget --configs silu --seeds 5 --against results/imputation.jsonl

Each config is a set of iwae.Imputer settings; "steps" S stands for epochs = max(20, ceil(S /
steps per epoch)) on a table of N rows (the defaults' budget is S = 3000 at batch 64), and
"patience_steps" P for patience = ceil(P / steps per epoch) (early stopping on the held-out
entries' imputation error), "hidden_per_column" c for hidden = min(128, max(32, c x columns)), "module" constants of iwae.missing.imputer set for the fit (REFIT, HOLDOUT). Steps per epoch: N // batch (iwae.fit(drop_last=True), as the
Imputer trains; rows before 2026-12-04's drop_last were ceil(N / batch)). The tables, the 50% MCAR holes and the score are benchmarks.imputation's (MSE on the
removed cells, standardised with the complete data's statistics); fit seconds are CPU seconds of
one torch thread, the cold compile of a first fit in the process included where a config compiles
(each process compiles once per shape: run configs that compile in a fresh process to see a new
user's first fit). Resumable: one JSON line per (data set, seed, config).
"""
import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from iwae.app.provenance import revision

from . import imputation
from .imputation import DATASETS, EXTRA, against, load, mcar, run_missing, table

RESULTS = Path(__file__).resolve().parents[1] / "results"
CONFIGS = {
    "default": {},
    "fixed-3000": {"patience": None},
    "s3000-eager": {"steps": 3000, "compile": "off"},
    "stop-p1000-norefit": {"steps": 8000, "patience_steps": 1000, "module": {"REFIT": 0}},
    "stop-p500-norefit": {"steps": 8000, "patience_steps": 500, "module": {"REFIT": 0}},
    "stop-p500-refit0.25": {"steps": 8000, "patience_steps": 500, "module": {"REFIT": 0.25}},
    "stop-p500-refit0.5": {"steps": 8000, "patience_steps": 500, "module": {"REFIT": 0.5}},
    "holdout0.05": {"module": {"HOLDOUT": 0.05}},
    "holdout0.2": {"module": {"HOLDOUT": 0.2}},
    "z20": {"latent": 20},
    "b32": {"batch_size": 32},
    "draws20": {"module": {"SCORE_DRAWS": 20}},
    "score100": {"module": {"SCORE_STEPS": 100}},
    "k10": {"k": 10},
    "l1": {"hidden_layers": 1},
    "lr2e-3": {"lr": 2e-3},
    "points-coarse": {"module": {"FINE_LEVELS": 2}},
    "silu": {"activation": "silu"},
    "relu": {"activation": "relu"},
    "elu": {"activation": "elu"},
    "silu-k10": {"activation": "silu", "k": 10},
    "silu-k5": {"activation": "silu", "k": 5},
    "silu-h64": {"activation": "silu", "hidden": 64},
    "h8d": {"hidden_per_column": 8},
    "h16d": {"hidden_per_column": 16},
    "h64": {"hidden": 64, "patience": None},
    "h64-k10": {"hidden": 64, "k": 10, "patience": None},
    "s1000": {"steps": 1000, "compile": "off"},
    "b128-lr2e-3-s1000": {"batch_size": 128, "lr": 2e-3, "steps": 1000, "compile": "off"},
    "cos-b64-lr1e-3-s1000": {"schedule": "cosine", "steps": 1000, "compile": "off"},
    "cos-b64-lr3e-3-s1000": {"schedule": "cosine", "lr": 3e-3, "steps": 1000, "compile": "off"},
    "cos-b128-lr3e-3-s600": {"schedule": "cosine", "batch_size": 128, "lr": 3e-3, "steps": 600, "compile": "off"},
    "cos-b128-lr5e-3-s600": {"schedule": "cosine", "batch_size": 128, "lr": 5e-3, "steps": 600, "compile": "off"},
    "cos-b256-lr5e-3-s400": {"schedule": "cosine", "batch_size": 256, "lr": 5e-3, "steps": 400, "compile": "off"},
    "cos-b128-lr3e-3-s600-k10": {"schedule": "cosine", "batch_size": 128, "lr": 3e-3, "steps": 600, "k": 10,
                                 "compile": "off"},
}


def settings(config, n, d):
    """iwae.Imputer's keyword arguments for a config on a table of n rows and d columns."""
    from iwae.missing.imputer import HIDDEN, MIN_HIDDEN
    from iwae.training.loop import batches_per_epoch
    kwargs = dict(CONFIGS[config])
    per_epoch = batches_per_epoch(n, kwargs.get("batch_size", 64), drop_last=True)
    steps, patience = kwargs.pop("steps", None), kwargs.pop("patience_steps", None)
    per_column = kwargs.pop("hidden_per_column", None)
    if per_column is not None:
        kwargs["hidden"] = min(HIDDEN, max(MIN_HIDDEN, per_column * d))
    kwargs.pop("module", None)
    if steps is not None:
        kwargs["epochs"] = max(20, math.ceil(steps / per_epoch))
    if patience is not None:
        kwargs["patience"] = math.ceil(patience / per_epoch)
    return kwargs


def run_one(name, seed, config):
    import iwae
    from iwae.missing import imputer as imputer_module
    from iwae.app.provenance import cpu_model
    x = load(name)
    removed = mcar(x.shape, seed) & ~np.isnan(x)
    holes = np.where(removed, np.nan, x)
    varied = np.nanmax(holes, 0) > np.nanmin(holes, 0)
    x, removed, holes = x[:, varied], removed[:, varied], holes[:, varied]
    model = iwae.Imputer(seed=seed, **settings(config, *x.shape))
    constants = CONFIGS[config].get("module", {})
    saved = {name: getattr(imputer_module, name) for name in constants}
    vars(imputer_module).update(constants)
    try:
        began, cpu = time.perf_counter(), time.process_time()
        filled = model.fit_transform(holes)
        seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
    finally:
        vars(imputer_module).update(saved)
    error = (filled - x) / np.nanstd(x, 0)
    return {"dataset": name, "seed": seed, "method": config, "shape": list(x.shape), "cpu": cpu_model(),
            "mse": float(np.mean(error[removed] ** 2)), "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
            "fit_seconds": round(model.fit_seconds_, 2), "epochs": model.n_epochs_}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS + EXTRA)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS / "imputer_budget")
    p.add_argument("--against", type=Path, metavar="JSONL",
                   help="also each config's MSE paired with the default's: the iwae rows of this "
                        "benchmarks.imputation jsonl (the same tables, holes and seeds)")
    p.add_argument("--against-method", default="iwae", metavar="METHOD",
                   help="the rows of --against to pair with (default iwae; a config's name for another "
                        "imputer_budget jsonl)")
    args = p.parse_args(argv)
    args.methods = args.configs
    imputation.LABELS.update({c: f"`{c}`" for c in CONFIGS})
    log = args.out.with_suffix(".jsonl")
    rows = run_missing(log, args, run_one)
    datasets = [n for n in DATASETS + EXTRA if any(r["dataset"] == n for r in rows.values())]
    configs = [c for c in CONFIGS if any(r["method"] == c for r in rows.values())]
    head = (f"# iwae.Imputer's budget\n\n`python -m benchmarks.imputer_budget` (its docstring): MSE mean ± "
            "standard error over seeds at 50% MCAR, seconds per fit_transform in brackets, one thread; "
            f"{imputation.machines(rows)}; written at {revision()}.\n\n"
            + "\n".join(f"- `{c}`: {json.dumps(CONFIGS[c])}" for c in configs) + "\n\n")
    paired = ("" if args.against is None else
              "\n" + against(rows, args.against, datasets, configs, args.against_method))
    args.out.with_suffix(".md").write_text(head + table(rows, datasets, configs) + "\n" + paired)


if __name__ == "__main__":
    main()

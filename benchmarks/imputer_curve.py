"""What a monitor of iwae.Imputer's training would see: the test error, the held-out entries'
error and their held-out bound along one fit (issue 40: a budget from the data).

    python -m benchmarks.imputer_curve --dataset breast_cancer --seed 0 --epochs 600 --every 25
    python -m benchmarks.imputer_curve --dataset breast_cancer --no-holdout --epochs 750 --every 25

The table and its 50% MCAR holes are benchmarks.imputation's. The Imputer trains with
patience set beyond the epochs (so it holds out ``HOLDOUT`` of the observed entries and never
stops) or, with --no-holdout, on every observed entry. Every --every epochs the loop's end of
epoch is wrapped to impute with the model of that moment (100 draws, no gradient, the model's
RNG untouched by a fork) and record: the test MSE on the removed cells (standardised with the
complete data's statistics, as benchmarks.imputation scores), the held-out entries' MSE (in the
imputer's standardised units) and their held-out bound at the training k (L_k of the held rows
less L_k of those rows without the held-out entries: what early stopping watched before it
watched the error). Prints and appends one JSON line to --out.
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch

from .imputation import DATASETS, EXTRA, load, mcar

RESULTS = Path(__file__).resolve().parents[1] / "results" / "imputer_curve.jsonl"
DRAWS = 100


def curve(name, seed, epochs, every, holdout=True, **settings):
    import iwae
    from iwae.evaluation.imputation import impute
    from iwae.runtime.rng import forked_rng
    from iwae.training import loop
    x = load(name)
    removed = mcar(x.shape, seed) & ~np.isnan(x)
    holes = np.where(removed, np.nan, x)
    imputer = iwae.Imputer(seed=seed, epochs=epochs, patience=epochs + 1 if holdout else None, **settings)
    points, end = [], loop._Trainer._end_epoch

    def watched(trainer, epoch, *args):
        end(trainer, epoch, *args)
        if (epoch + 1) % every == 0:
            points.append(_point(trainer, imputer, x, holes, removed, impute, forked_rng))
    loop._Trainer._end_epoch = watched
    try:
        imputer.fit(holes)
    finally:
        loop._Trainer._end_epoch = end
    return {"dataset": name, "seed": seed, "holdout": holdout, "settings": settings, "epochs": epochs,
            "columns": ["epoch", "steps", "test_mse", "held_mse", "held_bound"], "curve": points}


def _point(trainer, imputer, x, holes, removed, impute, forked_rng):
    from iwae.evaluation.likelihood import seeded_log_likelihood
    modeled = imputer.modeled_
    with forked_rng(trainer.device), torch.no_grad():
        torch.manual_seed(0)
        trainer.model.eval()
        test = impute(trainer.model, trainer.train_x, draws=DRAWS).double().numpy()
        held = None if trainer.given_x is None else impute(trainer.model, trainer.given_x, draws=DRAWS).double().numpy()
        trainer.model.train()
    filled = np.where(np.isnan(holes[:, modeled]), test * imputer.scale_[modeled] + imputer.mean_[modeled],
                      holes[:, modeled])
    error = (filled - x[:, modeled]) / np.nanstd(x, 0)[modeled]
    record = trainer.history[-1]
    point = [record["epoch"], trainer.steps, round(float(np.mean(error[removed[:, modeled]] ** 2)), 4), None, None]
    if held is not None:
        out = (torch.isnan(trainer.given_x) & ~torch.isnan(trainer.held_x)).numpy()
        point[3] = round(float(((held - trainer.held_x.double().numpy())[out] ** 2).mean()), 4)
        bound = (seeded_log_likelihood(trainer.model, trainer.held_x, trainer.spec.k)
                 - seeded_log_likelihood(trainer.model, trainer.given_x, trainer.spec.k))
        point[4] = round(bound.mean().item(), 3)
    return point


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="breast_cancer", choices=DATASETS + EXTRA)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=600)
    p.add_argument("--every", type=int, default=25)
    p.add_argument("--no-holdout", dest="holdout", action="store_false")
    p.add_argument("--hidden", type=int)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    settings = {"k": args.k, **({"hidden": args.hidden} if args.hidden else {})}
    row = curve(args.dataset, args.seed, args.epochs, args.every, args.holdout, **settings)
    from iwae.app.provenance import cpu_model, revision
    row.update({"cpu": cpu_model(), "revision": revision()})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row))


if __name__ == "__main__":
    main()

"""What each ``iwae`` command does with its parsed arguments (the parser: iwae.app.cli)."""
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

from ..runtime.distributed import is_main, launched
from ..training import rundir
from ..training.guards import NonFinite
from .options import spec_from
from .reproduce import Settings


def train(args):
    """Open the run directory (config.json first), train, then the test NLL by L_final_k."""
    from .runs import train_and_evaluate
    if args.resume and not args.out:
        raise ValueError("--resume needs --out, the run directory to continue")
    saved = rundir.read_spec(args.out) if args.resume and rundir.holds_run(args.out) else None
    spec = spec_from(args, saved)
    out = Path(args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{spec.name()}")
    try:
        result = train_and_evaluate(spec, out, resume=args.resume, say=print)
    except rundir.RunExists as err:
        raise ValueError(f"{err}; pass --resume to continue it or choose another --out") from None
    except rundir.SpecDiffers as err:
        raise ValueError(f"--resume: the flags disagree with {out / rundir.CONFIG} on {', '.join(err.names)}; "
                         "drop them or use another --out") from None
    except NonFinite as err:
        raise NonFinite(f"{err} (--on-nonfinite skip skips such batches)") from None
    if result is not None and is_main():
        print(f"test NLL (L_{spec.final_k}, {result['n_test']} test images): {result['test_nll']:.2f} nats; "
              f"active units {'+'.join(map(str, result['active_units']))}")
        print_imputation(result)


def resume_command(err, args):
    """How to continue a run that a signal stopped, as a command line."""
    command = f"iwae train --out {shlex.quote(str(err.run_dir))} --resume"
    if getattr(args, "data_dir", None) is not None:
        command += f" --data-dir {shlex.quote(str(args.data_dir))}"
    return command


def evaluate(args):
    from .runs import evaluate_ais, evaluate_run
    split = "train" if args.train else "test"
    if args.method != "iwae":
        if launched():
            raise ValueError(f"--method {args.method} runs in one process (run it without torchrun)")
        result = evaluate_ais(args.run, method=args.method, steps=args.steps, chains=args.chains,
                              limit=args.limit_test, split=split, data_dir=args.data_dir, seed=args.seed,
                              quiet=args.quiet or args.json, device=args.device)
        if args.json:
            print(json.dumps(result))
        elif args.method == "ais":
            print(f"{split} NLL (AIS, {args.steps} steps x {args.chains} chains, {result[f'n_{split}']} images): "
                  f"{result[f'{split}_nll']:.2f} nats (standard error {result['standard_error'] or 0:.2f}); "
                  f"{result['seconds']:.0f} s (step-size pilot {result['pilot_seconds']:.0f} s)")
        else:
            print(f"BDMC on {result['n_simulated']} simulated images ({args.steps} steps x {args.chains} chains): "
                  f"NLL between {result['upper_nll']:.2f} and {result['lower_nll']:.2f} nats, gap "
                  f"{result['gap']:.2f}; {result['seconds']:.0f} s (step-size pilot {result['pilot_seconds']:.0f} s)")
        return
    result = evaluate_run(args.run, k=args.k, limit=args.limit_test, split=split, data_dir=args.data_dir,
                          seed=args.seed, per_example=args.per_example, quiet=args.quiet or args.json,
                          device=args.device, missing=args.missing)
    if not is_main():                              # under torchrun, rank 0 alone prints
        return
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k not in ("unit_variances", "unit_kl")}))
    else:
        print(f"{split} NLL (L_{result['k']}, {result[f'n_{split}']} images): {result[f'{split}_nll']:.2f} nats")
        print(f"ELBO NLL: {result['elbo_nll']:.2f} nats; KL gap L_k - ELBO: {result['kl_gap']:.2f} nats")
        print(f"active units: {'+'.join(map(str, result['active_units']))} (Burda's A_u > 1e-2); "
              f"informative units: {'+'.join(map(str, result['informative_units']))} (KL(q || prior) > 0.05 nats)")
        print_imputation(result)


def print_imputation(result):
    """The lines --missing adds: what the NLL is of, and how well the removed pixels are imputed."""
    if "missing" not in result:
        return
    score = (f"{100 * result['imputation_accuracy']:.2f}% of the removed pixels imputed right"
             if "imputation_accuracy" in result else f"imputation MSE {result['imputation_mse']:.4f}")
    print(f"with {100 * result['missing']:.0f}% of every image's pixels removed: the NLL above is of the "
          f"observed pixels; {score} (single imputation, {result['impute_draws']} importance samples)")


def reproduce(args):
    from .reproduce import reproduce
    reproduce(Settings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)}))
    print(f"wrote {Path(args.results) / f'table{args.table}.md'}")


def sample(args):
    from .plots import sample_run
    print(sample_run(args.run, args.out, n=args.n, seed=args.seed, data_dir=args.data_dir, device=args.device))


def plot(args):
    from .plots import plot_run
    for path in plot_run(args.run, data_dir=args.data_dir, limit=args.limit, device=args.device):
        print(path)


def diagnose(args):
    from ..evaluation.diagnostics import format_table, parse_estimators, parse_ks
    from .runs import diagnose_run
    specs = parse_estimators(args.estimators, beta=args.beta)
    show = None if args.quiet else (lambda r: print(f"  {r['estimator']} k={r['k']}: {r['seconds']:.1f} s",
                                                    file=sys.stderr, flush=True))
    result, json_path, png_path = diagnose_run(args.run, parse_ks(args.k), specs, draws=args.draws,
                                           examples=args.examples, out=args.out, data_dir=args.data_dir,
                                           seed=args.seed, progress=show, device=args.device)
    if not args.quiet:
        print(format_table(result))
    print(json_path)
    print(png_path)


def gaps(args):
    from .runs import gaps_run
    result, json_path, png_path = gaps_run(args.run, examples=args.examples, q_steps=args.q_steps,
                                           ais_steps=args.ais_steps, chains=args.chains, out=args.out,
                                           data_dir=args.data_dir, seed=args.seed, device=args.device)
    m = result["mean"]
    print(f"{result['n']} test images, nats: ELBO[q] {m['elbo_q']:.2f}, ELBO[q*] {m['elbo_q_star']:.2f}, "
          f"L_5000[q] {m['l5000_q']:.2f}, L_5000[q*] {m['l5000_q_star']:.2f}, AIS {m['ais']:.2f}; "
          f"approximation gap {m['approximation_gap']:.2f}, amortization gap {m['amortization_gap']:.2f}")
    print(json_path)
    print(png_path)


def datasets(args):
    from ..data import DATASETS, describe_datasets, resolve_data_dir
    rows = describe_datasets(args.data_dir)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"data directory: {resolve_data_dir(args.data_dir)}")
    table = [("name", "status", "where looked", "description")] + [
        (r["name"], "found" if r["found"] else "missing", r["path"], r["description"]) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[3])
    for r in rows:
        if not r["found"]:
            info = DATASETS[r["name"]]
            check = ("md5-checked" if all(f.md5 for f in info.files.values())
                     else "no published md5: its layout is checked")
            how = (f"downloaded on first use (https, {check}) from {info.urls[0]}" if info.urls
                   else f"not downloaded (http only): fetch them from {info.manual}")
            print(f"{r['name']}: needs {', '.join(r['files'])} in {r['path']}; {how}")
    print("your own data: --dataset FILE.npy|FILE.npz|FOLDER (of PNG/JPEG images)")


def point_masses_line(masses, shown=5):
    """{column: value} as "debt at 0", or grouped by value where columns share one (digits'
    56 pixels at 0: "at 0: 0, 1, 2, 3, 4 and 51 more columns"), at most `shown` names a value."""
    by_value = {}
    for name, value in masses.items():
        by_value.setdefault(value, []).append(str(name))
    parts = []
    for value, names in by_value.items():
        more = len(names) - shown
        listed = ", ".join(names[:shown]) + (f" and {more} more column{'s' * (more > 1)}" if more > 0 else "")
        parts.append(f"{listed} at {value:.6g}" if len(names) == 1 else f"at {value:.6g}: {listed}")
    return "; ".join(parts)


def impute(args):
    try:
        from ..missing.tables import impute_file
    except ModuleNotFoundError as err:
        raise ValueError(f"iwae impute needs {err.name}: pip install \"iwae[missing]\"") from None
    r = impute_file(args.file, args.out, multiple=args.multiple, epochs=args.epochs, likelihood=args.likelihood,
                    types=args.types, k=args.k, seed=args.seed, device=args.device, mechanism=args.mechanism,
                    sign=args.sign)
    what = f"{args.multiple} multiple imputations" if args.multiple else "the single imputation"
    print(f"{r['rows']} x {r['columns']}, {r['missing']} missing; trained {r['epochs']} epochs in "
          f"{r['fit_seconds']:.1f} s (train bound {r['train_bound']:.3f}, standardised)")
    print(f"bound on the observed entries: {r['bound']:.3f} nats per row; {what} written to {args.out} "
          f"({r['seconds']:.1f} s in all)")
    if r["point_masses"]:
        print("point masses (a probability of their own): " + point_masses_line(r["point_masses"]))
    fitted = r.get("missingness")
    if fitted is not None and "w" in fitted:
        print("self-masking p(observed | x_j) = sigmoid(-w_j (x_j - b_j)): " + ", ".join(
            f"{name} w={w:.3g} b={b:.4g}" for name, w, b in zip(fitted["feature"], fitted["w"], fitted["b"])))
    elif fitted is not None:
        print(f"linear p(observed | x) = sigmoid(weight @ x + bias), weight {len(fitted['bias'])} x "
              f"{len(fitted['bias'])} (iwae.Imputer(mechanism='linear').missingness_)")

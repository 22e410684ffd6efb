"""The ``iwae`` command: train, evaluate, reproduce, sample, plot, diagnose, gaps, datasets, impute.

Every user error ends in one line on stderr ("iwae: error: ...") and exit status 2.
"""
import argparse
import dataclasses
import json
import os
import re
import sys
import time
import warnings
from pathlib import Path

from ..core.estimators import ESTIMATORS
from ..core.model import PAPER_LAYERS, SCALES
from ..core.objective import ALIASES, BOUNDS
from ..data import LIKELIHOODS, VALIDATIONS, DataError
from ..evaluation.annealing import CHAINS, STEPS
from ..evaluation.diagnostics import DEFAULT_ESTIMATORS, DEFAULT_K
from ..evaluation.likelihood import EVAL_SEED
from ..runtime.compile import COMPILES
from ..runtime.devices import parse_device
from ..runtime.distributed import cleanup, is_main, joined, launched, rank
from ..training.checkpoint import CheckpointError
from ..training.config import NONFINITE_POLICIES, Config
from ..training.loop import Interrupted
from ..training.rundir import TrainingError
from ..training.schedule import SCHEDULES
from ..training.step import PRECISIONS
from .reproduce import TABLES, Settings
from .runs import METHODS

USER_ERRORS = (ValueError, DataError, CheckpointError, TrainingError, OSError)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line too: "iwae: error: ..." and exit status 2."""

    def error(self, message):
        message = " ".join(str(message).split())
        self.exit(2, f"iwae: error: {message} (see: {self.prog} --help)\n")


def int_at_least(low):
    """An argparse type: an integer >= low."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    return parse


positive_int, nonnegative_int = int_at_least(1), int_at_least(0)


def cores():
    """The cores this process may run on (its CPU affinity), shared by torchrun's local processes."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    except ValueError:
        local = 1
    return max(1, n // max(1, local))


def set_threads(n):
    """torch threads for the work ahead: n, or all the cores when n is None."""
    import torch
    torch.set_num_threads(n or cores())


def names(choices):
    """A help text's list of choices: 'a | b | c'."""
    return " | ".join(choices)


def device(text):
    """--device: checked here, so that a missing GPU is one line before anything is loaded."""
    try:
        parse_device(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def fraction(text):
    """--missing: a number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def add_device(p):
    p.add_argument("--device", type=device, default="auto",
                   help="auto (a GPU where CUDA is available, else the CPU) | cpu | cuda | cuda:N")


def betas(text):
    try:
        b1, b2 = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers B1,B2, got {text!r}") from None
    return (b1, b2)


def add_train(sub):
    p = sub.add_parser("train", help="train a model (defaults: the paper's 1-layer IWAE, k=5, on MNIST)")
    d = Config()
    p.add_argument("--out", help="run directory (default: runs/<time>-<objective>-k<k>-l<layers>)")
    p.add_argument("--dataset", default=d.dataset, help="a dataset name (see `iwae datasets`) or a file/folder")
    p.add_argument("--data-dir", help="where dataset files live (default: $IWAE_DATA_DIR, else ~/.cache/iwae)")
    p.add_argument("--layers", type=int, choices=PAPER_LAYERS, default=d.layers)
    p.add_argument("--objective", default=d.objective, help=names((*ALIASES, *BOUNDS)))
    p.add_argument("--estimator", default=d.estimator, help=names(ESTIMATORS))
    p.add_argument("--k", type=positive_int, default=d.k, help="samples per datapoint")
    p.add_argument("--m", type=positive_int, help="groups for miwae/piwae (must divide k)")
    p.add_argument("--beta", type=float, help="ciwae mixing weight in [0, 1]")
    p.add_argument("--epochs", type=positive_int, default=d.epochs,
                   help="the first N epochs of the schedule (the paper's is 3280)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size,
                   help="the global batch: under torchrun each of the N processes takes batch/N of it")
    p.add_argument("--limit-train", type=positive_int, help="use the first N training images")
    p.add_argument("--validation", choices=VALIDATIONS, default=d.validation,
                   help="paper: hold out the last 400 of MNIST's 60k (the original code)")
    p.add_argument("--likelihood", choices=LIKELIHOODS, default=d.likelihood)
    p.add_argument("--scale", choices=SCALES, default=d.scale)
    p.add_argument("--schedule", choices=SCHEDULES, default=d.schedule)
    p.add_argument("--lr", type=float, default=d.lr, help="the schedule's first learning rate")
    p.add_argument("--adam-betas", type=betas, default=d.adam_betas, metavar="B1,B2",
                   help="Adam's betas (default 0.9,0.999 as in the paper; Burda's code ran 0.99,0.999)")
    p.add_argument("--adam-eps", type=float, default=d.adam_eps, help="Adam's eps (the paper's 1e-4)")
    p.add_argument("--eval-examples", type=positive_int, default=d.eval_examples,
                   help="held-out images for the per-epoch L_k")
    p.add_argument("--init-from", help="start from another run's weights")
    p.add_argument("--missing", type=fraction, default=d.missing, metavar="P",
                   help="remove this fraction of every training image's pixels at random (MCAR, seeded by "
                        "--seed) and train with the bound over the observed pixels (docs/missing.md)")
    p.add_argument("--final-k", type=nonnegative_int, default=5000,
                   help="k of the test NLL printed at the end (0: skip it)")
    p.add_argument("--final-limit-test", type=positive_int, help="evaluate on the first N test images")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint (its saved settings are used; "
                        "flags given must agree with them, except --epochs and --on-nonfinite)")
    p.add_argument("--on-nonfinite", choices=NONFINITE_POLICIES, default=d.on_nonfinite,
                   help="a NaN/Inf loss or gradient: stop (keeping the last good checkpoint) or "
                        "skip the batch (counted as skipped_steps in metrics.jsonl)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch threads of the training (default 1: a batch-20 step is too small for threads to "
                        "pay, and oversubscribed cores slow it many times over; run jobs side by side instead)")
    p.add_argument("--eval-threads", type=positive_int,
                   help="torch threads of the final L_k evaluation (default: all the cores)")
    add_device(p)
    p.add_argument("--tensorboard", type=positive_int, nargs="?", const=100, default=d.tensorboard, metavar="N",
                   help="write TensorBoard events into RUN/tensorboard: the running bound every N steps "
                        "(default 100), per epoch the bounds, lr, steps/s, effective sample size, "
                        "active units and image grids (pip install \"iwae[tensorboard]\")")
    p.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="fp32; bf16: the nets' large matmuls in bf16 (log densities, log weights, the bound, "
                        "parameters and Adam's state stay fp32; evaluation is always fp32), worth it where "
                        "the hardware has bf16 units (AMX, AVX512-BF16, GPUs) and at large k; tf32: CUDA only")
    p.add_argument("--compile", choices=COMPILES, default=d.compile,
                   help="auto: compile the whole step (torch.compile) for runs of 10+ epochs and on CUDA; "
                        "step: always; off: never (10-30 s of compiling saved on short runs)")


def add_evaluate(sub):
    p = sub.add_parser("evaluate", help="test NLL (-mean L_k), active units and the KL gap of a run")
    p.add_argument("run", help="run directory")
    p.add_argument("--k", type=positive_int, default=5000)
    p.add_argument("--limit-test", type=positive_int, help="the first N images only")
    p.add_argument("--train", action="store_true", help="evaluate on the training set instead")
    p.add_argument("--per-example", help="save the per-example log-likelihoods to this .npy file")
    p.add_argument("--data-dir")
    p.add_argument("--seed", type=int, default=EVAL_SEED, help="binarization and sampling seed")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--threads", type=positive_int, help="torch threads (default: all the cores)")
    p.add_argument("--quiet", action="store_true")
    add_device(p)
    p.add_argument("--method", choices=METHODS, default=METHODS[0],
                   help="iwae: L_k (default); ais: annealed importance sampling with HMC, a tighter "
                        "stochastic lower bound; bdmc: forward and reverse AIS on --limit-test (default 100) "
                        "images simulated from the model, which bracket log p(x)")
    p.add_argument("--missing", type=fraction, metavar="P",
                   help="remove this fraction of every test image's pixels (seeded by --seed): the bound of "
                        "the observed pixels and the imputation of the removed ones (default: the run's --missing)")
    p.add_argument("--steps", type=positive_int, default=STEPS, help="AIS: intermediate distributions")
    p.add_argument("--chains", type=positive_int, default=CHAINS, help="AIS: chains per image")


def cmd_train(args):
    from ..training.paper import train
    from .runs import evaluate_run, provenance, write_eval_record
    config = Config(dataset=args.dataset, layers=args.layers, objective=args.objective,
                    estimator=args.estimator, k=args.k, m=args.m, beta=args.beta, epochs=args.epochs,
                    seed=args.seed, batch_size=args.batch_size, limit_train=args.limit_train,
                    validation=args.validation, likelihood=args.likelihood, scale=args.scale,
                    schedule=args.schedule, lr=args.lr, adam_betas=args.adam_betas, adam_eps=args.adam_eps,
                    eval_examples=args.eval_examples, device=args.device, compile=args.compile,
                    precision=args.precision,
                    tensorboard=args.tensorboard, missing=args.missing,
                    init_from=args.init_from, on_nonfinite=args.on_nonfinite).validate()
    if args.resume and not args.out:
        raise ValueError("--resume needs --out, the run directory to continue")
    if args.resume:
        config = resume_config(args, config)
    out = Path(args.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{config.objective}-k{config.k}-l{config.layers}")
    started = time.perf_counter()
    made_by = provenance(config.device)            # the code loaded now, not when training ends
    train(config, out, resume=args.resume, data_dir=args.data_dir, quiet=args.quiet)
    main = is_main()                               # under torchrun, rank 0 alone prints and writes
    if main:
        print(f"trained {out} in {time.perf_counter() - started:.0f} s")
    if args.final_k > 0:                           # every rank takes its share of the test images
        set_threads(args.eval_threads)             # L_k's big matmuls use every core
        result = evaluate_run(out, k=args.final_k, limit=args.final_limit_test, data_dir=args.data_dir,
                              quiet=args.quiet, device=config.device)
        if not main:
            return
        write_eval_record(out, result, made_by)
        print(f"test NLL (L_{args.final_k}, {result['n_test']} test images): {result['test_nll']:.2f} nats; "
              f"active units {'+'.join(map(str, result['active_units']))}")
        print_imputation(result)


def resume_config(args, config):
    """--resume: the run's saved config with the train options typed on the command line on top.

    train() then refuses any typed option that disagrees with the saved one (but --epochs
    and --on-nonfinite may change), so `iwae train --out RUN --resume` alone continues RUN.
    """
    from ..training.config import read_config
    p = parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    for action in sub.choices["train"]._actions:
        action.default = argparse.SUPPRESS
    given = set(vars(p.parse_args(getattr(args, "argv", None) or ["train"])))
    flags = config.to_dict()
    saved = read_config(args.out).to_dict()
    return Config.from_dict({**saved, **{k: flags[k] for k in given if k in flags}}).validate()


def cmd_evaluate(args):
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


def add_reproduce(sub):
    p = sub.add_parser("reproduce", help="the paper's Table 1, 2 or 3 as a resumable grid of runs")
    p.add_argument("--table", type=int, choices=TABLES, required=True)
    p.add_argument("--epochs", type=positive_int, required=True, help="epochs of the paper schedule per run")
    d = Settings(table=1, epochs=1)
    p.add_argument("--out", default=d.out, help="where the runs live (finished ones are skipped)")
    p.add_argument("--results", default=d.results, help="where the tables and plot are written (rows of an "
                   "earlier table<N>.csv there whose run is not under --out are kept)")
    p.add_argument("--jobs", type=positive_int, default=d.jobs, help="runs at a time")
    p.add_argument("--threads", type=positive_int, default=d.threads, help="torch threads per run")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--data-dir")
    p.add_argument("--limit-train", type=positive_int, help="the first N training images (for tests)")
    p.add_argument("--limit-test", type=positive_int, help="evaluate on the first N test images (for tests)")
    p.add_argument("--final-k", type=positive_int, default=d.final_k, help="k of each run's test NLL")
    add_device(p)
    p.add_argument("--only", metavar="RUNS", help="comma-separated runs of the table, named without dataset "
                   "and epochs (l1-iwae-k50,l1-vae-k1; table 2: l1-vae-k1-then-iwae-k50)")


def cmd_reproduce(args):
    from .reproduce import reproduce
    reproduce(Settings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)}))
    print(f"wrote {Path(args.results) / f'table{args.table}.md'}")


def add_sample(sub):
    p = sub.add_parser("sample", help="a PNG grid of samples from a run's prior")
    p.add_argument("run", help="run directory")
    p.add_argument("--n", type=positive_int, default=100, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="the PNG to write (default: RUN/samples.png)")
    p.add_argument("--data-dir", help="where the run's dataset lives (it gives the image shape)")
    add_device(p)


def cmd_sample(args):
    from .plots import sample_run
    print(sample_run(args.run, args.out, n=args.n, seed=args.seed, data_dir=args.data_dir, device=args.device))


def add_plot(sub):
    p = sub.add_parser("plot", help="learning curves, reconstructions and active units of a run (PNGs in RUN)")
    p.add_argument("run", help="run directory")
    p.add_argument("--data-dir")
    p.add_argument("--limit", type=positive_int, default=500,
                   help="training images for the active units (the first N)")
    add_device(p)


def cmd_plot(args):
    from .plots import plot_run
    for path in plot_run(args.run, data_dir=args.data_dir, limit=args.limit, device=args.device):
        print(path)


def add_diagnose(sub):
    p = sub.add_parser("diagnose", help="gradient SNR, variance and bias of each estimator at a run's checkpoint")
    p.add_argument("run", help="run directory")
    p.add_argument("--k", default=",".join(map(str, DEFAULT_K)), help="comma-separated sample counts")
    p.add_argument("--estimators", default=",".join(DEFAULT_ESTIMATORS),
                   help=f"comma-separated: {' '.join(DEFAULT_ESTIMATORS)}, or bound+estimator "
                        "(miwae/piwae use M = K = sqrt(k); other k are skipped)")
    p.add_argument("--draws", type=int, default=100, help="gradient draws per estimator and k")
    p.add_argument("--examples", type=positive_int, default=20, help="the first N training images")
    p.add_argument("--beta", type=float, default=0.5, help="ciwae's beta")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="folder for diagnose.json and diagnose.png (default: RUN)")
    p.add_argument("--data-dir")
    p.add_argument("--threads", type=positive_int, help="torch threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="print only the output paths")
    add_device(p)


def cmd_diagnose(args):
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


def add_gaps(sub):
    p = sub.add_parser("gaps", help="the approximation and amortization gaps of a run's q (AIS, optimized q*)")
    p.add_argument("run", help="run directory")
    p.add_argument("--examples", type=positive_int, default=100, help="the first N test images")
    p.add_argument("--q-steps", type=positive_int, default=500, help="Adam steps fitting each image's q*")
    p.add_argument("--ais-steps", type=positive_int, default=STEPS, help="AIS: intermediate distributions")
    p.add_argument("--chains", type=positive_int, default=CHAINS, help="AIS: chains per image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="folder for gaps.json and gaps.png (default: RUN)")
    p.add_argument("--data-dir")
    p.add_argument("--threads", type=positive_int, help="torch threads (default: all the cores)")
    add_device(p)


def cmd_gaps(args):
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


def add_datasets(sub):
    p = sub.add_parser("datasets", help="the named datasets, and whether their files are found (and where)")
    p.add_argument("--data-dir", help="where dataset files live (default: $IWAE_DATA_DIR, else ~/.cache/iwae)")
    p.add_argument("--json", action="store_true", help="print a JSON list (name, description, files, found, path)")


def cmd_datasets(args):
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


def add_impute(sub):
    p = sub.add_parser("impute", help="fill the missing cells of a table (.csv, .npy, .npz) with an iwae.Imputer")
    p.add_argument("file", help=".csv (header; empty, NA and NaN cells missing), .npy or .npz (NaN missing)")
    p.add_argument("--out", required=True, help="the table to write (.csv, .npy or .npz)")
    p.add_argument("--multiple", type=positive_int, metavar="M",
                   help="write M multiple imputations [M, N, D] instead of the single imputation")
    p.add_argument("--epochs", type=positive_int, help="training epochs (default: from the table's shape)")
    p.add_argument("--likelihood", default="auto", help="auto | gaussian | student-t | bernoulli")
    p.add_argument("--mechanism", default="mar",
                   help="mar (missing at random) | self-masking | linear (missing not at random, docs/missing.md)")
    p.add_argument("--sign", choices=("positive", "negative"),
                   help="self-masking: the sign of w_j when known (positive: high values go missing)")
    p.add_argument("--k", type=positive_int, default=20, help="importance samples of the training bound")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: torch's)")
    add_device(p)


def cmd_impute(args):
    try:
        from .tables import impute_file
    except ModuleNotFoundError as err:
        raise ValueError(f"iwae impute needs {err.name}: pip install \"iwae[missing]\"") from None
    r = impute_file(args.file, args.out, multiple=args.multiple, epochs=args.epochs, likelihood=args.likelihood,
                    k=args.k, seed=args.seed, device=args.device, mechanism=args.mechanism, sign=args.sign)
    what = f"{args.multiple} multiple imputations" if args.multiple else "the single imputation"
    print(f"{r['rows']} x {r['columns']}, {r['missing']} missing; trained {r['epochs']} epochs in "
          f"{r['fit_seconds']:.1f} s (train bound {r['train_bound']:.3f}, standardised)")
    print(f"bound on the observed entries: {r['bound']:.3f} nats per row; {what} written to {args.out} "
          f"({r['seconds']:.1f} s in all)")
    fitted = r.get("missingness")
    if fitted is not None and "w" in fitted:
        print("self-masking p(observed | x_j) = sigmoid(-w_j (x_j - b_j)): " + ", ".join(
            f"{name} w={w:.3g} b={b:.4g}" for name, w, b in zip(fitted["feature"], fitted["w"], fitted["b"])))
    elif fitted is not None:
        print(f"linear p(observed | x) = sigmoid(weight @ x + bias), weight {len(fitted['bias'])} x "
              f"{len(fitted['bias'])} (iwae.Imputer(mechanism='linear').missingness_)")


def parser():
    p = ArgumentParser(prog="iwae", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    add_train(sub)
    add_evaluate(sub)
    add_reproduce(sub)
    add_sample(sub)
    add_plot(sub)
    add_diagnose(sub)
    add_gaps(sub)
    add_datasets(sub)
    add_impute(sub)
    return p


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "reproduce": cmd_reproduce,
            "sample": cmd_sample, "plot": cmd_plot,
            "diagnose": cmd_diagnose, "gaps": cmd_gaps, "datasets": cmd_datasets,
            "impute": cmd_impute}


def one_line_warning(message, category, filename, lineno, file=None, line=None):
    """The CLI's warnings: one line each on stderr, as its errors are."""
    print(f"iwae: warning: {str(message).splitlines()[0]}", file=sys.stderr)


def main(argv=None):
    args = parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if args.command in ("evaluate", "gaps") or getattr(args, "threads", None):
        set_threads(getattr(args, "threads", None))  # evaluations: all the cores unless --threads
    for flag in ("threads", "eval_threads"):
        if (getattr(args, flag, None) or 0) > cores():
            print(f"iwae: warning: --{flag.replace('_', '-')} {getattr(args, flag)} is more than the {cores()} "
                  "cores here; oversubscribed threads slow torch down", file=sys.stderr)
    try:
        if args.command not in ("train", "evaluate") and launched():
            raise ValueError(f"`iwae {args.command}` runs in one process; under torchrun only train and "
                             "evaluate share the work (run it without torchrun)")
        with warnings.catch_warnings():
            warnings.showwarning = one_line_warning
            COMMANDS[args.command](args)
    except Interrupted as err:                     # SIGINT/SIGTERM: saved; says how to resume
        if is_main():
            print(f"iwae: {err}", file=sys.stderr)
        return 128 + err.signum
    except USER_ERRORS as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        if is_main():
            print(f"iwae: error: {message}", file=sys.stderr)
        elif joined():     # torchrun: before joining, every rank meets the same error and rank 0 says it
            print(f"iwae: error (rank {rank()}): {message}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as err:
        if not out_of_memory(err):
            raise
        if is_main():
            print(f"iwae: error: {out_of_memory(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("iwae: interrupted", file=sys.stderr)
        return 130
    finally:
        cleanup()                                  # leave torchrun's process group, if joined
    return 0


def out_of_memory(err):
    """The one-line message for an allocation that failed (CPU or CUDA), else None."""
    text = str(err)
    if not (isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError"
            or "can't allocate memory" in text):
        return None
    size = re.search(r"allocate (\d+) bytes|allocate ([\d.]+ [KMGT]iB)", text)
    need = "" if size is None else (f" (tried to allocate {int(size.group(1)) / 2 ** 30:.1f} GiB)"
                                    if size.group(1) else f" (tried to allocate {size.group(2)})")
    return f"out of memory{need}: lower --k or --batch-size"


def console():
    sys.exit(main())

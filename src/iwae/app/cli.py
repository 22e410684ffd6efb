"""The ``iwae`` command's parser and its one-line errors: train, evaluate, reproduce, sample, plot,
diagnose, gaps, datasets, impute (what each does: iwae.app.commands).

Every user error ends in one line on stderr ("iwae: error: ...") and exit status 2.
"""
import argparse
import logging
import re
import sys
import warnings

from ..data import DataError
from ..evaluation.annealing import CHAINS, STEPS
from ..evaluation.diagnostics import DEFAULT_ESTIMATORS, DEFAULT_K
from ..evaluation.likelihood import EVAL_SEED
from ..runtime.distributed import cleanup, is_main, joined, launched, rank
from ..training.checkpoint import CheckpointError
from ..training.guards import Interrupted
from ..training.rundir import TrainingError
from . import commands
from .options import (add_data_dir, add_device, add_spec_options, add_threads, cores, fraction, COUNT,
                      set_threads)
from .reproduce import TABLES, Settings
from .runs import METHODS

USER_ERRORS = (ValueError, DataError, CheckpointError, TrainingError, OSError)
TRAINING = ("train", "impute", "reproduce")    # commands whose --threads default is 1 (iwae.app.options)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line too: "iwae: error: ..." and exit status 2."""

    def error(self, message):
        message = " ".join(str(message).split())
        self.exit(2, f"iwae: error: {message} (see: {self.prog} --help)\n")


def add_train(sub):
    p = sub.add_parser("train", help="train a model (defaults: the paper's 1-layer IWAE, k=5, on MNIST)")
    p.add_argument("--out", help="run directory (default: runs/<time>-<bound>-k<k>-l<layers>, or -sbn)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint, or start it there if it holds none yet "
                        "(its saved settings are used; flags given must agree with them, except --epochs, "
                        "--device, --compile, --on-nonfinite, --tensorboard and those not saved)")
    add_spec_options(p)


def add_evaluate(sub):
    p = sub.add_parser("evaluate", help="test NLL (-mean L_k), active units and the KL gap of a run")
    p.add_argument("run", help="run directory")
    p.add_argument("--k", type=COUNT, default=5000)
    p.add_argument("--limit-test", type=COUNT, help="the first N images only")
    p.add_argument("--train", action="store_true", help="evaluate on the training set instead")
    p.add_argument("--per-example", help="save the per-example log-likelihoods to this .npy file")
    add_data_dir(p)
    p.add_argument("--seed", type=int, default=EVAL_SEED, help="binarization and sampling seed")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_threads(p)
    p.add_argument("--quiet", action="store_true")
    add_device(p)
    p.add_argument("--method", choices=METHODS, default=METHODS[0],
                   help="iwae: L_k (default); ais: annealed importance sampling with HMC, a tighter "
                        "stochastic lower bound; bdmc: forward and reverse AIS on --limit-test (default 100) "
                        "images simulated from the model, which bracket log p(x)")
    p.add_argument("--missing", type=fraction, metavar="P",
                   help="remove this fraction of every test image's pixels (seeded by --seed): the bound of "
                        "the observed pixels and the imputation of the removed ones (default: the run's --missing)")
    p.add_argument("--steps", type=COUNT, default=STEPS, help="AIS: intermediate distributions")
    p.add_argument("--chains", type=COUNT, default=CHAINS, help="AIS: chains per image")


def add_reproduce(sub):
    p = sub.add_parser("reproduce", help="the paper's Table 1, 2 or 3 as a resumable grid of runs")
    p.add_argument("--table", type=int, choices=TABLES, required=True)
    p.add_argument("--epochs", type=COUNT, required=True, help="epochs of the paper schedule per run")
    d = Settings(table=1, epochs=1)
    p.add_argument("--out", default=d.out, help="where the runs live (finished ones are skipped)")
    p.add_argument("--results", default=d.results, help="where the tables and plot are written (rows of an "
                   "earlier table<N>.csv there whose run is not under --out are kept)")
    p.add_argument("--jobs", type=COUNT, default=d.jobs, help="runs at a time")
    add_threads(p)
    p.add_argument("--seed", type=int, default=d.seed)
    add_data_dir(p)
    p.add_argument("--limit-train", type=COUNT, help="the first N training images (for tests)")
    p.add_argument("--limit-test", type=COUNT, help="evaluate on the first N test images (for tests)")
    p.add_argument("--final-k", type=COUNT, default=d.final_k, help="k of each run's test NLL")
    add_device(p)
    p.add_argument("--only", metavar="RUNS", help="comma-separated runs of the table, named without dataset "
                   "and epochs (l1-iwae-k50,l1-vae-k1; table 2: l1-vae-k1-then-iwae-k50)")


def add_sample(sub):
    p = sub.add_parser("sample", help="a PNG grid of samples from a run's prior")
    p.add_argument("run", help="run directory")
    p.add_argument("--n", type=COUNT, default=100, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="the PNG to write (default: RUN/samples.png)")
    add_data_dir(p)
    add_device(p)


def add_plot(sub):
    p = sub.add_parser("plot", help="learning curves, reconstructions and active units of a run (PNGs in RUN)")
    p.add_argument("run", help="run directory")
    add_data_dir(p)
    p.add_argument("--limit", type=COUNT, default=500,
                   help="training images for the active units (the first N)")
    add_device(p)


def add_diagnose(sub):
    p = sub.add_parser("diagnose", help="gradient SNR, variance and bias of each estimator at a run's checkpoint")
    p.add_argument("run", help="run directory")
    p.add_argument("--k", default=",".join(map(str, DEFAULT_K)), help="comma-separated sample counts")
    p.add_argument("--estimators", default=",".join(DEFAULT_ESTIMATORS),
                   help=f"comma-separated: {' '.join(DEFAULT_ESTIMATORS)}, or bound+estimator "
                        "(miwae/piwae use M = K = sqrt(k); other k are skipped)")
    p.add_argument("--draws", type=int, default=100, help="gradient draws per estimator and k")
    p.add_argument("--examples", type=COUNT, default=20, help="the first N training images")
    p.add_argument("--beta", type=float, default=0.5, help="ciwae's beta")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="folder for diagnose.json and diagnose.png (default: RUN)")
    add_data_dir(p)
    add_threads(p)
    p.add_argument("--quiet", action="store_true", help="print only the output paths")
    add_device(p)


def add_gaps(sub):
    p = sub.add_parser("gaps", help="the approximation and amortization gaps of a run's q (AIS, optimized q*)")
    p.add_argument("run", help="run directory")
    p.add_argument("--examples", type=COUNT, default=100, help="the first N test images")
    p.add_argument("--q-steps", type=COUNT, default=500, help="Adam steps fitting each image's q*")
    p.add_argument("--ais-steps", type=COUNT, default=STEPS, help="AIS: intermediate distributions")
    p.add_argument("--chains", type=COUNT, default=CHAINS, help="AIS: chains per image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="folder for gaps.json and gaps.png (default: RUN)")
    add_data_dir(p)
    add_threads(p)
    add_device(p)


def add_datasets(sub):
    p = sub.add_parser("datasets", help="the named datasets, and whether their files are found (and where)")
    add_data_dir(p)
    p.add_argument("--json", action="store_true", help="print a JSON list (name, description, files, found, path)")


def column_types(text):
    """--types "a=categorical,b=count" -> {"a": "categorical", "b": "count"} (positions as ints);
    "auto" as it is."""
    if text == "auto":
        return text
    pairs = [item.partition("=") for item in text.split(",") if item.strip()]
    bad = [name for name, eq, kind in pairs if not eq or not name.strip() or not kind.strip()]
    if bad or not pairs:
        raise argparse.ArgumentTypeError(f"expected COLUMN=TYPE[,COLUMN=TYPE...], got {text!r}")
    return {int(n) if n.strip().isdigit() else n.strip(): kind.strip() for n, _, kind in pairs}


def add_impute(sub):
    p = sub.add_parser("impute", help="fill the missing cells of a table (.csv, .npy, .npz) with an iwae.Imputer")
    p.add_argument("file", help=".csv (header; empty, NA and NaN cells missing), .npy or .npz (NaN missing)")
    p.add_argument("--out", required=True, help="the table to write (.csv, .npy or .npz)")
    p.add_argument("--multiple", type=COUNT, metavar="M",
                   help="write M multiple imputations [M, N, D] instead of the single imputation")
    p.add_argument("--epochs", type=COUNT, help="training epochs (default: from the table's shape)")
    p.add_argument("--likelihood", default="auto", help="auto | gaussian | student-t | bernoulli")
    p.add_argument("--types", type=column_types, default="auto", metavar="COL=TYPE,...",
                   help="override the inferred column types (real, positive, count, binary, categorical, "
                        "ordinal; .csv: column names, arrays: positions), e.g. stage=ordinal,children=count")
    p.add_argument("--mechanism", default="mar",
                   help="mar (missing at random) | self-masking | linear (missing not at random, docs/missing.md)")
    p.add_argument("--sign", choices=("positive", "negative"),
                   help="self-masking: the sign of w_j when known (positive: high values go missing)")
    p.add_argument("--k", type=COUNT, help="importance samples of the training bound (default: from the table's width)")
    p.add_argument("--seed", type=int, default=0)
    add_threads(p)
    add_device(p)


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
    for command in sub.choices.values():
        command.add_argument("--verbose", action="store_true",
                             help="say on stderr how iwae decided to run here (compiling, and why)")
    return p


COMMANDS = {"train": commands.train, "evaluate": commands.evaluate, "reproduce": commands.reproduce,
            "sample": commands.sample, "plot": commands.plot, "diagnose": commands.diagnose, "gaps": commands.gaps,
            "datasets": commands.datasets, "impute": commands.impute}


def one_line_warning(message, category, filename, lineno, file=None, line=None):
    """The CLI's warnings: one line each on stderr, as its errors are."""
    print(f"iwae: warning: {str(message).splitlines()[0]}", file=sys.stderr)


def verbose(on):
    """--verbose: the "iwae" logger's INFO lines (runtime.decisions) on stderr, one line each,
    until quiet(handler). Returns the handler (None when off)."""
    if not on:
        return None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("iwae: %(message)s"))
    logging.getLogger("iwae").addHandler(handler)
    logging.getLogger("iwae").setLevel(logging.INFO)
    return handler


def quiet(handler):
    if handler is not None:
        logging.getLogger("iwae").removeHandler(handler)
        logging.getLogger("iwae").setLevel(logging.NOTSET)


def main(argv=None):
    args = parser().parse_args(argv)
    said = verbose(args.verbose)
    set_threads(getattr(args, "threads", None), training=args.command in TRAINING)
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
            print(f"iwae: {err.resumed_with(commands.resume_command(err, args))}", file=sys.stderr)
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
        quiet(said)
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


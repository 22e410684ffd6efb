"""The rest of the family, measured: SBNs trained by VIMCO and RWS, and the Renyi bounds (issue 37).

    nice -n 19 python -m benchmarks.family            # trains what is missing (resumable), then the table
    python -m benchmarks.family --table-only          # the table and plot from the finished runs

Runs (each an `iwae train` spec, trained in this process into --out/<name>, resumed where it
stopped, skipped once evaluated; cheap first):
- the SBN 200-200-200 of Mnih & Rezende 2016 (`--net sbn`) on fixed-binarized MNIST, batch 24,
  Adam 1e-3 at a constant rate (VIMCO's reference code), VIMCO and RWS at k = 5 and 50;
- the paper's 1-layer net on MNIST (dynamic binarization, the paper's schedule and batch 20, as
  results/table1.md's rows, at their short budget of --renyi-epochs 20) at k = 5 and 50 with the Renyi bound at alpha = 0 (= IWAE), 0.5 and
  1 (= the ELBO) and VR-max (alpha = -inf).
Each ends with the test NLL from L_5000 on the first --test images. results/family.md gets the
table (with the machine and commit), results/family.png the SBN training curves beside VIMCO's reference code's early epochs and every run's held-out curve, and
results/family_gradients.json the gradient variance and SNR of VIMCO, REINFORCE (no baseline)
and RWS at the finished SBN k=5 VIMCO run's checkpoint (`iwae diagnose`).
"""
import argparse
from pathlib import Path

from .common import data_dir, git_revision, machine_info
from iwae.training import rundir

SBN = dict(net="sbn", dataset="binarized-mnist", batch_size=24, schedule="constant", lr=1e-3)
SBNS = [(f"sbn-{est}-k{k}", dict(SBN, estimator=est, k=k)) for k in (5, 50) for est in ("vimco", "rws")]
RENYI = [(f"l1-{name}-k{k}", dict(bound=bound, alpha=alpha, k=k)) for k in (5, 50)
         for name, bound, alpha in (("renyi0", "renyi", 0.0), ("renyi0.5", "renyi", 0.5),
                                    ("renyi1", "renyi", 1.0), ("vr-max", "vr-max", None))]
RUNS = SBNS[:2] + RENYI[:4] + SBNS[2:] + RENYI[4:]          # cheap first
ALPHA = {"vr-max": "-inf", "iwae": ""}      # the alpha column of bounds without an alpha setting
REFERENCE = ("y0ast/VIMCO (SBN 200-200-200, k=5, batch 24, Adam 1e-3): training bound -130.41 at epoch 4, "
             "validation -145.71 after epoch 1; Mnih & Rezende 2016 report about -93.6 at k=5 after long training")


def train_all(args):
    from iwae.app.runs import train_and_evaluate
    from iwae.training.spec import PaperSpec
    for name, settings in RUNS:
        if args.only and name not in args.only.split(","):
            continue
        run_dir = Path(args.out) / name
        epochs = args.renyi_epochs if "bound" in settings else args.epochs
        if rundir.read_eval(run_dir) is not None and rundir.recorded_epochs(run_dir) >= epochs:
            continue
        spec = PaperSpec(**settings, epochs=epochs, data_dir=args.data_dir, quiet=True, threads=1,
                         final_limit_test=args.test, eval_examples=1000).validate()
        print(f"training {name}", flush=True)
        train_and_evaluate(spec, run_dir, resume=True, say=print)


def gradients(args):
    """iwae diagnose's variance and SNR at the SBN k=5 VIMCO run's checkpoint."""
    from iwae.app.runs import diagnose_run
    from iwae.evaluation.diagnostics import parse_estimators
    run = Path(args.out) / "sbn-vimco-k5"
    if rundir.read_eval(run) is None:
        return None
    result, _, _ = diagnose_run(run, [5, 50], parse_estimators("vimco,reinforce,rws"), draws=args.draws,
                                examples=20, out=Path(args.results) / "family_gradients", data_dir=args.data_dir)
    return result


def table(args, grads):
    rows, curves = [], []
    for name, settings in RUNS:
        run = Path(args.out) / name
        evaluation = rundir.read_eval(run)
        if evaluation is None:
            continue
        metrics = rundir.read_metrics(run)
        held = next(key for key in metrics[0] if key.endswith("_bound") and key != "train_bound")
        curves.append((name, [m["epoch"] for m in metrics], [m[held] for m in metrics],
                       [m["train_bound"] for m in metrics]))
        rows.append(f"| {name} | {settings.get('estimator', 'standard')} | {settings.get('bound', 'iwae')} "
                    f"| {ALPHA.get(settings.get('bound'), settings.get('alpha', ''))} | {settings['k']} | {len(metrics)} | "
                    f"{metrics[0]['train_bound']:.2f} | {metrics[-1]['train_bound']:.2f} | "
                    f"{metrics[-1][held]:.2f} | {evaluation['test_nll']:.2f} | {evaluation['n_test']} | "
                    f"{round(sum(m['seconds'] for m in metrics))} |")
    info = machine_info("cpu")
    lines = ["# The rest of the family: SBNs (VIMCO, RWS) and the Renyi bounds", "",
             f"`python -m benchmarks.family --epochs {args.epochs} --renyi-epochs {args.renyi_epochs} --test {args.test}` at {git_revision()} on "
             f"{info['cpu']} ({info['cpu_count']} cores; one training thread per run, one or two runs at a time, "
             "beside other jobs). Test NLL: -mean L_5000 on the first test images (column). "
             f"Reference: {REFERENCE}.", "",
             "| run | estimator | bound | alpha | k | epochs | train bound epoch 1 | train bound last | "
             "held-out L_k last | test NLL | test images | seconds |", "|" + "---|" * 12, *rows, ""]
    if grads is not None:
        lines += ["## Gradient variance at the SBN k=5 VIMCO checkpoint (`iwae diagnose`)", "",
                  f"{grads['draws']} draws on {grads['examples']} training images; the encoder's (q's) gradient, "
                  "where the estimators differ (results/family_gradients/diagnose.json has the decoder's too).", "",
                  "| estimator | k | encoder SNR (median over parameters) | encoder variance (sum) |", "|---|---|---|---|"]
        lines += [f"| {r['estimator']} | {r['k']} | {r['encoder']['snr_median']:.4g} | "
                  f"{r['encoder']['variance']:.4g} |" for r in grads["results"]]
    Path(args.results, "family.md").write_text("\n".join(lines) + "\n")
    plot(curves, Path(args.results) / "family.png")


def plot(curves, path):
    """Left: the SBN runs' training bound per epoch beside VIMCO's reference code's (REFERENCE);
    right: every run's held-out bound per epoch."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(11, 4.5), dpi=100, layout="constrained")
    sbn, held = fig.subplots(1, 2)
    for name, epochs, bounds, train in curves:
        if name.startswith("sbn"):
            sbn.plot(epochs, train, "o-", ms=3, label=f"{name} (train)")
        held.plot(epochs, bounds, "o-", ms=3, label=name)
    sbn.plot([4], [-130.41], "k*", ms=10, label="y0ast/VIMCO k=5: train, epoch 4")
    sbn.plot([1], [-145.71], "kx", ms=9, label="y0ast/VIMCO k=5: validation, epoch 1")
    sbn.set(xlabel="epoch", ylabel="training bound L_k (nats)", title="SBN 200-200-200 beside the reference code")
    held.set(xlabel="epoch", ylabel="held-out L_k (nats)", title="held-out bound per epoch")
    sbn.legend(fontsize=7)
    held.legend(fontsize=6)
    fig.savefig(path)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10, help="the SBN runs' epochs")
    p.add_argument("--renyi-epochs", type=int, default=20, help="the Renyi runs' epochs (results/table1.md's short rows)")
    p.add_argument("--test", type=int, default=1000, help="test images of the final L_5000")
    p.add_argument("--draws", type=int, default=50, help="gradient draws per estimator and k")
    p.add_argument("--only", help="comma-separated run names")
    p.add_argument("--out", default="runs/family")
    p.add_argument("--results", default="results")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--table-only", action="store_true")
    args = p.parse_args()
    args.data_dir = str(data_dir(args.data_dir))
    if not args.table_only:
        train_all(args)
    table(args, gradients(args))
    print(f"wrote {Path(args.results) / 'family.md'}")


if __name__ == "__main__":
    main()

"""bf16 against fp32 training, in quality: the runs of issue 26, resumable, and their table.

    nice -n 19 python -m benchmarks.precision --jobs 2          # trains what is missing, then the table
    python -m benchmarks.precision --table-only                  # the table from the finished runs

Eight runs of `iwae train` (20 epochs of the paper's schedule): 1-layer IWAE k=50 and 2-layer
IWAE k=5, seeds 0 and 1, --precision fp32 and bf16, each into --out/<name>, each ending with the
test NLL from L_5000 on the full test set, evaluated in fp32 whatever the run trained with. A run
with eval.json is finished and skipped; one with a checkpoint resumes. results/precision.md gets
the table (mean and seed spread per setting, bf16 - fp32), the training seconds, the machine, the
commit and the commands; the step times come from `python -m benchmarks.step --bf16`
(benchmarks/results/step_bf16.md).
"""
import argparse
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .common import data_dir, git_revision, machine_info
from iwae.training import rundir

SETTINGS = [(1, 50), (2, 5)]          # (layers, k), IWAE
SEEDS = (0, 1)
PRECISIONS = ("fp32", "bf16")
TOLERANCE = 0.15                      # nats: bf16 may be at most this much worse than fp32


def runs(epochs):
    return [dict(name=f"l{layers}-iwae-k{k}-{precision}-s{seed}-e{epochs}", layers=layers, k=k, seed=seed,
                 precision=precision, epochs=epochs)
            for layers, k in SETTINGS for precision in PRECISIONS for seed in SEEDS]


def command(run, run_dir, args, resume=None):
    cmd = [sys.executable, "-m", "iwae", "train", "--out", str(run_dir), "--layers", str(run["layers"]),
           "--objective", "iwae", "--k", str(run["k"]), "--epochs", str(run["epochs"]),
           "--seed", str(run["seed"]), "--precision", run["precision"], "--threads", "1", "--quiet",
           "--device", "cpu", "--data-dir", str(data_dir(args.data_dir))]
    if args.limit_train:
        cmd += ["--limit-train", str(args.limit_train), "--final-limit-test", str(args.limit_train)]
    resume = (run_dir / rundir.CHECKPOINT).exists() if resume is None else resume
    return cmd + (["--resume"] if resume else [])


def train(run, args):
    run_dir = Path(args.out) / run["name"]
    if rundir.read_eval(run_dir) is not None:
        return
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with (run_dir.parent / f"{run['name']}.log").open("a") as log:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        done = subprocess.run(command(run, run_dir, args), stdout=log, stderr=log, env=env)
    print(f"{run['name']}: exit {done.returncode}", flush=True)


def finished(args):
    out = {}
    for run in runs(args.epochs):
        run_dir = Path(args.out) / run["name"]
        result = rundir.read_eval(run_dir)
        if result is not None:
            result["train_seconds"] = sum(m["seconds"] for m in rundir.read_metrics(run_dir))
            out[run["name"]] = (run, result)
    return out


def table(args):
    done = finished(args)
    lines = [f"# bf16 against fp32: quality after {args.epochs} epochs", "",
             f"`python -m benchmarks.precision --jobs {args.jobs}` (written at {git_revision()}, "
             f"{machine_info()['cpu']}): {args.epochs} epochs of the paper's schedule, batch 20, one "
             "torch thread per run (up to --jobs runs at a time, so training seconds depend on the load); test NLL = -mean L_5000 over "
             f"{'the full test set' if not args.limit_train else f'the first {args.limit_train} test images'}"
             ", evaluated in fp32 for every run. Target: the bf16 mean within the fp32 seeds' spread of "
             f"the fp32 mean and at most {TOLERANCE} nats worse.", "",
             "| net | k | precision | seed 0 NLL | seed 1 NLL | mean | training s (mean) |",
             "|---|---|---|---|---|---|---|"]
    verdicts = []
    for layers, k in SETTINGS:
        means = {}
        for precision in PRECISIONS:
            got = [done.get(f"l{layers}-iwae-k{k}-{precision}-s{seed}-e{args.epochs}") for seed in SEEDS]
            nll = [g[1]["test_nll"] if g else None for g in got]
            cells = [f"{v:.2f}" if v is not None else "not finished" for v in nll]
            if all(v is not None for v in nll):
                means[precision] = (statistics.mean(nll), max(nll) - min(nll))
                seconds = statistics.mean(g[1]["train_seconds"] for g in got)
                cells += [f"{means[precision][0]:.2f}", f"{seconds:.0f}"]
            else:
                cells += ["", ""]
            lines.append(f"| {layers}-layer | {k} | {precision} | " + " | ".join(cells) + " |")
        if len(means) == 2:
            diff, spread = means["bf16"][0] - means["fp32"][0], means["fp32"][1]
            ok = diff <= TOLERANCE and abs(diff) <= max(spread, 1e-9)
            verdicts.append(f"- {layers}-layer k={k}: bf16 - fp32 = {diff:+.2f} nats (fp32 seed spread "
                            f"{spread:.2f}): {'holds' if ok else '**fails**'}")
    lines += ["", *(verdicts or ["- no setting has all four runs yet"]), "",
              "Commands: " + "; ".join(" ".join(["iwae"] + command(r, Path(args.out) / r["name"], args, resume=False)[3:])
                                       for r in runs(args.epochs)[:1]) + " (and likewise for every run).", ""]
    Path(args.results).mkdir(parents=True, exist_ok=True)
    Path(args.results, "precision.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.precision", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/precision", help="where the runs live (finished ones are skipped)")
    p.add_argument("--results", default="results")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--jobs", type=int, default=2, help="runs at a time")
    p.add_argument("--limit-train", type=int, help="the first N training and test images (for tests)")
    p.add_argument("--data-dir")
    p.add_argument("--table-only", action="store_true")
    args = p.parse_args(argv)
    if not args.table_only:
        order = sorted(runs(args.epochs), key=lambda r: (r["k"], r["seed"]))     # cheap ones first
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda r: train(r, args), order))
    table(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

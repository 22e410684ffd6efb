"""Compare the estimators on MNIST at equal budget: results/estimators.{md,json,png}.

Trains each configuration (1-layer paper network, k = 64, the same seed and epochs) with
``python -m iwae train`` into <out>/<name>, evaluates it (``iwae evaluate --k 5000 --json``
for the test NLL and active units; the IWAE-64 bound and the 64-sample ELBO from
iwae.evaluation.log_likelihood(..., with_elbo=True), both on the same test images), then runs
``iwae diagnose`` on the IWAE-standard run's checkpoint and writes the results.

The runs' own seconds per epoch depend on what else the machine ran meanwhile, so the training
step of every trained configuration is also timed in one process, the configurations taking
turns (benchmarks.common.interleaved, one thread, CPU clock of the thread), as `iwae train`
builds it for this budget.

Resumable: a run whose metrics hold all epochs is not retrained (one with a checkpoint resumes),
and an evaluation, diagnosis or timing whose JSON exists is not redone. Typical use (2 cores):

    python -m benchmarks.estimators --epochs 3 --jobs 2 --limit-test 2000
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .common import Batches, interleaved, summary
from iwae.training import rundir

K = 64
EPOCH_STEPS = 3000        # 60,000 training images / batch 20
CONFIGS = [  # name, objective, estimator, extra flags, in words
    ("iwae-standard", "iwae", "standard", [], "IWAE, standard reparameterised gradient"),
    ("iwae-stl", "iwae", "stl", [], "IWAE, sticking the landing"),
    ("iwae-dreg", "iwae", "dreg", [], "IWAE, doubly reparameterised (DReG)"),
    ("iwae-rws", "iwae", "rws", [], "reweighted wake-sleep (wake-phase q update)"),
    ("miwae-m8", "miwae", "standard", ["--m", "8"], "MIWAE(M=8, K=8)"),
    ("piwae-m8", "piwae", "standard", ["--m", "8"], "PIWAE(M=8, K=8): IWAE-64 decoder, MIWAE encoder"),
    ("ciwae-b0.5", "ciwae", "standard", ["--beta", "0.5"], "CIWAE(beta=0.5)"),
]
DIAGNOSE_SOURCE = "iwae-standard"
DIAGNOSE_ESTIMATORS = "standard,stl,dreg,rws,miwae,piwae,ciwae"


def arguments(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3, help="epochs of the paper schedule per run")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    p.add_argument("--out", default="runs/estimators")
    p.add_argument("--results", default="results")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir")
    p.add_argument("--limit-train", type=int, help="the first N training images (for smoke tests)")
    p.add_argument("--limit-test", type=int, default=2000, help="test images for every evaluation (0: all)")
    p.add_argument("--final-k", type=int, default=5000, help="k of the test NLL")
    p.add_argument("--diagnose-k", default="1,4,16,64,256", help="perfect squares: M = K = sqrt(k) for MIWAE/PIWAE")
    p.add_argument("--draws", type=int, default=100)
    p.add_argument("--examples", type=int, default=20)
    p.add_argument("--time-steps", type=int, default=200, help="timed steps per configuration")
    p.add_argument("--only", help="comma-separated config names (default: all)")
    return p.parse_args(argv)


def train_command(name, objective, estimator, extra, run_dir, args):
    cmd = [sys.executable, "-m", "iwae", "train", "--out", str(run_dir), "--k", str(K),
           "--objective", objective, "--estimator", estimator, *extra, "--epochs", str(args.epochs),
           "--seed", str(args.seed), "--final-k", "0", "--quiet"]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    if args.limit_train:
        cmd += ["--limit-train", str(args.limit_train)]
    if rundir.holds_run(run_dir):
        cmd.append("--resume")
    return cmd


def evaluate_command(run_dir, args):
    cmd = [sys.executable, "-m", "iwae", "evaluate", str(run_dir), "--k", str(args.final_k), "--json"]
    if args.limit_test:
        cmd += ["--limit-test", str(args.limit_test)]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    return cmd


def diagnose_command(run_dir, out, args):
    cmd = [sys.executable, "-m", "iwae", "diagnose", str(run_dir), "--k", args.diagnose_k,
           "--estimators", DIAGNOSE_ESTIMATORS, "--draws", str(args.draws), "--examples", str(args.examples),
           "--seed", str(args.seed), "--out", str(out)]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    return cmd + ["--threads", str(max(1, args.jobs))]


def _metrics(run_dir):
    return rundir.read_metrics(run_dir)


def _run(cmd, log, threads, capture=False):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    with log.open("a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        done = subprocess.run(cmd, stdout=subprocess.PIPE if capture else f, stderr=f, env=env, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd[1:4])} ...` failed (exit {done.returncode}); see {log}")
    return done.stdout


def bounds64(run_dir, args):
    """The IWAE-64 bound and the 64-sample ELBO on the evaluation's test images (fixed seed)."""
    import torch
    from iwae.evaluation.likelihood import log_likelihood
    from iwae.evaluation.likelihood import EVAL_SEED, fixed_binarization
    from iwae.training.paper import run_data
    from iwae.training.rundir import load_model
    model = load_model(run_dir)
    _, data, _ = run_data(run_dir, args.data_dir)
    x = data.test[: args.limit_test] if args.limit_test else data.test
    x = fixed_binarization(x, data.binarization, EVAL_SEED)
    with torch.random.fork_rng():
        torch.manual_seed(EVAL_SEED)
        iwae64, elbo64 = log_likelihood(model, x, K, with_elbo=True)
    return {"iwae64": iwae64.mean().item(), "elbo64": elbo64.mean().item(), "n_test": int(x.shape[0]), "k": K}


def run_config(config, args, out):
    """Train (or resume) and evaluate one configuration; returns its row (or its error)."""
    name, objective, estimator, extra, words = config
    run_dir, log = out / name, out / f"{name}.log"
    row = {"name": name, "objective": objective, "estimator": estimator, "description": words,
           "flags": " ".join(["--objective", objective, "--estimator", estimator, *extra])}
    try:
        if len(_metrics(run_dir)) < args.epochs:
            print(f"[{time.strftime('%H:%M:%S')}] training {name}", flush=True)
            _run(train_command(name, objective, estimator, extra, run_dir, args), log, 1)
        final = run_dir / f"eval{args.final_k}.json"
        if not final.exists():
            print(f"[{time.strftime('%H:%M:%S')}] evaluating {name} (L_{args.final_k})", flush=True)
            started = time.perf_counter()
            result = json.loads(_run(evaluate_command(run_dir, args), log, 1, capture=True).strip().splitlines()[-1])
            result["seconds"] = round(time.perf_counter() - started, 1)
            final.write_text(json.dumps(result, indent=2) + "\n")
        bounds = run_dir / "bounds64.json"
        if not bounds.exists():
            bounds.write_text(json.dumps(bounds64(run_dir, args), indent=2) + "\n")
    except Exception as err:            # keep going with the other runs; the row says what failed
        row["error"] = str(err)
        print(f"[{time.strftime('%H:%M:%S')}] {name} FAILED: {err}", flush=True)
        return row
    metrics = _metrics(run_dir)
    result = json.loads(final.read_text())
    b = json.loads(bounds.read_text())
    row.update({"epochs": len(metrics), "test_nll": result["test_nll"], "nll_k": result["k"],
                "n_test": result["n_test"], "active_units": result["active_units"],
                "iwae64": b["iwae64"], "elbo64": b["elbo64"],
                "seconds_per_epoch": sum(m["seconds"] for m in metrics) / len(metrics),
                "train_seconds": sum(m["seconds"] for m in metrics),
                "eval_seconds": result.get("seconds"),
                "curve": [[m["epoch"], m[next(k for k in m if k.endswith("_bound") and k != "train_bound")]]
                          for m in metrics]})
    print(f"[{time.strftime('%H:%M:%S')}] {name}: test NLL {row['test_nll']:.2f}, -L_64 {-row['iwae64']:.2f}, "
          f"-ELBO {-row['elbo64']:.2f}, units {row['active_units']}", flush=True)
    return row


def run_diagnose(args, out, threads):
    source, target = out / DIAGNOSE_SOURCE, out / "diagnose"
    path = target / "diagnose.json"
    if not (path.exists() and json.loads(path.read_text()).get("complete")):   # a partial one resumes
        print(f"[{time.strftime('%H:%M:%S')}] diagnosing {source}", flush=True)
        _run(diagnose_command(source, target, args), out / "diagnose.log", threads)
    return json.loads((target / "diagnose.json").read_text())


def step_times(rows, args, out):
    """{name: {"cpu"|"wall": {median_ms, p25_ms, p75_ms, n}}}: each trained configuration's step,
    from its checkpoint, built as `iwae train` builds it, timed taking turns in this process."""
    path = out / "step_times.json"
    names = [r["name"] for r in rows if "error" not in r]
    if path.exists():
        cached = json.loads(path.read_text())
        if sorted(cached["times"]) == sorted(names) and cached["steps"] == args.time_steps:
            return cached["times"]
    import torch
    from iwae.runtime.optim import make_optimizer
    from iwae.training.paper import run_data
    from iwae.training.rundir import load_model
    from iwae.training.step import make_step
    print(f"[{time.strftime('%H:%M:%S')}] timing the training steps", flush=True)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    fns = {}
    for name in names:
        (config, _, train_x), model = run_data(out / name, args.data_dir), load_model(out / name).train()
        if not fns:
            batches = Batches(train_x, config.batch_size, seed=args.seed)
            pool = [batches() for _ in range(50)]
        opt = make_optimizer(model.parameters(), config.lr, config.adam_betas, config.adam_eps)
        step = make_step(model, opt, config.k, config.bound, config.estimator, m=config.m,
                         beta=config.beta, planned_steps=config.epochs * EPOCH_STEPS)
        batch = iter(pool * (1 + (args.time_steps + 40) // len(pool)))
        fns[name] = lambda step=step, batch=batch: step(next(batch))
    times = {name: summary(t) for name, t in interleaved(fns, args.time_steps, warmup=20).items()}
    path.write_text(json.dumps({"steps": args.time_steps, "times": times}, indent=2) + "\n")
    return times


def main(argv=None):
    args = arguments(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    out, results = Path(args.out), Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    timing_path = out / "timing.json"        # the first start, so resumed drivers report the whole span
    timing = json.loads(timing_path.read_text()) if timing_path.exists() else {"first_started": time.time()}
    timing_path.write_text(json.dumps(timing) + "\n")
    configs = CONFIGS
    if args.only:
        wanted = set(args.only.split(","))
        configs = [c for c in CONFIGS if c[0] in wanted]
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        rows = list(pool.map(lambda c: run_config(c, args, out), configs))
    diagnosis = None
    if any(r["name"] == DIAGNOSE_SOURCE and "error" not in r for r in rows):
        try:
            diagnosis = run_diagnose(args, out, max(1, args.jobs))
        except Exception as err:
            print(f"diagnose FAILED: {err}", flush=True)
    if any("error" not in r for r in rows):
        times = step_times(rows, args, out)
        for r in rows:
            if r["name"] in times:
                r["ms_per_step"] = times[r["name"]]["cpu"]["median_ms"]
    write_results(rows, diagnosis, results, args, time.time() - timing["first_started"])
    print(f"wrote {results / 'estimators.md'}, estimators.json, estimators.png")
    return 0 if all("error" not in r for r in rows) else 1


# ---------------------------------------------------------------- results
def _at(diagnosis, name, k):
    return next((r for r in diagnosis["results"] if r["estimator"] == name and r["k"] == k), None)


def snr_trend(diagnosis, name, group="encoder", statistic="snr_mean"):
    """(SNR at the smallest k, at the largest k) for an estimator, or None."""
    rows = sorted((r for r in diagnosis["results"] if r["estimator"] == name), key=lambda r: r["k"])
    if len(rows) < 2:
        return None
    return rows[0]["k"], rows[0][group][statistic], rows[-1]["k"], rows[-1][group][statistic]


def reading(rows, diagnosis):
    """Sentences comparing the measurements with Rainforth et al. 2018 and Tucker et al. 2019."""
    ok = {r["name"]: r for r in rows if "error" not in r}
    lines = []
    if diagnosis:
        std, dreg = snr_trend(diagnosis, "iwae+standard"), snr_trend(diagnosis, "iwae+dreg")
        if std:
            k0, a, k1, b = std
            verdict = "falls, as Rainforth et al. 2018 predict (O(1/sqrt(k)))" if b < a else \
                "does NOT fall, unlike Rainforth et al. 2018's O(1/sqrt(k))"
            lines.append(f"- Standard IWAE encoder SNR (mean over parameters) {a:.3g} at k={k0} -> {b:.3g} "
                         f"at k={k1}: it {verdict}; x{b / a:.2f} against sqrt({k0}/{k1}) = "
                         f"{math.sqrt(k0 / k1):.3f}.")
        if dreg:
            k0, a, k1, b = dreg
            verdict = "does not fall, as Tucker et al. 2019 report" if b >= 0.9 * a else \
                "falls, unlike Tucker et al. 2019's finding that it does not"
            lines.append(f"- DReG encoder SNR {a:.3g} at k={k0} -> {b:.3g} at k={k1}: it {verdict}.")
        dec = snr_trend(diagnosis, "iwae+standard", "decoder")
        if dec:
            k0, a, k1, b = dec
            lines.append(f"- Decoder SNR (standard IWAE) {a:.3g} at k={k0} -> {b:.3g} at k={k1} "
                         f"({'rises' if b > a else 'does not rise'}; Rainforth et al. 2018: O(sqrt(k))).")
        for name, expect in (("iwae+dreg", "no bias (unbiased for grad L_k)"),
                             ("iwae+stl", "a bias for k > 1 (Tucker et al. 2019)")):
            r = _at(diagnosis, name, K) or _at(diagnosis, name, max(diagnosis["k"]))
            null = _at(diagnosis, "iwae+standard", r["k"]) if r else None
            if r and null:
                lines.append(f"- Bias check at k={r['k']} ({name} vs standard IWAE, encoder): fraction of "
                             f"|t| > 3 = {r['encoder']['bias']['frac_abs_t_gt_3']:.4f}, max |projection t| = "
                             f"{r['encoder']['bias']['max_abs_projection_t']:.2f}; the null level (standard vs "
                             f"standard, independent seeds) is {null['encoder']['bias']['frac_abs_t_gt_3']:.4f} "
                             f"and {null['encoder']['bias']['max_abs_projection_t']:.2f}. Expected: {expect}.")
    if "iwae-standard" in ok:
        base = ok["iwae-standard"]
        for name, claim in (("miwae-m8", "a looser IWAE-64 bound than IWAE (Rainforth et al. 2018)"),
                            ("piwae-m8", "an IWAE-64 bound close to IWAE's with a better encoder"),
                            ("iwae-dreg", "at least IWAE's test NLL at equal budget (Tucker et al. 2019)")):
            if name in ok:
                r = ok[name]
                lines.append(f"- {name} vs iwae-standard: test NLL {r['test_nll']:.2f} vs {base['test_nll']:.2f}, "
                             f"-L_64 {-r['iwae64']:.2f} vs {-base['iwae64']:.2f}, -ELBO {-r['elbo64']:.2f} vs "
                             f"{-base['elbo64']:.2f} (literature: {claim}).")
    return lines


def write_results(rows, diagnosis, results, args, seconds):
    from iwae.app.provenance import hardware
    results.mkdir(parents=True, exist_ok=True)
    test = f"the first {args.limit_test} test images" if args.limit_test else "the full test set (10,000 images)"
    train = f"the first {args.limit_train} training images" if args.limit_train else "the full 60,000 training images"
    data = [] if args.data_dir or not os.environ.get("IWAE_DATA_DIR") else [f"IWAE_DATA_DIR={os.environ['IWAE_DATA_DIR']}"]
    command = " ".join([*data, "python -m benchmarks.estimators", *args.argv])
    payload = {"k": K, "epochs": args.epochs, "seed": args.seed, "jobs": args.jobs, "threads_per_run": 1,
               "limit_test": args.limit_test, "limit_train": args.limit_train, "final_k": args.final_k,
               "hardware": hardware(), "wall_seconds": round(seconds, 1), "command": command.strip(),
               "runs": rows, "diagnose": diagnosis}
    (results / "estimators.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [
        "# Estimators at equal budget: 1-layer MNIST, k = 64",
        "",
        f"Budget: {args.epochs} epoch(s) of the paper's schedule (lr 1e-3, then 7.2e-4, ...; the paper trains 3280) "
        f"on {train}, batch 20, seed {args.seed}, every configuration the same. Evaluation on {test}, "
        f"binarized once with seed 1234: test NLL = -mean L_{args.final_k}; -L_64 and -ELBO_64 from the same "
        f"64 samples per image. Active units: 500 training images, threshold 1e-2. "
        f"Hardware: {hardware()}, {args.jobs} runs at a time with 1 thread each (wall time from the driver's "
        f"first start to the end: {seconds / 60:.0f} min). 's / epoch' is what each run took, with whatever else "
        f"the machine ran meanwhile; 'ms / step' times every configuration's training step from its checkpoint, "
        f"the configurations taking turns in one process ({args.time_steps} steps each, median CPU time of the "
        f"thread), and 'epoch at that speed' is 3000 such steps: those two columns compare the estimators' cost.",
        "",
        f"Command: `{command.strip()}`",
        "",
        "All numbers in nats, lower is better (bounds shown as -L).",
        "",
        f"| config | what | test NLL (L_{args.final_k}) | -L_64 (IWAE-64) | -ELBO (64 samples) | active units "
        "| s / epoch | ms / step | epoch at that speed (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | {r['description']} | failed: {r['error'][:80]} | | | | | | |")
            continue
        lines.append(f"| {r['name']} | {r['description']} | {r['test_nll']:.2f} | {-r['iwae64']:.2f} | "
                     f"{-r['elbo64']:.2f} | {'+'.join(map(str, r['active_units']))} | {r['seconds_per_epoch']:.1f} | "
                     f"{_fmt(r.get('ms_per_step'), '.2f')} | "
                     f"{_fmt(r.get('ms_per_step') and r['ms_per_step'] * EPOCH_STEPS / 1000, '.0f')} |")
    if diagnosis:
        lines += [
            "", "## Gradient diagnostics at the iwae-standard checkpoint",
            "",
            f"`iwae diagnose` on {diagnosis['examples']} training images (fixed binarization), "
            f"{diagnosis['draws']} draws per estimator and k. SNR = |mean| / std per parameter (mean over "
            "parameters; 'norm' = ||E g|| / sqrt(E||g - E g||^2)). Bias: Welch t per parameter against "
            "independent draws of the standard IWAE gradient at the same k (fraction with |t| > 3, max |t| over "
            "8 random projections); it tests for bias only where the expectation is the same ('same E[g]'). "
            "The row iwae+standard is the null level (same estimator, independent seeds).",
            "",
            "| estimator | k | M | enc SNR | enc SNR norm | enc variance | dec SNR | enc frac abs(t)>3 "
            "| enc max abs(proj t) | dec frac abs(t)>3 | same E[g] enc/dec |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in diagnosis["results"]:
            if "bias" not in r["encoder"]:
                continue
            e, d = r["encoder"], r["decoder"]
            same = r["same_expectation"]
            cells = [e["snr_mean"], e["snr_norm"], e["variance"], d["snr_mean"], e["bias"]["frac_abs_t_gt_3"],
                     e["bias"]["max_abs_projection_t"], d["bias"]["frac_abs_t_gt_3"]]
            lines.append(f"| {r['estimator']} | {r['k']} | {r['m'] or ''} | "
                         + " | ".join(_fmt(v, f) for v, f in zip(cells, (".3g", ".3g", ".3g", ".3g", ".4f", ".2f", ".4f")))
                         + f" | {'yes' if same['encoder'] else 'no'}/{'yes' if same['decoder'] else 'no'} |")
        lines += ["", "What each estimator's expectation is: " + "; ".join(
            f"{e['name']}: {e['targets']}" for e in diagnosis["estimators"]) + "."]
    lines += ["", "## Measured against the literature", "", *reading(rows, diagnosis), "",
              "![held-out bound by epoch and gradient SNR against k](estimators.png)", ""]
    (results / "estimators.md").write_text("\n".join(lines) + "\n")
    plot(rows, diagnosis, results / "estimators.png")


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def plot(rows, diagnosis, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from iwae.app.plots import plot_snr
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    for r in rows:
        if "error" not in r and r["curve"]:
            xs, ys = zip(*r["curve"])
            axes[0].plot(xs, ys, marker="o", label=r["name"])
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("held-out L_64 (1000 images)")
    axes[0].set_title("training: held-out bound")
    axes[0].grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    if diagnosis:
        plot_snr(diagnosis, axes=axes[1:])
    else:
        for ax in axes[1:]:
            ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())

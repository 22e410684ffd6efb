"""How far L_5000 is from log p(x): results/evaluation.{md,json} for three Table-1 models.

For the 1-layer VAE k=1, the 1-layer IWAE k=50 and the 2-layer IWAE k=5 of Table 1 at
--epochs (trained by ``iwae reproduce --table 1 --only ...`` into --runs where missing), on the
first --images test images: the 5000-sample ELBO and L_5000, AIS at the default schedule and at
4x its steps (convergence), BDMC on --simulated images drawn from the model, and the inference
gaps of ``iwae gaps`` on the first --gap-images, with the seconds each took. Every part is
saved as it finishes (<runs>/evaluation/<model>/<part>.json) and not redone. Typical use:

    nice -n 19 python -m benchmarks.evaluation --epochs 20 --threads 2
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

MODELS = [("l1-vae-k1", "1-layer VAE, k=1"), ("l1-iwae-k50", "1-layer IWAE, k=50"),
          ("l2-iwae-k5", "2-layer IWAE, k=5")]


def arguments(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.evaluation", description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20, help="the Table-1 runs' budget")
    p.add_argument("--runs", default="runs/reproduce", help="iwae reproduce's --out")
    p.add_argument("--results", default="results")
    p.add_argument("--images", type=int, default=1000, help="test images for ELBO, L_5000 and AIS")
    p.add_argument("--simulated", type=int, default=1000, help="images simulated for BDMC")
    p.add_argument("--gap-images", type=int, default=100)
    p.add_argument("--steps", type=int, default=500, help="AIS's default schedule (also run at 4x)")
    p.add_argument("--chains", type=int, default=8)
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir")
    p.add_argument("--limit-train", type=int, help="train on the first N images (smoke tests)")
    return p.parse_args(argv)


def run_dir(args, name):
    return Path(args.runs) / "table1" / f"mnist-{name}-e{args.epochs}"


def train_missing(args):
    missing = [name for name, _ in MODELS if not (run_dir(args, name) / "eval.json").exists()]
    if not missing:
        return
    cmd = [sys.executable, "-m", "iwae", "reproduce", "--table", "1", "--epochs", str(args.epochs),
           "--only", ",".join(missing), "--out", args.runs, "--results", str(Path(args.runs) / "results"),
           "--jobs", str(args.threads)]
    for flag, value in (("--data-dir", args.data_dir), ("--limit-train", args.limit_train),
                        ("--limit-test", args.images if args.limit_train else None),
                        ("--final-k", args.k if args.limit_train else None)):
        if value:
            cmd += [flag, str(value)]
    print(f"[{time.strftime('%H:%M:%S')}] training {', '.join(missing)}", flush=True)
    subprocess.run(cmd, check=True)


def part(path, compute):
    """compute() once: its result is kept in path (JSON) and read back afterwards."""
    if not path.exists():
        print(f"[{time.strftime('%H:%M:%S')}] {path.parent.name}: {path.stem}", flush=True)
        started = time.perf_counter()
        result = compute()
        result.setdefault("seconds", round(time.perf_counter() - started, 1))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
    return json.loads(path.read_text())


def evaluate_model(args, name):
    from iwae.gaps import gaps_run
    from iwae.report import evaluate_ais, evaluate_run
    run, out = run_dir(args, name), Path(args.runs) / "evaluation" / name
    common = {"limit": args.images, "data_dir": args.data_dir}
    lk = part(out / "l5000.json", lambda: {k: v for k, v in evaluate_run(run, k=args.k, **common).items()
                                            if k not in ("unit_variances", "unit_kl")})
    ais = {s: part(out / f"ais{s}.json", lambda s=s: evaluate_ais(run, steps=s, chains=args.chains, **common))
           for s in (args.steps, 4 * args.steps)}
    bdmc = part(out / "bdmc.json", lambda: evaluate_ais(run, method="bdmc", steps=args.steps, chains=args.chains,
                                                         limit=args.simulated, data_dir=args.data_dir))
    gaps = part(out / "gaps.json", lambda: gaps_run(run, examples=args.gap_images, ais_steps=args.steps,
                                                     chains=args.chains, out=out, data_dir=args.data_dir)[0])
    return {"name": name, "l5000": lk, "ais": {str(s): v for s, v in ais.items()}, "bdmc": bdmc, "gaps": gaps}


def markdown(rows, args):
    s, s4 = str(args.steps), str(4 * args.steps)
    lines = ["# How far is L_5000 from log p(x)?", "",
             f"`python -m benchmarks.evaluation --epochs {args.epochs}`: Table-1 models trained {args.epochs} "
             f"epochs; NLLs in nats on the first {args.images} MNIST test images (fixed binarization, seed "
             f"1234); AIS: {args.chains} chains, 10 leapfrog steps, sigmoid schedule, from q; BDMC on "
             f"{args.simulated} images simulated from each model; gaps on the first {args.gap_images} test "
             f"images (q*: 500 Adam steps per image).", "",
             f"| model | -ELBO | -L_{args.k} | AIS NLL ({s} steps) | AIS NLL ({s4} steps) | L_{args.k} - AIS "
             f"| BDMC gap | approximation gap | amortization gap |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r, (_, words) in zip(rows, MODELS):
        lk, a, a4, g = r["l5000"], r["ais"][s], r["ais"][s4], r["gaps"]["mean"]
        lines.append(f"| {words} | {lk['elbo_nll']:.2f} | {lk['test_nll']:.2f} | {a['test_nll']:.2f} | "
                     f"{a4['test_nll']:.2f} | {a4['test_nll'] - lk['test_nll']:.2f} | {r['bdmc']['gap']:.2f} | "
                     f"{g['approximation_gap']:.2f} | {g['amortization_gap']:.2f} |")
    lines += ["", "Seconds: " + "; ".join(
        f"{words}: L_{args.k} {r['l5000']['seconds']}, AIS {r['ais'][s]['seconds']} / {r['ais'][s4]['seconds']}, "
        f"BDMC {r['bdmc']['seconds']}, gaps {sum(r['gaps']['seconds'].values()):.1f}"
        for r, (_, words) in zip(rows, MODELS)) + ".", ""]
    return "\n".join(lines)


def main(argv=None):
    args = arguments(argv)
    torch.set_num_threads(args.threads)
    train_missing(args)
    rows = [evaluate_model(args, name) for name, _ in MODELS]
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "evaluation.json").write_text(json.dumps(rows, indent=2) + "\n")
    (results / "evaluation.md").write_text(markdown(rows, args))
    print(f"wrote {results / 'evaluation.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

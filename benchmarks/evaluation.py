"""How far L_5000 is from log p(x): results/evaluation.{md,json} for three Table-1 models.

For the 1-layer VAE k=1, the 1-layer IWAE k=50 and the 2-layer IWAE k=5 of Table 1 at
--epochs (trained by ``iwae reproduce --table 1 --only ...`` into --runs where missing), on the
first --images test images: the 5000-sample ELBO and L_5000, AIS at the default schedule and at
4x its steps (convergence), BDMC on --simulated images drawn from the model, and the inference
gaps of ``iwae gaps`` on the first --gap-images, with the seconds each took; and AIS's cost per
image as chains grow (the first model). Every part, and every CHUNK images of an AIS or BDMC
run, is saved as it finishes (<runs>/evaluation/<model>/...) and not redone, so the driver
can be stopped and resumed; the 4x-steps runs go last. --only evaluates some models (to run
two processes side by side); the results are written once all three are done. Typical use:

    nice -n 19 python -m benchmarks.evaluation --epochs 20 --threads 2
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from iwae.evaluation.annealing import CHAINS, LEAPFROG, STEPS
from iwae.training import rundir

CHUNK = 100                     # images per saved piece of an AIS or BDMC run (each seeded apart)
SPEED_CHAINS = (1, 2, 4, 8, 16, 32)
SPEED_IMAGES, SPEED_STEPS = 50, 50
MODELS = [("l1-vae-k1", "1-layer VAE, k=1"), ("l1-iwae-k50", "1-layer IWAE, k=50"),
          ("l2-iwae-k5", "2-layer IWAE, k=5")]


def arguments(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.evaluation", description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20, help="the Table-1 runs' budget")
    p.add_argument("--runs", default="runs/reproduce", help="iwae reproduce's --out")
    p.add_argument("--results", default="results")
    p.add_argument("--images", type=int, default=1000, help="test images for ELBO, L_5000 and AIS")
    p.add_argument("--images-4x", type=int, help="AIS at 4x the steps on the first N of them (default: all)")
    p.add_argument("--simulated", type=int, default=1000, help="images simulated for BDMC")
    p.add_argument("--gap-images", type=int, default=100)
    p.add_argument("--steps", type=int, default=STEPS, help="AIS's default schedule (also run at 4x)")
    p.add_argument("--chains", type=int, default=CHAINS)
    p.add_argument("--leapfrog", type=int, default=LEAPFROG)
    p.add_argument("--bdmc-chains", type=int, default=1,
                   help="chains per simulated image in each direction (one: the gap bounds single-chain AIS)")
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir")
    p.add_argument("--limit-train", type=int, help="train on the first N images (smoke tests)")
    p.add_argument("--old", help="an earlier evaluation.json whose AIS and BDMC numbers are shown beside")
    p.add_argument("--only", help="comma-separated models to evaluate (no results written)")
    p.add_argument("--speed-chains", default=",".join(map(str, SPEED_CHAINS)),
                   help="chains at which AIS's cost is timed (comma-separated; empty: none)")
    return p.parse_args(argv)


def run_dir(args, name):
    return Path(args.runs) / "table1" / f"mnist-{name}-e{args.epochs}"


def train_missing(args, names):
    missing = [name for name in names if rundir.read_eval(run_dir(args, name)) is None]
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


def part(path, compute, valid=None):
    """compute() once: its result is kept in path (JSON) and read back afterwards; a kept
    result that valid(result) rejects (from an earlier run of another size) is redone."""
    if path.exists() and valid and not valid(json.loads(path.read_text())):
        path.unlink()
    if not path.exists():
        print(f"[{time.strftime('%H:%M:%S')}] {path.parent.name}: {path.stem}", flush=True)
        started = time.perf_counter()
        result = compute()
        result.setdefault("seconds", round(time.perf_counter() - started, 1))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
    return json.loads(path.read_text())


def chunked(path, n, compute):
    """compute(j, start, stop) -> {key: [values]} for each CHUNK of range(n), each saved in
    path/<j>.json once (redone if it holds another number of values: a run of another size);
    the chunks' lists joined, and their seconds summed."""
    def sized(a):
        return lambda piece: all(len(v) == min(a + CHUNK, n) - a for v in piece.values() if isinstance(v, list))
    pieces = [part(path / f"{j}.json", lambda j=j, a=a: compute(j, a, min(a + CHUNK, n)), sized(a))
              for j, a in enumerate(range(0, n, CHUNK))]
    joined = {key: torch.tensor([v for p in pieces for v in p[key]], dtype=torch.float64)
              for key in pieces[0] if key != "seconds"}
    return joined, round(sum(p["seconds"] for p in pieces), 1)


def ais_nll(args, out, model, x, steps):
    from iwae.evaluation.annealing import ais
    from iwae.evaluation.likelihood import block_seed
    from iwae.evaluation.likelihood import EVAL_SEED
    runs, seconds = chunked(out / f"ais{steps}", len(x), lambda j, a, b: {"log_p": ais(
        model, x[a:b], steps=steps, chains=args.chains, leapfrog=args.leapfrog, seed=block_seed(EVAL_SEED, j)).tolist()})
    log_p = runs["log_p"]
    return {"test_nll": -log_p.mean().item(), "standard_error": (log_p.std() / len(log_p) ** 0.5).item(),
            "n_test": len(log_p), "steps": steps, "chains": args.chains, "seconds": seconds}, log_p


def bdmc_gap(args, out, model):
    from iwae.evaluation.annealing import bdmc
    from iwae.evaluation.likelihood import block_seed
    from iwae.evaluation.likelihood import EVAL_SEED

    def compute(j, a, b):
        r = bdmc(model, b - a, steps=args.steps, chains=args.bdmc_chains, leapfrog=args.leapfrog, seed=block_seed(EVAL_SEED + 1, j))
        return {"lower": r["lower"].tolist(), "upper": r["upper"].tolist()}
    runs, seconds = chunked(out / "bdmc", args.simulated, compute)
    gap = runs["upper"] - runs["lower"]
    return {"n_simulated": len(gap), "lower_nll": -runs["lower"].mean().item(), "upper_nll": -runs["upper"].mean().item(),
            "gap": gap.mean().item(), "gap_standard_error": (gap.std() / len(gap) ** 0.5).item(),
            "steps": args.steps, "chains": args.bdmc_chains, "seconds": seconds}


def speed(args, model, x):
    """Milliseconds per image and AIS step by chains (compiled transition, after compiling),
    and at --chains the eager transition's, timed in turn in this process."""
    from iwae.evaluation.annealing import ais

    def per_image_step(chains, compile):
        started = time.perf_counter()
        ais(model, x[:SPEED_IMAGES], steps=SPEED_STEPS, chains=chains, leapfrog=args.leapfrog, compile=compile)
        return round(1e3 * (time.perf_counter() - started) / (min(SPEED_IMAGES, len(x)) * SPEED_STEPS), 4)
    rows = []
    for chains in [int(c) for c in args.speed_chains.split(",") if c]:
        started = time.perf_counter()
        ais(model, x[:SPEED_IMAGES], steps=1, chains=chains, leapfrog=args.leapfrog, compile="step")
        compiling = round(time.perf_counter() - started, 1)
        rows.append({"chains": chains, "ms_per_image_step": per_image_step(chains, "step"), "compile_seconds": compiling})
    return {"images": min(SPEED_IMAGES, len(x)), "steps": SPEED_STEPS, "threads": torch.get_num_threads(),
            "rows": rows, "eager": {"chains": args.chains, "ms_per_image_step": per_image_step(args.chains, "off")}}


def evaluate_model(args, name, last):
    """The parts of one model; last=False: all but the 4x-steps AIS, last=True: that as well."""
    from iwae.app.runs import gaps_run
    from iwae.app.runs import load_split as _load, evaluate_run
    from iwae.evaluation.likelihood import EVAL_SEED
    run, out = run_dir(args, name), Path(args.runs) / "evaluation" / name
    model, _, _, x = _load(run, "test", args.images, args.data_dir, EVAL_SEED, "cpu")
    per_example = out / "l5000.npy"
    out.mkdir(parents=True, exist_ok=True)
    lk = part(out / "l5000.json", lambda: {k: v for k, v in evaluate_run(
        run, k=args.k, limit=args.images, data_dir=args.data_dir, per_example=per_example).items()
        if k not in ("unit_variances", "unit_kl")}, lambda r: r["n_test"] == len(x))
    ais = {args.steps: ais_nll(args, out, model, x, args.steps)}
    bdmc = part(out / "bdmc.json", lambda: bdmc_gap(args, out, model), lambda r: r["n_simulated"] == args.simulated)
    gaps = part(out / "gaps.json", lambda: gaps_run(run, examples=args.gap_images, ais_steps=args.steps,
                                                     chains=args.chains, out=out, data_dir=args.data_dir)[0],
                lambda r: r["n"] == args.gap_images)
    timing = None
    if name == MODELS[0][0] and args.speed_chains:
        timing = part(out / "speed.json", lambda: speed(args, model, x))
    if not last:
        return None
    n4 = min(args.images_4x or len(x), len(x))
    ais[4 * args.steps] = ais_nll(args, out, model, x[:n4], 4 * args.steps)
    l5000 = torch.from_numpy(np.load(per_example))
    (_, log_p), (_, log_p4) = ais[args.steps], ais[4 * args.steps]
    paired = {"ais_minus_l5000": log_p - l5000, "ais4_minus_l5000": log_p4 - l5000[:n4],
              "ais4_minus_ais": log_p4 - log_p[:n4]}
    ais_on_n4 = {"test_nll": -log_p[:n4].mean().item(), "n_test": n4}          # the default AIS on those images
    return {"name": name, "l5000": lk, "ais": {str(s): v for s, (v, _) in ais.items()}, "ais_on_4x_images": ais_on_n4,
            "bdmc": bdmc, "gaps": gaps,
            **{key: {"mean": d.mean().item(), "standard_error": (d.std() / len(d) ** 0.5).item(), "n": len(d)}
               for key, d in paired.items()},
            "speed": timing}


def markdown(rows, args):
    s, s4 = str(args.steps), str(4 * args.steps)
    n4 = rows[0]["ais4_minus_ais"]["n"]
    on4 = "" if n4 == args.images else f" (first {n4} images)"
    lines = ["# How far is L_5000 from log p(x)?", "",
             f"`python -m benchmarks.evaluation --epochs {args.epochs}"
             + (f" --images-4x {n4}" if on4 else "") + f"`: Table-1 models (dynamic binarization) "
             f"trained {args.epochs} epochs; NLLs in nats on the first {args.images} MNIST test images "
             f"(binarized once, seed 1234); ± one standard error over images; differences are paired per "
             f"image. AIS: {args.chains} chains, {args.leapfrog} leapfrog steps, step sizes from a pilot run, frozen, sigmoid schedule, from q, at {s} steps "
             f"(the default) and at {s4}{on4}. BDMC: {args.bdmc_chains} chain(s) each way at {s} steps on "
             f"{args.simulated} images simulated from each model (upper - lower bound). Gaps on the first "
             f"{args.gap_images} test images (q*: 500 Adam steps per image, AIS at {s} steps): approximation "
             f"= AIS - L[q*], amortization = L[q*] - L[q], both ELBOs from 5000 samples.", "",
             f"| model | -ELBO | -L_{args.k} | AIS NLL, {s} steps | AIS - L_{args.k} | AIS NLL, {s4} / {s} steps{on4} | "
             f"AIS {s4} - AIS {s} | BDMC gap | approximation gap | amortization gap |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    pm = lambda d, key="mean": f"{d[key]:.2f} ± {d['standard_error']:.2f}"
    for r, (_, words) in zip(rows, MODELS):
        lk, a, a4, g = r["l5000"], r["ais"][s], r["ais"][s4], r["gaps"]["mean"]
        lines.append(f"| {words} | {lk['elbo_nll']:.2f} | {lk['test_nll']:.2f} | {pm(a, 'test_nll')} | "
                     f"{pm(r['ais_minus_l5000'])} | {a4['test_nll']:.2f} / {r['ais_on_4x_images']['test_nll']:.2f} | "
                     f"{pm(r['ais4_minus_ais'])} | "
                     f"{r['bdmc']['gap']:.3f} ± {r['bdmc']['gap_standard_error']:.3f} | "
                     f"{g['approximation_gap']:.2f} | {g['amortization_gap']:.2f} |")
    lines += ["", f"Wall seconds ({args.threads} thread(s) per process; on a shared machine more when processes "
              "outnumber cores): " + "; ".join(
        f"{words}: L_{args.k} {r['l5000']['seconds']}, AIS {r['ais'][s]['seconds']} / {r['ais'][s4]['seconds']}, "
        f"BDMC {r['bdmc']['seconds']}, gaps {sum(r['gaps']['seconds'].values()):.1f}"
        for r, (_, words) in zip(rows, MODELS)) + ".", ""]
    if args.old:
        lines += beside_old(rows, json.loads(Path(args.old).read_text()), args)
    timing = rows[0]["speed"]
    if timing:
        lines += [f"AIS cost by chains ({MODELS[0][1]}, {timing['images']} images x {timing['steps']} steps, "
                  f"compiled transition, {timing['threads']} thread(s)): milliseconds per image and AIS step, "
                  f"seconds per image at the default {s} steps, and seconds to compile each shape.", "",
                  f"| chains | ms / image / step | s / image at {s} steps | compile (s) |", "|---|---|---|---|"]
        lines += [f"| {t['chains']} | {t['ms_per_image_step']:.3f} | {t['ms_per_image_step'] * args.steps / 1e3:.3f} | "
                  f"{t['compile_seconds']} |" for t in timing["rows"]]
        eager = timing["eager"]
        lines += ["", f"The eager transition (compile=\"off\") at {eager['chains']} chains: "
                  f"{eager['ms_per_image_step']:.3f} ms per image and step."]
        lines.append("")
    return "\n".join(lines)


def beside_old(rows, old, args):
    """The new rows' AIS and BDMC against an earlier evaluation.json's (its own images and
    settings): the paired AIS - L_k and the BDMC gap are each run's own differences."""
    old = {r["name"]: r for r in old}
    lines = [f"Beside the earlier run ({args.old}; its AIS and BDMC settings in its own table): "
             "AIS - L_k paired per image, the BDMC gap, the gaps of `iwae gaps`.", "",
             "| model | AIS - L_k, old | AIS - L_k, new | BDMC gap, old | BDMC gap, new | approximation gap, old / new "
             "| amortization gap, old / new |", "|---|---|---|---|---|---|---|"]
    pm = lambda d, m="mean", e="standard_error": f"{d[m]:.2f} ± {d[e]:.2f}"
    for r, (name, words) in zip(rows, MODELS):
        o = old.get(name)
        if o is None:
            continue
        bd = lambda x: pm(x["bdmc"], "gap", "gap_standard_error")
        g, og = r["gaps"]["mean"], o["gaps"]["mean"]
        lines.append(f"| {words} | {pm(o['ais_minus_l5000'])} | {pm(r['ais_minus_l5000'])} | {bd(o)} | {bd(r)} | "
                     f"{og['approximation_gap']:.2f} / {g['approximation_gap']:.2f} | "
                     f"{og['amortization_gap']:.2f} / {g['amortization_gap']:.2f} |")
    return lines + [""]


def main(argv=None):
    args = arguments(argv)
    torch.set_num_threads(args.threads)
    names = [name for name, _ in MODELS]
    chosen = args.only.split(",") if args.only else names
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        raise SystemExit(f"benchmarks.evaluation: error: --only: unknown model(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(names)}")
    train_missing(args, chosen)
    for name in chosen:
        evaluate_model(args, name, last=False)
    rows = [evaluate_model(args, name, last=True) for name in chosen]
    if args.only:
        print(f"evaluated {', '.join(chosen)}")
        return 0
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "evaluation.json").write_text(json.dumps(rows, indent=2) + "\n")
    (results / "evaluation.md").write_text(markdown(rows, args))
    print(f"wrote {results / 'evaluation.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

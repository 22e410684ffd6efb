"""AIS settings measured: error against the closed form, and cost on the MNIST net.

    nice -n 10 python -m benchmarks.ais_study [--images 256] [--out results]

For each (steps, chains, leapfrog, schedule, pilot) setting, iwae.ais on `images` datapoints
of linear-Gaussian models with a closed-form log p(x) (benchmarks/closed_form.py; encoders
deliberately off the posterior): the mean error (with its standard error; a lower bound
must not sit above 0) and the mean absolute error, in nats. Then the cost per image and
AIS step of the 1-layer paper net (784-200-200-50; untrained weights: the cost does not
depend on them) on 100 MNIST-sized images, compiled, at the settings' (chains, leapfrog), and
the pilot's cost per image apart. Resumable: each measurement is kept in
results/ais_study/*.json and skipped when present; the table is results/ais_study.md.
"""
import argparse
import json
import math
import time
from pathlib import Path

import torch

import iwae
from iwae.evaluation.annealing import PILOT_WARMUP, ais

from .closed_form import LinearGaussian

MODELS = {   # name: (LinearGaussian kwargs, encoder shifts)
    "A: D=8, d=3, s=0.5, shift 0.8/0.4": ({"D": 8, "d": 3, "s": 0.5, "seed": 0}, (0.8, 0.4)),
    "B: D=16, d=6, s=0.3, shift 1.0/0.6": ({"D": 16, "d": 6, "s": 0.3, "seed": 1}, (1.0, 0.6)),
}
SETTINGS = [   # steps, chains, leapfrog, schedule, pilot ("auto": 10% of steps)
    (100, 8, 10, "sigmoid", "auto"),
    (500, 8, 10, "sigmoid", "auto"),
    (500, 8, 10, "sigmoid", 0),
    (500, 8, 5, "sigmoid", "auto"),
    (500, 8, 10, "linear", "auto"),
    (500, 16, 10, "sigmoid", "auto"),
    (1000, 8, 10, "sigmoid", "auto"),
    (1000, 16, 5, "sigmoid", "auto"),
    (2000, 8, 10, "sigmoid", "auto"),
    (2000, 8, 5, "sigmoid", "auto"),
    (1000, 16, 5, "linear", "auto"),
    (2000, 16, 5, "sigmoid", "auto"),
]


def arguments(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.ais_study", description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=256, help="datapoints per closed-form model")
    p.add_argument("--cost-steps", type=int, default=20, help="AIS steps timed on the MNIST net")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="results")
    return p.parse_args(argv)


def cached(path, compute):
    if path.exists():
        return json.loads(path.read_text())
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return value


def error(model_name, setting, images):
    kwargs, (mean_shift, log_sigma_shift) = MODELS[model_name]
    lg = LinearGaussian(**kwargs)
    steps, chains, leapfrog, schedule, pilot = setting
    x = lg.data(images, seed=2)
    started = time.perf_counter()
    est = ais(lg.model(mean_shift, log_sigma_shift), x, steps=steps, chains=chains, leapfrog=leapfrog,
              schedule=schedule, pilot=pilot, batch_size=images, compile="step")
    e = est - lg.log_px(x)
    return {"mean": e.mean().item(), "se": (e.std() / math.sqrt(images)).item(), "mae": e.abs().mean().item(),
            "seconds": time.perf_counter() - started}


def cost(chains, leapfrog, cost_steps):
    """CPU seconds (the machine is shared: wall time is not the process's) per image and AIS
    step, and per image and pilot transition, on the 1-layer paper net, 100 images, compiled
    (the compile excluded: one warm-up call); best of 2."""
    torch.manual_seed(0)
    model = iwae.paper_model(1)
    x = torch.bernoulli(torch.full((100, 784), 0.13))
    ais(model, x, steps=2, chains=chains, leapfrog=leapfrog, pilot=0, compile="step")       # compiles
    pilot = cost_steps // 2
    counted, with_pilot = math.inf, math.inf
    for _ in range(2):
        t = time.process_time()
        ais(model, x, steps=cost_steps, chains=chains, leapfrog=leapfrog, pilot=0, compile="step")
        counted = min(counted, time.process_time() - t)
        t = time.process_time()
        ais(model, x, steps=cost_steps, chains=chains, leapfrog=leapfrog, pilot=pilot, compile="step")
        with_pilot = min(with_pilot, time.process_time() - t)
    return {"per_image_step": counted / (100 * cost_steps),
            "pilot_per_image_transition": max(0.0, with_pilot - counted) / (100 * (pilot + PILOT_WARMUP))}


def main(argv=None):
    args = arguments(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    store = out / "ais_study"
    rows = []
    for setting in SETTINGS:
        key = "-".join(map(str, setting))
        errs = {m: cached(store / f"error-{i}-{key}-{args.images}.json", lambda: error(m, setting, args.images))
                for i, m in enumerate(MODELS)}
        c = cached(store / f"cost-{setting[1]}-{setting[2]}-t{args.threads}.json",
                   lambda: cost(setting[1], setting[2], args.cost_steps))
        rows.append((setting, errs, c))
        print(key, {m[:1]: (round(e["mean"], 4), round(e["mae"], 4)) for m, e in errs.items()},
              f"{c['per_image_step'] * 1e3:.2f} ms", flush=True)
    (out / "ais_study.md").write_text(table(rows, args))


def table(rows, args):
    head = ("| steps | chains | leapfrog | schedule | pilot | " + " | ".join(
        f"{m[:1]}: mean error | {m[:1]}: mean abs error" for m in MODELS)
        + " | ms per image and step (MNIST 1-layer) | s per image (steps x cost) | pilot s per image |")
    lines = ["# AIS settings: error against the closed form, and cost", "",
             f"`nice -n 10 python -m benchmarks.ais_study --images {args.images} --threads {args.threads}` "
             f"({args.images} datapoints per model, one batch; errors in nats, mean +- standard error; "
             f"a lower bound must not sit above 0). Models (benchmarks/closed_form.py): "
             + "; ".join(MODELS) + ". Cost: the 1-layer paper net, 100 images, compiled, "
             f"{args.threads} thread(s), CPU seconds, best of 2; the pilot's cost (10% of the steps plus 20 warm-up "
             "transitions) comes on top.", "", head, "|" + "---|" * (head.count("|") - 1)]
    for (steps, chains, leapfrog, schedule, pilot), errs, c in rows:
        cells = [f"{e['mean']:+.4f} ± {e['se']:.4f} | {e['mae']:.4f}" for e in errs.values()]
        pilot_text = "10% + 20" if pilot == "auto" else "none (0.05)"
        lines.append(f"| {steps} | {chains} | {leapfrog} | {schedule} | {pilot_text} | " + " | ".join(cells)
                     + f" | {c['per_image_step'] * 1e3:.2f} | {c['per_image_step'] * steps:.2f} | "
                     + (f"{c['pilot_per_image_transition'] * (steps // 10 + 20):.2f} |" if pilot == "auto" else "0 |"))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

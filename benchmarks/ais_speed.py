"""AIS speed: the counted chains' cost per image and step against the previous main's AIS.

    python -m benchmarks.ais_speed [--baseline 47344d4] [--steps 20] [--threads 1]

iwae.ais with frozen, jittered step sizes (pilot=0: the counted chains alone) and the
previous main's iwae.ais (imported from its own source by benchmarks.common.load_baseline;
at 47344d4, the main before issue 30, each chain adapted its step size from its own
acceptances) run in turns in one process on the 1-layer paper net (784-200-200-50, untrained:
the cost does not depend on the weights), 100 MNIST test images, compiled (the compile
excluded by a warm-up call), at equal steps, chains and leapfrog steps. The pilot run is
timed apart (pilot="auto" minus pilot=0, per pilot transition) and comes on top. Writes
benchmarks/results/ais_speed.json.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

import iwae
from iwae.evaluation.annealing import CHAINS, LEAPFROG, PILOT_FRACTION, PILOT_WARMUP

from .common import (RESULTS, data_dir, git_revision, interleaved, load_baseline, load_images,
                     machine_info, medians)


def arguments(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.ais_speed", description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=100, help="test images (one batch)")
    p.add_argument("--steps", type=int, default=20, help="AIS steps per timed call")
    p.add_argument("--settings", default=f"{CHAINS}x{LEAPFROG},8x10",
                   help="chains x leapfrog steps, comma-separated (the defaults, then the old defaults)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per variant")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--baseline", default="47344d4", help="git revision of the previous main")
    p.add_argument("--data-dir")
    p.add_argument("--out", default=str(RESULTS))
    return p.parse_args(argv)


def run(args):
    torch.set_num_threads(args.threads)
    _, test, source = load_images(data_dir(args.data_dir), n_test=args.images)
    x = test[: args.images]
    base = load_baseline(args.baseline)
    torch.manual_seed(0)
    model = iwae.paper_model(1).eval()
    twin = base.paper_model(1).eval()
    twin.load_state_dict(model.state_dict())
    clock = "cpu" if args.threads == 1 else "wall"
    pilot = max(1, round(PILOT_FRACTION * args.steps))
    result = {"machine": machine_info(), "revision": git_revision(), "baseline": args.baseline,
              "images": x.shape[0], "data": source, "steps": args.steps, "pilot_transitions": pilot + PILOT_WARMUP,
              "threads": args.threads, "clock": clock, "rows": []}
    for setting in args.settings.split(","):
        chains, leapfrog = (int(v) for v in setting.split("x"))
        common = {"steps": args.steps, "chains": chains, "leapfrog": leapfrog, "compile": "step"}
        variants = {"iwae": lambda: iwae.ais(model, x, pilot=0, **common),
                    "with_pilot": lambda: iwae.ais(model, x, pilot=pilot, **common),
                    "main": lambda: base.ais(twin, x, **common)}
        times = interleaved(variants, args.repeats, warmup=1, block=1)
        med = medians(times, clock)                                                      # ms per call
        per_step = {n: med[n] / (x.shape[0] * args.steps) for n in ("iwae", "main")}
        row = {"chains": chains, "leapfrog": leapfrog, "ms_per_image_step": per_step,
               "ratio": per_step["iwae"] / per_step["main"],
               "pilot_ms_per_image_transition": max(0.0, med["with_pilot"] - med["iwae"])
               / (x.shape[0] * (pilot + PILOT_WARMUP))}
        result["rows"].append(row)
        print(f"AIS {chains} chains x {leapfrog} leapfrog ({clock} clock): {per_step['iwae']:.3f} ms per image "
              f"and step, previous main {per_step['main']:.3f} ({row['ratio']:.2f}x); pilot "
              f"{row['pilot_ms_per_image_transition']:.3f} ms per image and transition", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "ais_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def markdown(result):
    lines = ["## AIS: ms per image and step, counted chains, against the previous main", "",
             f"`python -m benchmarks.ais_speed --threads {result['threads']}` at {result['revision']} against "
             f"{result['baseline']}: 1-layer paper net, {result['images']} images ({result['data']}), "
             f"{result['steps']} steps per call, compiled, {result['clock']} clock, medians of calls taken in "
             f"turns; the pilot ({result['pilot_transitions']} transitions per call here) apart.", "",
             "| chains x leapfrog | iwae.ais | previous main | ratio | pilot, per image and transition |",
             "|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['chains']} x {r['leapfrog']} | {r['ms_per_image_step']['iwae']:.3f} | "
                     f"{r['ms_per_image_step']['main']:.3f} | {r['ratio']:.2f}x | "
                     f"{r['pilot_ms_per_image_transition']:.3f} |")
    return lines + [""]


def main(argv=None):
    print("\n".join(markdown(run(arguments(argv)))))
    return 0


if __name__ == "__main__":
    sys.exit(main())

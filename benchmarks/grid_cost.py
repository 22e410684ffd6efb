"""What the paper's full grids cost: Tables 1 and 3 at 3280 epochs, from measured times.

Multiplies the steps each run of ``iwae reproduce --table 1|3`` takes (epochs x training
images / batch 20) by the milliseconds per step that ``python -m benchmarks.step`` measured for
its net and k (the standard step: VAE and IWAE cost the same), and adds its final L_5000 on the
10,000 test images at the milliseconds per image of ``python -m benchmarks.evaluate``. Both
JSON files name the machine they were measured on; a GPU's come from benchmarks/gpu.sh
(step_cuda.json; its evaluation time from gpu.log is not read here, so --evaluate may be left
out, and the evaluation is then not counted).

--runs checks the projection against real runs: for every run under an ``iwae reproduce
--out`` directory, its quickest and median epoch (metrics.jsonl: training plus the per-epoch
held-out bound, with whatever else shared the machine) beside the projected epoch.

    python -m benchmarks.grid_cost [--step benchmarks/results/step.json] [--evaluate ...json] [--runs runs/reproduce]
"""
import argparse
import json
import statistics
import sys
from pathlib import Path

from iwae.data import DataError, load_dataset
from iwae.app.reproduce import grid, select
from iwae.training.schedule import PAPER_EPOCHS
from iwae.training import rundir

BATCH = 20
TEST_IMAGES = 10_000


def arguments(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.grid_cost", description=__doc__.splitlines()[0])
    p.add_argument("--step", default="benchmarks/results/step.json", help="a step benchmark's JSON")
    p.add_argument("--evaluate", default="benchmarks/results/evaluate.json",
                   help="an evaluation benchmark's JSON ('' to leave evaluation out)")
    p.add_argument("--epochs", type=int, default=PAPER_EPOCHS)
    p.add_argument("--tables", default="1,3", help="comma-separated tables (1, 3)")
    p.add_argument("--only", help="the runs of iwae reproduce --only (e.g. l1-vae-k1,l2-iwae-k5)")
    p.add_argument("--data-dir")
    p.add_argument("--runs", help="an iwae reproduce --out directory: its runs' epochs beside the projected epoch")
    return p.parse_args(argv)


def step_ms(path):
    """(layers, k) -> ms per training step of iwae's standard step on the row's clock (the
    torch thread's CPU time for one thread, else wall time), and the benchmark."""
    bench = json.loads(open(path).read())
    return {(r["layers"], r["k"]): r["median_ms"][r["clock"]]["iwae"] for r in bench["rows"]}, bench


def evaluation_ms(path):
    """layers -> ms per test image of L_5000 (iwae's compiled path), or {} without a file."""
    if not path:
        return {}
    bench = json.loads(open(path).read())
    clock = bench.get("target_clock", "wall")
    return {s["layers"]: s["ms_per_image"][clock] for s in bench["speed"] if s["variant"] == "iwae"}


def main(argv=None):
    args = arguments(argv)
    per_step, bench = step_ms(args.step)
    per_image = evaluation_ms(args.evaluate)
    machine = bench["machine"]
    print(f"# The full grids at {args.epochs} epochs, from {args.step} (revision {bench['revision']}, "
          f"{machine.get('device')}, {machine.get('cpu')}, {machine.get('torch_threads')} torch thread(s))")
    print("\n| table | runs | training steps | training (core-hours) | L_5000 (core-hours) | total (core-hours) |")
    print("|---|---|---|---|---|---|")
    for table in (int(t) for t in args.tables.split(",")):
        runs = select(grid(table, args.epochs), args.only)
        try:
            steps = {dataset: args.epochs * -(-load_dataset(dataset, args.data_dir).train.shape[0] // BATCH)
                     for dataset in {r["dataset"] for r in runs}}
        except DataError as err:
            print(f"| {table} | not priced: {err} |")
            continue
        train = sum(steps[r["dataset"]] * per_step[(r["layers"], r["k"])] for r in runs) / 3.6e6
        evaluate = sum(TEST_IMAGES * per_image[r["layers"]] for r in runs) / 3.6e6 if per_image else 0.0
        print(f"| {table} | {len(runs)} | {sum(steps[r['dataset']] for r in runs):,} | {train:.0f} | "
              f"{evaluate:.1f} | {train + evaluate:.0f} |")
    if args.runs:
        print(f"\n# The runs under {args.runs}: seconds per epoch, measured and projected\n")
        print("| run | epochs done | projected | quickest (x projected) | median (x projected) |")
        print("|---|---|---|---|---|")
        for name, done, projected, seconds in measured(args.runs, per_step):
            print(f"| {name} | {done} | {projected:.1f} | {min(seconds):.1f} ({min(seconds) / projected:.2f}x) | "
                  f"{statistics.median(seconds):.1f} ({statistics.median(seconds) / projected:.2f}x) |")
    return 0


def measured(out, per_step):
    """(run name, epochs done, projected seconds per epoch, each epoch's seconds) for every run
    with a metrics.jsonl under out/table<t>/."""
    for run in sorted(path.parent for path in Path(out).glob(f"table*/*/{rundir.METRICS}")):
        spec = rundir.read_spec(run)
        history = rundir.read_metrics(run)
        if history:
            steps = history[0]["steps"] / history[0]["epoch"]          # steps per epoch
            yield (run.name, history[-1]["epoch"], steps * per_step[(spec.layers, spec.k)] / 1e3,
                   [m["seconds"] for m in history])


if __name__ == "__main__":
    sys.exit(main())

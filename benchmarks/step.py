"""Training-step benchmark: ms per step and the ratio to the matmul floor, side by side.

    python -m benchmarks.step                 # CPU: the table, the levers, then evaluation
    python -m benchmarks.step --device cuda   # the CUDA-graph step (refuses without CUDA)

For the paper's 1- and 2-layer networks, batch 20, k in {1, 5, 50}, every variant runs in
one process, the variants taking turns in blocks of 10 steps (the order rotating every
round), and the medians over >= 200 measured steps (after a warm-up) are compared:

  floor     only the matrix multiplications of one forward+backward pass at the same
            shapes (addmm/mm on preallocated tensors; no grad input for the first layer)
  iwae      iwae's training step exactly as `iwae train` builds it for the paper's schedule
            (iwae.step.make_optimizer + make_step(planned_steps=3280 x 3000), with the
            trainer's non-finite guard registered on the optimizer)
  plain     the plain PyTorch loop: iwae.loss; zero_grad; backward; torch.optim.Adam.step
  tutorial  the common tutorial IWAE: encoder outputs and x repeated k times
  pyro      Pyro SVI, RenyiELBO(alpha=0, num_particles=k, vectorize_particles=True)

Each step is timed on two clocks: wall time, and the CPU time of the (single) torch thread,
which on a shared machine leaves out the time the scheduler gives to other processes; the
targets are judged on CPU time when --threads is 1 (the default, as `iwae train`), else on
wall time. All variants start from one model (output bias from the data mean, then
--pretrain steps of training, so the timings are those of a model in training rather than
at initialisation) with Adam(1e-3, (0.9, 0.999), 1e-4).
Writes benchmarks/results/step.json and step.md (and evaluate.json unless --no-eval).
"""
import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

import iwae
from iwae.step import make_optimizer, make_step

from . import variants as V
from .common import (RESULTS, Batches, MatmulFloor, data_dir, git_revision, interleaved,
                     linear_shapes, load_images, machine_info, medians, summary)

EPOCH_STEPS, EPOCHS = 3000, 3280        # 60,000 / 20 steps per pass; the paper's 3280 passes
TARGETS = {"floor": {1: 2.5, 5: 1.6, 50: 1.25}, "pyro": {5: 2.5, 50: 1.8}}
MODES = {"off": "eager", "kernels": "compiled Bernoulli kernels", "step": "whole step compiled"}


def arguments(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.step", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as `iwae train`)")
    p.add_argument("--layers", default="1,2")
    p.add_argument("--k", default="1,5,50")
    p.add_argument("--steps", type=int, default=200, help="measured steps per variant and setting")
    p.add_argument("--lever-steps", type=int, default=100, help="measured steps per lever and setting")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--pretrain", type=int, default=200, help="shared training steps before timing")
    p.add_argument("--no-levers", action="store_true", help="only the main table")
    p.add_argument("--no-pyro", action="store_true")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation benchmark")
    p.add_argument("--data-dir")
    p.add_argument("--out", default=str(RESULTS))
    return p.parse_args(argv)


def main(argv=None):
    args = arguments(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"benchmarks.step: --device cuda: CUDA is not available here (torch {torch.__version__}, "
              f"CUDA build {torch.version.cuda}); nothing was run", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    layers = [int(v) for v in args.layers.split(",")]
    ks = [int(v) for v in args.k.split(",")]
    train, test, source = load_images(data_dir(args.data_dir))
    if args.device == "cuda":
        return cuda_main(args, layers, ks, train, source)
    clock = "cpu" if args.threads == 1 else "wall"
    results = {"machine": machine_info(), "revision": git_revision(), "data": source,
               "settings": {"batch": 20, "steps": args.steps, "lever_steps": args.lever_steps,
                            "warmup": args.warmup, "pretrain": args.pretrain, "threads": args.threads,
                            "target_clock": clock},
               "guard": V.trainer_guard() is not None, "rows": [], "levers": []}
    pyro = V.pyro_available() and not args.no_pyro
    if not pyro:
        results["pyro_note"] = ("pyro is not installed (pip install 'iwae[bench]')" if not args.no_pyro
                                else "skipped (--no-pyro)")
    began = time.perf_counter()
    for n_layers in layers:
        for k in ks:
            results["rows"].append(main_row(n_layers, k, train, args, pyro, clock))
            print(row_line(results["rows"][-1]), flush=True)
    if not args.no_levers:
        results["levers"] = levers(layers, ks, train, args, clock)
        results["cold_compile"] = cold_compile(args)
    results["seconds"] = round(time.perf_counter() - began, 1)
    results["machine"] = machine_info()                         # the load average at the end
    Path(args.out).mkdir(parents=True, exist_ok=True)
    evaluation = None
    if not args.no_eval:
        from . import evaluate
        evaluation = evaluate.run(evaluate.arguments(
            ["--out", args.out, "--threads", str(args.threads)]
            + (["--data-dir", args.data_dir] if args.data_dir else [])), test)
    elif Path(args.out, "evaluate.json").exists():
        evaluation = json.loads(Path(args.out, "evaluate.json").read_text())
    Path(args.out, "step.json").write_text(json.dumps(results, indent=2) + "\n")
    Path(args.out, "step.md").write_text(markdown(results, evaluation))
    print(f"wrote {args.out}/step.json and step.md" + ("" if args.no_eval else ", evaluate.json"))
    return 0


def prepared_model(n_layers, k, train, pretrain, device="cpu"):
    """The shared starting point: the paper network, output bias from the data, pretrained."""
    torch.manual_seed(0)
    model = iwae.paper_model(n_layers).to(device)
    model.set_output_bias(train.mean(0))
    if pretrain:
        opt = make_optimizer(model.parameters(), V.LR, V.BETAS, V.EPS)
        step = make_step(model, opt, k, compile="off") if device == "cpu" else \
            make_step(model, opt, k, path="autograd")
        batches = Batches(train, device=device, seed=1)
        for _ in range(pretrain):
            step(batches())
    return model


def _feeder(fns, xs):
    """Wrap each step so it takes the next batch from a fixed cycle (the same data for all)."""
    def wrap(fn):
        if isinstance(fn, MatmulFloor):
            return fn
        state = {"i": 0}

        def call():
            state["i"] = (state["i"] + 1) % len(xs)
            return fn(xs[state["i"]])
        return call
    return {name: wrap(fn) for name, fn in fns.items()}


def _batches(train, seed):
    batches = Batches(train, seed=seed)
    return [batches() for _ in range(16)]


def _ratios(times, floor="floor"):
    """{clock: {name: median / floor's median}} and {clock: {name: median ms}}."""
    med = {clock: medians(times, clock) for clock in ("wall", "cpu")}
    return ({clock: {n: v / m[floor] for n, v in m.items() if n != floor} for clock, m in med.items()},
            med)


def main_row(n_layers, k, train, args, pyro, clock):
    model = prepared_model(n_layers, k, train, args.pretrain)
    floor = MatmulFloor(linear_shapes(model, k, 20))
    xs = _batches(train, 2)
    t = time.perf_counter()
    project = V.project(model, k)
    project(xs[0])                                          # compiles, where the step does
    first_step = time.perf_counter() - t
    fns = {"floor": floor, "iwae": project, "plain": V.plain(model, k), "tutorial": V.tutorial(model, k)}
    if pyro:
        fns["pyro"] = V.pyro_svi(model, k)
    times = interleaved(_feeder(fns, xs), args.steps, warmup=args.warmup)
    ratio, med = _ratios(times)
    row = {"layers": n_layers, "k": k, "batch": 20, "floor_gflop": floor.flops / 1e9,
           "iwae_path": project.step.path, "iwae_compile": project.step.compile_mode(20, torch.device("cpu")),
           "first_step_s": round(first_step, 2), "median_ms": med, "ratio_to_floor": ratio,
           "quartiles_ms": {n: summary(t) for n, t in times.items()}, "clock": clock,
           "projected_hours": med[clock]["iwae"] * 1e-3 * EPOCH_STEPS * EPOCHS / 3600}
    if pyro:
        row["speedup_vs_pyro"] = {c: med[c]["pyro"] / med[c]["iwae"] for c in med}
    return row


def row_line(row):
    c, r, ms = row["clock"], row["ratio_to_floor"], row["median_ms"]
    parts = [f"{row['layers']}-layer k={row['k']:>2} ({c} clock): floor {ms[c]['floor']:.3f} ms"]
    for name in ("iwae", "plain", "tutorial", "pyro"):
        if name in r[c]:
            parts.append(f"{name} {ms[c][name]:.3f} ms ({r[c][name]:.2f}x; wall {r['wall'][name]:.2f}x)")
    if "speedup_vs_pyro" in row:
        parts.append(f"iwae {row['speedup_vs_pyro'][c]:.2f}x faster than pyro")
    parts.append(f"3280 epochs: {row['projected_hours']:.1f} h")
    return ", ".join(parts)


# ------------------------------------------------------------------------------------ levers

LEVERS = [
    ("plain", "plain loop: iwae.loss, backward, torch.optim.Adam (for-loop)"),
    ("fused_adam", "+ torch.optim.Adam(fused=True)"),
    ("direct_update", "+ the fused Adam kernel called directly (FusedAdamUpdate)"),
    ("manual", "+ hand-written forward/backward (no autograd tape, fewer temporaries, "
               "one-pass (sigmoid(l)-x)w/B, tiny weights flushed)"),
    ("kernels", "+ the two Bernoulli passes as compiled kernels, the bias inside them"),
    ("step", "instead of kernels: the whole forward/backward compiled (torch.compile, C++ wrapper)"),
]


def levers(layers, ks, train, args, clock):
    """Each lever added in turn, measured side by side with the floor (same process)."""
    out = []
    for n_layers in layers:
        for k in ks:
            model = prepared_model(n_layers, k, train, args.pretrain)
            xs = _batches(train, 3)
            fns = {"floor": MatmulFloor(linear_shapes(model, k, 20)),
                   "plain": V.plain(model, k),
                   "fused_adam": V.plain(model, k, fused=True),
                   "direct_update": V.lever(model, k, "autograd"),
                   "manual": V.lever(model, k, "manual", compile="off"),
                   "kernels": V.lever(model, k, "manual", compile="kernels"),
                   "step": V.lever(model, k, "manual", compile="step")}
            compile_s = {}
            for name in ("kernels", "step"):
                t = time.perf_counter()
                fns[name](xs[0])
                compile_s[name] = round(time.perf_counter() - t, 1)
            times = interleaved(_feeder(fns, xs), args.lever_steps, warmup=args.warmup)
            ratio, med = _ratios(times)
            entry = {"lever_set": "cumulative", "layers": n_layers, "k": k, "median_ms": med,
                     "ratio_to_floor": ratio, "compile_s": compile_s}
            out.append(entry)
            print(f"levers {n_layers}-layer k={k} ({clock}): " + ", ".join(
                f"{n} {ratio[clock][n]:.2f}x" for n, _ in LEVERS) + f" (first call s: {compile_s})",
                flush=True)
    out += flush_lever(train, args, clock)
    out += threads_lever(train, args)
    return out


def flush_lever(train, args, clock):
    """Flushing tiny weights on, off, and against FTZ/DAZ for every implementation.

    After --pretrain steps the log weights of one datapoint spread over ~20 (k=5) to ~90
    (k=50) nats, so normalised weights reach e^-90: subnormal floats, which x86 processes
    ~100x slower. Part 1 (FTZ off, as programs run): the eager manual step with and without
    flushing, and the plain loop. Part 2: torch.set_flush_denormal(True) (FTZ/DAZ; on one
    thread it covers all the arithmetic) for every variant, which removes the subnormal
    slowdowns from the other implementations as well: the comparison of compute alone.
    """
    out = []
    for k in (5, 50):
        model = prepared_model(1, k, train, args.pretrain)
        xs = _batches(train, 4)
        fns = {"floor": MatmulFloor(linear_shapes(model, k, 20)),
               "plain": V.plain(model, k),
               "manual_no_flush": V.lever(model, k, "manual", compile="off", flush=False),
               "manual_flush": V.lever(model, k, "manual", compile="off", flush=True)}
        times = interleaved(_feeder(fns, xs), args.lever_steps, warmup=args.warmup)
        ratio, med = _ratios(times)
        lw = model.log_weights(xs[0], k).detach()
        spread = float((lw.max(0).values - lw.min(0).values).median())
        out.append({"lever_set": "flush", "layers": 1, "k": k, "median_ms": med, "ratio_to_floor": ratio,
                    "log_weight_spread": spread})
        print(f"flush lever 1-layer k={k} (spread {spread:.0f} nats, {clock}): " + ", ".join(
            f"{n} {v:.2f}x" for n, v in ratio[clock].items()), flush=True)
    pyro = V.pyro_available() and not args.no_pyro
    torch.set_flush_denormal(True)
    try:
        for n_layers in (1, 2):
            for k in (5, 50):
                model = prepared_model(n_layers, k, train, args.pretrain)
                xs = _batches(train, 6)
                fns = {"floor": MatmulFloor(linear_shapes(model, k, 20)), "iwae": V.project(model, k),
                       "plain": V.plain(model, k)}
                if pyro:
                    fns["pyro"] = V.pyro_svi(model, k)
                fns["iwae"](xs[0])
                times = interleaved(_feeder(fns, xs), args.lever_steps, warmup=args.warmup)
                ratio, med = _ratios(times)
                entry = {"lever_set": "ftz_everywhere", "layers": n_layers, "k": k, "median_ms": med,
                         "ratio_to_floor": ratio}
                if pyro:
                    entry["speedup_vs_pyro"] = {c: med[c]["pyro"] / med[c]["iwae"] for c in med}
                out.append(entry)
                print(f"FTZ everywhere {n_layers}-layer k={k} ({clock}): " + ", ".join(
                    f"{n} {v:.2f}x" for n, v in ratio[clock].items())
                    + (f", iwae {entry['speedup_vs_pyro'][clock]:.2f}x faster than pyro" if pyro else ""),
                    flush=True)
    finally:
        torch.set_flush_denormal(False)
    return out


def threads_lever(train, args):
    """The iwae step and the floor at 1 and 2 threads (wall clock)."""
    out = []
    other = 2 if args.threads == 1 else 1
    for k in (1, 5, 50):
        model = prepared_model(1, k, train, args.pretrain)
        xs = _batches(train, 5)
        entry = {"lever_set": "threads", "layers": 1, "k": k, "median_ms": {}, "ratio_to_floor": {}}
        for threads in (args.threads, other):
            torch.set_num_threads(threads)
            fns = {"floor": MatmulFloor(linear_shapes(model, k, 20)), "iwae": V.project(model, k)}
            fns["iwae"](xs[0])                                 # compiles, where it does
            times = interleaved(_feeder(fns, xs), args.lever_steps, warmup=args.warmup)
            ratio, med = _ratios(times)
            entry["median_ms"][f"{threads} thread(s)"] = {n: med["wall"][n] for n in med["wall"]}
            entry["ratio_to_floor"][f"{threads} thread(s)"] = ratio["wall"]["iwae"]
        torch.set_num_threads(args.threads)
        out.append(entry)
        print(f"threads lever 1-layer k={k} (wall): " + ", ".join(
            f"{t}: floor {m['floor']:.3f} ms, iwae {m['iwae']:.3f} ms"
            for t, m in entry["median_ms"].items()), flush=True)
    return out


COLD_SCRIPT = r"""
import json, sys, time, torch, iwae
from iwae.step import make_optimizer, make_step
torch.set_num_threads(int(sys.argv[1]))
out = {}
for layers, k in ((1, 1), (1, 50)):
    torch.manual_seed(0)
    model = iwae.paper_model(layers)
    step = make_step(model, make_optimizer(model.parameters(), 1e-3), k, planned_steps=3280 * 3000)
    x = torch.rand(20, 784).bernoulli()
    t = time.perf_counter()
    step(x)
    first = time.perf_counter() - t
    t = time.perf_counter()
    step(x)
    out[f"{layers}-layer k={k}"] = {"first_step_s": round(first, 1), "second_step_s": round(time.perf_counter() - t, 4)}
print(json.dumps(out))
"""


def cold_compile(args):
    """First-step times with an empty Inductor cache (a fresh process and cache directory):
    what a new run pays for compiling; later runs find the compiled code on disk."""
    import os
    import subprocess
    import tempfile
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
        done = subprocess.run([sys.executable, "-c", COLD_SCRIPT, str(args.threads)], env=env,
                              capture_output=True, text=True, timeout=900)
    if done.returncode:
        return {"error": done.stderr[-500:]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print("cold compile (empty Inductor cache): " + ", ".join(
        f"{n}: first step {v['first_step_s']} s" for n, v in result.items()), flush=True)
    return result


# ------------------------------------------------------------------------------------ CUDA

def cuda_main(args, layers, ks, train, source):
    """The CUDA-graph step against the eager plain loop and the (graphed) matmul floor."""
    device, sync = "cuda", torch.cuda.synchronize
    results = {"machine": machine_info("cuda"), "revision": git_revision(), "data": source,
               "settings": {"batch": 20, "steps": args.steps, "warmup": args.warmup}, "rows": []}
    for n_layers in layers:
        for k in ks:
            model = prepared_model(n_layers, k, train, args.pretrain, device=device)
            xs = [x.to(device) for x in _batches(train, 2)]
            floor = MatmulFloor(linear_shapes(model, k, 20), device=device)
            floor()
            sync()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                floor()
            graphed = copy.deepcopy(model)
            opt = make_optimizer(graphed.parameters(), V.LR, V.BETAS, V.EPS, capturable=True)
            step = make_step(graphed, opt, k)

            def project(x, step=step):
                loss = step(x)
                if not torch.isfinite(loss):                    # the trainer's check: a sync
                    raise FloatingPointError("non-finite loss")
                return loss
            feed = _feeder({"iwae": project, "plain": V.plain(model, k)}, xs)
            feed["floor"], feed["floor_eager"] = graph.replay, floor
            times = interleaved(feed, args.steps, warmup=args.warmup, sync=sync)
            med = medians(times, "wall")
            row = {"layers": n_layers, "k": k, "median_ms": med, "path": step.path,
                   "ratio_to_floor": {n: med[n] / med["floor"] for n in med if n != "floor"},
                   "projected_hours": med["iwae"] * 1e-3 * EPOCH_STEPS * EPOCHS / 3600}
            results["rows"].append(row)
            print(f"cuda {n_layers}-layer k={k}: floor {med['floor'] * 1e3:.0f} us (one CUDA graph; "
                  f"eager {med['floor_eager'] * 1e3:.0f} us), iwae ({step.path}) {med['iwae'] * 1e3:.0f} us "
                  f"({row['ratio_to_floor']['iwae']:.2f}x), plain {med['plain'] * 1e3:.0f} us; "
                  f"3280 epochs x 3000 steps at this step time: {row['projected_hours']:.2f} h"
                  + (" [target <= 150 us]" if (n_layers, k) == (1, 50) else ""), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "step_cuda.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}/step_cuda.json")
    return 0


# ------------------------------------------------------------------------------------ report

def markdown(results, evaluation):
    m, s = results["machine"], results["settings"]
    c = s["target_clock"]
    load = m.get("load_average") or [0.0]
    shared = " (the machine was shared)" if load[0] > s["threads"] + 0.5 else ""
    lines = ["# Training-step benchmark", "",
             f"`python -m benchmarks.step` on {m['cpu']} ({m['cpu_count']} cores), "
             f"{s['threads']} torch thread(s), torch {m['torch']}, pyro {m.get('pyro')}; "
             f"load average at the end {m.get('load_average')}{shared}. "
             f"Data: {results['data']}. Batch 20; medians of {s['steps']} steps per variant after "
             f"{s['warmup']} warm-up steps, all variants taking turns in one process; the models were "
             f"first trained for {s['pretrain']} steps. Ratios are to the matmul floor measured alongside, "
             f"on the {'CPU time of the torch thread' if c == 'cpu' else 'wall clock'}"
             + (" (wall-clock ratios in brackets: they include the time the scheduler gave to other "
                "processes)." if c == "cpu" else "."), "",
             "Every implementation runs as it does by default (no FTZ/DAZ: subnormal floats are "
             "computed exactly, and slowly); the FTZ table below shows compute alone.", "",
             "| net | k | floor ms | iwae step ms | plain | tutorial | pyro | iwae vs pyro | target (floor / pyro) | met |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        ms, r, w = row["median_ms"][c], row["ratio_to_floor"][c], row["ratio_to_floor"]["wall"]
        k = row["k"]
        t_floor, t_pyro = TARGETS["floor"].get(k), TARGETS["pyro"].get(k)
        met = [r["iwae"] <= t_floor] if t_floor else []
        speed = row.get("speedup_vs_pyro", {})
        if t_pyro and speed:
            met.append(speed[c] >= t_pyro)
        target = f"<= {t_floor}x" + (f" / >= {t_pyro}x" if t_pyro else "")

        def cell(name):
            return f"{ms[name]:.2f} ({r[name]:.2f}x) [{w[name]:.2f}x]" if name in ms else "n/a"
        vs = f"{speed[c]:.2f}x faster [{speed['wall']:.2f}x]" if speed else "n/a"
        lines.append(f"| {row['layers']}-layer | {k} | {ms['floor']:.3f} | {cell('iwae')} | {cell('plain')} | "
                     f"{cell('tutorial')} | {cell('pyro')} | {vs} | {target} | "
                     f"{'yes' if met and all(met) else 'no'} |")
    lines += ["", "iwae step, as `iwae train` runs the paper's schedule: " + "; ".join(
        f"{row['layers']}-layer k={row['k']}: {row['iwae_path']}, {MODES[row['iwae_compile']]}"
        f" (first step, compiling included: {row['first_step_s']} s)" for row in results["rows"]) + "."]
    if results.get("guard"):
        lines.append("It includes the trainer's non-finite-gradient guard (an optimizer pre-hook).")
    cold = results.get("cold_compile")
    if cold and "error" not in cold:
        lines.append("The first-step times above reuse Inductor's on-disk cache; with an empty cache "
                     "(a fresh machine) the first step, compiling included, takes " + ", ".join(
                         f"{n}: {v['first_step_s']} s" for n, v in cold.items()) + ".")
    lines += ["", "Projected time of the paper's schedule (3280 passes x 3000 steps) at the iwae step's "
              f"median ({c} clock): " + ", ".join(
                  f"{row['layers']}-layer k={row['k']}: {row['projected_hours']:.1f} h"
                  for row in results["rows"]) + ".", ""]
    if results.get("pyro_note"):
        lines += [f"Pyro: {results['pyro_note']}.", ""]
    lev = [e for e in results.get("levers", []) if e["lever_set"] == "cumulative"]
    if lev:
        lines += ["## Levers, one at a time", "",
                  f"Cumulative, each row adding one lever; ratio to the floor measured alongside "
                  f"({s['lever_steps']} steps each, {c} clock, wall clock in brackets).", "",
                  "| lever | " + " | ".join(f"{e['layers']}L k={e['k']}" for e in lev) + " |",
                  "|---|" + "---|" * len(lev)]
        for name, words in LEVERS:
            lines.append(f"| {words} | " + " | ".join(
                f"{e['ratio_to_floor'][c][name]:.2f}x [{e['ratio_to_floor']['wall'][name]:.2f}x]"
                for e in lev) + " |")
        lines.append("| first call, compiling included (kernels / step), s | "
                     + " | ".join(f"{e['compile_s']['kernels']} / {e['compile_s']['step']}" for e in lev) + " |")
        lines.append("")
    flush = [e for e in results.get("levers", []) if e["lever_set"] == "flush"]
    for e in flush:
        r = e["ratio_to_floor"][c]
        lines.append(f"- Flushing tiny importance weights (1-layer k={e['k']}, log weights spread over "
                     f"{e['log_weight_spread']:.0f} nats per datapoint after {s['pretrain']} steps; "
                     f"{c} clock): the eager manual step {r['manual_no_flush']:.2f}x the floor without, "
                     f"{r['manual_flush']:.2f}x with; the plain loop {r['plain']:.2f}x.")
    ftz = [e for e in results.get("levers", []) if e["lever_set"] == "ftz_everywhere"]
    if ftz:
        lines += ["", "With FTZ/DAZ forced on for every implementation (torch.set_flush_denormal(True), "
                  "which on one thread covers all the arithmetic), i.e. compute alone without the "
                  f"subnormal slowdowns ({c} clock):", "",
                  "| net | k | iwae | plain | pyro | iwae vs pyro | target vs pyro | met |",
                  "|---|---|---|---|---|---|---|---|"]
        for e in ftz:
            r = e["ratio_to_floor"][c]
            sp = e.get("speedup_vs_pyro", {}).get(c)
            t = TARGETS["pyro"].get(e["k"])
            lines.append(f"| {e['layers']}-layer | {e['k']} | {r['iwae']:.2f}x | {r['plain']:.2f}x | "
                         + (f"{r['pyro']:.2f}x | {sp:.2f}x faster" if sp else "n/a | n/a")
                         + f" | >= {t}x | {'yes' if sp and sp >= t else 'no'} |")
    lines.append("")
    for e in results.get("levers", []):
        if e["lever_set"] == "threads":
            lines.append(f"- Threads, 1-layer k={e['k']} (wall clock): " + "; ".join(
                f"{t}: floor {v['floor']:.3f} ms, iwae {v['iwae']:.3f} ms ({e['ratio_to_floor'][t]:.2f}x)"
                for t, v in e["median_ms"].items()) + ".")
    lines.append("")
    if evaluation:
        lines += evaluation_markdown(evaluation)
    return "\n".join(lines) + "\n"


def evaluation_markdown(ev):
    c = ev.get("target_clock", "wall")
    lines = ["## Evaluation: L_5000 with iwae.log_likelihood", "",
             f"{ev['images']} test images ({ev['data']}), k={ev['k']}, {ev['threads']} thread(s); time per "
             f"image against the forward matmul floor at the evaluator's shapes, the variants taking turns "
             f"in one process ({c} clock; wall clock in brackets); peak memory (VmHWM) of a fresh process "
             f"per k.", "",
             "| setting | ms per image | floor ms per image | ratio | target |", "|---|---|---|---|---|"]
    for r in ev["speed"]:
        lines.append(f"| {r['label']} | {r['ms_per_image'][c]:.2f} | {r['floor_ms_per_image'][c]:.2f} | "
                     f"{r['ratio'][c]:.2f}x [{r['ratio']['wall']:.2f}x] | {'<= 1.2x' if r['target'] else ''} |")
    lines += ["", "| k | images | peak RSS (VmHWM) | after import and model | target |", "|---|---|---|---|---|"]
    for r in ev["memory"]:
        lines.append(f"| {r['k']} | {r['images']} | {r['peak_mib']:.0f} MiB | {r['baseline_mib']:.0f} MiB | "
                     f"{'< 1536 MiB' if r['k'] >= 50000 else ''} |")
    lines.append("")
    return lines


if __name__ == "__main__":
    sys.exit(main())

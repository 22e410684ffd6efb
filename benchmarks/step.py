"""Training-step benchmark: ms per step and the ratio to the matmul floor, side by side.

    python -m benchmarks.step                 # CPU: the table, the levers, then evaluation
    python -m benchmarks.step --device cuda   # the CUDA-graph step (refuses without CUDA)

For the paper's 1- and 2-layer networks, batch 20, k in {1, 5, 50}, every variant is timed
in one process with the variants interleaved step by step (the order rotates each round),
and the medians over >= 200 measured steps (after a warm-up) are compared:

  floor     only the matrix multiplications of one forward+backward pass at the same
            shapes (addmm/mm on preallocated tensors; no grad input for the first layer)
  project   iwae's training step exactly as `iwae train` builds it (iwae.step.make_step
            with make_optimizer, and the trainer's non-finite guard on the optimizer)
  plain     the plain PyTorch loop: iwae.loss; zero_grad; backward; torch.optim.Adam.step
  tutorial  the common tutorial IWAE: encoder outputs and x repeated k times
  pyro      Pyro SVI, RenyiELBO(alpha=0, num_particles=k, vectorize_particles=True)

All variants start from one model (output bias from the data mean, then --pretrain steps
of training, so that timings reflect a model in training rather than at initialisation),
with Adam(1e-3, (0.9, 0.999), 1e-4). Threads: --threads (default 1, as `iwae train`).
Writes benchmarks/results/step.json and step.md (and evaluate.json unless --no-eval).
"""
import argparse
import copy
import json
import logging
import sys
import time

import torch

import iwae
from iwae.step import make_optimizer, make_step

from . import variants as V
from .common import (RESULTS, Batches, MatmulFloor, data_dir, git_revision, interleaved,
                     linear_shapes, load_images, machine_info, summary)

EPOCH_STEPS, EPOCHS = 3000, 3280        # 60,000 / 20 steps per pass; the paper's 3280 passes
TARGETS = {"floor": {1: 2.5, 5: 1.6, 50: 1.25}, "pyro": {5: 2.5, 50: 1.8}}


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
              f"cuda {torch.version.cuda}); nothing was run", file=sys.stderr)
        return 2
    logging.getLogger("pyro").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    layers = [int(v) for v in args.layers.split(",")]
    ks = [int(v) for v in args.k.split(",")]
    train, test, source = load_images(data_dir(args.data_dir))
    if args.device == "cuda":
        return cuda_main(args, layers, ks, train, source)
    results = {"machine": machine_info(), "revision": git_revision(), "data": source,
               "settings": {"batch": 20, "steps": args.steps, "warmup": args.warmup,
                            "pretrain": args.pretrain, "threads": args.threads},
               "guard": V.trainer_guard() is not None, "rows": [], "levers": []}
    pyro = V.pyro_available() and not args.no_pyro
    if not pyro:
        results["pyro_note"] = ("pyro not installed (pip install 'iwae[bench]')" if not args.no_pyro
                                else "skipped (--no-pyro)")
    began = time.perf_counter()
    for n_layers in layers:
        for k in ks:
            results["rows"].append(main_row(n_layers, k, train, args, pyro))
            print(row_line(results["rows"][-1]), flush=True)
    if not args.no_levers:
        results["levers"] = levers(layers, ks, train, args)
    results["seconds"] = round(time.perf_counter() - began, 1)
    out = args.out
    from pathlib import Path
    Path(out).mkdir(parents=True, exist_ok=True)
    evaluation = None
    if not args.no_eval:
        from . import evaluate
        evaluation = evaluate.run(evaluate.arguments(["--out", out, "--threads", str(args.threads)]
                                                     + (["--data-dir", args.data_dir] if args.data_dir else [])),
                                  test)
    Path(out, "step.json").write_text(json.dumps(results, indent=2) + "\n")
    if evaluation is None and Path(out, "evaluate.json").exists():
        evaluation = json.loads(Path(out, "evaluate.json").read_text())
    Path(out, "step.md").write_text(markdown(results, evaluation))
    print(f"wrote {out}/step.json, {out}/step.md" + (", evaluate.json" if evaluation else ""))
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


def main_row(n_layers, k, train, args, pyro):
    model = prepared_model(n_layers, k, train, args.pretrain)
    floor = MatmulFloor(linear_shapes(model, k, 20))
    batches = Batches(train, seed=2)
    xs = [batches() for _ in range(16)]
    fns = {"floor": floor}
    t = time.perf_counter()
    project = V.project(model, k)
    project(xs[0])                                          # compiles, where the step does
    compile_s = time.perf_counter() - t
    fns["project"] = project
    fns["plain"] = V.plain(model, k)
    fns["tutorial"] = V.tutorial(model, k)
    if pyro:
        fns["pyro"] = V.pyro_svi(model, k)
    feed = _feeder(fns, xs)
    times = interleaved(feed, args.steps, warmup=args.warmup)
    row = {"layers": n_layers, "k": k, "batch": 20, "floor_gflop": floor.flops / 1e9,
           "project_path": project.step.path,
           "project_compile": project.step.compile_mode(20, torch.device("cpu"))
           if project.step.path == "manual" else "off", "first_step_s": round(compile_s, 2),
           "ms": {name: summary(ts) for name, ts in times.items()}}
    med = {name: s["median_ms"] for name, s in row["ms"].items()}
    row["ratio_to_floor"] = {name: med[name] / med["floor"] for name in med if name != "floor"}
    if "pyro" in med:
        row["speedup_vs_pyro"] = med["pyro"] / med["project"]
    row["projected_hours"] = med["project"] * 1e-3 * EPOCH_STEPS * EPOCHS / 3600
    return row


def _feeder(fns, xs):
    """Wrap each step so it takes the next batch from a fixed cycle (same data for all)."""
    def wrap(fn):
        if fn.__class__.__name__ == "MatmulFloor":
            return fn
        state = {"i": 0}

        def call():
            state["i"] = (state["i"] + 1) % len(xs)
            return fn(xs[state["i"]])
        return call
    return {name: wrap(fn) for name, fn in fns.items()}


def row_line(row):
    r = row["ratio_to_floor"]
    ms = row["ms"]
    parts = [f"{row['layers']}-layer k={row['k']:>2}: floor {ms['floor']['median_ms']:.3f} ms"]
    for name in ("project", "plain", "tutorial", "pyro"):
        if name in r:
            parts.append(f"{name} {ms[name]['median_ms']:.3f} ms ({r[name]:.2f}x)")
    if "speedup_vs_pyro" in row:
        parts.append(f"{row['speedup_vs_pyro']:.2f}x faster than pyro")
    parts.append(f"3280 epochs: {row['projected_hours']:.1f} h")
    return ", ".join(parts)


# ------------------------------------------------------------------------------------ levers

LEVERS = [
    ("plain", "plain loop: iwae.loss, backward, torch.optim.Adam (for-loop)"),
    ("fused_adam", "+ torch.optim.Adam(fused=True)"),
    ("direct_update", "+ the fused Adam kernel called directly (FusedAdamUpdate)"),
    ("manual", "+ hand-written forward/backward (no autograd tape, fewer temporaries, "
               "one-pass g*(sigmoid(l)-x), tiny weights flushed)"),
    ("kernels", "+ the two Bernoulli passes as compiled kernels, bias inside them"),
    ("step", "instead: the whole manual forward/backward compiled (torch.compile, C++ wrapper)"),
]


def levers(layers, ks, train, args):
    """Each lever added in turn, measured side by side with the floor (same process)."""
    out = []
    for n_layers in layers:
        for k in ks:
            model = prepared_model(n_layers, k, train, args.pretrain)
            batches = Batches(train, seed=3)
            xs = [batches() for _ in range(16)]
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
            med = {name: summary(ts)["median_ms"] for name, ts in times.items()}
            entry = {"lever_set": "cumulative", "layers": n_layers, "k": k,
                     "ms": med, "ratio_to_floor": {n: med[n] / med["floor"] for n in med if n != "floor"},
                     "compile_s": compile_s}
            out.append(entry)
            print(f"levers {n_layers}-layer k={k}: " + ", ".join(
                f"{n} {entry['ratio_to_floor'][n]:.2f}x" for n, _ in LEVERS)
                + f" (compile s: {compile_s})", flush=True)
    out += flush_lever(train, args)
    out += threads_lever(train, args)
    return out


def flush_lever(train, args):
    """Flushing tiny weights, at initialisation (log-weight spreads of 50-100 nats)."""
    out = []
    for k in (5, 50):
        model = prepared_model(1, k, train, 0)
        batches = Batches(train, seed=4)
        xs = [batches() for _ in range(16)]
        fns = {"floor": MatmulFloor(linear_shapes(model, k, 20)),
               "plain": V.plain(model, k),
               "manual_no_flush": V.lever(model, k, "manual", compile="off", flush=False),
               "manual_flush": V.lever(model, k, "manual", compile="off", flush=True)}
        # the first steps only: the spreads shrink as the model trains
        times = interleaved(_feeder(fns, xs), 30, warmup=1)
        med = {name: summary(ts)["median_ms"] for name, ts in times.items()}
        entry = {"lever_set": "flush_at_init", "layers": 1, "k": k, "ms": med,
                 "ratio_to_floor": {n: med[n] / med["floor"] for n in med if n != "floor"}}
        out.append(entry)
        print(f"flush lever (fresh model, first 30 steps) k={k}: " + ", ".join(
            f"{n} {v:.2f}x" for n, v in entry["ratio_to_floor"].items()), flush=True)
    return out


def threads_lever(train, args):
    """The project's step and the floor at 1 and 2 threads."""
    out = []
    other = 2 if args.threads == 1 else 1
    for k in (1, 5, 50):
        model = prepared_model(1, k, train, args.pretrain)
        batches = Batches(train, seed=5)
        xs = [batches() for _ in range(16)]
        entry = {"lever_set": "threads", "layers": 1, "k": k, "ms": {}, "ratio_to_floor": {}}
        for threads in (args.threads, other):
            torch.set_num_threads(threads)
            fns = {"floor": MatmulFloor(linear_shapes(model, k, 20)), "project": V.project(model, k)}
            fns["project"](xs[0])                              # compiles, where it does
            times = interleaved(_feeder(fns, xs), args.lever_steps, warmup=args.warmup)
            med = {name: summary(ts)["median_ms"] for name, ts in times.items()}
            entry["ms"][f"floor_{threads}t"] = med["floor"]
            entry["ms"][f"project_{threads}t"] = med["project"]
            entry["ratio_to_floor"][f"project_{threads}t"] = med["project"] / med["floor"]
        torch.set_num_threads(args.threads)
        out.append(entry)
        print(f"threads lever 1-layer k={k}: " + ", ".join(
            f"{n} {v:.3f} ms" for n, v in entry["ms"].items()), flush=True)
    return out


# ------------------------------------------------------------------------------------ CUDA

def cuda_main(args, layers, ks, train, source):
    """The CUDA-graph step against the eager plain loop and the (graphed) matmul floor."""
    device = "cuda"
    sync = torch.cuda.synchronize
    results = {"machine": machine_info("cuda"), "revision": git_revision(), "data": source,
               "settings": {"batch": 20, "steps": args.steps}, "rows": []}
    for n_layers in layers:
        for k in ks:
            model = prepared_model(n_layers, k, train, args.pretrain, device=device)
            batches = Batches(train, device=device, seed=2)
            xs = [batches() for _ in range(16)]
            floor = MatmulFloor(linear_shapes(model, k, 20), device=device)
            graph = torch.cuda.CUDAGraph()
            floor()
            sync()
            with torch.cuda.graph(graph):
                floor()
            graphed_model = copy.deepcopy(model)
            opt = make_optimizer(graphed_model.parameters(), V.LR, V.BETAS, V.EPS, capturable=True)
            step = make_step(graphed_model, opt, k)

            def project(x, step=step):
                loss = step(x)
                if not torch.isfinite(loss):                    # the trainer's check: a sync
                    raise FloatingPointError("non-finite loss")
                return loss
            fns = {"floor_graphed": graph.replay, "floor_eager": floor, "project": project,
                   "plain": V.plain(model, k)}
            feed = _feeder(fns, xs)
            feed["floor_graphed"], feed["floor_eager"] = graph.replay, floor
            times = interleaved(feed, args.steps, warmup=args.warmup, sync=sync)
            med = {name: summary(ts)["median_ms"] for name, ts in times.items()}
            row = {"layers": n_layers, "k": k, "ms": med, "path": step.path,
                   "ratio_to_floor": {n: med[n] / med["floor_graphed"] for n in med},
                   "projected_hours": med["project"] * 1e-3 * EPOCH_STEPS * EPOCHS / 3600}
            results["rows"].append(row)
            print(f"cuda {n_layers}-layer k={k}: floor {med['floor_graphed'] * 1e3:.0f} us (graphed), "
                  f"project ({step.path}) {med['project'] * 1e3:.0f} us, plain {med['plain'] * 1e3:.0f} us; "
                  f"3280 epochs x 3000 steps: {row['projected_hours']:.2f} h", flush=True)
    from pathlib import Path
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "step_cuda.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}/step_cuda.json")
    return 0


# ------------------------------------------------------------------------------------ report

def markdown(results, evaluation):
    m = results["machine"]
    s = results["settings"]
    lines = ["# Training-step benchmark", "",
             f"`python -m benchmarks.step` on {m['cpu']} ({m['cpu_count']} cores), "
             f"{s['threads']} torch thread(s), torch {m['torch']}, pyro {m.get('pyro')}; "
             f"load average at the end {m.get('load_average')}. Data: {results['data']}. "
             f"Batch 20, median of {s['steps']} steps per variant after {s['warmup']} warm-up steps, "
             f"all variants interleaved in one process; the models were first trained for "
             f"{s['pretrain']} steps. Ratios are to the matmul floor measured alongside.", "",
             "| net | k | floor ms | iwae step ms | plain | tutorial | pyro | iwae vs pyro | target (floor / pyro) | met |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        ms, r = row["ms"], row["ratio_to_floor"]
        k = row["k"]
        t_floor, t_pyro = TARGETS["floor"].get(k), TARGETS["pyro"].get(k)
        met = [r["project"] <= t_floor] if t_floor else []
        if t_pyro and "speedup_vs_pyro" in row:
            met.append(row["speedup_vs_pyro"] >= t_pyro)
        target = f"<= {t_floor}x" + (f" / >= {t_pyro}x" if t_pyro else "")
        pyro = f"{ms['pyro']['median_ms']:.2f} ms ({r['pyro']:.2f}x)" if "pyro" in ms else "n/a"
        vs = f"{row['speedup_vs_pyro']:.2f}x faster" if "speedup_vs_pyro" in row else "n/a"
        lines.append(
            f"| {row['layers']}-layer | {k} | {ms['floor']['median_ms']:.3f} | "
            f"{ms['project']['median_ms']:.3f} ({r['project']:.2f}x) | "
            f"{ms['plain']['median_ms']:.2f} ({r['plain']:.2f}x) | "
            f"{ms['tutorial']['median_ms']:.2f} ({r['tutorial']:.2f}x) | {pyro} | {vs} | {target} | "
            f"{'yes' if met and all(met) else 'no'} |")
    words = {"off": "eager", "kernels": "compiled Bernoulli kernels", "step": "whole step compiled"}
    lines += ["", "iwae step, as `iwae train` runs a paper-length schedule: " + "; ".join(
        f"{row['layers']}-layer k={row['k']}: {row['project_path']}, {words[row['project_compile']]}"
        + f" (first step, compiling included: {row['first_step_s']} s)" for row in results["rows"]) + ".",
        "The iwae step includes the trainer's non-finite-gradient guard (an optimizer pre-hook)."
        if results.get("guard") else "", ""]
    lines += ["Projected wall time of the paper's schedule (3280 passes x 3000 steps) at the "
              "measured iwae step time: " + ", ".join(
                  f"{row['layers']}-layer k={row['k']}: {row['projected_hours']:.1f} h"
                  for row in results["rows"]) + ".", ""]
    if results.get("pyro_note"):
        lines += [f"Pyro: {results['pyro_note']}.", ""]
    lev = [e for e in results.get("levers", []) if e["lever_set"] == "cumulative"]
    if lev:
        lines += ["## Levers, one at a time (cumulative; ratio to the floor measured alongside)", "",
                  "| lever | " + " | ".join(f"{e['layers']}L k={e['k']}" for e in lev) + " |",
                  "|---|" + "---|" * len(lev)]
        for name, words in LEVERS:
            lines.append(f"| {words} | " + " | ".join(f"{e['ratio_to_floor'][name]:.2f}x" for e in lev) + " |")
        lines.append("| (compile time: kernels / whole step, s) | "
                     + " | ".join(f"{e['compile_s']['kernels']} / {e['compile_s']['step']}" for e in lev) + " |")
        lines.append("")
    for e in results.get("levers", []):
        if e["lever_set"] == "flush_at_init":
            lines.append(f"- Flushing tiny importance weights, freshly initialised 1-layer model, "
                         f"first 30 steps, k={e['k']}: manual step {e['ratio_to_floor']['manual_no_flush']:.2f}x "
                         f"without -> {e['ratio_to_floor']['manual_flush']:.2f}x with "
                         f"(plain loop: {e['ratio_to_floor']['plain']:.2f}x).")
        elif e["lever_set"] == "threads":
            ms = e["ms"]
            lines.append(f"- Threads, 1-layer k={e['k']}: " + ", ".join(
                f"{n.replace('_', ' at ')} {v:.3f} ms" for n, v in ms.items()) + " ("
                + ", ".join(f"{n.replace('_', ' at ')} {v:.2f}x its floor" for n, v in e["ratio_to_floor"].items()) + ").")
    lines.append("")
    if evaluation:
        lines += evaluation_markdown(evaluation)
    return "\n".join(lines) + "\n"


def evaluation_markdown(ev):
    lines = ["## Evaluation: L_k with iwae.log_likelihood", "",
             f"{ev['images']} test images ({ev['data']}), 1-layer network; time per image against the "
             f"forward matmul floor at the evaluator's shapes, measured alternately in one process; peak "
             f"memory (VmHWM) of a fresh process per setting.", "",
             "| setting | ms per image | floor ms per image | ratio | target |",
             "|---|---|---|---|---|"]
    for r in ev["speed"]:
        lines.append(f"| {r['label']} | {r['ms_per_image']:.2f} | {r['floor_ms_per_image']:.2f} | "
                     f"{r['ratio']:.2f}x | {'<= 1.2x' if r.get('target') else ''} |")
    lines += ["", "| k | peak RSS (VmHWM) | after import | target |", "|---|---|---|---|"]
    for r in ev["memory"]:
        lines.append(f"| {r['k']} | {r['peak_mib']:.0f} MiB | {r['baseline_mib']:.0f} MiB | "
                     f"{'< 1536 MiB' if r['k'] >= 50000 else ''} |")
    lines.append("")
    return lines


if __name__ == "__main__":
    sys.exit(main())

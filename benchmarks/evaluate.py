"""Evaluation benchmark: L_5000 per image against the forward matmul floor, and peak memory.

    python -m benchmarks.evaluate [--images 100] [--threads 1] [--chunk-rows R]

The evaluator (iwae.log_likelihood, default settings) and the floor (only the forward
matrix products at the evaluator's exact shapes: per chunk, the encoder at the batch's rows
and the decoder at chunk x batch rows) run alternately in one process; medians are
compared, with the floor plus the one elementwise term every evaluator needs (each pixel's
Bernoulli log density at each sample, compiled) beside it, with the eager evaluator (compile="off") and the previous main's evaluator
(--baseline, imported from its own source) alongside. Peak memory is the VmHWM of a fresh
process per k (5000 and 50000); the cost of compiling, on a cold cache, is the first minus the
second call of a fresh process (torch.compile's caches in an empty folder) on one chunk of
samples. Writes benchmarks/results/evaluate.json.
"""
import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import iwae
import iwae.evaluation.likelihood as evaluation
from iwae.runtime import decisions

from .common import (RESULTS, MatmulFloor, data_dir, git_revision, interleaved, linear_shapes,
                     load_baseline, load_images, machine_info, medians)


def arguments(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=100, help="test images (one batch, as iwae evaluate's)")
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--layers", default="1,2")
    p.add_argument("--repeats", type=int, default=5, help="timed evaluations per variant")
    p.add_argument("--memory-k", default="5000,50000")
    p.add_argument("--no-compile-cost", action="store_true", help="skip the cold-cache compile probe")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--chunk-rows", type=int, help="cap the evaluator's chunks (and the floor's) at this many "
                   "rows of 784 floats instead of its CHUNK_BYTES, to compare chunk sizes run by run")
    p.add_argument("--baseline", default="a56e7d7", help="git revision of the previous main ('' to skip)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--data-dir")
    p.add_argument("--out", default=str(RESULTS))
    return p.parse_args(argv)


class EvalFloor:
    """The forward matmuls of log_likelihood(model, x, k) at its chunk shapes; with
    likelihood=True also the one elementwise term no evaluator can skip: the Bernoulli log
    density of every pixel at every sample, summed over pixels (compiled: one fused kernel
    over the decoder's [rows, 784] output)."""

    def __init__(self, model, n_images, k, batch_size=100, max_samples=16384, device="cpu", likelihood=False):
        self.calls = []
        self.likelihood = torch.compile(pixel_log_density) if likelihood else None
        floors = {}
        for b in [min(batch_size, n_images - s) for s in range(0, n_images, batch_size)]:
            chunk = evaluation.chunk_samples(b, 4 * 784, max_samples)
            for start in range(0, k, chunk):
                c = min(chunk, k - start)
                if (b, c) not in floors:
                    floors[(b, c)] = MatmulFloor(linear_shapes(model, c, b), backward=False, device=device)
                self.calls.append(floors[(b, c)])
        if likelihood:                                                                    # binary x [rows, 784]
            self.pixels = {id(f): (f.layers[-1][5] > 0).float() for f in floors.values()}

    def __call__(self):
        for floor in self.calls:
            floor()
            if self.likelihood is not None:
                self.likelihood(floor.layers[-1][4], self.pixels[id(floor)])  # the decoder's output [rows, 784]


def probe_against_saving(n_layers, ms_per_image, k):
    """What compiling saved (eager minus compiled, ns per element of k x 784) against
    runtime.decisions' probe measured now (median of 5): their ratio is decisions.PER_PROBE's
    calibration."""
    saving = (ms_per_image["eager"] - ms_per_image["iwae"]) * 1e6 / (k * 784)
    probe = statistics.median(decisions._measure() for _ in range(5))
    row = {"layers": n_layers, "saving_ns": saving, "probe_ns": probe, "per_probe": saving / probe if probe else None,
           "assumed_per_probe": decisions.PER_PROBE}
    print(f"compiling saved {saving:.2f} ns per element of k D; the probe {probe:.2f} ns: "
          f"{row['per_probe'] or float('nan'):.2f}x (decisions.PER_PROBE = {decisions.PER_PROBE})", flush=True)
    return row


def pixel_log_density(logits, x):
    """sum_d log Bernoulli(x_d | logits_d) per row: [rows, D] -> [rows]."""
    return -torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


def run(args, test=None):
    torch.set_num_threads(args.threads)
    if args.chunk_rows:
        evaluation.CHUNK_BYTES = args.chunk_rows * 784 * 4
    if test is None:
        _, test, source = load_images(data_dir(args.data_dir), n_test=args.images)
    else:
        source = "MNIST test images" if test.shape[0] else "random"
    x = test[: args.images]
    clock = "cpu" if args.threads == 1 and args.device == "cpu" else "wall"
    result = {"machine": machine_info(args.device), "revision": git_revision(), "images": x.shape[0],
              "data": source, "k": args.k, "threads": args.threads, "target_clock": clock,
              "chunk_rows": evaluation.CHUNK_BYTES // (4 * 784),
              "speed": [], "memory": [], "compile": [], "probe": []}
    labels = {"iwae": "iwae.log_likelihood, {}-layer (compiled)", "eager": "  the same, compile=\"off\"",
              "floor_lik": "  the floor plus the pixels' Bernoulli log density (compiled)",
              "main": "  the previous main's iwae.log_likelihood",
              "main_compiled": "  the previous main's, compile=\"step\""}
    base = load_baseline(args.baseline) if args.baseline and args.device == "cpu" else None
    sync = torch.cuda.synchronize if args.device == "cuda" else None
    x = x.to(args.device)
    for n_layers in [int(v) for v in args.layers.split(",")]:
        torch.manual_seed(0)
        model = iwae.paper_model(n_layers).eval().to(args.device)
        variants = {"iwae": lambda m=model: iwae.log_likelihood(m, x, args.k, compile="step"),
                    "eager": lambda m=model: iwae.log_likelihood(m, x, args.k, compile="off"),
                    "floor": EvalFloor(model, x.shape[0], args.k, device=args.device),
                    "floor_lik": EvalFloor(model, x.shape[0], args.k, device=args.device, likelihood=True)}
        if base is not None:
            twin = base.paper_model(n_layers).eval()
            twin.load_state_dict(model.state_dict())
            variants["main"] = lambda m=twin: base.log_likelihood(m, x, args.k)
            if "compile" in inspect.signature(base.log_likelihood).parameters:
                variants["main_compiled"] = lambda m=twin: base.log_likelihood(m, x, args.k, compile="step")
        first = {}
        for name, fn in variants.items():                      # compiles once
            t = time.perf_counter()
            fn()
            first[name] = round(time.perf_counter() - t, 1)
        times = interleaved(variants, args.repeats, warmup=1, block=1, sync=sync)
        med = {c: {n: v / x.shape[0] for n, v in medians(times, c).items()} for c in ("wall", "cpu")}
        for name in [n for n in variants if n != "floor"]:
            result["speed"].append({
                "label": labels[name].format(n_layers), "layers": n_layers, "variant": name,
                "ms_per_image": {c: med[c][name] for c in med},
                "floor_ms_per_image": {c: med[c]["floor"] for c in med},
                "ratio": {c: med[c][name] / med[c]["floor"] for c in med}, "first_call_s": first[name]})
        print(f"evaluate {n_layers}-layer k={args.k} ({clock} clock): " + ", ".join(
            f"{n} {v:.2f} ms/image ({v / med[clock]['floor']:.2f}x)" for n, v in med[clock].items()), flush=True)
        if args.device == "cpu":
            result["probe"].append(probe_against_saving(n_layers, med[clock], args.k))
    for k in [int(v) for v in args.memory_k.split(",") if v] if args.device == "cpu" else []:
        result["memory"].append(peak_memory(k, x[:5], args.threads))
        print(f"memory k={k}: peak {result['memory'][-1]['peak_mib']:.0f} MiB "
              f"(after import {result['memory'][-1]['baseline_mib']:.0f} MiB)", flush=True)
    for n_layers in [] if args.no_compile_cost or args.device != "cpu" else [int(v) for v in args.layers.split(",")]:
        result["compile"].append(compile_cost(n_layers, x.shape[0], args.threads))
        print(f"compile {n_layers}-layer, cold cache: {result['compile'][-1]['compile_s']:.1f} s", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "evaluate.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


MEMORY_SCRIPT = r"""
import sys, torch, iwae
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
torch.set_num_threads(int(sys.argv[3]))
x = torch.load(sys.argv[1])
torch.manual_seed(0)
model = iwae.paper_model(1).eval()
base = status("VmHWM:")
iwae.log_likelihood(model, x, int(sys.argv[2]))
print(base, status("VmHWM:"))
"""


def peak_memory(k, x, threads):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "x.pt")
        torch.save(x.clone(), path)
        done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(path), str(k), str(threads)],
                              capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise RuntimeError(f"memory probe failed: {done.stderr[-2000:]}")
    base, peak = (float(v) for v in done.stdout.split()[-2:])
    return {"k": k, "images": x.shape[0], "baseline_mib": base, "peak_mib": peak}


COMPILE_SCRIPT = r"""
import sys, time, torch, iwae
import iwae.evaluation.likelihood as evaluation
torch.set_num_threads(int(sys.argv[3]))
evaluation.CHUNK_BYTES = int(sys.argv[4])
torch.manual_seed(0)
model = iwae.paper_model(int(sys.argv[1])).eval()
x = torch.bernoulli(torch.full((int(sys.argv[2]), 784), 0.13))
k = evaluation.chunk_samples(x.shape[0], 4 * 784)   # one chunk: the evaluator's shape
calls = []
for _ in range(2):
    t = time.perf_counter()
    iwae.log_likelihood(model, x, k, compile="step")
    calls.append(time.perf_counter() - t)
print(*calls)
"""


def compile_cost(n_layers, images, threads):
    """Seconds of the first compiled call beyond the second, in a fresh process whose
    torch.compile caches start empty (TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=tmp, TRITON_CACHE_DIR=tmp)
        done = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT, str(n_layers), str(images), str(threads),
                               str(evaluation.CHUNK_BYTES)],
                              capture_output=True, text=True, timeout=1800, env=env)
    if done.returncode:
        raise RuntimeError(f"compile probe failed: {done.stderr[-2000:]}")
    first, second = (float(v) for v in done.stdout.split()[-2:])
    return {"layers": n_layers, "images": images, "compile_s": first - second}


def main(argv=None):
    args = arguments(argv)
    result = run(args)
    from .step import evaluation_markdown
    print("\n".join(evaluation_markdown(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

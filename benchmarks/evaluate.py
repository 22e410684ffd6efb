"""Evaluation benchmark: L_5000 per image against the forward matmul floor, and peak memory.

    python -m benchmarks.evaluate [--images 20] [--threads 1]

The evaluator (iwae.log_likelihood, default settings) and the floor (only the forward
matrix products at the evaluator's exact shapes: per chunk, the encoder at the batch's rows
and the decoder at chunk x batch rows) run alternately in one process; medians are
compared. Levers: the evaluator as it was (torch.no_grad, eager Bernoulli terms, chunks of
16384 rows), the compiled Bernoulli kernel alone, the chunk cap alone. Peak memory is the
VmHWM of a fresh process per k (5000 and 50000). Writes benchmarks/results/evaluate.json.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import iwae
import iwae.evaluation as evaluation

from .common import (RESULTS, MatmulFloor, data_dir, git_revision, interleaved, linear_shapes,
                     load_images, machine_info, medians)


def arguments(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=20, help="test images (one batch)")
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--layers", default="1,2")
    p.add_argument("--repeats", type=int, default=5, help="timed evaluations per variant")
    p.add_argument("--memory-k", default="5000,50000")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-levers", action="store_true")
    p.add_argument("--data-dir")
    p.add_argument("--out", default=str(RESULTS))
    return p.parse_args(argv)


def before(model, x, k=5000, *, batch_size=100, max_samples=16384):
    """The evaluator before this work: no_grad, eager Bernoulli terms, 16384-row chunks."""
    saved = os.environ.get("IWAE_COMPILE")
    os.environ["IWAE_COMPILE"] = "0"
    try:
        with torch.no_grad():
            out = []
            for xb in x.split(batch_size):
                chunk = max(1, max_samples // xb.shape[0])
                total = torch.full((xb.shape[0],), -math.inf, dtype=torch.float64)
                for start in range(0, k, chunk):
                    log_w = model.log_weights(xb, min(chunk, k - start)).double()
                    total = torch.logaddexp(total, torch.logsumexp(log_w, 0))
                out.append(total - math.log(k))
            return torch.cat(out)
    finally:
        _restore_env(saved)


def _restore_env(saved):
    if saved is None:
        os.environ.pop("IWAE_COMPILE", None)
    else:
        os.environ["IWAE_COMPILE"] = saved


def with_settings(compile, fast):
    """log_likelihood with the compiled kernel and/or the inference forward switched off."""
    def run(model, x, k):
        saved_env, saved_fast = os.environ.get("IWAE_COMPILE"), evaluation._fast_log_weights
        os.environ["IWAE_COMPILE"] = "1" if compile else "0"
        if not fast:
            evaluation._fast_log_weights = lambda model, x, k: None
        try:
            return iwae.log_likelihood(model, x, k)
        finally:
            evaluation._fast_log_weights = saved_fast
            _restore_env(saved_env)
    return run


class EvalFloor:
    """The forward matmuls of log_likelihood(model, x, k) at its chunk shapes."""

    def __init__(self, model, n_images, k, batch_size=100, max_samples=16384):
        rows = max(1, min(max_samples, evaluation.CHUNK_BYTES // (4 * 784)))
        self.calls = []
        floors = {}
        for b in [min(batch_size, n_images - s) for s in range(0, n_images, batch_size)]:
            chunk = max(1, rows // b)
            for start in range(0, k, chunk):
                c = min(chunk, k - start)
                if (b, c) not in floors:
                    floors[(b, c)] = MatmulFloor(linear_shapes(model, c, b), backward=False)
                self.calls.append(floors[(b, c)])

    def __call__(self):
        for floor in self.calls:
            floor()


def run(args, test=None):
    torch.set_num_threads(args.threads)
    if test is None:
        _, test, source = load_images(data_dir(args.data_dir), n_test=args.images)
    else:
        source = "MNIST test images" if test.shape[0] else "random"
    x = test[: args.images]
    clock = "cpu" if args.threads == 1 else "wall"
    result = {"machine": machine_info(), "revision": git_revision(), "images": x.shape[0],
              "data": source, "k": args.k, "threads": args.threads, "target_clock": clock,
              "speed": [], "memory": []}
    labels = {"iwae": "iwae.log_likelihood, {}-layer",
              "before": "  levers: the evaluator before (no_grad, model.log_weights, 16384-row chunks)",
              "cap": "  + inference_mode, chunks capped at 24 MiB of [rows, 784] floats",
              "inference": "  + inference forward (no module calls, reused buffers, bias in the kernel)",
              "lever_iwae": "  + the compiled Bernoulli kernel (= iwae.log_likelihood)"}
    for n_layers in [int(v) for v in args.layers.split(",")]:
        torch.manual_seed(0)
        model = iwae.paper_model(n_layers).eval()
        variants = {"iwae": lambda m=model: iwae.log_likelihood(m, x, args.k),
                    "floor": EvalFloor(model, x.shape[0], args.k)}
        if not args.no_levers:
            variants["before"] = lambda m=model: before(m, x, args.k)
            variants["cap"] = lambda m=model: with_settings(False, False)(m, x, args.k)
            variants["inference"] = lambda m=model: with_settings(False, True)(m, x, args.k)
        t = time.perf_counter()
        variants["iwae"]()                                     # compiles the kernel once
        first = time.perf_counter() - t
        times = interleaved(variants, args.repeats, warmup=1, block=1)
        med = {c: {n: v / x.shape[0] for n, v in medians(times, c).items()} for c in ("wall", "cpu")}
        names = ["iwae"] + ([] if args.no_levers else ["before", "cap", "inference", "lever_iwae"])
        for name in names:
            source_name = "iwae" if name == "lever_iwae" else name
            result["speed"].append({
                "label": labels[name].format(n_layers), "layers": n_layers, "variant": name,
                "ms_per_image": {c: med[c][source_name] for c in med},
                "floor_ms_per_image": {c: med[c]["floor"] for c in med},
                "ratio": {c: med[c][source_name] / med[c]["floor"] for c in med},
                "target": name == "iwae", "first_call_s": round(first, 1)})
        print(f"evaluate {n_layers}-layer k={args.k} ({clock} clock): " + ", ".join(
            f"{n} {v:.2f} ms/image ({v / med[clock]['floor']:.2f}x)" for n, v in med[clock].items()), flush=True)
    for k in [int(v) for v in args.memory_k.split(",")]:
        result["memory"].append(peak_memory(k, x[:5], args.threads))
        print(f"memory k={k}: peak {result['memory'][-1]['peak_mib']:.0f} MiB "
              f"(after import {result['memory'][-1]['baseline_mib']:.0f} MiB)", flush=True)
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


def main(argv=None):
    args = arguments(argv)
    result = run(args)
    from .step import evaluation_markdown
    print("\n".join(evaluation_markdown(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training-step benchmark: ms per step and the ratios the targets are stated in, side by side.

    python -m benchmarks.step                       # CPU: both nets, k = 1, 5, 50, then evaluation
    python -m benchmarks.step --device cuda         # the same on CUDA (refuses without CUDA)

For the paper's 1- and 2-layer networks, batch 20, k in {1, 5, 50}, every variant runs in
one process, the variants taking turns in blocks of 10 steps (the order rotating every
round), and the medians over --steps measured steps (after a warm-up) are compared:

  floor     only the matrix multiplications of one forward+backward pass at the same shapes
  iwae      the standard step as ``iwae train`` builds it for the paper's schedule
            (make_optimizer + make_step(planned_steps=3280 x 3000) + the trainer's guard)
  main      the same, from the previous main (--baseline, a git revision of this repository,
            imported from its own source): the speed the step must keep
  stl, dreg, rws, piwae   the other estimators and the PIWAE bound through the same step
  vimco     (--vimco) VIMCO's step on the same net, and vimco_bernoulli: VIMCO on the net of the
            same hidden sizes with Bernoulli latents (paper_model(latent="bernoulli"))
  plain     plain PyTorch: -iwae_bound(model.log_weights(x, k)).mean(), backward, Adam
  tutorial  the common tutorial IWAE (x repeated k times); pyro: Pyro SVI RenyiELBO(alpha=0)

and a user's own convolutional model (benchmarks/conv.py, k=5) through iwae's step against
plain PyTorch autograd of the same net. Each step is timed on two clocks: wall time and the
CPU time of the (single) torch thread, which on a shared machine leaves out the time the
scheduler gives to other processes; the ratios use CPU time on one thread (the default),
else wall time. All variants start from one model (output bias from the data mean, then
--pretrain steps of training). Writes benchmarks/results/step.json and step.md (and
evaluate.json unless --no-eval; step_cuda.* with --device cuda).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

import iwae
from iwae.runtime.compile import flushed_subnormals
from iwae.runtime.optim import make_optimizer
from iwae.training.step import make_step

from . import variants as V
from .common import (RESULTS, Batches, MatmulFloor, data_dir, git_revision, interleaved,
                     linear_shapes, load_baseline, load_images, machine_info, medians, summary)
from .conv import conv_model

EPOCH_STEPS, EPOCHS = 3000, 3280        # 60,000 / 20 steps per pass; the paper's 3280 passes
BASELINE = "20794ac"                    # main before the one training engine
TARGETS = {"main": 1.10, "stl": 1.25, "dreg": 1.25, "rws": 1.25, "piwae": 1.4, "vimco": 1.3,
           "vimco_bernoulli": 1.3}


def arguments(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.step", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as `iwae train`)")
    p.add_argument("--layers", default="1,2")
    p.add_argument("--k", default="1,5,50")
    p.add_argument("--steps", type=int, default=200, help="measured steps per variant and setting")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--pretrain", type=int, default=200, help="shared training steps before timing")
    p.add_argument("--baseline", default=BASELINE, help="git revision of the previous main ('' to skip)")
    p.add_argument("--no-estimators", action="store_true", help="only iwae, main, plain and the floor")
    p.add_argument("--bf16", action="store_true",
                   help="also the step with --precision bf16 (standard, and dreg unless --no-estimators) "
                        "and the matmul floor in bf16")
    p.add_argument("--bounds", action="store_true",
                   help="also the MIWAE(8, k/8) and CIWAE(0.5) bounds (k a multiple of 8)")
    p.add_argument("--vimco", action="store_true",
                   help="also VIMCO on the same net and on its Bernoulli-latent twin (target <= 1.3x the standard step)")
    p.add_argument("--parts", action="store_true",
                   help="also the iwae step's parts: its compiled forward+backward alone and its Adam update alone")
    p.add_argument("--eager", action="store_true",
                   help="time the iwae and main steps with compile='off' (the estimators', bf16's and the parts' "
                        "as always)")
    p.add_argument("--no-pyro", action="store_true")
    p.add_argument("--no-conv", action="store_true")
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
    cuda = args.device == "cuda"
    clock = "wall" if cuda or args.threads != 1 else "cpu"
    base = load_baseline(args.baseline) if args.baseline and not cuda else None
    pyro = V.pyro_available() and not args.no_pyro and not cuda
    results = {"machine": machine_info(args.device), "revision": git_revision(), "data": source,
               "baseline": args.baseline if base else None, "device": args.device,
               "settings": {"batch": 20, "steps": args.steps, "warmup": args.warmup,
                            "pretrain": args.pretrain, "threads": args.threads, "clock": clock,
                            "eager": args.eager},
               "rows": []}
    began = time.perf_counter()
    for n_layers in layers:
        for k in ks:
            results["rows"].append(paper_row(n_layers, k, train, args, base, pyro, clock))
            print(row_line(results["rows"][-1]), flush=True)
    if not args.no_conv:
        results["conv"] = conv_row(train, args, clock)
        print(f"conv net k=5: iwae {results['conv']['median_ms']['iwae']:.2f} ms, plain "
              f"{results['conv']['median_ms']['plain']:.2f} ms ({results['conv']['plain_over_iwae']:.2f}x)",
              flush=True)
    results["seconds"] = round(time.perf_counter() - began, 1)
    results["machine"] = machine_info(args.device)              # the load average at the end
    Path(args.out).mkdir(parents=True, exist_ok=True)
    suffix = "_cuda" if cuda else ""
    evaluation = None
    if not args.no_eval:
        from . import evaluate
        evaluation = evaluate.run(evaluate.arguments(
            ["--out", args.out, "--threads", str(args.threads), "--device", args.device]
            + (["--data-dir", args.data_dir] if args.data_dir else [])), test)
    Path(args.out, f"step{suffix}.json").write_text(json.dumps(results, indent=2) + "\n")
    Path(args.out, f"step{suffix}.md").write_text(markdown(results, evaluation))
    print(f"wrote {args.out}/step{suffix}.json and step{suffix}.md")
    return 0


def prepared_model(n_layers, train, pretrain, device="cpu", latent="gaussian"):
    """The shared starting point: the paper network, output bias from the data, pretrained
    (a Bernoulli-latent one with VIMCO)."""
    torch.manual_seed(0)
    model = iwae.paper_model(n_layers, latent=latent)
    model.set_output_bias(train.mean(0))
    if pretrain:                                       # on the CPU, then moved: the same start anywhere
        step = make_step(model, make_optimizer(model.parameters(), V.LR, V.BETAS, V.EPS), 5, compile="off",
                         estimator="standard" if latent == "gaussian" else "vimco")
        batches = Batches(train, seed=1)
        for _ in range(pretrain):
            step(batches())
    return model.to(device)


def step_parts(model, k, device):
    """The iwae step cut in two, on its own copy of the model: "grads", the compiled forward and
    backward (step.forward_backward), and "adam", the fused update of the gradients it left."""
    parts = V.project(model, k, device=device).step

    def grads(x):
        with flushed_subnormals(parts.device):
            return parts.forward_backward(x)

    def adam(x):
        with flushed_subnormals(parts.device):
            parts.update()
    return {"grads": grads, "adam": adam}


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


def _batches(train, seed, device="cpu"):
    batches = Batches(train, seed=seed, device=device)
    return [batches() for _ in range(16)]


def _timed(fns, xs, args, clock):
    """Warm every variant up once (compiling), then time them side by side."""
    first = {}
    for name, fn in fns.items():
        t = time.perf_counter()
        fn() if isinstance(fn, MatmulFloor) else fn(xs[0])
        first[name] = round(time.perf_counter() - t, 2)
    sync = torch.cuda.synchronize if args.device == "cuda" else None
    times = interleaved(_feeder(fns, xs), args.steps, warmup=args.warmup, sync=sync)
    med = {c: medians(times, c) for c in ("wall", "cpu")}
    return med, {n: summary(t) for n, t in times.items()}, first


def paper_row(n_layers, k, train, args, base, pyro, clock):
    model = prepared_model(n_layers, train, args.pretrain, args.device)
    compile = "off" if args.eager else "auto"
    xs = _batches(train, 2, args.device)
    fns = {"floor": MatmulFloor(linear_shapes(model, k, 20), device=args.device),
           "iwae": V.project(model, k, device=args.device, compile=compile), "plain": V.plain(model, k)}
    if base is not None:
        fns["main"] = V.baseline(model, k, base, compile=compile)
    if not args.no_estimators:
        m = next((d for d in (8, 5) if k % d == 0 and k > d), 1)        # PIWAE's groups
        for estimator in ("stl", "dreg", "rws"):
            fns[estimator] = V.project(model, k, estimator=estimator, device=args.device)
        fns["piwae"] = V.project(model, k, bound="piwae", m=m, device=args.device)
    if args.bf16:
        fns["floor_bf16"] = MatmulFloor(linear_shapes(model, k, 20), device=args.device, dtype=torch.bfloat16)
        fns["bf16"] = V.project(model, k, device=args.device, precision="bf16")
        if not args.no_estimators:
            fns["dreg_bf16"] = V.project(model, k, estimator="dreg", device=args.device, precision="bf16")
    if args.vimco:
        fns["vimco"] = V.project(model, k, estimator="vimco", device=args.device)
        twin = prepared_model(n_layers, train, args.pretrain, args.device, latent="bernoulli")
        fns["vimco_bernoulli"] = V.project(twin, k, estimator="vimco", device=args.device)
    if args.bounds and k % 8 == 0:
        fns["miwae"] = V.project(model, k, bound="miwae", m=8, device=args.device)
        fns["ciwae"] = V.project(model, k, bound="ciwae", beta=0.5, device=args.device)
    if args.parts:
        fns.update(step_parts(model, k, args.device))
    if args.device == "cpu":
        fns["tutorial"] = V.tutorial(model, k)
    if pyro:
        fns["pyro"] = V.pyro_svi(model, k)
    med, quartiles, first = _timed(fns, xs, args, clock)
    ms = med[clock]
    row = {"layers": n_layers, "k": k, "batch": 20, "clock": clock, "median_ms": med,
           "quartiles_ms": quartiles, "first_call_s": first,
           "iwae_compile": fns["iwae"].step.compile,
           "ratio_to_floor": {n: ms[n] / ms["floor"] for n in ms if n != "floor"},
           "ratio_to_iwae": {n: ms[n] / ms["iwae"] for n in ms
                             if not n.startswith("floor") and n not in ("iwae", "bf16", "dreg_bf16")},
           "projected_hours": ms["iwae"] * 1e-3 * EPOCH_STEPS * EPOCHS / 3600}
    if "main" in ms:
        row["iwae_over_main"] = {c: med[c]["iwae"] / med[c]["main"] for c in med}
    if "bf16" in ms:
        row["bf16_over_fp32"] = {"standard": ms["bf16"] / ms["iwae"], "floor": ms["floor_bf16"] / ms["floor"],
                                 **({"dreg": ms["dreg_bf16"] / ms["dreg"]} if "dreg_bf16" in ms else {})}
    return row


def conv_row(train, args, clock):
    torch.manual_seed(0)
    model = conv_model().to(args.device)
    xs = _batches(train, 3, args.device)
    fns = {"iwae": V.project(model, 5, device=args.device), "plain": V.plain(model, 5)}
    med, quartiles, first = _timed(fns, xs, args, clock)
    return {"k": 5, "clock": clock, "median_ms": med[clock], "median_ms_both": med,
            "quartiles_ms": quartiles, "first_call_s": first,
            "plain_over_iwae": med[clock]["plain"] / med[clock]["iwae"]}


def row_line(row):
    c, ms = row["clock"], row["median_ms"][row["clock"]]
    parts = [f"{row['layers']}-layer k={row['k']:>2} ({c} clock): floor {ms['floor']:.3f} ms",
             f"iwae {ms['iwae']:.3f} ms ({row['ratio_to_floor']['iwae']:.2f}x floor)"]
    if "iwae_over_main" in row:
        parts.append(f"main {ms['main']:.3f} ms (iwae/main {row['iwae_over_main'][c]:.3f})")
    parts += [f"{n} {row['ratio_to_iwae'][n]:.2f}x" for n in row["ratio_to_iwae"] if n != "main"]
    if "bf16_over_fp32" in row:
        parts.append("bf16/fp32: " + ", ".join(f"{n} {v:.2f}" for n, v in row["bf16_over_fp32"].items()))
    return ", ".join(parts)


def markdown(results, evaluation):
    m, s = results["machine"], results["settings"]
    c = s["clock"]
    where = m.get("gpu") or f"{m['cpu']} ({m['cpu_count']} cores)"
    lines = ["# Training-step benchmark", "",
             f"`python -m benchmarks.step{' --device cuda' if results['device'] == 'cuda' else ''}` at "
             f"{results['revision']} on {where}, {s['threads']} torch thread(s), torch {m['torch']}; load "
             f"average at the end {m.get('load_average')}. Data: {results['data']}. Batch 20; medians of "
             f"{s['steps']} steps per variant after {s['warmup']} warm-up steps, all variants taking turns "
             f"in one process, from a model first trained for {s['pretrain']} steps; "
             f"{'CPU time of the torch thread' if c == 'cpu' else 'wall clock'}. `main` is the previous "
             f"main ({results.get('baseline')}), imported from its own source and timed in the same run.", "",
             "| net | k | floor ms | iwae ms (x floor) | main ms | iwae / main (<= 1.10) | stl | dreg | rws "
             "(<= 1.25) | piwae (<= 1.4) | plain | tutorial | pyro |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        ms, r = row["median_ms"][c], row["ratio_to_iwae"]

        def cell(name):
            if name not in r:
                return "n/a"
            target = TARGETS.get(name)
            mark = "" if target is None or name == "main" else (" ok" if r[name] <= target else " MISS")
            return f"{r[name]:.2f}x{mark}"
        main = row.get("iwae_over_main", {}).get(c)
        lines.append(f"| {row['layers']}-layer | {row['k']} | {ms['floor']:.3f} | {ms['iwae']:.3f} "
                     f"({row['ratio_to_floor']['iwae']:.2f}x) | {ms.get('main', float('nan')):.3f} | "
                     + (f"{main:.3f}{' ok' if main <= TARGETS['main'] else ' MISS'}" if main else "n/a")
                     + f" | {cell('stl')} | {cell('dreg')} | {cell('rws')} | {cell('piwae')} | {cell('plain')} | "
                     f"{cell('tutorial')} | {cell('pyro')} |")
    eager = results["settings"].get("eager")
    how = ("The iwae and main steps run eagerly (--eager: compile='off'; first call: " if eager else
           "The iwae step as `iwae train` runs the paper's schedule compiles the whole step (first call, "
           "compiling included: ")
    lines += ["", "Estimator columns: that step's time over the iwae (standard) step's, measured alongside. "
              + how + ", ".join(f"{r['layers']}L k={r['k']} {r['first_call_s']['iwae']} s"
                                                 for r in results["rows"]) + ").", "",
              "Projected time of the paper's schedule (3280 passes x 3000 steps) at the iwae step's median: "
              + ", ".join(f"{r['layers']}-layer k={r['k']}: {r['projected_hours']:.1f} h" for r in results["rows"])
              + ".", ""]
    lines += parts_markdown(results["rows"], c)
    lines += bf16_markdown(results["rows"], c)
    lines += vimco_markdown(results["rows"], c)
    conv = results.get("conv")
    if conv:
        lines += [f"Your own model (benchmarks/conv.py: two stride-2 convolutions each way, 16 latents), k=5: "
                  f"iwae's step {conv['median_ms']['iwae']:.2f} ms, plain PyTorch autograd of the same net "
                  f"{conv['median_ms']['plain']:.2f} ms: iwae {conv['plain_over_iwae']:.2f}x faster.", ""]
    if evaluation:
        lines += evaluation_markdown(evaluation)
    return "\n".join(lines) + "\n"


def parts_markdown(rows, c):
    """The --parts table: where the step's time over its matmul floor goes."""
    rows = [r for r in rows if "adam" in r["median_ms"][c]]
    if not rows:
        return []
    lines = ["Where the step's time goes (`--parts`; medians, so the parts need not add up exactly): the "
             "compiled forward+backward alone, the fused Adam update alone, and what is left of the step.", "",
             "| net | k | floor ms | forward+backward ms (x floor) | Adam ms | step ms (x floor) | step - parts ms |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ms = r["median_ms"][c]
        lines.append(f"| {r['layers']}-layer | {r['k']} | {ms['floor']:.3f} | {ms['grads']:.3f} "
                     f"({ms['grads'] / ms['floor']:.2f}x) | {ms['adam']:.3f} | {ms['iwae']:.3f} "
                     f"({ms['iwae'] / ms['floor']:.2f}x) | {ms['iwae'] - ms['grads'] - ms['adam']:.3f} |")
    return lines + [""]


def bf16_markdown(rows, c):
    """The --bf16 table: the step and the matmul floor in bf16 over fp32 (targets: <= 0.6 at
    k=50, no slower at k=1 and 5)."""
    rows = [r for r in rows if "bf16_over_fp32" in r]
    if not rows:
        return []
    lines = ["## bf16 matmuls (`--precision bf16`)", "",
             "The same step with the nets' large matmuls in bf16 (log densities, log w, the bound, the "
             "parameters and Adam's state fp32), timed alongside the fp32 step; the matmul floor in bf16 "
             "beside the fp32 one.", "",
             "| net | k | floor fp32 ms | floor bf16 ms | step fp32 ms | step bf16 ms | bf16 / fp32 | "
             "dreg bf16 / fp32 |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ms, b = r["median_ms"][c], r["bf16_over_fp32"]
        target = 0.6 if r["k"] >= 50 else 1.0
        mark = lambda v: f"{v:.2f}{' ok' if v <= target else ' MISS'}"
        lines.append(f"| {r['layers']}-layer | {r['k']} | {ms['floor']:.3f} | {ms['floor_bf16']:.3f} | "
                     f"{ms['iwae']:.3f} | {ms['bf16']:.3f} | {mark(b['standard'])} | "
                     f"{mark(b['dreg']) if 'dreg' in b else 'n/a'} |")
    return lines + [""]


def vimco_markdown(rows, c):
    """The --vimco table: VIMCO's step over the standard one's, on the same net (Gaussian
    latents) and on the net of the same sizes with Bernoulli latents (target <= 1.3)."""
    rows = [r for r in rows if "vimco" in r["ratio_to_iwae"]]
    if not rows:
        return []
    lines = ["## VIMCO (`--estimator vimco`)", "",
             "VIMCO's step over the standard step's on the same Gaussian-latent net, and on the net of the same "
             "hidden sizes with Bernoulli latents (`paper_model(latent=\"bernoulli\")`), timed alongside "
             "(target <= 1.3).", "",
             "| net | k | standard ms | vimco ms | vimco / standard | vimco, Bernoulli latents ms | "
             "vimco Bernoulli / standard |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ms, ratio = r["median_ms"][c], r["ratio_to_iwae"]
        mark = lambda v: f"{v:.2f}{' ok' if v <= TARGETS['vimco'] else ' MISS'}"
        lines.append(f"| {r['layers']}-layer | {r['k']} | {ms['iwae']:.3f} | {ms['vimco']:.3f} | {mark(ratio['vimco'])} | "
                     f"{ms['vimco_bernoulli']:.3f} | {mark(ratio['vimco_bernoulli'])} |")
    return lines + [""]


def evaluation_markdown(ev):
    c = ev.get("target_clock", "wall")
    lines = ["## Evaluation: L_5000 with iwae.log_likelihood", "",
             f"{ev['images']} test images ({ev['data']}), k={ev['k']}, {ev['threads']} thread(s), chunks of at most "
             f"{ev.get('chunk_rows', 8024)} rows; time per "
             f"image against the forward matmul floor at the evaluator's shapes, the variants taking turns "
             f"in one process ({c} clock; wall clock in brackets); peak memory (VmHWM) of a fresh process "
             f"per k.", "",
             "| setting | ms per image | floor ms per image | ratio |", "|---|---|---|---|"]
    for r in ev["speed"]:
        lines.append(f"| {r['label']} | {r['ms_per_image'][c]:.2f} | {r['floor_ms_per_image'][c]:.2f} | "
                     f"{r['ratio'][c]:.2f}x [{r['ratio']['wall']:.2f}x] |")
    lines += ["", "| k | images | peak RSS (VmHWM) | after import and model |", "|---|---|---|---|"]
    for r in ev.get("memory", []):
        lines.append(f"| {r['k']} | {r['images']} | {r['peak_mib']:.0f} MiB | {r['baseline_mib']:.0f} MiB |")
    for r in ev.get("probe", []):
        lines += ["", f"{r['layers']}-layer: compiling saved {r['saving_ns']:.2f} ns per element of k x 784; "
                  f"runtime.decisions' probe measured {r['probe_ns']:.2f} ns here: {r['per_probe']:.2f}x "
                  f"(decisions.PER_PROBE = {r['assumed_per_probe']})."]
    if ev.get("compile"):
        lines += ["", "Compiling, on a cold cache (fresh process, empty caches; first call minus second, one chunk): "
                  + ", ".join(f"{r['layers']}-layer {r['compile_s']:.1f} s" for r in ev["compile"]) + "."]
    lines.append("")
    return lines


if __name__ == "__main__":
    sys.exit(main())

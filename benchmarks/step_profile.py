"""Where the compiled training step's time goes, by kernel, beside its matmul floor.

    python -m benchmarks.step_profile                    # 1-layer net, k = 5 and 50, one thread

The step as ``iwae train`` builds it (benchmarks.variants.project: the compiled forward and
backward, the trainer's non-finite check, the fused Adam update) runs --steps times under
torch.profiler, with Inductor's kernel profile on (each of its C++ kernels a named event), and
so does the matmul floor. Each event's self CPU time, per step, goes to one group: in the
forward and backward, the matrix products, Inductor's fused elementwise kernels (the largest
named), the random draws; in the update, Adam (the fused kernel and the step counts) and the
trainer's non-finite check (the other ops there); and the framework: the rest, Python's time
in both parts and the calls around the kernels (the compiled graph's wrapper, Dynamo's frame,
setting .grad, the optimizer's hooks). The profiler adds about a microsecond to every event it
records, so the groups add up to more than benchmarks.step's unprofiled step.
"""
import argparse
import os
import sys
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from iwae.runtime.compile import flushed_subnormals

from . import variants as V
from .common import MatmulFloor, data_dir, git_revision, linear_shapes, load_images, machine_info
from .step import _batches, prepared_model

MATMULS = ("mm", "addmm", "bmm")
ADAM = ("aten::_fused_adam_", "aten::_foreach_add_")
GROUPS = ("matmuls", "fused kernels", "random draws", "framework", "Adam", "finite check")


def arguments(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", default="1")
    p.add_argument("--k", default="5,50")
    p.add_argument("--steps", type=int, default=200, help="profiled steps")
    p.add_argument("--warmup", type=int, default=30, help="steps before profiling (the first compiles)")
    p.add_argument("--pretrain", type=int, default=200, help="training steps before (benchmarks.step's start)")
    p.add_argument("--data-dir")
    return p.parse_args(argv)


PARTS = ("forward_backward", "update")


def _op(name):
    """An event's operator: "aten::mm" and the C++ wrapper's "aoti_torch_cpu_mm_out" are "mm"."""
    return name.split("::")[-1].removeprefix("aoti_torch_cpu_").removesuffix("_out")


def _group(event, part):
    """The group of an event of the step's `part` (one of PARTS): by the event or its nearest
    ancestor that names one; a part's own self time (Python) is the framework's."""
    start = event
    while event is not None:
        name = event.name
        if part == "update" and name in ADAM:
            return "Adam"
        if _op(name) in MATMULS:
            return "matmuls"
        if "cpp_fused" in name:
            return "fused kernels"
        if "randn" in name or "normal" in name:
            return "random draws"
        if name in PARTS:
            return "finite check" if part == "update" and event is not start else "framework"
        event = event.cpu_parent
    return None


def _part(event):
    """The part of the step (one of PARTS) an event ran in, or None."""
    while event is not None and event.name not in PARTS:
        event = event.cpu_parent
    return None if event is None else event.name


def step_profile(model, k, xs, args):
    """{group: ms per step} and {fused kernel: ms per step} of the compiled step at k."""
    step = V.project(model, k).step
    cpu = torch.device("cpu")

    def one(i):
        with flushed_subnormals(cpu):
            with record_function("forward_backward"):
                step.forward_backward(xs[i % len(xs)])
            with record_function("update"):
                step.update()
    for i in range(args.warmup):
        one(i)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(args.steps):
            one(i)
    groups, kernels = defaultdict(float), defaultdict(float)
    for event in prof.events():
        part = _part(event)
        group = _group(event, part) if part else None
        if group is None:
            continue
        groups[group] += event.self_cpu_time_total / 1e3 / args.steps
        if group == "fused kernels" and "cpp_fused" in event.name:
            kernels[event.name.split("cpp_fused_")[-1]] += event.self_cpu_time_total / 1e3 / args.steps
    return dict(groups), dict(kernels)


def floor_profile(model, k, args):
    """The matmul floor's self CPU time per call, ms, profiled the same way."""
    floor = MatmulFloor(linear_shapes(model, k, 20))
    for _ in range(args.warmup):
        floor()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            floor()
    return sum(e.self_cpu_time_total for e in prof.events()) / 1e3 / args.steps


def main(argv=None):
    args = arguments(argv)
    if "torch._inductor.config" in sys.modules:
        raise SystemExit("benchmarks.step_profile: Inductor was imported before its kernel profile could be set")
    os.environ["TORCHINDUCTOR_CPP_ENABLE_KERNEL_PROFILE"] = "1"     # read when Inductor is first imported
    torch.set_num_threads(1)
    train, _, source = load_images(data_dir(args.data_dir))
    print(f"benchmarks.step_profile at {git_revision()} on {machine_info()['cpu']}, torch {torch.__version__}, "
          f"one thread; {args.steps} profiled steps; {source}; ms per step (x the floor)\n")
    print("| net | k | floor | " + " | ".join(GROUPS) + " | all |")
    print("|---" * (len(GROUPS) + 4) + "|")
    tops = []
    for n_layers in (int(v) for v in args.layers.split(",")):
        for k in (int(v) for v in args.k.split(",")):
            model = prepared_model(n_layers, train, args.pretrain)
            groups, kernels = step_profile(model, k, _batches(train, 2), args)
            floor = floor_profile(model, k, args)
            cells = [f"{groups.get(g, 0.0):.3f} ({groups.get(g, 0.0) / floor:.2f}x)" for g in GROUPS]
            total = sum(groups.values())
            print(f"| {n_layers}-layer | {k} | {floor:.3f} | " + " | ".join(cells) + f" | {total:.3f} ({total / floor:.2f}x) |")
            top = sorted(kernels.items(), key=lambda kv: -kv[1])[:3]
            tops.append(f"{n_layers}-layer k={k}: " + ", ".join(f"{name[:60]} {ms:.3f}" for name, ms in top))
    print("\nThe largest fused kernels, ms per step:\n" + "\n".join(f"- {t}" for t in tops))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

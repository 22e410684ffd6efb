"""Matmul throughput in fp32 and bf16 at the paper nets' shapes: whether bf16 can pay here.

    python -m benchmarks.matmul [--threads 1] [--device cpu|cuda]

Times [rows, 200] x [200, 784] (the decoder's output layer at k*batch rows) in each dtype,
medians of 50 calls after 5 warm-up calls, and prints GFLOP/s with the CPU's capability
(torch.backends.cpu.get_cpu_capability(): AMX and AVX512-BF16 have bf16 matmul units,
AVX2 does not).
"""
import argparse
import statistics
import time

import torch


def gflops(rows, dtype, device, repeats=50):
    a = torch.randn(rows, 200, dtype=dtype, device=device)
    b = torch.randn(200, 784, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(5):
        a @ b
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - t)
    return 2 * rows * 200 * 784 / statistics.median(times) / 1e9


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.matmul", description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name(0) if args.device == "cuda" else torch.backends.cpu.get_cpu_capability()
    print(f"torch {torch.__version__}, {args.device} ({where}), {args.threads} thread(s)")
    for rows in (1000, 100):
        fp32, bf16 = gflops(rows, torch.float32, args.device), gflops(rows, torch.bfloat16, args.device)
        print(f"[{rows}, 200] x [200, 784]: fp32 {fp32:.1f} GFLOP/s, bf16 {bf16:.1f} GFLOP/s "
              f"(bf16 / fp32 = {bf16 / fp32:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Shared pieces of the benchmarks: machine info, data, interleaved timing, the matmul floor."""
import gzip
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from iwae.app.provenance import cpu_model, revision

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def machine_info(device="cpu"):
    info = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "device": device}
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    try:
        import pyro
        info["pyro"] = pyro.__version__
    except ImportError:
        info["pyro"] = None
    return info


def data_dir(arg=None):
    return str(arg or os.environ.get("IWAE_DATA_DIR") or DEFAULT_DATA)


def load_images(directory, n_train=2000, n_test=50):
    """(grey training images [n_train, 784], test images binarized with seed 1234, source).

    MNIST via iwae.data.load_dataset; else the idx files read directly; else random images.
    """
    train = test = None
    source = "random binary images"
    try:
        from iwae.data import load_dataset
        data = load_dataset("mnist", directory)
        train, test, source = data.train, data.test, f"MNIST ({directory})"
    except Exception:
        root = Path(directory) / "mnist"
        try:
            train = _idx(root / "train-images-idx3-ubyte.gz")
            test = _idx(root / "t10k-images-idx3-ubyte.gz")
            source = f"MNIST idx files ({root})"
        except OSError:
            g = torch.Generator().manual_seed(0)
            train = torch.rand(n_train, 784, generator=g)
            test = torch.rand(n_test, 784, generator=g)
    train = train[:n_train].float()
    test = torch.bernoulli(test[:n_test].float(), generator=torch.Generator().manual_seed(1234))
    return train, test, source


def _idx(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[4:8], "big")
    return torch.from_numpy(np.frombuffer(raw, np.uint8, offset=16).reshape(n, 784).astype(np.float32) / 255)


class Batches:
    """Dynamically binarized batches of 20 from the training images, on a fixed seed."""

    def __init__(self, train, batch=20, device="cpu", seed=0):
        self.train, self.batch, self.device = train, batch, device
        self.g = torch.Generator().manual_seed(seed)

    def __call__(self):
        idx = torch.randint(0, self.train.shape[0], (self.batch,), generator=self.g)
        return torch.bernoulli(self.train[idx], generator=self.g).to(self.device)


def interleaved(fns, steps, warmup=10, sync=None, block=10):
    """Time every callable ``steps`` times, the callables taking turns in blocks.

    Each turn runs one callable ``block`` times in a row, timing every call (so caches are
    as warm as in a training loop, where steps run back to back); the order of the turns
    rotates every round, so slow drifts of the machine hit all callables alike.
    Two clocks: "wall" (time.perf_counter) and "cpu", the CPU time of this thread
    (time.thread_time) when torch runs on one thread, else of the process: on a shared
    machine the CPU time leaves out the time the scheduler gives to other processes.
    Returns {name: {"wall": [seconds per call], "cpu": [...]}}. ``sync`` (e.g.
    torch.cuda.synchronize) runs before every clock read.
    """
    cpu_clock = time.thread_time if torch.get_num_threads() == 1 else time.process_time
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    if sync:
        sync()
    times = {name: {"wall": [], "cpu": []} for name in names}
    block = max(1, min(block, steps))
    for r in range(-(-steps // block)):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            fn, wall, cpu = fns[name], times[name]["wall"], times[name]["cpu"]
            for _ in range(min(block, steps - len(wall))):
                t, c = time.perf_counter(), cpu_clock()
                fn()
                if sync:
                    sync()
                cpu.append(cpu_clock() - c)
                wall.append(time.perf_counter() - t)
    return times


def mean_se(values):
    """(mean, standard error of the mean) of values; the error is nan for a single value."""
    values = np.asarray(values, dtype=float)
    return values.mean(), (values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan"))


def summary(times):
    """{clock: {median_ms, p25_ms, p75_ms, n}} for interleaved()'s {clock: [seconds]}."""
    out = {}
    for clock, seconds in times.items():
        ms = sorted(s * 1e3 for s in seconds)
        q = statistics.quantiles(ms, n=4) if len(ms) >= 4 else [ms[0], statistics.median(ms), ms[-1]]
        out[clock] = {"median_ms": statistics.median(ms), "p25_ms": q[0], "p75_ms": q[2], "n": len(ms)}
    return out


def medians(times, clock):
    """{name: median ms} on one clock."""
    return {name: statistics.median(t[clock]) * 1e3 for name, t in times.items()}


def linear_shapes(model, k, batch):
    """[(rows, in, out)] of every nn.Linear in the order Model.log_weights runs them."""
    shapes = []

    def walk(module, rows):
        shapes.extend((rows, m.in_features, m.out_features) for m in module.modules()
                      if isinstance(m, nn.Linear))
    for depth, layer in enumerate(model.encoder):
        walk(layer, batch if depth == 0 else k * batch)
    for layer in model.decoder_layers:
        walk(layer, k * batch)
    walk(model.decoder, k * batch)
    return shapes


class MatmulFloor:
    """Only the matrix multiplications of one forward (+ backward) pass, on preallocated tensors.

    Forward: addmm(bias, X [rows, in], W^T) -> Y [rows, out] per linear layer. Backward,
    per layer in reverse: grad W = G^T X and grad input = G W, except the grad input of the
    first layer (x needs none).
    """

    def __init__(self, shapes, backward=True, device="cpu", dtype=torch.float32):
        g = torch.Generator(device=device).manual_seed(0)
        def r(*s):
            return torch.randn(*s, generator=g, device=device, dtype=dtype) * 0.1
        self.layers = [(i, r(n, a), r(b, a), r(b), torch.empty(n, b, device=device, dtype=dtype),
                        r(n, b), torch.empty(n, a, device=device, dtype=dtype),
                        torch.empty(b, a, device=device, dtype=dtype))
                       for i, (n, a, b) in enumerate(shapes)]
        self.backward = backward
        self.flops = sum(2 * n * a * b for n, a, b in shapes) * (1 + 2 * backward) \
            - (2 * shapes[0][0] * shapes[0][1] * shapes[0][2] if backward else 0)

    def __call__(self):
        for i, X, W, bias, Y, G, GX, GW in self.layers:
            torch.addmm(bias, X, W.t(), out=Y)
        if self.backward:
            for i, X, W, bias, Y, G, GX, GW in reversed(self.layers):
                torch.mm(G.t(), X, out=GW)
                if i:
                    torch.mm(G, W, out=GX)


def git_revision():
    """This checkout's commit (+dirty: the package or the benchmarks' code differ from it; the
    results they write do not count), or None outside a checkout."""
    return revision(Path(__file__).resolve().parents[1], code=("src", "benchmarks", ":(exclude)benchmarks/results"))


def load_baseline(ref):
    """The iwae package of git revision ``ref`` of this repository, imported as ``iwae_base``
    (its src/iwae extracted by git archive into a temporary folder), so that the previous
    main's step can be timed side by side with this one in one process."""
    import importlib.util
    import io
    import subprocess
    import sys
    import tarfile
    import tempfile
    root = Path(__file__).resolve().parents[1]
    archive = subprocess.run(["git", "archive", ref, "src/iwae"], cwd=root, capture_output=True, timeout=60)
    if archive.returncode != 0:
        raise ValueError(f"--baseline {ref}: {archive.stderr.decode().strip()}")
    folder = Path(tempfile.mkdtemp(prefix="iwae-baseline-"))
    tarfile.open(fileobj=io.BytesIO(archive.stdout)).extractall(folder, filter="data")
    package = folder / "src" / "iwae"
    spec = importlib.util.spec_from_file_location("iwae_base", package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["iwae_base"] = module
    spec.loader.exec_module(module)
    return module

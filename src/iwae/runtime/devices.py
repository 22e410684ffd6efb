"""Where tensors live: the --device strings users type, checked once; the CPU's name."""
import platform
from pathlib import Path

import torch


def parse_device(spec):
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' | 'meta' -> torch.device, or ValueError in one line.

    auto: the current CUDA device where CUDA is available, else the CPU.
    """
    if not isinstance(spec, str) or not (spec in ("auto", "cpu", "cuda", "meta")
                                          or (spec.startswith("cuda:") and spec[5:].isdigit())):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r}: CUDA is not available here (torch {torch.__version__}, "
                             f"CUDA build {torch.version.cuda or 'none'}); use --device cpu")
        index = int(spec[5:]) if ":" in spec else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r}: this machine has {torch.cuda.device_count()} CUDA "
                             f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
        return torch.device("cuda", index)
    return torch.device(spec)


def cpu_model():
    """The CPU's model name from /proc/cpuinfo, else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"

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
    """The CPU's model name from /proc/cpuinfo with its family and model numbers and torch's
    vector capability, e.g. "AMD EPYC (family 25, model 1; AVX2)": a hypervisor may show the
    same name for different generations (Zen 3 and Zen 4 here), which time differently."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    generation = f"family {fields['cpu family']}, model {fields['model']}; " if "cpu family" in fields else ""
    return f"{name} ({generation}{torch.backends.cpu.get_cpu_capability()})"

"""Where a number was made: the hardware and the code revision, recorded beside results."""
import os
import subprocess
from pathlib import Path

import torch

from ..runtime.devices import cpu_model

SOURCE_ROOT = Path(__file__).resolve().parents[3]     # the checkout, when iwae runs from src/iwae/app


def hardware(device=None):
    """'<GPU name>' for a CUDA device (device None: CUDA where available), else
    '<CPU model> (N threads, CPU)'."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({os.cpu_count()} threads, CPU)"


def revision(root=SOURCE_ROOT, code=("src",)):
    """The git commit of the checkout iwae runs from ('1d97382'; '+dirty' when tracked files
    under `code` differ from it: results being written elsewhere do not count), or None when
    iwae is not a checkout's src/iwae (an installed wheel)."""
    if not ((root / ".git").exists() and (root / "src" / "iwae").is_dir()):
        return None
    try:
        git = lambda *a: subprocess.run(["git", "-C", str(root), *a], capture_output=True, text=True,
                                        timeout=10, check=True).stdout.strip()
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", *code)
        return git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None

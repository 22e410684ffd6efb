"""Checkpoints: written atomically, read without unpickling arbitrary objects, checksummed.

torch.load notices a damaged archive structure but not damaged tensor bytes (a flipped bit
in a weight loads silently), so save() adds a SHA-256 of the whole state, tensors included,
under the key "checksum", and load() refuses a checkpoint whose content does not match it.
"""
import hashlib
import re
from pathlib import Path

import torch

from ..runtime.atomic import atomic_write


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit the model."""


def save(state, path):
    """Write state (a dict) to path atomically: a temporary file beside it, fsync, then rename.

    The previous checkpoint stays intact until the new one is complete.
    """
    state = {**state, CHECKSUM: digest(state)}
    atomic_write(path, lambda f: torch.save(state, f))


CHECKSUM = "checksum"


def digest(state):
    """SHA-256 (hex) of a checkpoint's content: every key, number, string and tensor byte."""
    h = hashlib.sha256()

    def feed(x):
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(x, dict):
            h.update(f"D{len(x)};".encode())
            for key, value in x.items():
                feed(key)
                feed(value)
        elif isinstance(x, (list, tuple)):
            h.update(f"L{len(x)};".encode())
            for value in x:
                feed(value)
        else:                                       # int, float, str, bool, None
            text = repr(x)
            h.update(f"S{type(x).__name__}{len(text)};{text}".encode())
    feed(state)
    return h.hexdigest()


def load(path):
    """Read a checkpoint with torch.load(weights_only=True): tensors and plain containers only."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:                      # truncated, corrupted, or a foreign pickle
        reason = _reason(err)
        if reason.startswith("Weights only load failed"):
            reason = ("it holds pickled objects other than tensors and plain containers, "
                      "which are refused unread (Weights only load failed)")
        elif reason.startswith("PytorchStreamReader failed"):
            reason = f"the file is truncated or corrupted ({reason})"
        raise CheckpointError(f"cannot read checkpoint {path}: {reason}") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"cannot read checkpoint {path}: not an iwae checkpoint "
                              "(no model state)")
    expected = state.pop(CHECKSUM, None)             # absent: written before checksums
    if expected is not None and expected != digest(state):
        raise CheckpointError(f"cannot read checkpoint {path}: checksum mismatch "
                              "(the file is corrupted)")
    return state


def _reason(err):
    """The first sentence of an error's first line, without terminal escape codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    if not text:
        return type(err).__name__
    line = text.splitlines()[0]
    first = re.match(r"(.+?[.:;])(\s|$)", line)
    return (first[1].rstrip(".:;") if first and len(line) > 120 else line)[:200]


def load_state_dict(model, state, path):
    """model.load_state_dict with a one-line error for a checkpoint of another architecture."""
    expected = model.state_dict()
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} does not fit this model's architecture "
                              "(its model state is not a dict of tensors)")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    resized = [f"{k}: {list(state[k].shape)} in the checkpoint, {list(v.shape)} here"
               for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = ([f"missing {_few(missing)}"] if missing else []) + \
               ([f"unexpected {_few(unexpected)}"] if unexpected else []) + \
               ([f"size mismatch for {_few(resized)}"] if resized else [])
    if problems:
        raise CheckpointError(f"checkpoint {path} does not fit this model's architecture "
                              f"({'; '.join(problems)})")
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise CheckpointError(f"checkpoint {path} does not fit this model's architecture "
                              f"({reason[:300]})") from None


def _few(names, shown=3):
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more

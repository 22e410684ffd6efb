"""Checkpoints: written atomically, read without unpickling arbitrary objects."""
import os
import tempfile
from pathlib import Path

import torch


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit the model."""


def _atomic_write(path, write, *, durable=True):
    """Call write(f) on a temporary file beside path, flush, fsync, then rename it to path.

    A reader sees either the old file or the complete new one; if anything fails (a full
    disk, say) the temporary file is removed and the old file is left as it was.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise OSError(err.errno, f"cannot write {path}: {err.strerror or err}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:                         # a full disk, say: name the file
        Path(tmp).unlink(missing_ok=True)
        raise OSError(err.errno, f"cannot write {path}: {err.strerror or err}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def save(state, path):
    """Write state to path atomically: a temporary file beside it, fsync, then rename.

    The previous checkpoint stays intact until the new one is complete.
    """
    _atomic_write(path, lambda f: torch.save(state, f))


def write_text(path, text, *, durable=True):
    """Replace the text file at path atomically (config.json, metrics.jsonl)."""
    _atomic_write(path, lambda f: f.write(text.encode()), durable=durable)


def remove_stale_temporaries(directory, names):
    """Delete the temporary files (.NAME.XXXX.tmp) a killed writer of NAME left in directory."""
    for name in names:
        for tmp in Path(directory).glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def load(path):
    """Read a checkpoint with torch.load(weights_only=True): tensors and plain containers only."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:                      # truncated, corrupted, or a foreign pickle
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {reason[:200]}") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"cannot read checkpoint {path}: not an iwae checkpoint "
                              "(no model state)")
    return state


def load_state_dict(model, state, path):
    """model.load_state_dict with a one-line error for a checkpoint of another architecture."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise CheckpointError(f"checkpoint {path} does not fit this model's architecture "
                              f"({str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__})") from None

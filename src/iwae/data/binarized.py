"""Readers for fixed-binarized MNIST (Larochelle & Murray): .amat text, plain or gzipped, and .mat.

.amat: one image per line, 784 values "0"/"1" separated by whitespace, no header.
.mat:  a MATLAB file holding one variable X, an (N, 784) 0/1 array.
Both readers return uint8 [N, 784] with values in {0, 1}.
"""
from pathlib import Path

import numpy as np

from .dataset import DataError, is_binary
from .files import read_bytes

PIXELS = 784
_ZERO, _ONE, _NEWLINE = ord("0"), ord("1"), ord("\n")


def read_amat(path: Path, md5: str | None = None) -> np.ndarray:
    """uint8 [N, 784] from a 0/1 .amat text file (gunzipped if its name ends in .gz).

    Vectorised: every value is a single byte '0'/'1' standing alone between whitespace, so
    the values are exactly the '0'/'1' bytes; lines are checked to hold 784 of them each.
    """
    text = np.frombuffer(read_bytes(path, md5), np.uint8)       # [bytes]
    fast = _read_canonical(text)
    if fast is not None:
        return fast
    is_value = (text == _ZERO) | (text == _ONE)                   # [bytes] bool
    is_space = (text == ord(" ")) | (text == _NEWLINE) | (text == ord("\r")) | (text == ord("\t"))
    stray = ~(is_value | is_space)
    if stray.any():
        at = int(np.argmax(stray))
        line = int(np.count_nonzero(text[:at] == _NEWLINE)) + 1
        raise DataError(f"{path}: not a 0/1 .amat file: byte {bytes(text[at:at + 1])!r} "
                        f"on line {line}")
    glued = is_value[1:] & is_value[:-1]
    if glued.any():
        line = int(np.count_nonzero(text[:int(np.argmax(glued))] == _NEWLINE)) + 1
        raise DataError(f"{path}: not a 0/1 .amat file: values not separated on line {line}")
    lines = np.split(is_value, np.flatnonzero(text == _NEWLINE) + 1)
    per_line = np.array([np.count_nonzero(line) for line in lines])  # [lines] values per line
    wrong = np.flatnonzero((per_line != 0) & (per_line != PIXELS))
    if len(wrong):
        raise DataError(f"{path}: line {wrong[0] + 1} has {per_line[wrong[0]]} values, "
                        f"expected {PIXELS}")
    images = int(np.count_nonzero(per_line))
    if images == 0:
        raise DataError(f"{path}: no images in the file")
    return (text[is_value] - _ZERO).reshape(images, PIXELS)


def _read_canonical(text: np.ndarray) -> np.ndarray | None:
    """uint8 [N, 784] if text is exactly N lines "v v ... v\\n" (784 single-byte 0/1 values,
    single spaces), else None: the layout of the distributed files, read with strided views
    instead of the general path's per-byte masks and per-line counts (docs/speed.md); the
    general path handles (and explains) everything else."""
    width = 2 * PIXELS                                           # bytes per line, "\n" included
    if text.size == 0 or text.size % width:
        return None
    rows = text.reshape(-1, width)                               # [N, 1568]
    if not ((rows[:, 1:-1:2] == ord(" ")).all() and (rows[:, -1] == _NEWLINE).all()):
        return None
    values = rows[:, ::2] - _ZERO                                # [N, 784]; other bytes wrap past 1
    return values if (values <= 1).all() else None


def read_mat(path: Path) -> np.ndarray:
    """uint8 [N, 784] from a MATLAB file whose variable X is a 0/1 (N, 784) array."""
    try:
        import scipy.io  # imported where used: `import iwae` stays light
        contents = scipy.io.loadmat(path)
    except (ValueError, OSError, TypeError, NotImplementedError) as e:
        raise DataError(f"{path}: not a readable MATLAB file ({e})") from e
    if "X" not in contents:
        found = ", ".join(k for k in contents if not k.startswith("__")) or "none"
        raise DataError(f"{path}: no variable 'X' (variables: {found})")
    x = contents["X"]
    if x.ndim != 2 or x.shape[1] != PIXELS:
        raise DataError(f"{path}: X has shape {x.shape}, expected (N, {PIXELS})")
    if not is_binary(x):
        raise DataError(f"{path}: X holds values other than 0 and 1")
    return x.astype(np.uint8)

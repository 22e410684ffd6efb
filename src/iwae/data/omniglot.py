"""Reader for Burda's 28x28 Omniglot file chardata.mat (yburda/iwae, datasets/OMNIGLOT).

The file holds `data` (784 x 24345, train) and `testdata` (784 x 8070), one image per
column with values in [0, 1]. Any number of columns is accepted; 784 rows are required.
"""
from pathlib import Path

import numpy as np

from .dataset import DataError, to_float32

PIXELS = 784
VALIDATION_SEED = 123      # Burda's code: np.random.RandomState(123).permutation of train
VALIDATION_SIZE = 1345     # ... and the last 1,345 shuffled training images for validation


def read_chardata(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(train [N, 784], test [M, 784]) float32 in [0, 1], rows in row-major pixel order.

    Each column is transposed into a row and reordered as Burda's code does,
    x.reshape((-1, 28, 28)).reshape((-1, 784), order='F'): the file's pixels are in
    column-major (MATLAB) order, and this per-image transpose makes them row-major.
    """
    try:
        import scipy.io  # imported where used: `import iwae` stays light
        contents = scipy.io.loadmat(path)
    except (ValueError, OSError, TypeError, NotImplementedError) as e:
        raise DataError(f"{path}: not a readable MATLAB file ({e})") from e
    splits = []
    for key in ("data", "testdata"):
        if key not in contents:
            found = ", ".join(k for k in contents if not k.startswith("__")) or "none"
            raise DataError(f"{path}: no variable {key!r} (variables: {found})")
        x = contents[key]
        if x.ndim != 2 or x.shape[0] != PIXELS:
            raise DataError(f"{path}: {key!r} has shape {x.shape}, expected ({PIXELS}, N)")
        x = to_float32(x.T, f"{path} {key!r}", unit_interval=True)                # [N, 784]
        splits.append(x.reshape((-1, 28, 28)).reshape((-1, PIXELS), order="F"))  # [N, 784]
    return splits[0], splits[1]


def paper_split(train: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(train, valid): Burda's seed-123 permutation of train, the last 1,345 rows as valid."""
    if len(train) <= VALIDATION_SIZE:
        raise DataError(f"{path}: {len(train)} training images, need more than "
                        f"{VALIDATION_SIZE} for the paper's validation split")
    shuffled = train[np.random.RandomState(VALIDATION_SEED).permutation(len(train))]
    return shuffled[:-VALIDATION_SIZE], shuffled[-VALIDATION_SIZE:]

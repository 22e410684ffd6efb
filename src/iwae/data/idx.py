"""Reader for LeCun's IDX format (MNIST, Fashion-MNIST), plain or gzipped.

Layout: magic (4 bytes big-endian: 0x00 0x00, type 0x08 = uint8, ndim), one big-endian
int32 per dimension, then the uint8 values in row-major order.
Images have magic 0x00000803 (ndim 3: [N, rows, cols]), labels 0x00000801 ([N]).
"""
from pathlib import Path

import numpy as np

from .dataset import DataError
from .files import read_bytes


def read_idx(path: Path, ndim: int, md5: str | None = None) -> np.ndarray:
    """The uint8 array stored in the IDX file at path, shape from its header.

    ndim is the expected number of dimensions (3 for images, 1 for labels); md5 is
    checked against the file as stored. Raises DataError for a wrong magic number or a
    payload whose size disagrees with the header. The result is a read-only view.
    """
    data = read_bytes(path, md5)
    magic = 0x800 | ndim
    header = 4 + 4 * ndim
    got = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
    if got != magic:
        shown = "none (file shorter than 4 bytes)" if got is None else f"0x{got:08x}"
        raise DataError(f"{path}: not an IDX file of {ndim} dimension(s): magic {shown}, "
                        f"expected 0x{magic:08x}")
    if len(data) < header:
        raise DataError(f"{path}: size mismatch: {len(data)} bytes, shorter than its "
                        f"{header}-byte header")
    shape = tuple(int(n) for n in np.frombuffer(data, ">i4", count=ndim, offset=4))
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        raise DataError(f"{path}: size mismatch: header says {'x'.join(map(str, shape))} "
                        f"= {expected} bytes, file has {len(data)}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)

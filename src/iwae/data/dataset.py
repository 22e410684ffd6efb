"""The Dataset container, the one error type of the data layer, and dynamic binarization."""
from dataclasses import dataclass

import numpy as np
import torch

LIKELIHOODS = ("bernoulli", "gaussian")


class DataError(ValueError):
    """Any problem with data a user gave or pointed at; the message is one line naming it."""


@dataclass(repr=False)
class Dataset:
    """Splits of one data set as float32 matrices, one flattened image per row.

    binarization tells the trainer how to read the rows:
    "dynamic": grey levels in [0, 1]; draw x ~ Bernoulli(row) each time a row is used.
    "fixed":   already 0/1; use as is with a Bernoulli likelihood.
    "none":    continuous data for a Gaussian likelihood; use as is.
    """

    name: str
    train: torch.Tensor              # [N_train, D] float32
    test: torch.Tensor               # [N_test, D] float32
    valid: torch.Tensor | None       # [N_valid, D] float32, or None
    image_shape: tuple[int, int]     # (H, W) with H * W == D
    binarization: str

    @property
    def dim(self) -> int:
        """D, the number of pixels per example."""
        return self.train.shape[1]

    def __repr__(self):
        def shape(t):
            return None if t is None else list(t.shape)
        return (f"Dataset(name={self.name!r}, train={shape(self.train)}, test={shape(self.test)}, "
                f"valid={shape(self.valid)}, image_shape={self.image_shape}, "
                f"binarization={self.binarization!r})")


def binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Dynamic binarization: each entry is 1 with probability x (x in [0, 1]); same shape and
    dtype. NaN entries (missing values) stay NaN; every entry takes one draw either way, so the
    observed entries get the same draws as without the NaN, and the generator advances alike.
    The NaN are not looked for first: that would cost a device sync per batch."""
    drawn = torch.bernoulli(x.nan_to_num(0.0), generator=generator)
    return torch.where(torch.isnan(x), x, drawn)


def remove_pixels(x: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """MCAR: the same number, floor(fraction * D), of entries of every row set to NaN (missing),
    the entries drawn uniformly at random, seeded; a new tensor [N, D]."""
    if not (isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0 <= fraction < 1):
        raise DataError(f"the missing fraction must be in [0, 1), got {fraction!r}")
    count = int(fraction * x.shape[1])
    if count == 0:
        return x.clone()
    g = torch.Generator().manual_seed(seed)
    chosen = torch.rand(x.shape, generator=g).argsort(1)[:, :count]
    return x.scatter(1, chosen.to(x.device), float("nan"))


def check_likelihood_name(likelihood: str) -> None:
    """Raise DataError unless likelihood is one the loaders understand."""
    if likelihood not in LIKELIHOODS:
        raise DataError(f"unknown likelihood {likelihood!r}: expected one of {', '.join(LIKELIHOODS)}")


def to_float32(array: np.ndarray, source: str, *, unit_interval: bool) -> np.ndarray:
    """Numeric array -> float32 copy: uint8 is divided by 255, bool becomes 0/1, the rest is cast.

    Raises DataError for non-numeric data, NaN/Inf (after the cast), and, when
    unit_interval is set (Bernoulli likelihood), values outside [0, 1].
    """
    if array.dtype == np.uint8:
        out = array.astype(np.float32)
        out /= 255
        return out
    if array.dtype == np.bool_ or np.issubdtype(array.dtype, np.integer) \
            or np.issubdtype(array.dtype, np.floating):
        out = array.astype(np.float32)
    else:
        raise DataError(f"{source}: unsupported dtype {array.dtype} (expected numbers or booleans)")
    bad = out.size - int(np.count_nonzero(np.isfinite(out)))
    if bad:
        raise DataError(f"{source}: {bad} non-finite values (NaN or Inf)")
    if unit_interval and out.size and (out.min() < 0 or out.max() > 1):
        raise DataError(f"{source}: values outside [0, 1] (min {out.min():g}, max {out.max():g}); "
                        "scale them to [0, 1] or use likelihood='gaussian'")
    return out


def is_binary(array) -> bool:
    """True if every entry of a numpy array or torch tensor is exactly 0 or 1."""
    return bool(((array == 0) | (array == 1)).all())

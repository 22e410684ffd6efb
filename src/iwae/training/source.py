"""What a run trains on: the training rows, the held-out rows and how both are binarized."""
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..data import DataError, is_binary, load_dataset, remove_pixels
from ..evaluation.likelihood import EVAL_SEED, fixed_binarization


@dataclass
class Source:
    """train [N, D] (NaN = missing where the model allows it); held [n, D] for the per-epoch
    L_k, binarized once (or None); binarization: "dynamic" (a fresh draw per batch), "fixed"
    or "none"; split: the held-out rows' name in metrics.jsonl; image_shape (H, W) for image
    grids; dim: the model's input dimension as its checkpoint records it. held_given: held
    with some observed entries removed (NaN), or None; the per-epoch bound is then
    L_k(held) - L_k(held_given), an estimate of log p(those entries | the rest of the row):
    held-out *entries* of rows, as iwae.Imputer holds out part of a table's observed cells.
    held_score: a function (model, epoch) -> float or None (higher is better; None: not
    measured after this epoch) that replaces the held-out bound as what the loop records
    (``held_score``) and early stopping watches, or None. refit: train with the held-out
    entries back in (NaN only where missing), trained on after early stopping (RunSpec.refit)."""

    train: torch.Tensor
    held: torch.Tensor | None
    binarization: str
    split: str = "test"
    image_shape: tuple | None = None
    dim: int | None = None
    held_given: torch.Tensor | None = None
    held_score: Callable | None = None
    refit: torch.Tensor | None = None

    def __post_init__(self):
        self.dim = self.dim if self.dim is not None else self.train.shape[1]


def paper_source(spec):
    """(the dataset, its Source) of an ``iwae train`` spec (a PaperSpec), on the CPU."""
    data = load_dataset(spec.dataset, spec.data_dir, validation=spec.validation, likelihood=spec.likelihood)
    if spec.likelihood == "gaussian" and is_binary(data.train):
        raise DataError(f"{data.name}: every training value is 0 or 1, where a Gaussian likelihood with "
                        "learned variance is unbounded (the variance shrinks to 0); use likelihood bernoulli")
    train = data.train[: spec.limit_train] if spec.limit_train else data.train
    split, held = ("valid", data.valid) if data.valid is not None else ("test", data.test)
    held = fixed_binarization(held[: spec.eval_examples], data.binarization)
    if spec.missing:                           # MCAR, the same fraction of every image
        train = remove_pixels(train, spec.missing, spec.seed)
        held = remove_pixels(held, spec.missing, EVAL_SEED)
    return data, Source(train, held, data.binarization, split, data.image_shape, data.dim)

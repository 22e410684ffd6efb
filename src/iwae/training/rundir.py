"""A run directory: config.json, metrics.jsonl, checkpoint.pt, and what reads them.

Every file is replaced atomically (iwae.runtime.atomic), a run is locked while it trains, and
``load_model`` rebuilds the trained model of any run on any device.
"""
import fcntl
import json
import os
from pathlib import Path

import torch

from ..data import DataError, is_binary, load_dataset, remove_pixels
from ..evaluation.likelihood import EVAL_SEED, fixed_binarization
from ..runtime.atomic import write_text
from ..runtime.devices import parse_device
from . import checkpoint
from .config import Config, build_model, read_config

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, say); the last good checkpoint is kept."""


def prepare(config, data_dir=None):
    """(dataset, training images [N, D], held-out images [n, D], held-out split name) of an
    ``iwae train`` config, on the CPU."""
    data = load_dataset(config.dataset, data_dir, validation=config.validation,
                        likelihood=config.likelihood)
    if config.likelihood == "gaussian" and is_binary(data.train):
        raise DataError(f"{data.name}: every training value is 0 or 1, where a Gaussian likelihood with "
                        "learned variance is unbounded (the variance shrinks to 0); use --likelihood bernoulli")
    train = data.train[: config.limit_train] if config.limit_train else data.train
    split, held = ("valid", data.valid) if data.valid is not None else ("test", data.test)
    held = fixed_binarization(held[: config.eval_examples], data.binarization)
    if getattr(config, "missing", 0):          # --missing P: MCAR, the same P of every image
        train = remove_pixels(train, config.missing, config.seed)
        held = remove_pixels(held, config.missing, EVAL_SEED)
    return data, train, held, split


def load_model(run_dir, device="cpu", model=None):
    """The trained model of a run directory (from its checkpoint), in eval mode, on device
    ('auto', 'cpu', 'cuda', 'cuda:N'; a checkpoint written on any device loads on any other).

    model: for a run of ``iwae.fit`` with your own module, a freshly built instance of it,
    into which the weights are loaded (the paper's nets are rebuilt from config.json).
    """
    config = read_config(run_dir)
    path = Path(run_dir) / CHECKPOINT
    state = checkpoint.load(path)
    device = parse_device(device) if isinstance(device, str) else torch.device(device)
    if model is None:
        if not isinstance(config, Config):
            raise ValueError(f"{run_dir} was trained by iwae.fit with a {config.model}; pass a new "
                             f"instance of it: iwae.load_model(run, model=...)")
        model = build_model(config, state["input_dim"])
    model = model.to(device)
    checkpoint.load_state_dict(model, state["model"], path)
    return model.eval()


def lock(run_dir):
    """An exclusive lock on the run directory (released when the process ends, even by SIGKILL)."""
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise TrainingError(f"{run_dir} is in use by another training process") from None
    return fd


def write_metrics(path, history):
    write_text(path, "".join(json.dumps(m) + "\n" for m in history), durable=False)


def recorded_epochs(metrics_path):
    """The number of epochs metrics.jsonl records (0 if it cannot be read)."""
    try:
        return sum(1 for line in metrics_path.read_text().splitlines() if line.strip())
    except (OSError, UnicodeDecodeError):
        return 0

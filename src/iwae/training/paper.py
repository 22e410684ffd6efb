"""``iwae train``: the paper's network and dataset from a Config, trained by the one loop
(iwae.training.loop.run, the loop behind iwae.fit) into a run directory."""
import dataclasses
from pathlib import Path

import torch

from ..runtime.devices import parse_device
from . import checkpoint, loop, tracking
from .config import build_model
from .rundir import CHECKPOINT, prepare


def init_model(config, data, train, device="cpu"):
    """A freshly initialised paper net (seeded), with the output bias from the training mean."""
    torch.manual_seed(config.seed)
    model = build_model(config, data.dim)
    if config.init_from:
        source = Path(config.init_from) / CHECKPOINT
        checkpoint.load_state_dict(model, checkpoint.load(source)["model"], source)
    elif config.likelihood == "bernoulli":
        model.set_output_bias(train.nanmean(0) if config.missing else train.mean(0))   # observed pixels
    return model.to(device)


def train(config, run_dir, *, resume=False, data_dir=None, quiet=False):
    """Train config (a Config) into run_dir; returns the model. See iwae.training.loop.run."""
    config.validate()
    if config.tensorboard:
        tracking.require_tensorboard()         # one line before anything is loaded or trained
    device = parse_device(config.device)
    data, train_x, held_x, split = prepare(config, data_dir)
    fresh = not (resume and (Path(run_dir) / CHECKPOINT).exists())
    model = init_model(config if fresh else dataclasses.replace(config, init_from=None),
                       data, train_x, device)          # a resumed run needs no --init-from source
    return loop.run(model, config, train_x, held_x, data.binarization, Path(run_dir), resume=resume,
                   quiet=quiet, data_dir=data_dir, input_dim=data.dim, split=split,
                    image_shape=data.image_shape)

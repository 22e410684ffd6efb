"""``iwae train``: the paper's network and dataset from a PaperSpec, trained by the one loop
(iwae.training.loop.run, the loop behind iwae.fit) into a run directory."""
import dataclasses
from pathlib import Path

import torch

from ..runtime.devices import parse_device
from . import checkpoint, loop, rundir, tracking
from .source import paper_source
from .spec import build_model


def init_model(spec, dim, train, device="cpu"):
    """A freshly initialised paper net (seeded), with the output bias from the training mean."""
    torch.manual_seed(spec.seed)
    model = build_model(spec, dim)
    if spec.init_from:
        source = Path(spec.init_from) / rundir.CHECKPOINT
        checkpoint.load_state_dict(model, checkpoint.load(source)["model"], source)
    elif spec.likelihood == "bernoulli":
        model.set_output_bias(train.nanmean(0) if spec.missing else train.mean(0))   # observed pixels
    return model.to(device)


def train_run(spec, run):
    """Train spec (a PaperSpec) into run, an open run directory (iwae.training.rundir.open_run);
    returns a Trained (iwae.training.loop)."""
    if spec.tensorboard:
        tracking.require_tensorboard()         # one line before anything is loaded or trained
    data, source = paper_source(spec)
    fresh = run.state is None                  # a resumed run needs no init_from source
    model = init_model(spec if fresh else dataclasses.replace(spec, init_from=None), data.dim, source.train,
                       parse_device(spec.device))
    return loop.run(model, spec, source, run)


def train(spec, out, *, resume=False):
    """Train spec (a PaperSpec) into the run directory out (config.json first); returns the model."""
    with rundir.open_run(out, spec.validate(), resume) as run:
        return train_run(spec, run).model


def run_data(run_dir, data_dir=None):
    """(spec, dataset, training rows) of an ``iwae train`` run, its files looked for in data_dir."""
    spec = dataclasses.replace(rundir.read_spec(run_dir), data_dir=data_dir)
    data, source = paper_source(spec)
    return spec, data, source.train

"""``iwae.fit``: the one loop for your own model and data.

    model = iwae.fit(model, data, out="runs/mine", k=50, estimator="dreg", epochs=20)

``fit`` trains any module with ``log_weights(x, k)`` (estimators that treat q and p
differently also need ``encoder_parameters()`` / ``decoder_parameters()``, as iwae.Model
has). Its settings are the fields of ``iwae.training.spec.RunSpec``, by the same names.
"""
import dataclasses

import torch

from ..core.densities import Bernoulli
from ..data import is_binary, load_dataset
from ..evaluation.likelihood import fixed_binarization
from ..runtime.devices import parse_device
from ..runtime.rng import forked_rng
from . import loop, rundir, tracking
from .guards import Interrupted
from .source import Source
from .spec import RENAMED, RunSpec


def fit(model, data, *, out=None, resume=False, eval_data=None, image_shape=None, **settings):
    """Train ``model`` on ``data``; returns the model (trained in place, on the spec's device).
    ``train`` takes the same arguments and returns what the loop learned (the model and its
    per-epoch records, iwae.training.loop.Trained).

    data: a float tensor [N, D] (values in [0, 1] for a Bernoulli likelihood: grey levels are
    binarized dynamically, a fresh draw for every batch, and 0/1 data is used as it is; any
    finite values otherwise; NaN = missing for a model built with missing=True), or a dataset
    name (``iwae datasets``; its validation split, else its test split, is then the held-out
    set). eval_data: held-out examples [n, D] for the per-epoch L_k (the first eval_examples;
    binarized once with a fixed seed where the training data is); none: no held-out bound.
    out: the run directory (config.json, metrics.jsonl, checkpoint.pt; iwae.training.rundir);
    None: nothing is written. resume=True continues the run in ``out`` up to ``epochs``: the
    model must be built as the run's was. image_shape (H, W): TensorBoard's image grids.

    settings: the fields of RunSpec (iwae.training.spec), among them k, bound, estimator, m,
    beta, epochs, batch_size, lr, schedule, adam_betas, adam_eps, seed, eval_examples,
    device, compile, precision, on_nonfinite, tensorboard, checkpoint_every, quiet, data_dir.
    Raises ValueError naming the problem for bad arguments.
    """
    return train(model, data, out=out, resume=resume, eval_data=eval_data, image_shape=image_shape,
                 **settings).model


def train(model, data, *, out=None, resume=False, eval_data=None, image_shape=None, eval_given=None,
          held_score=None, refit_data=None, **settings):
    """``fit``, returning the loop's Trained (the model and its per-epoch records). eval_given:
    eval_data with the entries whose held-out bound is wanted removed (NaN), for a model built
    with missing=True (iwae.training.source.Source.held_given); held_score: what early
    stopping watches instead of that bound (Source.held_score); refit_data: data with the
    held-out entries back, trained on after early stopping (Source.refit, RunSpec.refit)."""
    spec = _spec(model, data, out, settings)
    train_x, held_x, binarization, split = _source(model, data, eval_data, spec)
    given = None
    if eval_given is not None:
        given = check_data(eval_given, "eval_given", False, missing=True)[:spec.eval_examples]
        if held_x is None or given.shape != held_x.shape:
            raise ValueError("eval_given must have eval_data's shape")
    model.to(parse_device(spec.device))
    _check_model_takes(model, train_x[:2].to(parse_device(spec.device)), spec.model)
    refit = None
    if refit_data is not None:
        refit = check_data(refit_data, "refit_data", False, missing=True)
        if refit.shape != train_x.shape:
            raise ValueError("refit_data must have data's shape")
    source = Source(train_x, held_x, binarization, split, image_shape, held_given=given, held_score=held_score,
                    refit=refit)
    init = lambda: torch.manual_seed(spec.seed)
    if out is None:
        return loop.run(model, spec, source, None, init)
    try:
        with rundir.open_run(out, spec, resume) as run:
            return loop.run(model, spec, source, run, init)
    except rundir.RunExists as err:
        raise ValueError(f"{err}; pass resume=True to continue it or choose another out") from None
    except rundir.SpecDiffers as err:
        raise ValueError(f"resume: {err}; pass the run's or use another out") from None
    except Interrupted as err:
        raise err.resumed_with(f"iwae.fit(..., out={str(out)!r}, resume=True)") from None


def _spec(model, data, out, settings):
    """The RunSpec of a fit call, validated, with what it trains recorded."""
    settings = {RENAMED.get(key, key): value for key, value in settings.items()}
    known = {f.name for f in dataclasses.fields(RunSpec)} - {"model", "data"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"iwae.fit got unknown setting(s) {', '.join(unknown)}; its settings are "
                         f"{', '.join(sorted(known))}")
    name = type(model).__name__
    shape = list(data.shape) if isinstance(data, torch.Tensor) else None
    spec = RunSpec(**settings, model=name, data=data if isinstance(data, str) else f"tensor {shape}").validate()
    if spec.tensorboard:
        if out is None:
            raise ValueError("tensorboard events are written into the run directory; pass out=")
        tracking.require_tensorboard()         # one line before anything is loaded or trained
    if not callable(getattr(model, "log_weights", None)):
        raise ValueError(f"iwae.fit trains modules with a log_weights(x, k) method; {name} has none")
    if not isinstance(model, torch.nn.Module) or not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"iwae.fit needs an nn.Module with trainable parameters; {name} has none")
    return spec


def _source(model, data, eval_data, spec):
    """(training rows, held-out rows or None, binarization, held-out split name), checked."""
    bernoulli = isinstance(getattr(model, "likelihood", None), Bernoulli)
    missing = bool(getattr(model, "missing", False))     # NaN = missing (iwae.Model(missing=True))
    split = "test"
    if isinstance(data, str):
        dataset = load_dataset(data, spec.data_dir)
        train_x, binarization = dataset.train, dataset.binarization
        if eval_data is None:
            split, eval_data = ("valid", dataset.valid) if dataset.valid is not None else ("test", dataset.test)
    else:
        train_x = check_data(data, "data", bernoulli, missing)
        binarization = "dynamic" if bernoulli and not is_binary(_observed(train_x)) else "none"
        if missing and binarization == "dynamic" and bool(torch.isnan(train_x).any()):
            raise ValueError("data has grey levels and missing (NaN) entries; binarize the observed "
                             "entries first (a Bernoulli model with missing data trains on 0/1 data)")
    held_x = None
    if eval_data is not None:
        held_x = check_data(eval_data, "eval_data", bernoulli, missing)[:spec.eval_examples]
        if held_x.shape[1] != train_x.shape[1]:
            raise ValueError(f"eval_data has {held_x.shape[1]} columns and data {train_x.shape[1]}")
        held_x = fixed_binarization(held_x, binarization)
    return train_x, held_x, binarization, split


def _observed(x):
    """The entries of x that are not NaN (missing), flattened; x itself when none is NaN."""
    nan = torch.isnan(x)
    return x[~nan] if bool(nan.any()) else x


def check_data(data, what, bernoulli, missing=False):
    """A float tensor [N, D] of finite values (in [0, 1] for a Bernoulli likelihood), else ValueError.
    missing: NaN entries are allowed (missing values, for a model built with missing=True)."""
    if not isinstance(data, torch.Tensor):
        raise ValueError(f"{what} must be a torch.Tensor [N, D] or a dataset name, got {type(data).__name__}")
    if data.dim() != 2 or data.shape[0] < 1 or data.shape[1] < 1:
        raise ValueError(f"{what} must have shape [N, D] with N, D >= 1, got {list(data.shape)}")
    if not data.is_floating_point():
        raise ValueError(f"{what} must be a float tensor, got {data.dtype}")
    if data.device.type != "meta":
        if missing and bool(torch.isinf(data).any()):
            raise ValueError(f"{what} holds infinite values (missing entries are NaN)")
        if not missing and not bool(torch.isfinite(data).all()):
            raise ValueError(f"{what} holds NaN or infinite values")
        observed = _observed(data) if missing else data
        if bernoulli and not bool(((observed >= 0) & (observed <= 1)).all()):
            raise ValueError(f"{what} has values outside [0, 1], which a Bernoulli likelihood cannot "
                             f"model (min {observed.min().item():g}, max {observed.max().item():g})")
    return data


def _check_model_takes(model, x, name):
    """One log_weights call on two examples, so that a shape mismatch is one clear line (in eval
    mode, so that no module updates running statistics or needs a batch)."""
    training = model.training
    try:
        with torch.no_grad(), forked_rng(x.device):
            model.eval()
            log_w = model.log_weights(x.to(next(model.parameters()).dtype), 1)
    except (RuntimeError, ValueError) as err:
        reason = " ".join(str(err).split())[:200]
        raise ValueError(f"{name}.log_weights does not take data of shape [N, {x.shape[1]}]: {reason}") from None
    finally:
        model.train(training)
    if tuple(log_w.shape) != (1, x.shape[0]):
        raise ValueError(f"{name}.log_weights(x, k) must return [k, batch]; for {x.shape[0]} example(s) and "
                         f"k=1 it returned shape {list(log_w.shape)}")

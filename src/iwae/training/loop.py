"""The one training loop, nanoGPT style: any model, any estimator, any device.

    model = iwae.fit(model, data, out="runs/mine", k=50, estimator="dreg", epochs=20)

``fit`` trains any module with ``log_weights(x, k)`` (estimators that treat q and p
differently also need ``encoder_parameters()`` / ``decoder_parameters()``, as iwae.Model
has); ``iwae train`` builds the paper's net from its flags and runs the same loop.

A run directory holds config.json, metrics.jsonl (one line per epoch) and checkpoint.pt
(model, optimizer, the RNG states, epoch, steps, the metrics so far). ``resume=True``
continues from the checkpoint and reaches the same parameters, bitwise on the CPU, as a run
that was never interrupted.

Crash safety: every file of the run directory is replaced atomically (temporary file,
fsync, rename), so a kill at any moment leaves the previous checkpoint intact.
SIGINT/SIGTERM end the current step and save a mid-epoch checkpoint that also records the
position inside the epoch: the epoch's permutation, the batch index, the data RNG state
after the last batch (its binarization draws included) and the running train-bound sum.
"""
import hashlib
import math
import os
import shlex
import signal
import threading
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..core.densities import Bernoulli
from ..data import binarize, is_binary, load_dataset
from ..evaluation.likelihood import EVAL_SEED, fixed_binarization, seeded_log_likelihood
from ..evaluation.units import ACTIVE_UNIT_EXAMPLES
from ..runtime import distributed, torch_private
from ..runtime.atomic import remove_stale_temporaries
from ..runtime.devices import parse_device
from ..runtime.optim import make_optimizer
from ..runtime.rng import forked_rng
from . import checkpoint, rundir, tracking
from .checkpoint import CheckpointError
from .config import TrainConfig, read_config, write_config
from .rundir import CHECKPOINT, METRICS, TrainingError
from .schedule import learning_rate
from .step import make_step


def fit(model, data, *, out, k=5, objective="iwae", estimator="standard", epochs=10, m=None,
        beta=None, batch_size=20, lr=1e-3, schedule="paper", adam_betas=(0.9, 0.999),
        adam_eps=1e-4, seed=0, eval_data=None, eval_examples=1000, device="auto",
        compile="auto", precision="fp32", on_nonfinite="stop", tensorboard=0, image_shape=None,
        resume=False, quiet=False, data_dir=None, checkpoint_every=1):
    """Train ``model`` on ``data`` into the run directory ``out``; returns the model (on device).

    data: a float tensor [N, D] (values in [0, 1] for a Bernoulli likelihood: grey levels are
    binarized dynamically, a fresh draw for every batch, and 0/1 data is used as it is; any
    finite values otherwise), or a dataset name (``iwae datasets``; its validation split,
    else its test split, is then the held-out set). eval_data: held-out examples [n, D] for the per-epoch L_k (the first
    eval_examples; binarized once with a fixed seed where the training data is); none: no
    held-out bound. The optimizer is Adam(lr, adam_betas, adam_eps) on the schedule
    ("paper": lr * 10^(-i/7) for 3^i epochs; "constant"); seed seeds the training noise and
    the data order. device: "auto" | "cpu" | "cuda" | "cuda:N" (the model and data are moved
    there). compile: "auto" | "off" | "step" (iwae.training.step). precision: "fp32" | "bf16"
    (the nets' matmuls in bf16, all else fp32) | "tf32" (CUDA only; iwae.training.step).
    tensorboard: N > 0 writes TensorBoard events into out/tensorboard, the running bound every
    N steps (iwae.training.tracking;
    image_shape (H, W) for the image grids, default square images). resume=True continues the run in
    ``out`` up to ``epochs``: the model must be built as the run's was. checkpoint_every: N
    writes the checkpoint and metrics.jsonl after every N-th epoch and the last (a signal
    still saves at once); N > 1 spares short epochs (small tables) the cost of a durable
    write each. Raises ValueError naming the problem for bad arguments.
    """
    name = type(model).__name__
    config = TrainConfig(objective=objective, estimator=estimator, k=k, m=m, beta=beta,
                         epochs=epochs, seed=seed, batch_size=batch_size, schedule=schedule, lr=lr,
                         adam_betas=tuple(adam_betas) if isinstance(adam_betas, (list, tuple)) else adam_betas,
                         adam_eps=adam_eps, eval_examples=eval_examples, on_nonfinite=on_nonfinite,
                         device=device, compile=compile, precision=precision, tensorboard=tensorboard,
                         model=name,
                         data=data if isinstance(data, str) else None).validate()
    if tensorboard:
        tracking.require_tensorboard()         # one line before anything is loaded or trained
    if not callable(getattr(model, "log_weights", None)):
        raise ValueError(f"iwae.fit trains modules with a log_weights(x, k) method; {name} has none")
    if not isinstance(model, torch.nn.Module) or not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"iwae.fit needs an nn.Module with trainable parameters; {name} has none")
    bernoulli = isinstance(getattr(model, "likelihood", None), Bernoulli)
    missing = bool(getattr(model, "missing", False))     # NaN = missing (iwae.Model(missing=True))
    split = "test"
    if isinstance(data, str):
        dataset = load_dataset(data, data_dir)
        train_x, binarization = dataset.train, dataset.binarization
        if eval_data is None:
            split, eval_data = ("valid", dataset.valid) if dataset.valid is not None else ("test", dataset.test)
    else:
        train_x = check_data(data, "data", bernoulli, missing)
        binarization = "dynamic" if bernoulli and not is_binary(_observed(train_x)) else "none"
        if missing and binarization == "dynamic" and bool(torch.isnan(train_x).any()):
            raise ValueError("data has grey levels and missing (NaN) entries; binarize the observed "
                             "entries first (a Bernoulli model with missing data trains on 0/1 data)")
        config.data = f"tensor {list(train_x.shape)}"
    held_x = None
    if eval_data is not None:
        held_x = check_data(eval_data, "eval_data", bernoulli, missing)[:eval_examples]
        if held_x.shape[1] != train_x.shape[1]:
            raise ValueError(f"eval_data has {held_x.shape[1]} columns and data {train_x.shape[1]}")
        held_x = fixed_binarization(held_x, binarization)
    dev = parse_device(config.device)
    model.to(dev)
    _check_model_takes(model, train_x[:2].to(dev), name)
    if not (isinstance(checkpoint_every, int) and checkpoint_every >= 1):
        raise ValueError(f"checkpoint_every must be an integer >= 1, got {checkpoint_every!r}")
    return run(model, config, train_x, held_x, binarization, Path(out), resume=resume, quiet=quiet,
               init=lambda: torch.manual_seed(seed), split=split, checkpoint_every=checkpoint_every,
               image_shape=image_shape or tracking.image_shape_of(train_x.shape[1]))


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


def run(model, config, train_x, held_x, binarization, run_dir, *, resume=False, quiet=False,
        init=None, data_dir=None, input_dim=None, split="test", image_shape=None, checkpoint_every=1):
    """The training loop behind ``fit`` and ``iwae train``: config (a TrainConfig) into
    run_dir. Epoch e trains at the schedule's lr(e). init() runs before training on a new
    run (it seeds the noise).

    SIGINT/SIGTERM (in the main thread) finish the current step, save a mid-epoch
    checkpoint and raise Interrupted; resuming from it is bitwise the same as never
    stopping. A NaN/Inf loss or gradient raises TrainingError (config.on_nonfinite="stop",
    the last good checkpoint is kept) or skips the batch ("skip", counted as skipped_steps).
    Under torchrun the ranks share every global batch of config.batch_size, rank 0 alone
    writes run_dir, and the result equals one process's up to float rounding (see
    iwae.runtime.distributed).
    """
    distributed.per_rank_batch(config.batch_size, distributed.world_size())   # the global batch divides
    state = _previous_state(config, run_dir, resume)
    device = next(model.parameters()).device
    train_x = train_x.to(device, next(model.parameters()).dtype)
    held_x = None if held_x is None else held_x.to(device, train_x.dtype)
    if state is None and init is not None:
        init()
    trainer = _Trainer(model, config, train_x, held_x, binarization, run_dir, data_dir, checkpoint_every)
    if state is not None:
        trainer.restore(state)
    distributed.barrier(trainer.ctx)           # every rank has read the run directory; rank 0 writes it
    created = _make_run_dir(run_dir)
    lock = rundir.lock(run_dir) if trainer.ctx.is_main else None
    try:
        trainer.open({"input_dim": input_dim if input_dim is not None else train_x.shape[1]},
                     split, image_shape, quiet)
        with Signals() as signals:
            if trainer.dp is not None:         # a signal stops every rank after the same step
                signals = distributed.AgreedSignals(signals)
            for epoch in range(trainer.start, config.epochs):
                trainer.train_epoch(epoch, signals)
        trainer.bar.close()
    except BaseException:
        if trainer.ctx.is_main and not trainer.saved_any and not resume:   # a new run that saved nothing
            _remove_new_run(run_dir, created)
        raise
    finally:
        trainer.close()
        if lock is not None:
            os.close(lock)
    distributed.barrier(trainer.ctx)           # rank 0's files are complete for every rank
    return model


def _previous_state(config, run_dir, resume):
    """The checkpoint to resume from (None: a new run, or a resumed run that never saved one);
    ValueError or CheckpointError where run_dir and the request disagree."""
    ckpt_path, metrics_path = run_dir / CHECKPOINT, run_dir / METRICS
    cli = config.model is None
    if not resume:
        if ckpt_path.exists() or metrics_path.exists():
            raise ValueError(f"{run_dir} already holds a run; " + (
                "pass --resume to continue it or choose another --out" if cli
                else "pass resume=True to continue it or choose another out"))
        return None
    diff = _differences(read_config(run_dir), config)
    if diff:
        what, fix = (("--resume: the flags", "drop them or use another --out") if cli
                     else ("resume: the settings", "pass the run's or use another out"))
        raise ValueError(f"{what} disagree with {run_dir / 'config.json'} on {', '.join(diff)}; {fix}")
    if ckpt_path.exists():
        return checkpoint.load(ckpt_path)
    if rundir.recorded_epochs(metrics_path):
        raise CheckpointError(f"no checkpoint at {ckpt_path}, but {metrics_path} records "
                              f"{rundir.recorded_epochs(metrics_path)} epoch(s); restore it or start a new run")
    return None


def _differences(saved, config):
    """The settings (TrainConfig.comparable) in which config differs from saved."""
    theirs = saved.comparable()
    return [k for k, v in config.comparable().items() if theirs.get(k) != v]


def _make_run_dir(run_dir):
    """mkdir -p run_dir; whether it was created."""
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(err.errno, f"cannot create the run directory {run_dir}: {err.strerror or err}") from None
    return created


def _remove_new_run(run_dir, created):
    """What a new run that saved nothing wrote: its files, and its directory if it made it."""
    for path in (run_dir / METRICS, run_dir / "config.json"):
        path.unlink(missing_ok=True)
    if created:
        try:
            run_dir.rmdir()
        except OSError:
            pass


class _Trainer:
    """The state of one training run between its steps: the model, its optimizer and step,
    the data and its RNG, the position (epoch, steps, metrics) and where it is written."""

    def __init__(self, model, config, train_x, held_x, binarization, run_dir, data_dir, checkpoint_every=1):
        self.model, self.config, self.run_dir, self.data_dir = model, config, run_dir, data_dir
        self.checkpoint_every = checkpoint_every
        self.train_x, self.held_x, self.binarization = train_x, held_x, binarization
        self.device = device = train_x.device
        self.units_x = fixed_binarization(train_x[:ACTIVE_UNIT_EXAMPLES].cpu(), binarization).to(device)
        self.ctx = distributed.init()          # under torchrun: join the process group (once)
        self.dp = distributed.DataParallel(model, config.batch_size, self.ctx) if self.ctx.distributed else None
        self.opt = make_optimizer(model.parameters(), config.lr, config.adam_betas, config.adam_eps,
                                  capturable=device.type == "cuda")
        self.batches = math.ceil(train_x.shape[0] / config.batch_size)
        self.step = make_step(model, self.opt, config.k, config.objective, config.estimator, m=config.m,
                              beta=config.beta, compile=config.compile, precision=config.precision,
                              planned_steps=config.epochs * self.batches, parallel=self.dp)
        self.data_rng = torch.Generator(device=device if device.type == "cuda" else "cpu").manual_seed(
            config.seed + 1)
        self.fingerprint = _fingerprint(train_x)
        self.holes = train_x.device.type != "meta" and bool(torch.isnan(train_x).any())
        self.start, self.steps, self.history, self.position = 0, 0, [], None
        self.saved_any, self.guard, self.board, self.bar = False, None, None, None
        self.ckpt_path, self.metrics_path = run_dir / CHECKPOINT, run_dir / METRICS

    def restore(self, state):
        """Continue from a checkpoint's state (model, optimizer, RNGs, position)."""
        self.start, self.steps, self.history, self.position = _restore(
            state, self.config, self.model, self.opt, self.data_rng, self.ckpt_path, self.fingerprint,
            self.train_x.shape[0])
        begun = self.start + (self.position is not None)
        if self.config.epochs < begun:
            raise ValueError(f"--epochs {self.config.epochs} is fewer than the {begun} "
                             f"epoch(s) {self.run_dir} has trained (or begun); give at least that many")
        self.saved_any = True

    def open(self, dims, split, image_shape, quiet):
        """Write config.json and metrics.jsonl (rank 0), start TensorBoard and the progress bar."""
        self.dims, self.split = dims, split
        self.guard = _FiniteGuard(self.opt)
        main = self.ctx.is_main
        if main:
            remove_stale_temporaries(self.run_dir, (CHECKPOINT, METRICS, "config.json"))
            write_config(self.config, self.run_dir)
            rundir.write_metrics(self.metrics_path, self.history)
        if self.config.tensorboard and main:   # events past the checkpoint's step are purged
            self.board = tracking.TensorBoard(self.run_dir, self.config.tensorboard, self.steps + 1, image_shape)
        first = self.position["batch"] if self.position else 0
        self.bar = tqdm(total=self.batches * self.config.epochs, initial=self.batches * self.start + first,
                        disable=quiet or not main, desc=self.run_dir.name, unit="step", dynamic_ncols=True)

    def train_epoch(self, epoch, signals):
        """One epoch (or the rest of one, after a mid-epoch checkpoint) at the schedule's lr,
        then its record and checkpoint. Raises Interrupted after a signal."""
        lr = learning_rate(epoch, self.config.schedule, self.config.lr)
        for group in self.opt.param_groups:
            group["lr"] = lr
        began = time.perf_counter()
        order, first, total, skipped, spent = self._epoch_start()
        shown = first
        for b in range(first, self.batches):
            loss = self._train_step(order, b, signals)
            nonfinite = self.guard.tripped() or not torch.isfinite(loss)
            if nonfinite and self.config.on_nonfinite == "stop":
                self._stop_nonfinite(epoch, b, loss)
            if nonfinite:
                skipped += 1
            else:
                total += loss.detach()
            self.steps += 1
            if signals.received:
                position = {"batch": b + 1, "order": order.cpu(), "total": total.cpu(), "skipped": skipped,
                            "seconds": spent + time.perf_counter() - began}
                self._save(epoch, position)
                raise self._interrupted(epoch + 1, b + 1, signals.received)
            if self.board is not None and (b + 1) % self.board.every == 0:
                self.board.running(self.steps, -total.item() / max(b + 1 - skipped, 1))
            if b % 100 == 99:
                self.bar.set_postfix(epoch=epoch + 1, bound=f"{-total.item() / max(b + 1 - skipped, 1):.2f}")
                self.bar.update(b + 1 - shown)
                shown = b + 1
        self.bar.update(self.batches - shown)
        self._end_epoch(epoch, lr, spent + time.perf_counter() - began, total, skipped)
        if signals.received:
            raise self._interrupted(epoch + 1, self.batches, signals.received)

    def _epoch_start(self):
        """(order, first batch, running loss sum, skipped steps, seconds spent) of this epoch:
        a new permutation, or where a mid-epoch checkpoint stopped."""
        if self.position:
            p, self.position = self.position, None
            return p["order"].to(self.device), p["batch"], p["total"].to(self.device), p["skipped"], p["seconds"]
        order = torch.randperm(self.train_x.shape[0], generator=self.data_rng, device=self.data_rng.device)
        return order, 0, torch.zeros((), device=self.device), 0, 0.0

    def _train_step(self, order, b, signals):
        """Batch b of the epoch's order, binarized if dynamic: one step; its (global) loss."""
        bs = self.config.batch_size
        x = self.train_x[order[b * bs:(b + 1) * bs]]                      # [bs, D]
        if self.binarization == "dynamic" and self.holes:              # NaN = a missing pixel
            x = binarize(x, self.data_rng)
        elif self.binarization == "dynamic":
            x = torch.bernoulli(x, generator=self.data_rng)
        loss = self.step(x)                    # p.grad = the estimator's gradients; the update
        if self.dp is not None:                # the global batch's loss, the same on every rank
            loss = self.dp.reduce(loss, signals)
        return loss

    def _stop_nonfinite(self, epoch, b, loss):
        what = "loss" if not torch.isfinite(loss) else "gradient"
        kept = (f"the last good checkpoint, {self.ckpt_path}, is kept" if self.saved_any
                else "no checkpoint was written")
        raise TrainingError(f"non-finite {what} at epoch {epoch + 1}, step {b + 1}; "
                            f"{kept} (--on-nonfinite skip skips such batches)")

    def _end_epoch(self, epoch, lr, seconds, total, skipped):
        """The epoch's record (bounds, speed, diagnostics) into metrics.jsonl, a checkpoint,
        TensorBoard."""
        good = self.batches - skipped
        record = {"epoch": epoch + 1, "steps": self.steps, "lr": lr,
                  "train_bound": -total.item() / good if good else float("nan")}
        if self.held_x is not None:
            record[f"{self.split}_bound"] = seeded_log_likelihood(
                self.model, self.held_x, self.config.k, ctx=self.ctx).mean().item()
            record["eval_k"] = self.config.k
        record.update({"seconds": round(seconds, 3), "steps_per_second": round(self.batches / seconds, 2),
                       "skipped_steps": skipped})
        record.update(tracking.diagnostics(self.model, self.config.k, self.held_x, self.units_x, EVAL_SEED))
        self.history.append(record)
        if (epoch + 1) % self.checkpoint_every == 0 or epoch + 1 == self.config.epochs:
            self._save(epoch + 1, None)
            if self.ctx.is_main:
                rundir.write_metrics(self.metrics_path, self.history)
        if self.board is not None:
            self.board.epoch(record, self.model, self.held_x, EVAL_SEED)

    def _save(self, start, position):
        """A checkpoint after `start` whole epochs and `position` inside the next (rank 0)."""
        if self.ctx.is_main:
            checkpoint.save(_state(self.model, self.opt, self.data_rng, start=start, steps=self.steps,
                                   history=self.history, dims=self.dims, config=self.config,
                                   fingerprint=self.fingerprint, position=position), self.ckpt_path)
        self.saved_any = True

    def _interrupted(self, epoch, step, signum):
        return Interrupted(epoch, step, self.run_dir, self.data_dir, signum, self.config.model is None)

    def close(self):
        if self.guard is not None:
            self.guard.remove()
        if self.board is not None:
            self.board.close()


class Interrupted(TrainingError):
    """SIGINT or SIGTERM stopped training after a step, whose checkpoint was saved."""

    def __init__(self, epoch, step, run_dir, data_dir, signum, cli=True):
        command = f"iwae train --out {shlex.quote(str(run_dir))} --resume"
        if data_dir is not None:
            command += f" --data-dir {shlex.quote(str(data_dir))}"
        if not cli:
            command = f"iwae.fit(..., out={str(run_dir)!r}, resume=True)"
        super().__init__(f"interrupted at epoch {epoch}, step {step}; resume with: {command}")
        self.signum = signum


class Signals:
    """Record SIGINT/SIGTERM instead of dying, so the loop can stop after the current step.

    A second signal raises KeyboardInterrupt at once. Outside the main thread (where
    handlers cannot be installed) this does nothing.
    """

    def __init__(self):
        self.received, self.previous = None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


class _FiniteGuard:
    """An optimizer step pre-hook: one fused norm of all gradients, and no update if it is NaN/Inf.

    A non-finite total norm drops every .grad before the step, so Adam leaves the
    parameters and its moments untouched; tripped() tells the loop it happened.
    """

    def __init__(self, opt):
        self._tripped = False
        self._handle = opt.register_step_pre_hook(self._check)

    def _check(self, opt, args, kwargs):
        params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return
        norms = torch_private.grad_norms([p.grad for p in params])        # one norm per tensor
        if not torch.isfinite(torch.stack(norms).sum()):
            self._tripped = True
            for p in params:
                p.grad = None

    def tripped(self):
        tripped, self._tripped = self._tripped, False
        return tripped

    def remove(self):
        self._handle.remove()


def _state(model, opt, data_rng, *, start, steps, history, dims, config, fingerprint, position):
    """A checkpoint: after `start` whole epochs, plus `position` inside the next one (or None)."""
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(),
             "torch_rng": torch.get_rng_state(), "data_rng": data_rng.get_state(),
             "epoch": start, "steps": steps, "metrics": history, "position": position,
             "config": config.to_dict(), "train_data": fingerprint, **dims}
    device = next(model.parameters()).device
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def _fingerprint(train_x):
    """SHA-256 of the training images (shape and values): a resumed run must see the same data."""
    h = hashlib.sha256(f"{tuple(train_x.shape)} {train_x.dtype};".encode())
    if train_x.device.type != "meta":
        h.update(train_x.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _restore(state, config, model, opt, data_rng, path, fingerprint, n):
    """Load a checkpoint into model, opt and the RNGs; (epoch, steps, metrics, position)."""
    try:
        diff = _differences(type(config).from_dict(state["config"]), config)
        if diff:
            raise CheckpointError(f"checkpoint {path} was written by a run with other settings "
                                  f"({', '.join(diff)}) than its config.json")
        if state.get("train_data", fingerprint) != fingerprint:
            data = getattr(config, "dataset", None) or config.data
            raise CheckpointError(f"checkpoint {path} was trained on other data than {data!r} holds now "
                                  "(its training images changed); start a new run")
        checkpoint.load_state_dict(model, state["model"], path)
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        device = next(model.parameters()).device
        if device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        try:
            data_rng.set_state(state["data_rng"])
        except RuntimeError:                   # a CPU generator's state in a CUDA one, or back
            raise CheckpointError(f"checkpoint {path} was written on another device type; resume the "
                                  "run there (iwae.load_model loads it anywhere)") from None
        epoch, steps, history = state["epoch"], state["steps"], list(state["metrics"])
        position = state.get("position")
        if not (isinstance(epoch, int) and isinstance(steps, int) and 0 <= epoch and 0 <= steps):
            raise ValueError("bad epoch or step count")
        if position is not None:
            position = {key: position[key] for key in ("batch", "order", "total", "skipped", "seconds")}
            order, batch = position["order"], position["batch"]
            if not (isinstance(batch, int) and 0 <= batch <= math.ceil(n / config.batch_size)
                    and isinstance(order, torch.Tensor) and order.dtype == torch.int64
                    and order.shape == (n,) and torch.equal(order.sort().values, torch.arange(n))):
                raise ValueError("its position inside the epoch does not fit the training data")
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path} is incomplete or inconsistent: {reason[:200]}") from None
    return epoch, steps, history, position

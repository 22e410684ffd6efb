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

from . import checkpoint, distributed, rundir, torch_private, tracking
from .checkpoint import CheckpointError
from .config import TrainConfig, parse_device, read_config, write_config
from .data import load_dataset
from .densities import Bernoulli
from .optim import make_optimizer
from .report import ACTIVE_UNIT_EXAMPLES
from .rundir import CHECKPOINT, METRICS, TrainingError
from .schedule import learning_rate
from .step import make_step


def fit(model, data, *, out, k=5, objective="iwae", estimator="standard", epochs=10, m=None,
        beta=None, batch_size=20, lr=1e-3, schedule="paper", adam_betas=(0.9, 0.999),
        adam_eps=1e-4, seed=0, eval_data=None, eval_examples=1000, device="auto",
        compile="auto", on_nonfinite="stop", tensorboard=0, image_shape=None, resume=False,
        quiet=False, data_dir=None):
    """Train ``model`` on ``data`` into the run directory ``out``; returns the model (on device).

    data: a float tensor [N, D] (values in [0, 1] for a Bernoulli likelihood: grey levels are
    binarized dynamically, a fresh draw for every batch, and 0/1 data is used as it is; any
    finite values otherwise), or a dataset name (``iwae datasets``; its validation split,
    else its test split, is then the held-out set). eval_data: held-out examples [n, D] for the per-epoch L_k (the first
    eval_examples; binarized once with a fixed seed where the training data is); none: no
    held-out bound. The optimizer is Adam(lr, adam_betas, adam_eps) on the schedule
    ("paper": lr * 10^(-i/7) for 3^i epochs; "constant"); seed seeds the training noise and
    the data order. device: "auto" | "cpu" | "cuda" | "cuda:N" (the model and data are moved
    there). compile: "auto" | "off" | "step" (iwae.step). tensorboard: N > 0 writes
    TensorBoard events into out/tensorboard, the running bound every N steps (iwae.tracking;
    image_shape (H, W) for the image grids, default square images). resume=True continues the run in
    ``out`` up to ``epochs``: the model must be built as the run's was. Raises ValueError
    naming the problem for bad arguments.
    """
    name = type(model).__name__
    config = TrainConfig(objective=objective, estimator=estimator, k=k, m=m, beta=beta,
                         epochs=epochs, seed=seed, batch_size=batch_size, schedule=schedule, lr=lr,
                         adam_betas=tuple(adam_betas) if isinstance(adam_betas, (list, tuple)) else adam_betas,
                         adam_eps=adam_eps, eval_examples=eval_examples, on_nonfinite=on_nonfinite,
                         device=device, compile=compile, tensorboard=tensorboard, model=name,
                         data=data if isinstance(data, str) else None).validate()
    if tensorboard:
        tracking.require_tensorboard()         # one line before anything is loaded or trained
    if not callable(getattr(model, "log_weights", None)):
        raise ValueError(f"iwae.fit trains modules with a log_weights(x, k) method; {name} has none")
    if not isinstance(model, torch.nn.Module) or not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"iwae.fit needs an nn.Module with trainable parameters; {name} has none")
    bernoulli = isinstance(getattr(model, "likelihood", None), Bernoulli)
    split = "test"
    if isinstance(data, str):
        dataset = load_dataset(data, data_dir)
        train_x, binarization = dataset.train, dataset.binarization
        if eval_data is None:
            split, eval_data = ("valid", dataset.valid) if dataset.valid is not None else ("test", dataset.test)
    else:
        train_x = check_data(data, "data", bernoulli)
        binarization = "dynamic" if bernoulli and not _binary(train_x) else "none"
        config.data = f"tensor {list(train_x.shape)}"
    held_x = None
    if eval_data is not None:
        held_x = check_data(eval_data, "eval_data", bernoulli)[:eval_examples]
        if held_x.shape[1] != train_x.shape[1]:
            raise ValueError(f"eval_data has {held_x.shape[1]} columns and data {train_x.shape[1]}")
        held_x = rundir.fixed_binarization(held_x, binarization)
    dev = parse_device(config.device)
    model.to(dev)
    _check_model_takes(model, train_x[:2].to(dev), name)
    return run(model, config, train_x, held_x, binarization, Path(out), resume=resume, quiet=quiet,
               init=lambda: torch.manual_seed(seed), split=split,
               image_shape=image_shape or tracking.image_shape_of(train_x.shape[1]))


def check_data(data, what, bernoulli):
    """A float tensor [N, D] of finite values (in [0, 1] for a Bernoulli likelihood), else ValueError."""
    if not isinstance(data, torch.Tensor):
        raise ValueError(f"{what} must be a torch.Tensor [N, D] or a dataset name, got {type(data).__name__}")
    if data.dim() != 2 or data.shape[0] < 1 or data.shape[1] < 1:
        raise ValueError(f"{what} must have shape [N, D] with N, D >= 1, got {list(data.shape)}")
    if not data.is_floating_point():
        raise ValueError(f"{what} must be a float tensor, got {data.dtype}")
    if data.device.type != "meta":
        if not bool(torch.isfinite(data).all()):
            raise ValueError(f"{what} holds NaN or infinite values")
        if bernoulli and not bool(((data >= 0) & (data <= 1)).all()):
            raise ValueError(f"{what} has values outside [0, 1], which a Bernoulli likelihood cannot "
                             f"model (min {data.min().item():g}, max {data.max().item():g})")
    return data


def _binary(x):
    return bool(((x == 0) | (x == 1)).all())


def _check_model_takes(model, x, name):
    """One log_weights call on two examples, so that a shape mismatch is one clear line (in eval
    mode, so that no module updates running statistics or needs a batch)."""
    training = model.training
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
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
        init=None, data_dir=None, input_dim=None, split="test", image_shape=None):
    """The training loop behind ``fit`` and ``iwae train``: config (a TrainConfig) into
    run_dir. Epoch e trains at the schedule's lr(e). init() runs before training on a new
    run (it seeds the noise).

    SIGINT/SIGTERM (in the main thread) finish the current step, save a mid-epoch
    checkpoint and raise Interrupted; resuming from it is bitwise the same as never
    stopping. A NaN/Inf loss or gradient raises TrainingError (config.on_nonfinite="stop",
    the last good checkpoint is kept) or skips the batch ("skip", counted as skipped_steps).
    Under torchrun the ranks share every global batch of config.batch_size, rank 0 alone
    writes run_dir, and the result equals one process's up to float rounding (see
    iwae.distributed).
    """
    distributed.per_rank_batch(config.batch_size, distributed.world_size())   # the global batch divides
    ckpt_path, metrics_path = run_dir / CHECKPOINT, run_dir / METRICS
    if resume:
        saved = read_config(run_dir)
        if saved.comparable() != config.comparable():
            diff = [k for k, v in config.comparable().items() if saved.comparable().get(k) != v]
            what, fix = (("--resume: the flags", "drop them or use another --out") if config.model is None
                         else ("resume: the settings", "pass the run's or use another out"))
            raise ValueError(f"{what} disagree with {run_dir / 'config.json'} on {', '.join(diff)}; {fix}")
    elif ckpt_path.exists() or metrics_path.exists():
        raise ValueError(f"{run_dir} already holds a run; " + (
            "pass --resume to continue it or choose another --out" if config.model is None
            else "pass resume=True to continue it or choose another out"))
    state = None
    if resume and ckpt_path.exists():
        state = checkpoint.load(ckpt_path)
    elif resume and rundir.recorded_epochs(metrics_path):
        raise CheckpointError(f"no checkpoint at {ckpt_path}, but {metrics_path} records "
                              f"{rundir.recorded_epochs(metrics_path)} epoch(s); restore it or start a new run")
    device = next(model.parameters()).device
    train_x = train_x.to(device, next(model.parameters()).dtype)
    held_x = None if held_x is None else held_x.to(device, train_x.dtype)
    units_x = rundir.fixed_binarization(train_x[:ACTIVE_UNIT_EXAMPLES].cpu(), binarization).to(device)
    if state is None and init is not None:
        init()
    ctx = distributed.init()                   # under torchrun: join the process group (once)
    dp = distributed.DataParallel(model, config.batch_size, ctx) if ctx.distributed else None
    opt = make_optimizer(model.parameters(), config.lr, config.adam_betas, config.adam_eps,
                         capturable=device.type == "cuda")
    n, bs = train_x.shape[0], config.batch_size
    batches = math.ceil(n / bs)
    train_step = make_step(model, opt, config.k, config.objective, config.estimator, m=config.m,
                           beta=config.beta, compile=config.compile,
                           planned_steps=config.epochs * batches, parallel=dp)
    data_rng = torch.Generator(device=device if device.type == "cuda" else "cpu").manual_seed(config.seed + 1)
    start, steps, history, position = 0, 0, [], None
    fingerprint = _fingerprint(train_x)
    if state is not None:
        start, steps, history, position = _restore(state, config, model, opt, data_rng, ckpt_path,
                                                   fingerprint, n)
        if config.epochs < start + (position is not None):
            raise ValueError(f"--epochs {config.epochs} is fewer than the {start + (position is not None)} "
                             f"epoch(s) {run_dir} has trained (or begun); give at least that many")
    distributed.barrier(ctx)                   # every rank has read the run directory; rank 0 writes it
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(err.errno, f"cannot create the run directory {run_dir}: {err.strerror or err}") from None
    lock = rundir.lock(run_dir) if ctx.is_main else None
    save, write_metrics = (checkpoint.save, rundir.write_metrics) if ctx.is_main else (_nothing, _nothing)
    saved_any = state is not None
    guard = _FiniteGuard(opt)
    board = None
    dims = {"input_dim": input_dim if input_dim is not None else train_x.shape[1]}
    try:
        if ctx.is_main:
            checkpoint.remove_stale_temporaries(run_dir, (CHECKPOINT, METRICS, "config.json"))
            write_config(config, run_dir)
        write_metrics(metrics_path, history)
        if config.tensorboard and ctx.is_main:     # events past the checkpoint's step are purged
            board = tracking.TensorBoard(run_dir, config.tensorboard, steps + 1, image_shape)
        first = position["batch"] if position else 0
        bar = tqdm(total=batches * config.epochs, initial=batches * start + first,
                   disable=quiet or not ctx.is_main, desc=run_dir.name, unit="step", dynamic_ncols=True)
        with _Signals() as signals:
            if dp is not None:                 # a signal stops every rank after the same step
                signals = distributed.AgreedSignals(signals)
            for epoch in range(start, config.epochs):
                lr = learning_rate(epoch, config.schedule, config.lr)
                for group in opt.param_groups:
                    group["lr"] = lr
                began = time.perf_counter()
                if position:                           # a mid-epoch checkpoint: go on from there
                    order, first = position["order"].to(device), position["batch"]
                    total = position["total"].to(device)
                    skipped, spent, position = position["skipped"], position["seconds"], None
                else:
                    order = torch.randperm(n, generator=data_rng, device=data_rng.device)
                    first, total, skipped, spent = 0, torch.zeros((), device=device), 0, 0.0
                shown = first
                for b in range(first, batches):
                    x = train_x[order[b * bs:(b + 1) * bs]]                   # [bs, D]
                    if binarization == "dynamic":
                        x = torch.bernoulli(x, generator=data_rng)
                    loss = train_step(x)       # p.grad = the estimator's gradients; the update
                    if dp is not None:         # the global batch's loss, the same on every rank
                        loss = dp.reduce(loss, signals)
                    nonfinite = guard.tripped() or not torch.isfinite(loss)
                    if nonfinite and config.on_nonfinite == "stop":
                        what = "loss" if not torch.isfinite(loss) else "gradient"
                        kept = f"the last good checkpoint, {ckpt_path}, is kept" if saved_any else "no checkpoint was written"
                        raise TrainingError(f"non-finite {what} at epoch {epoch + 1}, step {b + 1}; "
                                            f"{kept} (--on-nonfinite skip skips such batches)")
                    if nonfinite:
                        skipped += 1
                    else:
                        total += loss.detach()
                    steps += 1
                    if signals.received:
                        spent += time.perf_counter() - began
                        save(_state(model, opt, data_rng, start=epoch, steps=steps, history=history,
                                    dims=dims, config=config, fingerprint=fingerprint,
                                    position={"batch": b + 1, "order": order.cpu(), "total": total.cpu(),
                                              "skipped": skipped, "seconds": spent}), ckpt_path)
                        saved_any = True
                        raise Interrupted(epoch + 1, b + 1, run_dir, data_dir, signals.received, config.model is None)
                    if board is not None and (b + 1) % board.every == 0:
                        board.running(steps, -total.item() / max(b + 1 - skipped, 1))
                    if b % 100 == 99:
                        bar.set_postfix(epoch=epoch + 1, bound=f"{-total.item() / max(b + 1 - skipped, 1):.2f}")
                        bar.update(b + 1 - shown)
                        shown = b + 1
                bar.update(batches - shown)
                seconds = spent + time.perf_counter() - began
                good = batches - skipped
                record = {"epoch": epoch + 1, "steps": steps, "lr": lr,
                          "train_bound": -total.item() / good if good else float("nan")}
                if held_x is not None:
                    record[f"{split}_bound"] = rundir.evaluate_bound(model, held_x, config.k, ctx=ctx).mean().item()
                    record["eval_k"] = config.k
                record.update({"seconds": round(seconds, 3), "steps_per_second": round(batches / seconds, 2),
                               "skipped_steps": skipped})
                record.update(tracking.diagnostics(model, config.k, held_x, units_x, rundir.EVAL_SEED))
                history.append(record)
                save(_state(model, opt, data_rng, start=epoch + 1, steps=steps, history=history,
                            dims=dims, config=config, fingerprint=fingerprint, position=None), ckpt_path)
                saved_any = True
                write_metrics(metrics_path, history)
                if board is not None:
                    board.epoch(record, model, held_x, rundir.EVAL_SEED)
                if signals.received:
                    raise Interrupted(epoch + 1, batches, run_dir, data_dir, signals.received, config.model is None)
        bar.close()
    except BaseException:
        if ctx.is_main and not saved_any and not resume:   # a new run that saved nothing: no files
            for path in (metrics_path, run_dir / "config.json"):
                path.unlink(missing_ok=True)
            if created:
                _rmdir_if_empty(run_dir)
        raise
    finally:
        guard.remove()
        if board is not None:
            board.close()
        if lock is not None:
            os.close(lock)
    distributed.barrier(ctx)                   # rank 0's files are complete for every rank
    return model


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


class _Signals:
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
        saved = type(config).from_dict(state["config"])
        if saved.comparable() != config.comparable():
            diff = [k for k, v in config.comparable().items() if saved.comparable().get(k) != v]
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


def _nothing(*args):
    """What ranks other than 0 write: nothing."""


def _rmdir_if_empty(path):
    try:
        path.rmdir()
    except OSError:
        pass

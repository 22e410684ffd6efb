"""Training, nanoGPT style: one flat loop, a full checkpoint every epoch, exact resume.

A run directory holds config.json, metrics.jsonl (one line per epoch) and checkpoint.pt
(model, optimizer, both RNG states, epoch, steps, the metrics so far). ``resume`` continues
from the checkpoint and reaches the same parameters, bitwise on the CPU, as a run that
was never interrupted.

Crash safety: every file of the run directory is replaced atomically (temporary file, fsync,
rename), so a kill at any moment leaves the previous checkpoint intact. SIGINT/SIGTERM end
the current step and save a mid-epoch checkpoint that also records the position inside the
epoch: the epoch's permutation, the batch index, the data RNG state after the last batch
(its binarization draws included) and the running train-bound sum.
"""
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import shlex
import signal
import threading
import time
from pathlib import Path

import torch
from tqdm import tqdm

from . import checkpoint, distributed
from .checkpoint import CheckpointError
from .config import Config, build_model, read_config, write_config
from .data import DataError, load_dataset
from .schedule import learning_rate
from .step import make_optimizer, make_step

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
EVAL_SEED = 1234            # binarization and sample noise of every evaluation


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, say); the last good checkpoint is kept."""


def fixed_binarization(x, binarization, seed=EVAL_SEED):
    """Held-out images binarized once with a fixed seed (unchanged unless 'dynamic')."""
    if binarization != "dynamic":
        return x
    return torch.bernoulli(x, generator=torch.Generator().manual_seed(seed))


def evaluate_bound(model, x, k, seed=EVAL_SEED, *, batch_size=100, max_samples=16384, ctx=distributed.SINGLE):
    """L_k per example under a fixed seed, leaving the caller's RNG stream untouched.

    The noise of each block of batch_size examples is seeded from (seed, block index), so
    the numbers are the same on any number of ranks (ctx: the ranks share the blocks).
    """
    return distributed.seeded_log_likelihood(model, x, k, seed=seed, block=batch_size,
                                             max_samples=max_samples, ctx=ctx)


def prepare(config, data_dir=None):
    """(dataset, training images [N, D], held-out images [n, D], held-out split name)."""
    data = load_dataset(config.dataset, data_dir, validation=config.validation,
                        likelihood=config.likelihood)
    if config.likelihood == "gaussian" and bool(((data.train == 0) | (data.train == 1)).all()):
        raise DataError(f"{data.name}: every training value is 0 or 1, where a Gaussian likelihood with "
                        "learned variance is unbounded (the variance shrinks to 0); use --likelihood bernoulli")
    train = data.train[: config.limit_train] if config.limit_train else data.train
    split, held = ("valid", data.valid) if data.valid is not None else ("test", data.test)
    held = fixed_binarization(held[: config.eval_examples], data.binarization)
    return data, train, held, split


def init_model(config, data, train):
    """A freshly initialised model (seeded), with the output bias from the training mean."""
    torch.manual_seed(config.seed)
    model = build_model(config, data.dim)
    if config.init_from:
        source = Path(config.init_from) / CHECKPOINT
        checkpoint.load_state_dict(model, checkpoint.load(source)["model"], source)
    elif config.likelihood == "bernoulli":
        model.set_output_bias(train.mean(0))
    return model


def train(config, run_dir, *, resume=False, data_dir=None, quiet=False):
    """Train config into run_dir; returns the model. Epoch e trains at the schedule's lr(e).

    SIGINT/SIGTERM (in the main thread) finish the current step, save a mid-epoch
    checkpoint and raise Interrupted; resuming from it is bitwise the same as never
    stopping. A NaN/Inf loss or gradient raises TrainingError (config.on_nonfinite="stop",
    the last good checkpoint is kept) or skips the batch ("skip", counted as skipped_steps).
    Under torchrun the ranks share every global batch of config.batch_size (DDP), rank 0
    alone writes run_dir, and the result equals one process's up to float rounding
    (see iwae.distributed).
    """
    config.validate()
    distributed.per_rank_batch(config.batch_size, distributed.world_size())   # the global batch divides
    run_dir = Path(run_dir)
    ckpt_path, metrics_path = run_dir / CHECKPOINT, run_dir / METRICS
    if resume:
        saved = read_config(run_dir)
        if _comparable(saved) != _comparable(config):
            diff = [k for k, v in _comparable(config).items() if _comparable(saved)[k] != v]
            raise ValueError(f"--resume: the flags disagree with {run_dir / 'config.json'} on "
                             f"{', '.join(diff)}; drop them or use another --out")
    elif ckpt_path.exists() or metrics_path.exists():
        raise ValueError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    state = None
    if resume and ckpt_path.exists():
        state = checkpoint.load(ckpt_path)
    elif resume and _recorded_epochs(metrics_path):
        raise CheckpointError(f"no checkpoint at {ckpt_path}, but {metrics_path} records "
                              f"{_recorded_epochs(metrics_path)} epoch(s); restore it or start a new run")
    data, train_x, held_x, split = prepare(config, data_dir)
    model = init_model(config if state is None else dataclasses.replace(config, init_from=None),
                       data, train_x)                  # a resumed run needs no --init-from source
    opt = make_optimizer(model.parameters(), config.lr, config.adam_betas, config.adam_eps)
    train_step = make_step(model, opt, config.k, config.objective, config.estimator, m=config.m,
                           beta=config.beta, planned_steps=config.epochs * math.ceil(
                               train_x.shape[0] / config.batch_size))     # iwae.step: see there
    data_rng = torch.Generator().manual_seed(config.seed + 1)    # data order and binarization
    start, steps, history, position = 0, 0, [], None
    fingerprint = _fingerprint(train_x)
    if state is not None:
        start, steps, history, position = _restore(state, config, model, opt, data_rng, ckpt_path,
                                                   fingerprint, train_x.shape[0])
        if config.epochs < start + (position is not None):
            raise ValueError(f"--epochs {config.epochs} is fewer than the {start + (position is not None)} "
                             f"epoch(s) {run_dir} has trained (or begun); give at least that many")
    ctx = distributed.init()                   # under torchrun: join the process group (once)
    dp = distributed.DataParallel(model, config, ctx) if ctx.distributed else None
    distributed.barrier(ctx)                   # every rank has read the run directory; rank 0 writes it
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(err.errno, f"cannot create the run directory {run_dir}: {err.strerror or err}") from None
    lock = _lock(run_dir) if ctx.is_main else None
    save, write_metrics = (checkpoint.save, _write_metrics) if ctx.is_main else (_nothing, _nothing)
    saved_any = state is not None
    guard = _FiniteGuard(opt)
    try:
        if ctx.is_main:
            checkpoint.remove_stale_temporaries(run_dir, (CHECKPOINT, METRICS, "config.json"))
            write_config(config, run_dir)
        write_metrics(metrics_path, history)

        n, bs = train_x.shape[0], config.batch_size
        batches = math.ceil(n / bs)
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
                    order, first, total = position["order"], position["batch"], position["total"].clone()
                    skipped, spent, position = position["skipped"], position["seconds"], None
                else:
                    order = torch.randperm(n, generator=data_rng)
                    first, total, skipped, spent = 0, torch.zeros(()), 0, 0.0
                shown = first
                for b in range(first, batches):
                    x = train_x[order[b * bs:(b + 1) * bs]]                   # [bs, D]
                    if data.binarization == "dynamic":
                        x = torch.bernoulli(x, generator=data_rng)
                    if dp is None:             # loss; zero_grad; backward; opt.step()
                        loss = train_step(x)
                    else:                      # this rank's slice of x; DDP averages the gradients
                        loss = dp.loss(x)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
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
                                    data=data, config=config, fingerprint=fingerprint,
                                    position={"batch": b + 1, "order": order, "total": total,
                                              "skipped": skipped, "seconds": spent}), ckpt_path)
                        saved_any = True
                        raise Interrupted(epoch + 1, b + 1, run_dir, data_dir, signals.received)
                    if b % 100 == 99:
                        bar.set_postfix(epoch=epoch + 1, bound=f"{-total.item() / max(b + 1 - skipped, 1):.2f}")
                        bar.update(b + 1 - shown)
                        shown = b + 1
                bar.update(batches - shown)
                seconds = spent + time.perf_counter() - began
                held = evaluate_bound(model, held_x, config.k, ctx=ctx).mean().item()
                good = batches - skipped
                history.append({"epoch": epoch + 1, "steps": steps, "lr": lr,
                                "train_bound": -total.item() / good if good else float("nan"),
                                f"{split}_bound": held, "eval_k": config.k, "seconds": round(seconds, 3),
                                "skipped_steps": skipped})
                save(_state(model, opt, data_rng, start=epoch + 1, steps=steps, history=history,
                            data=data, config=config, fingerprint=fingerprint, position=None), ckpt_path)
                saved_any = True
                write_metrics(metrics_path, history)
                if signals.received:
                    raise Interrupted(epoch + 1, batches, run_dir, data_dir, signals.received)
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
        if lock is not None:
            os.close(lock)
    distributed.barrier(ctx)                   # rank 0's files are complete for every rank
    return model


class Interrupted(TrainingError):
    """SIGINT or SIGTERM stopped training after a step, whose checkpoint was saved."""

    def __init__(self, epoch, step, run_dir, data_dir, signum):
        command = f"iwae train --out {shlex.quote(str(run_dir))} --resume"
        if data_dir is not None:
            command += f" --data-dir {shlex.quote(str(data_dir))}"
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
        norms = torch._foreach_norm([p.grad for p in params])             # one norm per tensor
        if not torch.isfinite(torch.stack(norms).sum()):
            self._tripped = True
            for p in params:
                p.grad = None

    def tripped(self):
        tripped, self._tripped = self._tripped, False
        return tripped

    def remove(self):
        self._handle.remove()


def _state(model, opt, data_rng, *, start, steps, history, data, config, fingerprint, position):
    """A checkpoint: after `start` whole epochs, plus `position` inside the next one (or None)."""
    return {"model": model.state_dict(), "optimizer": opt.state_dict(),
            "torch_rng": torch.get_rng_state(), "data_rng": data_rng.get_state(),
            "epoch": start, "steps": steps, "metrics": history, "position": position,
            "input_dim": data.dim, "config": config.to_dict(), "train_data": fingerprint}


def _fingerprint(train_x):
    """SHA-256 of the training images (shape and values): a resumed run must see the same data."""
    h = hashlib.sha256(f"{tuple(train_x.shape)} {train_x.dtype};".encode())
    h.update(train_x.contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _restore(state, config, model, opt, data_rng, path, fingerprint, n):
    """Load a checkpoint into model, opt and the RNGs; (epoch, steps, metrics, position)."""
    try:
        saved = Config.from_dict(state["config"])
        if _comparable(saved) != _comparable(config):
            diff = [k for k, v in _comparable(config).items() if _comparable(saved)[k] != v]
            raise CheckpointError(f"checkpoint {path} was written by a run with other settings "
                                  f"({', '.join(diff)}) than its config.json")
        if state.get("train_data", fingerprint) != fingerprint:
            raise CheckpointError(f"checkpoint {path} was trained on other data than {config.dataset!r} "
                                  "holds now (its training images changed); start a new run")
        checkpoint.load_state_dict(model, state["model"], path)
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        data_rng.set_state(state["data_rng"])
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


def _lock(run_dir):
    """An exclusive lock on the run directory (released when the process ends, even by SIGKILL)."""
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise TrainingError(f"{run_dir} is in use by another training process") from None
    return fd


def _nothing(*args):
    """What ranks other than 0 write: nothing."""


def _write_metrics(path, history):
    checkpoint.write_text(path, "".join(json.dumps(m) + "\n" for m in history), durable=False)


def _recorded_epochs(metrics_path):
    try:
        return sum(1 for line in metrics_path.read_text().splitlines() if line.strip())
    except (OSError, UnicodeDecodeError):
        return 0


def _rmdir_if_empty(path):
    try:
        path.rmdir()
    except OSError:
        pass


def _comparable(config):
    """The settings a resumed run must share with the original (epochs may grow, and the
    policy for non-finite values may change)."""
    d = config.to_dict()
    d.pop("epochs")
    d.pop("on_nonfinite")
    return d


def load_model(run_dir):
    """The trained model of a run directory (from its checkpoint), ready for log_weights."""
    config = read_config(run_dir)
    path = Path(run_dir) / CHECKPOINT
    state = checkpoint.load(path)
    model = build_model(config, state["input_dim"])
    checkpoint.load_state_dict(model, state["model"], path)
    return model.eval()

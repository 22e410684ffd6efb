"""The one training loop, nanoGPT style: any model, any estimator, any device.

    trained = run(model, spec, source, run)    # spec: a RunSpec; source: a Source; run: an open
                                               # run directory (iwae.training.rundir) or None

``run`` trains any module with ``log_weights(x, k)`` and returns what it learned (the
model, the per-epoch records). Given a run directory it writes metrics.jsonl and a
checkpoint after each epoch, and continues from the directory's checkpoint, reaching the
same parameters, bitwise on the CPU, as a run that was never interrupted: SIGINT/SIGTERM end
the current step and save a mid-epoch checkpoint that also records the position inside the
epoch (its permutation, the batch index, the data RNG after the last batch, the running
bound's sum). Without one it touches no file.

Early stopping (``spec.patience`` = N, in memory only): after each epoch the held-out bound
(``{split}_bound``, of ``source.held``, or of its held-out entries given the rest with
``source.held_given``), or ``source.held_score`` where given and measured, is compared with the best so far; the run stops once N epochs have
passed without a higher one, and the model gets back the parameters of the best epoch
(``Trained.best_epoch``; the history keeps every epoch trained). With ``source.refit`` (the
training rows with their held-out entries back) and ``spec.refit`` = f > 0, training then goes
on from those parameters on ``source.refit`` for ceil(f x the best epoch) more epochs, and the
model keeps where that ends. It is the only stopping rule
of the loop: ``epochs`` stays the most it trains.
"""
import math
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from ..data import binarize
from ..evaluation.likelihood import EVAL_SEED, fixed_binarization, seeded_log_likelihood
from ..evaluation.units import ACTIVE_UNIT_EXAMPLES
from ..runtime import distributed
from ..runtime.optim import make_optimizer
from . import state, tracking
from .guards import FiniteGuard, Interrupted, NonFinite, Signals
from .schedule import learning_rate
from .step import make_step


@dataclass
class Trained:
    """What a run learned: the model (trained in place) and one record per epoch; best_epoch:
    with spec.patience, the epoch whose parameters the model holds (else None)."""

    model: torch.nn.Module
    history: list
    best_epoch: int | None = None

    @property
    def train_bound(self):
        """The last epoch's mean training bound (NaN before any epoch)."""
        return self.history[-1]["train_bound"] if self.history else float("nan")


def run(model, spec, source, run=None, init=None):
    """Train model by spec (a RunSpec) on source (a Source) into run (an open run directory,
    or None: nothing is written); returns a Trained. Epoch e trains at the schedule's lr(e);
    init() runs before training on a new run (it seeds the noise).

    A NaN/Inf loss or gradient raises NonFinite (spec.on_nonfinite="stop", the last good
    checkpoint kept) or skips the batch ("skip", counted as skipped_steps). A signal raises
    Interrupted after saving (with a run directory). Under torchrun the ranks share every
    global batch of spec.batch_size, rank 0 alone writes, and the result equals one
    process's up to float rounding (see iwae.runtime.distributed).
    """
    distributed.per_rank_batch(spec.batch_size, distributed.world_size())   # the global batch divides
    if spec.patience is not None and (source.held is None or run is not None):
        raise ValueError("patience stops on the held-out bound and keeps the best parameters in memory: it "
                         "needs held-out data and no run directory")
    previous = run.state if run is not None else None
    if previous is None and init is not None:
        init()
    trainer = _Trainer(model, spec, source, run)
    if previous is not None:
        trainer.restore(previous)
    distributed.barrier(trainer.ctx)           # every rank has read the run directory; rank 0 writes it
    try:
        trainer.open(source.image_shape)
        with Signals(install=run is not None) as signals:
            if trainer.dp is not None:         # a signal stops every rank after the same step
                signals = distributed.AgreedSignals(signals)
            for epoch in range(trainer.start, spec.epochs):
                trainer.train_epoch(epoch, signals)
                if spec.patience is not None and not trainer.improving():
                    break
            refit = trainer.best is not None and source.refit is not None and spec.refit > 0
            if refit:
                trainer.refit(source.refit, math.ceil(spec.refit * trainer.best[1]), signals)
        trainer.bar.close()
    finally:
        trainer.close()
    distributed.barrier(trainer.ctx)           # rank 0's files are complete for every rank
    if trainer.best is None:
        return Trained(model, trainer.history)
    if not refit:
        model.load_state_dict(trainer.best[2])
    return Trained(model, trainer.history, trainer.best[1])


def batches_per_epoch(rows, batch_size, drop_last=False):
    """Steps in an epoch of `rows` rows: the last batch ragged, or (drop_last, rows >= batch_size)
    left out."""
    return rows // batch_size if drop_last and rows >= batch_size else math.ceil(rows / batch_size)


class _Trainer:
    """The state of one training run between its steps: the model, its optimizer and step,
    the data and its RNG, the position (epoch, steps, metrics) and where it is written."""

    def __init__(self, model, spec, source, run):
        self.model, self.spec, self.run = model, spec, run
        device = next(model.parameters()).device
        self.train_x = source.train.to(device, next(model.parameters()).dtype)
        self.held_x = None if source.held is None else source.held.to(device, self.train_x.dtype)
        self.given_x = None if source.held_given is None else source.held_given.to(device, self.train_x.dtype)
        self.held_score = source.held_score
        self.binarization, self.split, self.dim = source.binarization, source.split, source.dim
        self.device = device
        self.units_x = fixed_binarization(self.train_x[:ACTIVE_UNIT_EXAMPLES].cpu(), self.binarization).to(device)
        self.ctx = distributed.init()          # under torchrun: join the process group (once)
        self.dp = distributed.DataParallel(model, spec.batch_size, self.ctx) if self.ctx.distributed else None
        self.opt = make_optimizer(model.parameters(), spec.lr, spec.adam_betas, spec.adam_eps,
                                  capturable=device.type == "cuda")
        self.batches = batches_per_epoch(self.train_x.shape[0], spec.batch_size, spec.drop_last)
        self.step = make_step(model, self.opt, spec.k, spec.bound, spec.estimator, m=spec.m, beta=spec.beta,
                              alpha=spec.alpha, compile=spec.compile, precision=spec.precision,
                              planned_steps=spec.epochs * self.batches, parallel=self.dp)
        self.data_rng = torch.Generator(device=device if device.type == "cuda" else "cpu").manual_seed(spec.seed + 1)
        self.fingerprint = state.fingerprint(self.train_x)
        self.holes = self.train_x.device.type != "meta" and bool(torch.isnan(self.train_x).any())
        self.start, self.steps, self.history, self.position = 0, 0, [], None
        self.guard, self.board, self.bar = None, None, None
        self.best = None                       # spec.patience: (bound, epoch, parameters) of the best epoch

    def restore(self, previous):
        """Continue from a checkpoint's state (model, optimizer, RNGs, position)."""
        self.start, self.steps, self.history, self.position = state.restore(
            previous, self.spec, self.model, self.opt, self.data_rng, self.run.checkpoint, self.fingerprint,
            self.train_x.shape[0])
        begun = self.start + (self.position is not None)
        if self.spec.epochs < begun:
            raise ValueError(f"epochs {self.spec.epochs} is fewer than the {begun} epoch(s) {self.run.path} "
                             "has trained (or begun); give at least that many")

    def open(self, image_shape):
        """metrics.jsonl as the checkpoint has it (rank 0), TensorBoard and the progress bar."""
        self.guard = FiniteGuard(self.opt)
        main = self.ctx.is_main
        if self.run is not None and main:
            self.run.save_metrics(self.history)
        if self.spec.tensorboard and main:     # events past the checkpoint's step are purged
            self.board = tracking.TensorBoard(self.run.tensorboard, self.spec.tensorboard, self.steps + 1,
                                              image_shape or tracking.image_shape_of(self.dim))
        first = self.position["batch"] if self.position else 0
        name = self.run.path.name if self.run is not None else None
        self.bar = tqdm(total=self.batches * self.spec.epochs, initial=self.batches * self.start + first,
                        disable=self.spec.quiet or not main, desc=name, unit="step", dynamic_ncols=True)

    def train_epoch(self, epoch, signals):
        """One epoch (or the rest of one, after a mid-epoch checkpoint) at the schedule's lr,
        then its record and checkpoint. Raises Interrupted after a signal."""
        lr = learning_rate(epoch, self.spec.schedule, self.spec.lr, self.spec.epochs)
        for group in self.opt.param_groups:
            group["lr"] = lr
        began = time.perf_counter()
        order, first, total, skipped, spent = self._epoch_start()
        shown = first
        for b in range(first, self.batches):
            loss = self._train_step(order, b, signals)
            nonfinite = self.guard.tripped() or not torch.isfinite(loss)
            if nonfinite and self.spec.on_nonfinite == "stop":
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
                raise Interrupted(epoch + 1, b + 1, self.run.path, signals.received)
            if self.board is not None and (b + 1) % self.board.every == 0:
                self.board.running(self.steps, -total.item() / max(b + 1 - skipped, 1))
            if b % 100 == 99:
                self.bar.set_postfix(epoch=epoch + 1, bound=f"{-total.item() / max(b + 1 - skipped, 1):.2f}")
                self.bar.update(b + 1 - shown)
                shown = b + 1
        self.bar.update(self.batches - shown)
        self._end_epoch(epoch, lr, spent + time.perf_counter() - began, total, skipped)
        if signals.received:
            raise Interrupted(epoch + 1, self.batches, self.run.path, signals.received)

    def improving(self):
        """Whether to go on (spec.patience): the last epoch's held-out bound (or held_score,
        where measured), kept with its parameters if it is the best so far, and fewer than
        patience epochs since the best."""
        record = self.history[-1]
        value = record.get("held_score" if self.held_score is not None else f"{self.split}_bound")
        if value is not None and (self.best is None or value > self.best[0] or math.isnan(self.best[0])):
            self.best = (value, record["epoch"], {k: v.detach().clone() for k, v in self.model.state_dict().items()})
        return self.best is None or record["epoch"] - self.best[1] < self.spec.patience

    def refit(self, rows, epochs, signals):
        """After early stopping: from the best epoch's parameters (and the optimizer's state
        as it stopped), `epochs` more epochs on rows (the training rows with their held-out
        entries back), nothing held out; the records go on numbering the epochs."""
        self.model.load_state_dict(self.best[2])
        self.train_x = rows.to(self.device, self.train_x.dtype)
        self.held_x = self.given_x = self.held_score = None
        start = self.history[-1]["epoch"]
        for epoch in range(start, start + epochs):
            self.train_epoch(epoch, signals)

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
        bs = self.spec.batch_size
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
        saved = self.run is not None and self.run.saved_any
        kept = f"the last good checkpoint, {self.run.checkpoint}, is kept" if saved else "no checkpoint was written"
        raise NonFinite(f"non-finite {what} at epoch {epoch + 1}, step {b + 1}; {kept}")

    def _end_epoch(self, epoch, lr, seconds, total, skipped):
        """The epoch's record (bounds, speed, diagnostics) into metrics.jsonl, a checkpoint,
        TensorBoard."""
        good = self.batches - skipped
        record = {"epoch": epoch + 1, "steps": self.steps, "lr": lr,
                  "train_bound": -total.item() / good if good else float("nan")}
        if self.held_score is not None:
            score = self.held_score(self.model, epoch + 1)
            if score is not None:
                record["held_score"] = score
        elif self.held_x is not None:
            bound = seeded_log_likelihood(self.model, self.held_x, self.spec.k, ctx=self.ctx)
            if self.given_x is not None:       # the held-out entries given the rest of their rows
                bound = bound - seeded_log_likelihood(self.model, self.given_x, self.spec.k, ctx=self.ctx)
            record[f"{self.split}_bound"] = bound.mean().item()
            record["eval_k"] = self.spec.k
        record.update({"seconds": round(seconds, 3), "steps_per_second": round(self.batches / seconds, 2),
                       "skipped_steps": skipped})
        if self.spec.diagnostics:
            record.update(tracking.diagnostics(self.model, self.spec.k, self.held_x, self.units_x, EVAL_SEED))
        self.history.append(record)
        if (epoch + 1) % self.spec.checkpoint_every == 0 or epoch + 1 == self.spec.epochs:
            self._save(epoch + 1, None, self.history)
        if self.board is not None:
            self.board.epoch(record, self.model, self.held_x, EVAL_SEED)

    def _save(self, start, position, history=None):
        """A checkpoint after `start` whole epochs and `position` inside the next (rank 0),
        with metrics.jsonl when history is given; nothing without a run directory."""
        if self.run is not None:
            self.run.save(state.capture(self.model, self.opt, self.data_rng, start=start, steps=self.steps,
                                        history=self.history, dims={"input_dim": self.dim}, spec=self.spec,
                                        fingerprint=self.fingerprint, position=position), history)

    def close(self):
        if self.guard is not None:
            self.guard.remove()
        if self.board is not None:
            self.board.close()

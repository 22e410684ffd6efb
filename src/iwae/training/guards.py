"""What stops a run between two steps: a signal (SIGINT, SIGTERM) or a non-finite gradient."""
import signal
import threading

import torch

from ..runtime import torch_private
from .rundir import TrainingError


class Interrupted(TrainingError):
    """SIGINT or SIGTERM stopped training after a step, whose checkpoint was saved."""

    def __init__(self, epoch, step, run_dir, signum, resume_with=None):
        how = f"resume with: {resume_with}" if resume_with else f"{run_dir} holds its checkpoint"
        super().__init__(f"interrupted at epoch {epoch}, step {step}; {how}")
        self.epoch, self.step, self.run_dir, self.signum = epoch, step, run_dir, signum

    def resumed_with(self, command):
        """This interruption, saying which command resumes it."""
        return Interrupted(self.epoch, self.step, self.run_dir, self.signum, command)


class NonFinite(TrainingError):
    """A NaN/Inf loss or gradient under on_nonfinite="stop"."""


class Signals:
    """Record SIGINT/SIGTERM instead of dying, so the loop can stop after the current step.

    A second signal raises KeyboardInterrupt at once. Outside the main thread (where
    handlers cannot be installed), or with install=False (a run with no directory to save
    into), this does nothing.
    """

    def __init__(self, install=True):
        self.received, self.previous, self.install = None, {}, install

    def __enter__(self):
        if self.install and threading.current_thread() is threading.main_thread():
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


class FiniteGuard:
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

"""Several processes, one run: data-parallel training and evaluation under torchrun.

``torchrun --nproc_per_node N -m iwae train ...`` (or ``torchrun ... $(which iwae) train``)
starts N processes; ``init()`` reads torchrun's RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR
and MASTER_PORT and joins them into one process group (gloo for CPU tensors; where CUDA is
available also NCCL for CUDA tensors). Without those variables, or with WORLD_SIZE=1,
everything here is the single-process identity and no process group is made.

Training (``iwae.fit``): ``--batch-size`` is the GLOBAL batch (default 20, the paper's);
each of the W ranks takes a contiguous 1/W of every global batch (batch / W examples, so the
batch must divide by W). The permutation, the binarization draws and the model's sample
noise all come from generators seeded identically on every rank: each rank draws the whole
global batch's binarization and eps and keeps its slice (``DataParallel``), so example j of
a global batch sees the same noise whatever W is, and W ranks reach the parameters of one
process up to float rounding. Each rank runs the same training step as one process
(iwae.training.step) on its shard, and one all-reduce averages the gradients; every rank's loss is
the mean over its shard, so the average over equal shards is the global batch mean (an
epoch's shorter last batch is split as evenly as it goes and reweighted).
Rank 0 alone writes the run directory (config, metrics, checkpoints) and prints.

Evaluation (``iwae.evaluation.likelihood.seeded_log_likelihood``): the noise of each block
of ``block`` consecutive
examples is seeded from (seed, the block's global index), so the result does not depend on
how the blocks are spread over ranks; each rank evaluates a contiguous run of blocks and a
sum-all-reduce of zero-padded vectors gives every rank the full per-example vector, equal to
the single-process one.
"""
import datetime
import os
import signal
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode


ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
TIMEOUT = datetime.timedelta(minutes=30)      # a rank that waits longer than this gives up


@dataclass(frozen=True)
class Context:
    """Where this process stands: rank r of world_size (1: no process group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self):
        return self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0


SINGLE = Context()
_owned = False                                  # whether init() made the process group


def launched(environ=None):
    """True when torchrun (or an equivalent launcher) asks for more than one process."""
    environ = os.environ if environ is None else environ
    try:
        return int(environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        raise ValueError(f"WORLD_SIZE must be an integer, got {environ['WORLD_SIZE']!r}") from None


def world_size(environ=None):
    """The number of processes torchrun starts (WORLD_SIZE; 1 without torchrun)."""
    environ = os.environ if environ is None else environ
    return int(environ.get("WORLD_SIZE", "1")) if launched(environ) else 1


def rank(environ=None):
    """This process's rank: the process group's, else torchrun's RANK variable, else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    environ = os.environ if environ is None else environ
    try:
        return int(environ.get("RANK", "0"))
    except ValueError:
        return 0


def joined():
    """Whether this process is in a process group of several ranks."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def backend(cuda=None):
    """gloo for CPU tensors, plus NCCL for CUDA tensors where CUDA is available."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    return "cpu:gloo,cuda:nccl" if cuda and dist.is_nccl_available() else "gloo"


def init(timeout=TIMEOUT):
    """Join the process group torchrun describes (once; later calls return the same Context)."""
    global _owned
    if dist.is_available() and dist.is_initialized():
        return current()
    if not launched():
        return SINGLE
    missing = [name for name in ENV_VARS if name not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} "
                         f"{'is' if len(missing) == 1 else 'are'} not set; launch with torchrun")
    if not dist.is_available():
        raise ValueError("this torch build has no torch.distributed; run with one process")
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    dist.init_process_group(backend(), init_method="env://", timeout=timeout)
    _owned = True
    return current()


def current():
    """The Context of this process, without joining anything."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def is_main():
    """Whether this process should log, plot and write files: rank 0 (of the process group,
    else of torchrun's RANK variable), or a single process."""
    return rank() == 0


def cleanup():
    """Leave the process group if init() made it."""
    global _owned
    if _owned and dist.is_initialized():
        dist.destroy_process_group()
    _owned = False


def barrier(ctx):
    if ctx.distributed:
        dist.barrier()


def split_sizes(n, world_size):
    """n items over world_size ranks, as evenly as they go (the first n % W get one more)."""
    base, extra = divmod(n, world_size)
    return [base + (r < extra) for r in range(world_size)]


def shard_range(n, ctx):
    """(start, stop) of this rank's contiguous share of n items."""
    sizes = split_sizes(n, ctx.world_size)
    start = sum(sizes[:ctx.rank])
    return start, start + sizes[ctx.rank]


def per_rank_batch(batch_size, world_size):
    """The per-rank batch of a global batch; ValueError unless the world size divides it."""
    if batch_size % world_size:
        raise ValueError(f"--batch-size {batch_size} is the global batch and must be divisible by the "
                         f"{world_size} processes (per-rank batch = batch / processes); use a multiple "
                         f"of {world_size} or another --nproc_per_node")
    return batch_size // world_size


class _SlicedNoise(TorchFunctionMode):
    """Inside it, torch.randn((k, b, d)) for a shard of b examples draws the global batch's
    (k, batch, d) noise from the same generator and returns this shard's slice, so every
    rank consumes the global RNG exactly as a single process on the whole batch would."""

    def __init__(self, batch, start, size):
        super().__init__()
        self.batch, self.start, self.size = batch, start, size

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not torch.randn:
            return func(*args, **kwargs)
        shape = tuple(args[0]) if len(args) == 1 and not isinstance(args[0], int) else tuple(args)
        if len(shape) != 3 or shape[1] != self.size:
            raise RuntimeError(f"distributed training expects the model to draw its noise as "
                               f"torch.randn((k, batch, d)); got torch.randn{shape}")
        full = func((shape[0], self.batch, shape[2]), **kwargs)
        return full[:, self.start:self.start + self.size]


class DataParallel:
    """A step's gradients over W ranks: each rank computes its shard of every global batch,
    with the global batch's noise (_SlicedNoise), and one all-reduce averages the gradients.

    The shard's loss and gradients are weighted by b * W / batch, so that the average over
    ranks is the gradient of the global batch mean (the factor is exactly 1 for equal
    shards). A rank with no examples (a last batch smaller than W) still draws the noise
    and contributes zeros. The parameters start as rank 0's (broadcast once).
    """

    def __init__(self, model, batch_size, ctx):
        self.ctx = ctx
        self.per_rank = per_rank_batch(batch_size, ctx.world_size)
        with torch.no_grad():
            for tensor in list(model.parameters()) + list(model.buffers()):
                dist.broadcast(tensor, src=0)

    def gradients(self, fn, model, params, x, k):
        """fn(params, shard) -> (loss, grads) on this rank's shard of the global batch x
        [B, D]; returns this rank's weighted loss and the gradients averaged over ranks."""
        batch = x.shape[0]
        start, stop = shard_range(batch, self.ctx)
        shard = x[start:stop]
        with _SlicedNoise(batch, start, stop - start):
            if stop == start:
                with torch.no_grad():
                    model.log_weights(shard, k)                   # the RNG draws only
                loss, grads = torch.zeros((), device=x.device), [torch.zeros_like(p) for p in params]
            else:
                loss, grads = fn(params, shard)
        weight = (stop - start) * self.ctx.world_size / batch
        flat = torch.cat([g.reshape(-1) for g in grads]) * (weight / self.ctx.world_size)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        grads = [g.view_as(p) for g, p in zip(flat.split([p.numel() for p in params]), params)]
        return loss * weight, grads

    def reduce(self, loss, signals=None):
        """The global batch's loss (detached), the same on every rank, in one all-reduce that
        also tells ``signals`` (an AgreedSignals) whether any rank has received a signal."""
        local = signals is not None and signals.signals.received is not None
        both = torch.stack([loss.detach().double().reshape(()),
                            torch.tensor(float(local), dtype=torch.float64, device=loss.device)])
        dist.all_reduce(both, op=dist.ReduceOp.SUM)
        if signals is not None and both[1] > 0 and signals.received is None:
            signals.received = signals.signals.received or signal.SIGTERM
        return (both[0] / self.ctx.world_size).to(loss.dtype)


class AgreedSignals:
    """The training loop's signal handler (iwae.training.loop.Signals) as the ranks agree
    on it: ``received`` is set on every rank after the same step (DataParallel.reduce), so all ranks stop there and rank 0 saves that step."""

    def __init__(self, signals):
        self.signals, self.received = signals, None

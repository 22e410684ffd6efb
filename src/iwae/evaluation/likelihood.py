"""The L_k estimate of log p(x), for any module with ``log_weights(x, k)``, and its seeded
form that gives the same numbers on any number of processes."""
import math

import numpy as np
import torch
import torch.distributed as dist

from ..core.validate import positive_int
from ..data.dataset import binarize
from ..runtime import distributed
from ..runtime.compile import compiled, flushed_subnormals
from ..runtime.decisions import decide
from ..runtime.rng import forked_rng

EVAL_SEED = 1234            # binarization and sample noise of every evaluation

CHUNK_BYTES = 6 << 20       # a chunk's [rows, D] floats: 2006 rows of 784 (see log_likelihood)


def log_likelihood(model, x, k=5000, *, batch_size=100, max_samples=16384, with_elbo=False,
                   compile="auto"):
    """L_k = logsumexp_i log w_i - log k per datapoint: x [N, D] -> float64 [N].

    Runs over x in batches of ``batch_size`` and over the k samples in chunks of at most
    ``max_samples`` (datapoints x samples), combining chunks with a running logsumexp, so
    memory depends on max_samples, not on k. Test NLL = -log_likelihood(...).mean().
    with_elbo: also return the k-sample ELBO (mean log w) from the same samples, [N].

    Chunks are further capped at CHUNK_BYTES of [rows, D] data (2006 rows of 784 floats, 20
    samples of a batch of 100, so that k = 5000 is 250 chunks of one shape): the likelihood
    reads the decoder's output soon after it is written (rows per chunk against time per
    image: docs/speed.md). Runs ``model.log_weights`` under torch.inference_mode with subnormals
    flushed (CPU); compile: "auto" compiles it (torch.compile, the same samples) where this
    machine's probe predicts that k * N * D repays the compiling (iwae.runtime.decisions),
    "step" always, "off" never.
    """
    positive_int("k", k)
    if batch_size < 1 or max_samples < 1:
        raise ValueError("batch_size and max_samples must be >= 1")
    row_bytes = x.element_size() * x[0].numel()
    log_weights = _log_weights
    if decide(compile, "likelihood", k * x.numel(), x.device) == "step":
        log_weights = _compiled(x.device)
    out, elbo = [], []
    with torch.inference_mode(), flushed_subnormals(x.device):
        for xb in x.split(batch_size):
            chunk = chunk_samples(xb.shape[0], row_bytes, max_samples)
            total = torch.full((xb.shape[0],), -math.inf, dtype=torch.float64, device=xb.device)
            mean = torch.zeros(xb.shape[0], dtype=torch.float64, device=xb.device)
            for start in range(0, k, chunk):
                log_w = log_weights(model, xb, min(chunk, k - start)).double()           # [c, b]
                total = torch.logaddexp(total, torch.logsumexp(log_w, 0))
                mean += log_w.sum(0) / k
            out.append(total - math.log(k))
            elbo.append(mean)
        out, elbo = torch.cat(out), torch.cat(elbo)
    out, elbo = out.clone(), elbo.clone()                  # ordinary tensors, not inference ones
    return (out, elbo) if with_elbo else out


def chunk_samples(batch, row_bytes, max_samples=16384):
    """Samples per chunk of log_likelihood for a batch of `batch` datapoints of `row_bytes`
    bytes each: chunk x batch rows, at most max_samples and CHUNK_BYTES of [rows, D] data."""
    rows = max(1, min(max_samples, CHUNK_BYTES // max(1, row_bytes)))
    return max(1, rows // batch)


def _log_weights(model, x, k):
    return model.log_weights(x, k)


_compiled_log_weights = {}


def _compiled(device):
    """_log_weights compiled for a device type (the model is an argument: one cache for all)."""
    if device.type not in _compiled_log_weights:
        _compiled_log_weights[device.type] = compiled(_log_weights, device)
    return _compiled_log_weights[device.type]


def fixed_binarization(x, binarization, seed=EVAL_SEED):
    """Held-out images as every evaluation sees them: binarized once (data.binarize) with a
    fixed seed, EVAL_SEED unless given, so that evaluations of a run agree; unchanged unless
    'dynamic'. NaN entries (missing pixels) stay NaN, the others get the same draws as
    without them."""
    if binarization != "dynamic":
        return x
    return binarize(x, torch.Generator().manual_seed(seed))


def block_seed(seed, index):
    """The seed of evaluation block `index` (a 63-bit integer mixing seed and index)."""
    state = np.random.SeedSequence([seed % 2 ** 64, index]).generate_state(1, dtype=np.uint64)[0]
    return int(state) & (2 ** 63 - 1)


@torch.no_grad()
def seeded_log_likelihood(model, x, k, *, seed=EVAL_SEED, block=100, max_samples=16384, with_elbo=False,
                          ctx=distributed.SINGLE, progress=None, compile="auto"):
    """L_k per example of x [N, D] (float64 [N]) with the noise of block j of ``block`` examples
    (examples j*block .. j*block+block-1) drawn after torch.manual_seed(block_seed(seed, j)).

    With ctx.distributed, rank r evaluates its contiguous run of blocks and every rank gets
    the full vector (zero-padded shares, summed: bitwise the single-process result).
    The caller's RNG state is left as it was. progress: wraps the iterable of this
    rank's blocks (tqdm, say). with_elbo: also the k-sample ELBO per example. compile: as
    for log_likelihood, "auto" deciding on the whole of x (k * N * D), not on one block.
    """
    positive_int("block", block)
    compile = decide(compile, "likelihood", k * x.numel(), x.device)
    n = x.shape[0]
    blocks = -(-n // block)
    first, last = distributed.shard_range(blocks, ctx)
    ll = torch.zeros(n, dtype=torch.float64, device=x.device)
    elbo = torch.zeros(n, dtype=torch.float64, device=x.device)
    mine = range(first, last)
    with forked_rng(x.device):
        for j in (progress(mine) if progress else mine):
            torch.manual_seed(block_seed(seed, j))
            rows = slice(j * block, min((j + 1) * block, n))
            ll[rows], elbo[rows] = log_likelihood(model, x[rows], k, batch_size=block,
                                                  max_samples=max_samples, with_elbo=True, compile=compile)
    if ctx.distributed:
        both = torch.stack([ll, elbo])
        dist.all_reduce(both, op=dist.ReduceOp.SUM)
        ll, elbo = both[0], both[1]
    return (ll, elbo) if with_elbo else ll

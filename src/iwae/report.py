"""The numbers a trained run is judged by: test NLL from L_k, active units, the KL gap."""
import math
import time

import numpy as np
import torch
from tqdm import tqdm

from . import distributed
from .annealing import ais, bdmc
from .evaluation import active_units, unit_kl
from .config import read_config
from .rundir import EVAL_SEED, fixed_binarization, load_model, prepare

ACTIVE_UNIT_EXAMPLES = 500
BDMC_EXAMPLES = 100         # images simulated from the model for `iwae evaluate --method bdmc`
INFORMATIVE_NATS = 0.05     # a unit with mean KL(q || its prior) above this carries information


def evaluate_run(run_dir, *, k=5000, limit=None, split="test", data_dir=None, seed=EVAL_SEED,
                 per_example=None, quiet=True, batch_size=100, device="cpu"):
    """Evaluate a run: -mean L_k over the split, active units, and KL(q||p) ~ L_k - ELBO.

    Returns a dict with test_nll (or train_nll), k, n_test (or n_train), active_units,
    elbo_nll, kl_gap, and units(): unit_variances, unit_kl (nats per unit) and
    informative_units (units with unit_kl > INFORMATIVE_NATS, per layer). The images are
    binarized once with a fixed seed; the sample noise of each block of batch_size images is
    seeded from (seed, block index), so under torchrun the ranks share the blocks and every
    rank returns the single-process numbers. device: where the model runs ('auto', 'cpu',
    'cuda', 'cuda:N'); the numbers are computed in float32 there and accumulated in float64.
    """
    model, data, train_x, x = _load(run_dir, split, limit, data_dir, seed, device)
    ctx = distributed.init()                       # under torchrun: join the process group (once)
    bar = lambda blocks: tqdm(blocks, disable=quiet or not ctx.is_main, desc=f"L_{k}", unit="batch")
    ll, elbo = distributed.seeded_log_likelihood(model, x, k, seed=seed, block=batch_size, with_elbo=True,
                                                 ctx=ctx, progress=bar)
    if per_example is not None and ctx.is_main:
        np.save(per_example, ll.cpu().numpy())
    nll = -ll.mean().item()
    return {f"{split}_nll": nll, "k": k, f"n_{split}": int(x.shape[0]),
            "elbo_nll": -elbo.mean().item(), "kl_gap": -elbo.mean().item() - nll,
            **units(model, train_x, data.binarization, seed)}


def _load(run_dir, split, limit, data_dir, seed, device):
    """(model on device, dataset, training images on device, the split's first `limit`
    images binarized once with the seed, on device)."""
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    config = read_config(run_dir)
    model = load_model(run_dir, device)
    device = next(model.parameters()).device
    data, train_x, _, _ = prepare(config, data_dir)
    x = (data.test if split == "test" else train_x)[:limit]
    return model, data, train_x.to(device), fixed_binarization(x, data.binarization, seed).to(device)


def evaluate_ais(run_dir, *, method="ais", steps=500, chains=8, leapfrog=10, init="q", limit=None,
                 split="test", data_dir=None, seed=EVAL_SEED, quiet=True, device="cpu"):
    """log p(x) of a run's model by AIS on the split's images (method "ais"), or the BDMC
    bounds on `limit` (default 100) images simulated from it (method "bdmc"); a dict with the
    settings, the NLLs in nats and the seconds taken. See iwae.ais."""
    started = time.perf_counter()
    settings = {"steps": steps, "chains": chains, "leapfrog": leapfrog, "init": init}
    if method == "ais":
        model, _, _, x = _load(run_dir, split, limit, data_dir, seed, device)
        log_p = ais(model, x, seed=seed, progress=not quiet, **settings)
        return {"method": "ais", f"{split}_nll": -log_p.mean().item(), f"n_{split}": int(x.shape[0]),
                "standard_error": (log_p.std() / math.sqrt(len(log_p))).item() if len(log_p) > 1 else None,
                **settings, "seconds": round(time.perf_counter() - started, 1)}
    if method == "bdmc":
        model = load_model(run_dir, device)
        result = bdmc(model, limit or BDMC_EXAMPLES, seed=seed, progress=not quiet, **settings)
        return {"method": "bdmc", "n_simulated": int(result["x"].shape[0]),
                "lower_nll": -result["lower"].mean().item(), "upper_nll": -result["upper"].mean().item(),
                "gap": result["gap"].item(), **settings, "seconds": round(time.perf_counter() - started, 1)}
    raise ValueError(f"method must be iwae, ais or bdmc, got {method!r}")


def units(model, train_x, binarization, seed=EVAL_SEED):
    """Active and informative units of a model on the first ACTIVE_UNIT_EXAMPLES training
    images: active_units and unit_variances (Burda's A_u), informative_units and unit_kl."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        units_x = fixed_binarization(train_x[:ACTIVE_UNIT_EXAMPLES].cpu(), binarization, seed).to(train_x.device)
        counts, variances = active_units(model, units_x)
        kl = unit_kl(model, units_x)
    return {"active_units": counts, "unit_variances": [v.tolist() for v in variances],
            "informative_units": [int((u > INFORMATIVE_NATS).sum()) for u in kl],
            "unit_kl": [u.tolist() for u in kl]}


def run_units(run_dir, data_dir=None, device="cpu"):
    """units() for a run directory's trained model, on the data set it was trained on."""
    config = read_config(run_dir)
    data, train_x, _, _ = prepare(config, data_dir)
    model = load_model(run_dir, device)
    return units(model, train_x.to(next(model.parameters()).device), data.binarization)

"""The numbers a trained run is judged by: test NLL from L_k, active units, the KL gap."""
import numpy as np
import torch
from tqdm import tqdm

from . import distributed
from .evaluation import active_units, unit_kl
from .config import read_config
from .rundir import EVAL_SEED, fixed_binarization, load_model, prepare

ACTIVE_UNIT_EXAMPLES = 500
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
    config = read_config(run_dir)
    model = load_model(run_dir, device)
    device = next(model.parameters()).device
    data, train_x, _, _ = prepare(config, data_dir)
    train_x = train_x.to(device)
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    x = data.test if split == "test" else train_x
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        x = x[:limit]
    x = fixed_binarization(x, data.binarization, seed).to(device)
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

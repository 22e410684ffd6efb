"""What a run reports each epoch besides its bounds, and TensorBoard.

``diagnostics`` measures, at the end of every epoch and for every run, the numbers IWAE users
watch: how many of the k samples carry the weight (the effective sample size of the
normalised weights, as a fraction of k, and the spread max - min of the log weights, both
averaged over held-out examples) and the active units (Burda's A_u). They go to
metrics.jsonl always; with the spec's ``tensorboard=N`` (``iwae train --tensorboard N``) the loop also
writes them, the running train bound every N steps, the learning rate, steps per second,
skipped steps, and grids of prior samples and reconstructions, as TensorBoard events in
RUN/tensorboard (rank 0 only). A resumed run purges the events past its checkpoint's step
(those of a killed process that the checkpoint does not hold), so every step is logged once;
a kill between an epoch's checkpoint and its events loses that epoch's events, never
duplicates them.
"""
import math

import numpy as np
import torch

from ..evaluation.units import active_units, effective_sample_size
from ..runtime.rng import forked_rng

DIAGNOSTIC_EXAMPLES = 100      # held-out examples for the effective sample size
SAMPLES, RECONSTRUCTED = 64, 8
SCALARS = {"train_bound": "bound/train", "test_bound": "bound/test", "valid_bound": "bound/valid",
           "lr": "optimizer/lr", "steps_per_second": "speed/steps_per_second",
           "skipped_steps": "steps/skipped", "ess_fraction": "weights/ess_fraction",
           "log_weight_spread": "weights/log_weight_spread"}
INSTALL = 'pip install "iwae[tensorboard]"'
GAP = 2                 # pixels between and around the tiles of an image grid
GAP_VALUE = 0.5         # their grey level


def require_tensorboard():
    """The SummaryWriter class, or ValueError naming the install command (before training starts)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError(f"TensorBoard events need the tensorboard package: {INSTALL}") from None
    return SummaryWriter


@torch.no_grad()
def diagnostics(model, k, held_x, units_x, seed):
    """{ess_fraction, log_weight_spread, active_units} at the model's current parameters:
    ESS / k and max - min of log w at k samples, means over the first DIAGNOSTIC_EXAMPLES
    held-out examples (None without them); active units per layer on units_x (None for a
    model without ``encode``). Seeded; the caller's RNG streams are left as they were."""
    out = {"ess_fraction": None, "log_weight_spread": None, "active_units": None}
    with forked_rng(next(model.parameters()).device):
        torch.manual_seed(seed)
        if held_x is not None:
            log_w = model.log_weights(held_x[:DIAGNOSTIC_EXAMPLES], k).double()       # [k, B]
            out["ess_fraction"] = (effective_sample_size(log_w).mean() / k).item()
            out["log_weight_spread"] = (log_w.max(0).values - log_w.min(0).values).mean().item()
        if callable(getattr(model, "encode", None)):            # seeded as iwae evaluate's
            torch.manual_seed(seed)
            out["active_units"] = active_units(model, units_x)[0]
    return out


class TensorBoard:
    """Event files in RUN/tensorboard, written by rank 0; every `every` steps the running
    train bound, every epoch the record's scalars and the image grids."""

    def __init__(self, folder, every, purge_step, image_shape):
        SummaryWriter = require_tensorboard()
        self.every, self.image_shape = every, image_shape
        self.writer = SummaryWriter(str(folder), purge_step=purge_step)

    def running(self, step, bound):
        self.writer.add_scalar("bound/train_running", bound, step)

    def epoch(self, record, model, held_x, seed):
        step = record["steps"]
        for key, tag in SCALARS.items():
            value = record.get(key)
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(tag, value, step)
        self.writer.add_scalar("epoch", record["epoch"], step)
        for layer, count in enumerate(record.get("active_units") or [], 1):
            self.writer.add_scalar(f"units/active_layer{layer}", count, step)
        if self.image_shape is not None and callable(getattr(model, "sample", None)):
            with torch.no_grad(), forked_rng(next(model.parameters()).device):
                torch.manual_seed(seed)
                samples = model.sample(SAMPLES)
                self.writer.add_image("images/prior_samples", self._grid(samples, 8), step, dataformats="HW")
                if held_x is not None and callable(getattr(model, "reconstruct", None)):
                    x = held_x[:RECONSTRUCTED]
                    both = torch.cat([x.to(samples), model.reconstruct(x)])
                    self.writer.add_image("images/reconstructions", self._grid(both, len(x)), step,
                                          dataformats="HW")
        self.writer.flush()

    def _grid(self, images, nrow):
        return grid_array(images, self.image_shape, nrow)

    def close(self):
        self.writer.close()


def image_shape_of(dim):
    """(H, W) for square images of dim pixels, else None (no image grids)."""
    side = math.isqrt(dim)
    return (side, side) if side * side == dim else None


def grid_array(images, image_shape, nrow=10):
    """images [N, H*W] (values in [0, 1]) tiled nrow to a row, as uint8 grey levels
    [rows * (H + 2) + 2, min(nrow, N) * (W + 2) + 2]: image i in row i // nrow, column i % nrow."""
    images = torch.as_tensor(images).detach().cpu().float().numpy()
    h, w = image_shape
    if images.ndim != 2 or images.shape[0] == 0 or images.shape[1] != h * w:
        raise ValueError(f"expected images [N >= 1, {h * w}] for image_shape {tuple(image_shape)}, "
                         f"got {list(images.shape)}")
    cols = min(nrow, len(images))
    rows = math.ceil(len(images) / cols)
    grid = np.full((rows * (h + GAP) + GAP, cols * (w + GAP) + GAP), GAP_VALUE, np.float32)
    for i, image in enumerate(images.reshape(-1, h, w)):
        top, left = GAP + (i // cols) * (h + GAP), GAP + (i % cols) * (w + GAP)
        grid[top:top + h, left:left + w] = image
    return np.rint(np.clip(grid, 0, 1) * 255).astype(np.uint8)

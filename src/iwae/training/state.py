"""A run's state between two steps as a checkpoint holds it, and its restoration.

The state is everything that makes a resumed run equal, bitwise on the CPU, to one never
stopped: model, optimizer, the global and the data RNGs, epochs and steps done, the metrics
so far, the position inside an interrupted epoch (its permutation, the batch index, the running
bound's sum), the spec and a fingerprint of the training data.
"""
import hashlib
import math

import torch

from .checkpoint import CheckpointError, load_state_dict
from .spec import spec_of

POSITION = ("batch", "order", "total", "skipped", "seconds")


def capture(model, opt, data_rng, *, start, steps, history, dims, spec, fingerprint, position):
    """A checkpoint: after `start` whole epochs, plus `position` inside the next one (or None)."""
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(),
             "torch_rng": torch.get_rng_state(), "data_rng": data_rng.get_state(),
             "epoch": start, "steps": steps, "metrics": history, "position": position,
             "config": spec.to_dict(), "train_data": fingerprint, **dims}
    device = next(model.parameters()).device
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def fingerprint(train_x):
    """SHA-256 of the training data (shape and values): a resumed run must see the same data."""
    h = hashlib.sha256(f"{tuple(train_x.shape)} {train_x.dtype};".encode())
    if train_x.device.type != "meta":
        h.update(train_x.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def restore(state, spec, model, opt, data_rng, path, print_, n):
    """Load a checkpoint into model, opt and the RNGs; (epoch, steps, metrics, position).
    print_: the fingerprint of the training data now; n: its number of rows."""
    try:
        _check_same_run(state, spec, path, print_)
        load_state_dict(model, state["model"], path)
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
        if not (isinstance(epoch, int) and isinstance(steps, int) and 0 <= epoch and 0 <= steps):
            raise ValueError("bad epoch or step count")
        position = _position(state.get("position"), n, spec.batch_size)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path} is incomplete or inconsistent: {reason[:200]}") from None
    return epoch, steps, history, position


def _check_same_run(state, spec, path, print_):
    diff = spec.differences(spec_of(state["config"]))
    if diff:
        raise CheckpointError(f"checkpoint {path} was written by a run with other settings "
                              f"({', '.join(diff)}) than its config.json")
    if state.get("train_data", print_) != print_:
        data = getattr(spec, "dataset", None) or spec.data
        raise CheckpointError(f"checkpoint {path} was trained on other data than {data!r} holds now "
                              "(its training images changed); start a new run")


def _position(position, n, batch_size):
    """A checkpoint's position inside an epoch, checked against n training rows (or None)."""
    if position is None:
        return None
    position = {key: position[key] for key in POSITION}
    order, batch = position["order"], position["batch"]
    if not (isinstance(batch, int) and 0 <= batch <= math.ceil(n / batch_size)
            and isinstance(order, torch.Tensor) and order.dtype == torch.int64
            and order.shape == (n,) and torch.equal(order.sort().values, torch.arange(n))):
        raise ValueError("its position inside the epoch does not fit the training data")
    return position

"""A run's configuration: validated once, saved as config.json, rebuilt into a model.

``TrainConfig`` holds what the training loop (``iwae.fit``) needs, for any model;
``Config`` adds the paper network and dataset that ``iwae train`` builds from its flags.
"""
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.densities import Bernoulli, Gaussian
from ..core.model import PAPER_LAYERS, SCALES, paper_model
from ..core.objective import check
from ..data import LIKELIHOODS, VALIDATIONS
from ..runtime.atomic import write_json
from ..runtime.compile import COMPILES
from ..runtime.devices import parse_device
from .schedule import SCHEDULES
from .step import check_precision

NONFINITE_POLICIES = ("stop", "skip")


@dataclass
class TrainConfig:
    """The training loop's settings (paper defaults)."""

    objective: str = "iwae"            # vae (= elbo) | iwae | miwae | ciwae | piwae
    estimator: str = "standard"        # standard | stl | dreg | rws
    k: int = 5
    m: int | None = None
    beta: float | None = None
    epochs: int = 10
    seed: int = 0
    batch_size: int = 20
    schedule: str = "paper"            # paper | code | constant
    lr: float = 1e-3
    adam_betas: tuple = (0.9, 0.999)
    adam_eps: float = 1e-4
    eval_examples: int = 1000          # held-out images for the per-epoch L_k
    on_nonfinite: str = "stop"         # a NaN/Inf loss or gradient: stop | skip the batch
    device: str = "auto"               # auto | cpu | cuda | cuda:N
    compile: str = "auto"              # auto | off | step (see iwae.training.step)
    precision: str = "fp32"            # fp32 | bf16 (the nets' matmuls) | tf32 (CUDA matmuls)
    tensorboard: int = 0               # TensorBoard events, the running bound every N steps (0: none)
    model: str | None = None           # iwae.fit: the model's class (None: the paper's nets)
    data: str | None = None            # iwae.fit: a dataset name or "tensor [N, D]"

    TYPES = {"objective": str, "estimator": str, "k": int, "m": (int, type(None)),
             "beta": (float, int, type(None)), "epochs": int, "seed": int, "batch_size": int,
             "schedule": str, "lr": (float, int), "adam_betas": (tuple, list),
             "adam_eps": (float, int), "eval_examples": int, "on_nonfinite": str, "device": str,
             "compile": str, "precision": str, "tensorboard": int, "model": (str, type(None)),
             "data": (str, type(None))}

    def validate(self):
        """Raise ValueError naming the first bad setting."""
        for name, types in self.TYPES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, types):
                raise ValueError(f"{name} has the wrong type: {value!r}")
        check(self.objective, self.estimator, self.k, self.m, self.beta)
        for name in ("epochs", "batch_size", "eval_examples"):
            if getattr(self, name) < (0 if name == "epochs" else 1):
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not 0 <= self.seed < 2 ** 63 - 1:
            raise ValueError(f"seed must be in [0, 2**63 - 1), got {self.seed}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not (math.isfinite(self.lr) and self.lr > 0 and math.isfinite(self.adam_eps)
                and self.adam_eps > 0):
            raise ValueError(f"lr and adam_eps must be finite and > 0, got {self.lr!r} and {self.adam_eps!r}")
        if len(self.adam_betas) != 2 or not all(
                isinstance(b, (float, int)) and not isinstance(b, bool) and 0 <= b < 1
                for b in self.adam_betas):
            raise ValueError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")
        if self.on_nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"on_nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, "
                             f"got {self.on_nonfinite!r}")
        if self.tensorboard < 0:
            raise ValueError(f"tensorboard must be >= 0 (steps between running-bound events), got {self.tensorboard}")
        if self.compile not in COMPILES:
            raise ValueError(f"compile must be one of {', '.join(COMPILES)}, got {self.compile!r}")
        check_precision(self.precision)
        parse_device(self.device)
        return self

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        d = dict(d)
        if "adam_betas" in d:
            d["adam_betas"] = tuple(d["adam_betas"])
        return cls(**d)

    def comparable(self):
        """The settings a resumed run must share with the original: all but epochs (which
        may grow), the policy for non-finite values, the device, the compile mode and
        TensorBoard."""
        d = self.to_dict()
        for name in ("epochs", "on_nonfinite", "device", "compile", "tensorboard"):
            d.pop(name)
        return d


@dataclass
class Config(TrainConfig):
    """Everything that determines an ``iwae train`` run: the loop's settings, the paper
    network and the dataset (paper defaults)."""

    dataset: str = "mnist"
    layers: int = 1
    limit_train: int | None = None     # use the first N training images
    validation: str = "none"           # none: 60k/10k; paper: 59,600 train / 400 validation
    likelihood: str = "bernoulli"      # bernoulli | gaussian (learned variance)
    scale: str = "exp"                 # sigma = exp(head) (paper) | softplus(head)
    init_from: str | None = None       # continue from another run's final weights (Table 2)
    missing: float = 0.0               # MCAR: this fraction of every training image's pixels removed

    TYPES = {**TrainConfig.TYPES, "dataset": str, "layers": int, "limit_train": (int, type(None)),
             "validation": str, "likelihood": str, "scale": str, "init_from": (str, type(None)),
             "missing": (float, int)}

    def validate(self):
        super().validate()
        if self.model is not None or self.data is not None:
            raise ValueError("model and data are iwae.fit's; an iwae train run has dataset and layers")
        if self.layers not in PAPER_LAYERS:
            raise ValueError(f"layers must be one of {', '.join(map(str, PAPER_LAYERS))}, got {self.layers}")
        if self.limit_train is not None and self.limit_train < 1:
            raise ValueError(f"limit_train must be >= 1, got {self.limit_train}")
        if self.validation not in VALIDATIONS:
            raise ValueError(f"validation must be one of {', '.join(VALIDATIONS)}, got {self.validation!r}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {', '.join(LIKELIHOODS)}, got {self.likelihood!r}")
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {self.scale!r}")
        if not (math.isfinite(self.missing) and 0 <= self.missing < 1):
            raise ValueError(f"missing must be in [0, 1), got {self.missing!r}")
        if "\0" in self.dataset or (self.init_from is not None and "\0" in self.init_from):
            raise ValueError("dataset and init_from must not contain NUL characters")
        return self


    def to_dict(self):
        """As TrainConfig's; ``missing`` only when > 0, so that the config.json of a run on
        complete data is what it was before --missing existed (older code reads it)."""
        d = super().to_dict()
        if not self.missing:
            d.pop("missing")
        return d

    def comparable(self):
        return {**super().comparable(), "missing": self.missing}


def build_model(config, input_dim, device="cpu"):
    """The paper network for a config, freshly initialised, on device."""
    likelihood = Bernoulli() if config.likelihood == "bernoulli" else Gaussian()
    model = paper_model(config.layers, input_dim, likelihood, config.scale)
    model.missing = config.missing > 0         # NaN = a removed pixel (docs/missing.md)
    return model.to(device)


def write_config(config, run_dir):
    """run_dir/config.json, atomically."""
    write_json(Path(run_dir) / "config.json", config.to_dict(), sort_keys=True)


def read_config(run_dir):
    """The run's Config (an ``iwae train`` run) or TrainConfig (an ``iwae.fit`` run)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ValueError(f"{run_dir} is not a run directory (no config.json)")
    try:
        d = json.loads(path.read_text())
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        cls = TrainConfig if d.get("model") is not None else Config
        return cls.from_dict(d).validate()
    except (ValueError, TypeError, UnicodeDecodeError) as err:   # JSONDecodeError is a ValueError
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path} is not a valid config: {reason}") from None

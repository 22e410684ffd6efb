"""A run's specification: every setting of a training run, typed and written once.

``RunSpec`` holds what the one loop needs for any model (``iwae.fit``'s keyword arguments
are its fields, by the same names); ``PaperSpec`` adds the paper network, the dataset and the
final evaluation that ``iwae train`` builds from its flags. Each field carries its help text,
its choices and its lower bound in its metadata: ``validate`` checks them, and the command
line's options are generated from them (iwae.app.options), so a default, a choice or a help
text exists in one place. Fields are saved in config.json unless ``saved=False`` (where
files live, threads, the progress bar), and a resumed run must agree with the saved ones
unless ``resumable=True`` (epochs may grow; the device, compile mode and policies may change).
"""
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field

from ..core.densities import Bernoulli, Gaussian
from ..core.estimators import ESTIMATORS
from ..core.model import LATENTS, PAPER_LAYERS, SCALES, paper_model, sbn_model
from ..core.objective import ALIASES, BOUNDS, check
from ..data import LIKELIHOODS, VALIDATIONS
from ..runtime.decisions import COMPILES
from ..runtime.devices import parse_device
from .schedule import SCHEDULES
from .step import PRECISIONS

NONFINITE_POLICIES = ("stop", "skip")
NETS = ("paper", "sbn")            # iwae train's networks: paper_model, sbn_model
RENAMED = {"objective": "bound"}     # config.json keys and keyword arguments of earlier versions


def setting(default, help, *, choices=None, low=None, check=None, saved=True, resumable=False, cli=True,
            flag=None):
    """A field of a spec: its default and what the CLI and validate() know of it.

    choices: the allowed values; low: the least allowed number; check: a function that raises
    ValueError for a bad value; saved: written to config.json;
    resumable: may differ when a run is resumed; cli: an option of ``iwae train``; flag:
    argparse keyword arguments beyond those derived from the type (metavar, nargs, const)."""
    meta = {"help": help, "choices": choices, "low": low, "check": check, "saved": saved, "resumable": resumable or not saved,
            "cli": cli, "flag": flag or {}}
    return field(default=default, metadata=meta)


def fraction(value):
    """value if it is a number in [0, 1), else ValueError."""
    if not (math.isfinite(value) and 0 <= value < 1):
        raise ValueError(f"must be in [0, 1), got {value!r}")
    return value


def parse_pair(text):
    """'B1,B2' as a tuple of two floats (adam_betas on the command line)."""
    try:
        b1, b2 = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"expected two numbers B1,B2, got {text!r}") from None
    return (b1, b2)


@dataclass
class RunSpec:
    """The training loop's settings, for any model (paper defaults)."""

    # the bound and its gradient
    bound: str = setting("iwae", "the bound trained: " + " | ".join((*ALIASES, *BOUNDS)))   # checked by check()
    estimator: str = setting("standard", "the gradient estimator: " + " | ".join(ESTIMATORS))   # checked by check()
    k: int = setting(5, "samples per datapoint", low=1)
    m: int | None = setting(None, "groups for miwae/piwae (must divide k)", low=1)
    beta: float | None = setting(None, "ciwae mixing weight in [0, 1]")
    alpha: float | None = setting(None, "renyi's alpha in [0, 1] (0: the iwae bound, 1: the ELBO)")
    # optimisation
    epochs: int = setting(10, "the first N epochs of the schedule (the paper's is 3280)", low=1, resumable=True)
    seed: int = setting(0, "seeds the initialisation, the training noise and the data order")
    batch_size: int = setting(20, "the global batch: under torchrun each of the N processes takes batch/N of it",
                              low=1)
    schedule: str = setting("paper", "paper: lr * 10^(-i/7) for 3^i epochs; code: Burda's code; constant; cosine: from "
                            "lr down to 0 over the epochs",
                            choices=SCHEDULES)
    lr: float = setting(1e-3, "the schedule's first learning rate")
    adam_betas: tuple = setting((0.9, 0.999), "Adam's betas (0.9,0.999 as in the paper; Burda's code ran "
                                "0.99,0.999)", flag={"metavar": "B1,B2"})
    adam_eps: float = setting(1e-4, "Adam's eps (the paper's 1e-4)")
    eval_examples: int = setting(1000, "held-out examples for the per-epoch L_k", low=1)
    patience: int | None = setting(None, "stop once the held-out bound has not improved for N epochs and keep the "
                                   "parameters of its best epoch (needs held-out data; in memory, no run "
                                   "directory)", low=1, saved=False, cli=False)
    refit: float = setting(0.0, "after early stopping: from the best epoch's parameters, this fraction of its "
                           "epochs more on the data with the held-out entries back (iwae.training.loop)", low=0,
                           saved=False, cli=False)
    drop_last: bool = setting(False, "each epoch leaves out the N mod batch_size rows its permutation puts last "
                              "(N >= batch_size), so that every step has one batch shape and one compiled graph",
                              cli=False)
    # what happens on the way
    on_nonfinite: str = setting("stop", "a NaN/Inf loss or gradient: stop (keeping the last good checkpoint) "
                                "or skip the batch (counted as skipped_steps in metrics.jsonl)",
                                choices=NONFINITE_POLICIES, resumable=True)
    device: str = setting("auto", "auto (a GPU where CUDA is available, else the CPU) | cpu | cuda | cuda:N",
                          check=parse_device, resumable=True)
    compile: str = setting("auto", "auto: compile the whole step (torch.compile) where it repays itself "
                           "(iwae.runtime.compile.compile_step); step: always; off: never",
                           choices=COMPILES, resumable=True)
    precision: str = setting("fp32", "fp32; bf16: the nets' large matmuls in bf16 (log densities, log weights, "
                             "the bound, parameters and Adam's state stay fp32; evaluation is always fp32), "
                             "worth it on bf16 units (AMX, AVX512-BF16, GPUs) and at large k; tf32: CUDA only",
                             choices=PRECISIONS)
    tensorboard: int = setting(0, "write TensorBoard events into RUN/tensorboard: the running bound every N "
                               "steps (default 100), per epoch the bounds, lr, steps/s, effective sample size, "
                               "active units and image grids (pip install \"iwae[tensorboard]\")",
                               low=0, resumable=True, flag={"nargs": "?", "const": 100, "metavar": "N"})
    checkpoint_every: int = setting(1, "write the checkpoint after every N-th epoch and the last", low=1,
                                    saved=False, cli=False)
    quiet: bool = setting(False, "no progress bar", saved=False)
    diagnostics: bool = setting(True, "each epoch's record has the effective sample size, the log weights' "
                                "spread and the active units", saved=False, cli=False)
    data_dir: str | None = setting(None, "where dataset files live (default: $IWAE_DATA_DIR, else ~/.cache/iwae)",
                                   saved=False)
    # iwae.fit's records of what it trained
    model: str | None = setting(None, "the model's class (None: the paper's nets)", cli=False)
    data: str | None = setting(None, "a dataset name or 'tensor [N, D]'", cli=False)

    def validate(self):
        """self if every setting is valid, else ValueError naming the first bad one."""
        for f in dataclasses.fields(self):
            check_field(f, getattr(self, f.name))
        check(self.bound, self.estimator, self.k, self.m, self.beta, self.alpha)
        if not 0 <= self.seed < 2 ** 63 - 1:
            raise ValueError(f"seed must be in [0, 2**63 - 1), got {self.seed}")
        if not (math.isfinite(self.lr) and self.lr > 0 and math.isfinite(self.adam_eps) and self.adam_eps > 0):
            raise ValueError(f"lr and adam_eps must be finite and > 0, got {self.lr!r} and {self.adam_eps!r}")
        if len(self.adam_betas) != 2 or not all(
                isinstance(b, (float, int)) and not isinstance(b, bool) and 0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")
        return self

    def to_dict(self):
        """The saved settings, as config.json holds them."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata["saved"]}
        d["adam_betas"] = list(self.adam_betas)
        return d

    @classmethod
    def from_dict(cls, d):
        """The spec of a config.json (or checkpoint) dict, earlier key names included."""
        d = {RENAMED.get(key, key): value for key, value in d.items()}
        saved = {f.name for f in dataclasses.fields(cls) if f.metadata["saved"]}
        unknown = sorted(set(d) - saved)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        if "adam_betas" in d:
            d["adam_betas"] = tuple(d["adam_betas"])
        return cls(**d)

    def comparable(self):
        """The settings a resumed run must share with the one it continues."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.metadata["saved"] and not f.metadata["resumable"]}

    def differences(self, saved):
        """The names of the settings in which self differs from saved (a spec), for resuming."""
        theirs = saved.comparable()
        return [k for k, v in self.comparable().items() if theirs.get(k) != v]


@dataclass
class PaperSpec(RunSpec):
    """Everything that determines an ``iwae train`` run: the loop's settings, the paper
    network, the dataset and the final evaluation (paper defaults)."""

    dataset: str = setting("mnist", "a dataset name (see `iwae datasets`) or a file/folder")
    layers: int = setting(1, "stochastic layers of the paper's net", choices=PAPER_LAYERS)
    latent: str = setting("gaussian", "the units of the paper net's stochastic layers: gaussian, or bernoulli "
                          "(binary; train with --estimator vimco or rws)", choices=LATENTS)
    net: str = setting("paper", "paper: the paper's nets (--layers, --latent); sbn: the sigmoid belief net "
                       "200-200-200 of Mnih & Rezende 2016 (train with --estimator vimco or rws)", choices=NETS)
    limit_train: int | None = setting(None, "use the first N training images", low=1)
    validation: str = setting("none", "none: 60k/10k; paper: hold out the last 400 of MNIST's 60k "
                              "(the original code)", choices=VALIDATIONS)
    likelihood: str = setting("bernoulli", "p(x | z): bernoulli | gaussian (learned variance)", choices=LIKELIHOODS)
    scale: str = setting("exp", "sigma = exp(head) (the paper) | softplus(head)", choices=SCALES)
    init_from: str | None = setting(None, "start from another run's final weights (Table 2)")
    missing: float = setting(0.0, "remove this fraction of every training image's pixels at random (MCAR, "
                             "seeded by the seed) and train with the bound over the observed pixels "
                             "(docs/missing.md)", check=fraction, flag={"metavar": "P"})
    # the final evaluation and the threads (iwae train's, not the loop's)
    final_k: int = setting(5000, "k of the test NLL printed at the end (0: skip it)", low=0, saved=False)
    final_limit_test: int | None = setting(None, "evaluate on the first N test images", low=1, saved=False)
    threads: int | None = setting(None, "torch threads of the training (default 1: a batch-20 step is too small "
                                  "for threads to pay, and oversubscribed cores slow it many times over)",
                                  low=1, saved=False)
    eval_threads: int | None = setting(None, "torch threads of the final L_k evaluation (default: all the cores)",
                                       low=1, saved=False)

    def validate(self):
        super().validate()
        if self.model is not None or self.data is not None:
            raise ValueError("model and data are iwae.fit's; an iwae train run has dataset and layers")
        if "\0" in self.dataset or (self.init_from is not None and "\0" in self.init_from):
            raise ValueError("dataset and init_from must not contain NUL characters")
        return self

    def to_dict(self):
        """As RunSpec's, less iwae.fit's model and data; ``missing`` only when > 0, so that the
        config.json of a run on complete data is what it was before missing existed."""
        d = super().to_dict()
        for name in ("model", "data") + (() if self.missing else ("missing",)):
            d.pop(name)
        return d

    def name(self):
        """The default run directory's name: bound, k and net, e.g. iwae-k5-l1 or vr-max-k5-sbn."""
        net = "sbn" if self.net == "sbn" else f"l{self.layers}" + ("b" if self.latent == "bernoulli" else "")
        return f"{self.bound}-k{self.k}-{net}"

    def comparable(self):
        return {**super().comparable(), "missing": self.missing}


def build_model(spec, input_dim, device="cpu"):
    """The paper network of a PaperSpec, freshly initialised, on device."""
    likelihood = Bernoulli() if spec.likelihood == "bernoulli" else Gaussian()
    if spec.net == "sbn":
        model = sbn_model(input_dim=input_dim, likelihood=likelihood)
    else:
        model = paper_model(spec.layers, input_dim, likelihood, spec.scale, latent=spec.latent)
    model.missing = spec.missing > 0           # NaN = a removed pixel (docs/missing.md)
    return model.to(device)


def spec_of(d):
    """The spec of a saved dict: a PaperSpec (an ``iwae train`` run) or a RunSpec (``iwae.fit``)."""
    return (RunSpec if d.get("model") is not None else PaperSpec).from_dict(d)


class SettingError(ValueError):
    """A bad value of one setting; ``bare``: the message without the setting's name in front
    (the command line names the flag instead)."""

    def __init__(self, name, bare):
        super().__init__(bare if bare.startswith(name) else f"{name} {bare}")
        self.bare = bare


def check_field(f, value, choices=True):
    """SettingError naming field f unless value has its type, lower bound, check and (if
    choices) one of its choices."""
    if not _has_type(value, f.type):
        raise SettingError(f.name, f"has the wrong type: {value!r}")
    meta = f.metadata
    if choices and value is not None and meta["choices"] is not None and value not in meta["choices"]:
        raise SettingError(f.name, f"must be one of {', '.join(map(str, meta['choices']))}, got {value!r}")
    if value is not None and meta["low"] is not None and value < meta["low"]:
        raise SettingError(f.name, f"must be an integer >= {meta['low']}, got {value!r}")
    if value is not None and meta["check"] is not None:
        try:
            meta["check"](value)
        except ValueError as err:
            raise SettingError(f.name, str(err)) from None


def _has_type(value, hint):
    """Whether value has the annotated type (an int passes for a float, a list for a tuple,
    a bool for nothing but a bool)."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if isinstance(value, bool) or bool in allowed:
        return isinstance(value, bool) and bool in allowed
    if float in allowed and isinstance(value, int):
        return True
    if tuple in allowed and isinstance(value, list):
        return True
    return isinstance(value, allowed)

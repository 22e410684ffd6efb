"""The run directory: the one module that knows its files and their formats.

    RUN/config.json      the run's spec (iwae.training.spec), written first, atomically
    RUN/metrics.jsonl    one JSON record per epoch
    RUN/checkpoint.pt    model, optimizer, RNG states, position (iwae.training.checkpoint)
    RUN/eval.json        the final evaluation (``iwae train --final-k``, ``iwae reproduce``)
    RUN/tensorboard/     TensorBoard events

Every file is replaced atomically (iwae.runtime.atomic), and a run is locked while it trains.
``open_run`` writes config.json before anything slow happens (loading data, compiling), so a
run killed at any moment leaves a directory that resuming completes; ``load_model`` rebuilds
the trained model of any run on any device.
"""
import fcntl
import json
import os
from pathlib import Path

import torch

from ..runtime import distributed
from ..runtime.atomic import remove_stale_temporaries, write_json, write_text
from ..runtime.devices import parse_device
from . import checkpoint
from .checkpoint import CheckpointError
from .spec import PaperSpec, build_model, spec_of

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
EVAL = "eval.json"
TENSORBOARD = "tensorboard"


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, say); the last good checkpoint is kept."""


class RunExists(ValueError):
    """A new run was asked for in a directory that holds one."""


class SpecDiffers(ValueError):
    """A run was resumed with settings other than its own; ``names`` lists them."""

    def __init__(self, message, names):
        super().__init__(message)
        self.names = names


class Run:
    """An open run directory: its spec is on disk, it is locked (rank 0), and it knows whether
    it continues a checkpoint (``state``) and whether it has saved anything yet."""

    def __init__(self, path, spec, state, created, lock, begun):
        self.path, self.spec, self.state, self.created, self._lock = path, spec, state, created, lock
        self.begun = begun                 # the directory held this run's config.json already
        self.checkpoint, self.metrics, self.tensorboard = path / CHECKPOINT, path / METRICS, path / TENSORBOARD
        self.saved_any = state is not None

    def save(self, state, history=None):
        """A checkpoint (and metrics.jsonl from history, if given): rank 0 writes."""
        if distributed.is_main():
            checkpoint.save(state, self.checkpoint)
            if history is not None:
                write_metrics(self.metrics, history)
        self.saved_any = True

    def save_metrics(self, history):
        """metrics.jsonl from history (rank 0)."""
        if distributed.is_main():
            write_metrics(self.metrics, history)

    def __enter__(self):
        return self

    def __exit__(self, kind, error, trace):
        """Unlock; a new run that saved nothing leaves nothing behind when it failed."""
        if kind is not None and not self.saved_any and distributed.is_main():
            for path in (self.metrics, self.path / CONFIG):
                path.unlink(missing_ok=True)
            if self.created:
                try:
                    self.path.rmdir()
                except OSError:
                    pass
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def open_run(path, spec, resume=False):
    """The run directory at path for spec, with config.json written first (rank 0).

    resume=False: a directory holding a run (a checkpoint or metrics) is refused (RunExists).
    resume=True: spec must agree with the saved config.json (SpecDiffers), and the run
    continues from its checkpoint; a directory holding no run yet starts one there
    (``Run.state`` is None). Use it as a context manager."""
    path = Path(path)
    main = distributed.is_main()               # rank 0 alone makes, locks and writes the directory
    created = _make_dir(path) if main else False
    lock = _lock(path) if main else None
    try:
        begun = holds_run(path)
        state = _previous_state(path, spec, resume)
        if main:
            remove_stale_temporaries(path, (CHECKPOINT, METRICS, CONFIG))
            write_json(path / CONFIG, spec.to_dict(), sort_keys=True)
    except BaseException:
        if lock is not None:
            os.close(lock)
        raise
    return Run(path, spec, state, created, lock, begun)


def holds_run(path):
    """Whether path holds a run that has begun: a config.json."""
    return (Path(path) / CONFIG).is_file()


def _previous_state(path, spec, resume):
    """The checkpoint to resume from (None: a new run, or one that never saved)."""
    ckpt, metrics = path / CHECKPOINT, path / METRICS
    if not resume:
        if ckpt.exists() or metrics.exists():
            raise RunExists(f"{path} already holds a run")
        return None
    if not holds_run(path):
        if ckpt.exists() or recorded_epochs(path):
            raise CheckpointError(f"{path} holds a checkpoint or metrics but no {CONFIG}; restore it or "
                                  "start a new run elsewhere")
        return None
    diff = spec.differences(read_spec(path))
    if diff:
        raise SpecDiffers(f"the settings disagree with {path / CONFIG} on {', '.join(diff)}", diff)
    if ckpt.exists():
        return checkpoint.load(ckpt)
    if recorded_epochs(path):
        raise CheckpointError(f"no checkpoint at {ckpt}, but {metrics} records {recorded_epochs(path)} "
                              "epoch(s); restore it or start a new run")
    return None


def _make_dir(path):
    """mkdir -p path; whether it was created."""
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(err.errno, f"cannot create the run directory {path}: {err.strerror or err}") from None
    return created


def _lock(path):
    """An exclusive lock on the run directory (released when the process ends, even by SIGKILL)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise TrainingError(f"{path} is in use by another training process") from None
    return fd


def read_spec(path):
    """The run's spec: a PaperSpec (an ``iwae train`` run) or a RunSpec (an ``iwae.fit`` run)."""
    file = Path(path) / CONFIG
    if not file.is_file():
        raise ValueError(f"{path} is not a run directory (no {CONFIG})")
    try:
        d = json.loads(file.read_text())
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        return spec_of(d).validate()
    except (ValueError, TypeError, UnicodeDecodeError) as err:   # JSONDecodeError is a ValueError
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{file} is not a valid config: {reason}") from None


def load_model(run_dir, device="cpu", model=None):
    """The trained model of a run directory (from its checkpoint), in eval mode, on device
    ('auto', 'cpu', 'cuda', 'cuda:N'; a checkpoint written on any device loads on any other).

    model: for a run of ``iwae.fit`` with your own module, a freshly built instance of it,
    into which the weights are loaded (the paper's nets are rebuilt from config.json).
    """
    spec = read_spec(run_dir)
    path = Path(run_dir) / CHECKPOINT
    state = checkpoint.load(path)
    device = parse_device(device) if isinstance(device, str) else torch.device(device)
    if model is None:
        if not isinstance(spec, PaperSpec):
            raise ValueError(f"{run_dir} was trained by iwae.fit with a {spec.model}; pass a new "
                             f"instance of it: iwae.load_model(run, model=...)")
        model = build_model(spec, state["input_dim"])
    model = model.to(device)
    checkpoint.load_state_dict(model, state["model"], path)
    return model.eval()


def write_metrics(path, history):
    write_text(path, "".join(json.dumps(m) + "\n" for m in history), durable=False)


def read_metrics(run_dir):
    """The per-epoch records of a run's metrics.jsonl as dicts (blank lines skipped; [] if none)."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {number}: malformed JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}, line {number}: expected a JSON object")
        records.append(record)
    return records


def recorded_epochs(run_dir):
    """The number of epochs metrics.jsonl records (0 if it cannot be read)."""
    try:
        return sum(1 for line in (Path(run_dir) / METRICS).read_text().splitlines() if line.strip())
    except (OSError, UnicodeDecodeError):
        return 0


def write_eval(run_dir, record):
    """RUN/eval.json, atomically (``iwae reproduce`` reads it)."""
    write_json(Path(run_dir) / EVAL, record)


def read_eval(run_dir):
    """RUN/eval.json as a dict, None if the run has not been evaluated."""
    path = Path(run_dir) / EVAL
    return json.loads(path.read_text()) if path.exists() else None


def evaluated_runs(folder):
    """The run directories directly inside folder that hold an eval.json, sorted by name."""
    return sorted(path.parent for path in Path(folder).glob(f"*/{EVAL}"))

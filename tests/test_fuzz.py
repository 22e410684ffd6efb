"""Property-based fuzzing of the user-facing surface: every input either works or fails
with one line (DataError/ValueError/CheckpointError in the library; in the CLI, exit
status 2 and exactly one stderr line starting with "iwae: error:"), never a traceback.
"""
import contextlib
import io
import itertools
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import iwae.training.rundir
import iwae.training.paper
import iwae.training.source
from iwae.training import checkpoint
from iwae.training.checkpoint import CheckpointError
from iwae.app.cli import main
from iwae.training.rundir import read_spec
from iwae.training.spec import PaperSpec
from iwae.data import DataError, Dataset, load_dataset

FUZZ = settings(max_examples=50, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
_counter = itertools.count()


pytestmark = pytest.mark.usefixtures("one_thread")


def one_line(message):
    return isinstance(message, str) and message.strip() != "" and "\n" not in message


# ---------------------------------------------------------------- the CLI, in process

def synthetic(likelihood):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 16, generator=g)                      # 40 examples of 4x4 grey images
    return Dataset("synthetic", x[:30], x[30:], None, (4, 4),
                   "none" if likelihood == "gaussian" else "dynamic")


@pytest.fixture
def quick_data(monkeypatch):
    """`--dataset synthetic` is a tiny in-memory data set; other names go to the real loader."""
    real = iwae.training.source.load_dataset

    def load(name, data_dir=None, *, validation="none", likelihood="bernoulli", **kw):
        if name == "synthetic":
            if likelihood not in ("bernoulli", "gaussian"):
                raise DataError(f"unknown likelihood {likelihood!r}")
            return synthetic(likelihood)
        return real(name, data_dir, validation=validation, likelihood=likelihood, **kw)
    monkeypatch.setattr(iwae.training.source, "load_dataset", load)


def mostly(valid, invalid):
    """Valid values three times in four, so that many runs train and many fail."""
    return st.one_of(valid, valid, valid, invalid)


def ints(lo, hi, *bad):
    return mostly(st.integers(lo, hi).map(str), st.sampled_from(["0", "-1", "x", "", "1.5", "1e3", *bad]))


FLAGS = {
    "--dataset": mostly(st.just("synthetic"), st.sampled_from(["nosuch", "../../etc/passwd", "/dev/null", "",
                                                               "mnist/..", "/proc/self/environ"])),
    "--layers": mostly(st.sampled_from(["1", "2"]), st.sampled_from(["3", "0", "one"])),
    "--objective": mostly(st.sampled_from(["iwae", "vae", "elbo", "miwae", "ciwae", "piwae"]),
                          st.sampled_from(["IWAE", "iwea", ""])),
    "--estimator": mostly(st.sampled_from(["standard", "stl", "dreg", "rws"]), st.sampled_from(["Standard", "nope"])),
    "--k": ints(1, 6),
    "--m": ints(1, 3),
    "--beta": mostly(st.floats(0, 1).map(repr), st.sampled_from(["nan", "inf", "-0.5", "1.5", "b"])),
    "--epochs": mostly(st.sampled_from(["1", "2"]), st.sampled_from(["0", "-1", "two"])),
    "--seed": mostly(st.integers(0, 2 ** 62).map(str), st.sampled_from(["-1", str(2 ** 64), "s"])),
    "--batch-size": ints(1, 40),
    "--limit-train": ints(1, 50),
    "--validation": mostly(st.just("none"), st.sampled_from(["paper", "valid"])),
    "--likelihood": mostly(st.sampled_from(["bernoulli", "gaussian"]), st.just("poisson")),
    "--scale": mostly(st.sampled_from(["exp", "softplus"]), st.just("linear")),
    "--schedule": mostly(st.sampled_from(["paper", "code", "constant"]), st.just("cosine")),
    "--lr": mostly(st.floats(1e-5, 1e-2).map(repr), st.sampled_from(["inf", "nan", "0", "-1e-3", "lr"])),
    "--eval-examples": ints(1, 20),
    "--init-from": st.sampled_from(["/nonexistent/run", ".", "/dev/null"]),
    "--final-k": mostly(st.sampled_from(["0", "2"]), st.sampled_from(["-1", "k"])),
    "--final-limit-test": mostly(st.just("3"), st.sampled_from(["0", "x"])),
    "--on-nonfinite": mostly(st.sampled_from(["stop", "skip"]), st.just("ignore")),
    "--resume": st.none(),
}


@st.composite
def train_argvs(draw):
    names = draw(st.lists(st.sampled_from(sorted(FLAGS)), max_size=4, unique=True))
    argv = []
    for name in names:
        value = draw(FLAGS[name])
        argv += [name] if value is None else [f"{name}={value}"]
    return argv


def run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exit:                   # argparse's own errors (and --help)
            rc = exit.code
    return rc, out.getvalue(), err.getvalue()


@FUZZ
@given(flags=train_argvs())
def test_cli_train_flags_work_or_fail_in_one_line(quick_data, tmp_path_factory, flags):
    out = tmp_path_factory.getbasetemp() / f"fuzz-run-{next(_counter)}"
    base = ["--dataset", "synthetic", "--epochs", "1", "--final-k", "0", "--eval-examples", "5"]
    rc, stdout, stderr = run_cli(["train", "--out", str(out), "--quiet", *base, *flags])
    event("trained" if rc == 0 else stderr.split(":")[2].strip()[:40] if rc == 2 else f"rc {rc}")
    if rc == 0:
        assert stderr == "" and stdout.startswith(f"trained {out} in ")
        assert {"checkpoint.pt", "config.json", "metrics.jsonl"} <= {p.name for p in out.iterdir()}
        assert all(math.isfinite(m["train_bound"]) or m["skipped_steps"] > 0
                   for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()))
    else:
        assert rc == 2, (flags, rc, stderr)
        assert stderr.startswith("iwae: error: ") and stderr.count("\n") == 1, (flags, stderr)
        if "--resume" not in flags:                  # a failed new run leaves nothing behind
            assert not out.exists() or not any(out.iterdir()), (flags, list(out.iterdir()))


@FUZZ
@given(argv=st.lists(st.sampled_from(["evaluate", "train", "reproduce", "sample", "plot", "--k", "0", "5",
                                      "--table", "4", "--json", "--epochs", "x", "/nonexistent",
                                      "--limit-test", "--", "-", "--out", "=", "--k=-1"]), max_size=6))
def test_cli_argument_parsing_works_or_fails_in_one_line(monkeypatch, argv):
    """Parsing only: the commands themselves are replaced by no-ops."""
    import iwae.app.cli
    for name in list(iwae.app.cli.COMMANDS):
        monkeypatch.setitem(iwae.app.cli.COMMANDS, name, lambda args: None)
    rc, _, stderr = run_cli(argv)
    assert rc in (0, 2), (argv, rc, stderr)
    if rc == 2:
        assert stderr.startswith("iwae: error: ") and stderr.count("\n") == 1, (argv, stderr)


# ---------------------------------------------------------------- configs

VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 10 ** 20), st.floats(allow_nan=True),
                   st.text(max_size=5), st.lists(st.floats(-1, 2), max_size=3),
                   st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(sorted(PaperSpec().to_dict()) + ["extra"]), VALUES, max_size=4))
def test_config_files_validate_or_fail_in_one_line(tmp_path_factory, changes):
    run = tmp_path_factory.getbasetemp() / f"fuzz-config-{next(_counter)}"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({**PaperSpec().to_dict(), **changes}))
    try:
        config = read_spec(run)
    except ValueError as err:
        assert one_line(str(err)) and str(err).startswith(f"{run / 'config.json'} is not a valid config: ")
    else:
        assert config.validate() is config
        PaperSpec.from_dict(config.to_dict()).validate()


# ---------------------------------------------------------------- data files

DTYPES = ["uint8", "int8", "int64", "float16", "float32", "float64", "bool", "complex64", "<U2", "object"]


@st.composite
def arrays(draw):
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=4)))
    dtype = draw(st.sampled_from(DTYPES))
    size = int(np.prod(shape))
    values = draw(st.lists(st.one_of(st.floats(-2, 3), st.sampled_from([0.0, 1.0, 0.5, float("nan"),
                                                                         float("inf"), 255.0])),
                           min_size=size, max_size=size))
    base = np.array(values, dtype=np.float64).reshape(shape)
    with np.errstate(all="ignore"):
        if dtype == "object":
            return base.astype(object)
        if dtype == "<U2":
            return base.astype(int, casting="unsafe").astype(str) if np.isfinite(base).all() else base.astype(str)
        return base.astype(dtype)


@FUZZ
@given(array=arrays(), likelihood=st.sampled_from(["bernoulli", "gaussian"]),
       suffix=st.sampled_from([".npy", ".npz"]), cut=st.one_of(st.none(), st.integers(0, 400)))
def test_data_files_load_or_fail_in_one_line(tmp_path_factory, array, likelihood, suffix, cut):
    path = tmp_path_factory.getbasetemp() / f"fuzz-data-{next(_counter)}{suffix}"
    if suffix == ".npy":
        np.save(path, array, allow_pickle=True)
    else:
        np.savez(path, train=array, test=array[:2] if array.ndim else array)
    if cut is not None:                             # a truncated file
        data = path.read_bytes()
        path.write_bytes(data[:min(cut, len(data) - 1)])
    try:
        data = load_dataset(str(path), likelihood=likelihood)
    except DataError as err:
        assert one_line(str(err)), str(err)
    else:
        assert isinstance(data, Dataset)
        for split in (data.train, data.test):
            assert split.dtype == torch.float32 and split.ndim == 2 and split.shape[0] >= 1
            assert split.shape[1] == data.dim == data.image_shape[0] * data.image_shape[1]
            assert torch.isfinite(split).all()
            if likelihood == "bernoulli":
                assert split.min() >= 0 and split.max() <= 1
        assert data.binarization in (("fixed", "dynamic") if likelihood == "bernoulli" else ("none",))


# ---------------------------------------------------------------- checkpoints

@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    checkpoint.save({"model": {"w": torch.arange(300, dtype=torch.float32), "b": torch.ones(3)},
                     "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999)}]},
                     "epoch": 3, "metrics": [{"epoch": 1, "bound": -90.5}], "position": None}, path)
    return path.read_bytes()


@FUZZ
@given(edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=3),
       cut=st.one_of(st.none(), st.floats(0, 1)))
def test_damaged_checkpoints_load_intact_or_fail_in_one_line(tmp_path_factory, checkpoint_bytes, edits, cut):
    data = bytearray(checkpoint_bytes)
    for where, xor in edits:
        data[int(where * len(data))] ^= xor
    if cut is not None:
        data = data[: int(cut * len(data))]
    path = tmp_path_factory.getbasetemp() / f"fuzz-ckpt-{next(_counter)}.pt"
    path.write_bytes(bytes(data))
    try:
        state = checkpoint.load(path)
    except CheckpointError as err:
        assert one_line(str(err)) and str(err).startswith(f"cannot read checkpoint {path}: "), str(err)
    else:                                           # only bytes nobody reads were hit
        assert torch.equal(state["model"]["w"], torch.arange(300, dtype=torch.float32))
        assert state["epoch"] == 3 and state["metrics"] == [{"epoch": 1, "bound": -90.5}]

"""Reliability: crash safety, signals, non-finite values, bad input, and checkpoint security.

Training runs here use a small slice of real MNIST saved as a .npy file (so that each
subprocess starts quickly) and one thread (so that runs in and out of process are bitwise
comparable). Subprocess tests run `python -m iwae train` and kill or signal it for real.
"""
import contextlib
import io
import json
import multiprocessing
import os
import pickle
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tqdm import tqdm

import iwae.training.rundir
import iwae.training.paper
import iwae.training.source
from iwae.training import checkpoint
from iwae.training.checkpoint import CheckpointError
from iwae.app.cli import main
from iwae.training.spec import PaperSpec
from iwae.data import DataError, Dataset, download_dataset, load_dataset
from iwae.training.guards import Interrupted
from iwae.training.rundir import TrainingError, load_model
from iwae.training.paper import train

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SMALL = ["--limit-train", "200", "--k", "2", "--epochs", "6", "--eval-examples", "20",
         "--final-k", "0", "--quiet"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def npy(data_dir, tmp_path_factory):
    """The first 240 MNIST training images, uint8 [240, 28, 28], as a .npy file."""
    images = (load_dataset("mnist", data_dir).train[:240] * 255).round().to(torch.uint8)
    path = tmp_path_factory.mktemp("data") / "mnist240.npy"
    np.save(path, images.reshape(240, 28, 28).numpy())
    return str(path)


def config(npy, **kw):
    base = dict(dataset=npy, limit_train=200, k=2, epochs=6, eval_examples=20, quiet=True)
    base.update(kw)
    return PaperSpec(**base)


def same_parameters(a, b):
    a, b = a.state_dict(), b.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def metrics(run):
    lines = (Path(run) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "steps_per_second")}
            for line in lines]


@pytest.fixture(scope="module")
def reference(npy, tmp_path_factory):
    """An uninterrupted 6-epoch run (in process): its directory."""
    run = tmp_path_factory.mktemp("reference") / "run"
    train(config(npy), run)
    return run


# ---------------------------------------------------------------- checkpoints, atomically

def test_checkpoint_write_is_atomic_and_durable(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save({"model": {"w": torch.ones(3)}, "epoch": 1}, path)
    before = path.read_bytes()
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1])
    checkpoint.save({"model": {"w": torch.zeros(3)}, "epoch": 2}, path)
    assert calls == ["fsync", "replace", "fsync"]            # file, rename, then the directory
    assert checkpoint.load(path)["epoch"] == 2
    checkpoint.save({"model": {"w": torch.ones(3)}, "epoch": 1}, path)

    def full_disk(state, f):                                  # half written, then ENOSPC
        f.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match=r"cannot write .*checkpoint.pt: No space left on device"):
        checkpoint.save({"model": {"w": torch.zeros(3)}, "epoch": 2}, path)

    def interrupted(state, f):
        f.write(b"PK")
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save({"model": {"w": torch.zeros(3)}, "epoch": 2}, path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_corrupted_checkpoint_bytes_are_detected(tmp_path):
    """torch.load alone loads a flipped bit in a weight silently; the checksum catches it."""
    path = tmp_path / "checkpoint.pt"
    checkpoint.save({"model": {"w": torch.arange(4096, dtype=torch.float32)}, "epoch": 1}, path)
    data = bytearray(path.read_bytes())
    rng = random.Random(0)
    for _ in range(20):
        bad = bytearray(data)
        bad[rng.randrange(len(bad) // 4, len(bad) * 3 // 4)] ^= 1 << rng.randrange(8)
        path.write_bytes(bad)
        try:
            state = checkpoint.load(path)
        except CheckpointError as err:
            assert "\n" not in str(err) and str(err).startswith(f"cannot read checkpoint {path}")
        else:                                                  # a byte nobody reads
            assert torch.equal(state["model"]["w"], torch.arange(4096, dtype=torch.float32))


# ---------------------------------------------------------------- SIGKILL at random moments

def wait_for(predicate, timeout=60.0, every=0.002):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(every)
    return False


def _cli_child(argv):
    """`iwae ARGV` (iwae.app.cli.main) as the whole of a child process; its exit status is main's."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    torch.set_num_threads(1)
    tqdm.set_lock(threading.RLock())    # not tqdm's default multiprocessing lock (a named
    sys.exit(main(argv))                # semaphore, which a SIGKILL would leave behind)


@pytest.fixture(scope="module")
def launcher():
    """Start `iwae ARGV` as a separate process, fast: each is forked from a server process
    that has already imported torch and iwae (a fresh `python -m iwae` spends seconds on
    imports). Returns start(argv) -> multiprocessing.Process."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["iwae.app.cli", "iwae.training.paper", "iwae.training.loop", "iwae.app.runs", "iwae.training.step", "torch._dynamo",
                                __name__])         # what `iwae train` imports, imported once

    def start(argv):
        proc = ctx.Process(target=_cli_child, args=(list(argv),), daemon=True)
        proc.start()
        return proc
    return start


def test_sigkill_at_random_moments_then_resume_is_bitwise(npy, tmp_path, launcher):
    """Five SIGKILLs (one while a checkpoint is being written); each time --resume loads a
    valid checkpoint, and the finished run equals the uninterrupted one bitwise."""
    run = tmp_path / "run"
    rng = random.Random(20240611)
    write_kill = rng.randrange(5)                  # which kill waits for a checkpoint write
    argv = ["train", "--out", str(run), "--dataset", npy, "--batch-size", "5", *SMALL]  # 6 epochs of 40 steps
    kills, killed_mid_write, log = 0, 0, []
    while kills < 5:
        started = (run / "metrics.jsonl").stat().st_ino if (run / "metrics.jsonl").exists() else None
        proc = launcher(argv + (["--resume"] if run.exists() else []))
        # training has begun once metrics.jsonl is (atomically) rewritten by this process
        assert wait_for(lambda: proc.exitcode is not None or (
            (run / "metrics.jsonl").exists() and (run / "metrics.jsonl").stat().st_ino != started))
        if kills == write_kill:
            wait_for(lambda: proc.exitcode is not None or any(run.glob(".checkpoint.pt.*.tmp")), every=0.0002)
        else:
            time.sleep(rng.uniform(0.0, 0.5))
        proc.kill()                                # SIGKILL
        proc.join()
        if proc.exitcode == 0:                     # finished before the kill: start over
            shutil.rmtree(run)
            kills, killed_mid_write, log = 0, 0, []
            continue
        assert proc.exitcode == -signal.SIGKILL, proc.exitcode
        stale = list(run.glob(".checkpoint.pt.*.tmp"))
        if kills == write_kill and not stale:      # the write had just finished: try again
            continue
        killed_mid_write += bool(stale)
        kills += 1
        if (run / "checkpoint.pt").exists():       # the previous checkpoint is intact
            state = checkpoint.load(run / "checkpoint.pt")
            log.append((state["epoch"], (state["position"] or {}).get("batch"), bool(stale)))
        else:
            log.append((None, None, bool(stale)))
    assert killed_mid_write >= 1, log
    rc, err = cli(*argv, "--resume")                        # the last resume runs in process
    assert rc == 0, err
    assert not list(run.glob(".*.tmp"))            # stale temporaries were cleaned up
    whole = train(config(npy, batch_size=5), tmp_path / "whole")
    assert same_parameters(load_model(run), whole), log
    assert metrics(run) == metrics(tmp_path / "whole")


@pytest.mark.parametrize("delay", [0.0, 0.02, 0.1, 0.3, 1.0])
def test_a_run_killed_in_its_first_moments_resumes_to_the_uninterrupted_run(npy, tmp_path, launcher, delay):
    """SIGKILL `iwae train --resume` this long after it starts (before, while and after it
    writes config.json, loads data, compiles): the directory holds nothing, or a whole
    config.json, and `--resume` completes the run to the uninterrupted one's parameters."""
    run = tmp_path / "run"
    argv = ["train", "--out", str(run), "--dataset", npy, "--resume", *SMALL]
    proc = launcher(argv)
    time.sleep(delay)
    proc.kill()
    proc.join()
    assert proc.exitcode in (0, -signal.SIGKILL), proc.exitcode
    if (run / "config.json").exists():
        assert json.loads((run / "config.json").read_text())["k"] == 2      # whole, never half written
    rc, err = cli(*argv)
    assert rc == 0, err
    whole = train(config(npy), tmp_path / "whole")
    assert same_parameters(load_model(run), whole)
    assert metrics(run) == metrics(tmp_path / "whole")


# ---------------------------------------------------------------- SIGINT / SIGTERM

def test_sigterm_saves_exits_and_says_how_to_resume(npy, tmp_path):
    run = tmp_path / "run"
    args = ["--limit-train", "200", "--batch-size", "2", "--k", "2", "--epochs", "2",
            "--eval-examples", "20", "--final-k", "0", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "iwae", "train", "--out", str(run), "--dataset", npy,
                             "--data-dir", str(tmp_path / "nodata"), *args],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: (run / "metrics.jsonl").exists() or proc.poll() is not None)
    time.sleep(0.15)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    match = re.fullmatch(r"iwae: interrupted at epoch (\d), step (\d+); resume with: (iwae train .*)", lines[0])
    assert match, lines[0]
    suggested = shlex.split(match[3])
    assert suggested == ["iwae", "train", "--out", str(run), "--resume", "--data-dir", str(tmp_path / "nodata")]
    state = checkpoint.load(run / "checkpoint.pt")
    epoch, step = int(match[1]), int(match[2])
    if state["position"] is not None:              # stopped inside an epoch (the usual case)
        assert (state["epoch"] + 1, state["position"]["batch"]) == (epoch, step)
    # the suggested command continues the run, with no flags repeated (run in process)
    rc, err = cli(*suggested[1:], "--final-k", "0", "--quiet")
    assert rc == 0, err
    whole = train(config(npy, batch_size=2, epochs=2), tmp_path / "whole")
    assert same_parameters(load_model(run), whole)
    assert metrics(run) == metrics(tmp_path / "whole")


class Inject:
    """Faults at given optimizer steps (counted from 1 over every optimizer in this process),
    through torch's global optimizer hooks, so they do not depend on how the training step
    computes its gradients: SIGINT during step n, or a NaN in one gradient before step n
    (the loss stays finite)."""

    def __init__(self, *, interrupt=(), nan_grad=(), start=0):
        self.step, self.interrupt, self.nan_grad = start, set(interrupt), set(nan_grad)

    def _pre(self, opt, args, kwargs):
        self.step += 1
        if self.step in self.nan_grad:
            grad = next(p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None)
            grad.view(-1)[0] = float("nan")

    def _post(self, opt, args, kwargs):
        if self.step in self.interrupt:
            os.kill(os.getpid(), signal.SIGINT)

    def __enter__(self):
        from torch.optim.optimizer import (register_optimizer_step_post_hook,
                                           register_optimizer_step_pre_hook)
        self.handles = [register_optimizer_step_pre_hook(self._pre),
                        register_optimizer_step_post_hook(self._post)]
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


@pytest.mark.parametrize("at", [1, 14, 20, 60])      # first step, mid-epoch, an epoch's last, the run's last
def test_sigint_mid_epoch_checkpoint_resumes_bitwise(npy, reference, tmp_path, at):
    run = tmp_path / "run"
    with Inject(interrupt={at}), pytest.raises(Interrupted) as err:
        train(config(npy), run)
    epoch, step = (at - 1) // 10 + 1, (at - 1) % 10 + 1
    assert str(err.value) == f"interrupted at epoch {epoch}, step {step}; {run} holds its checkpoint"
    assert err.value.signum == signal.SIGINT
    state = checkpoint.load(run / "checkpoint.pt")
    assert (state["epoch"], state["position"]["batch"], state["steps"]) == (epoch - 1, step, at)
    assert len(metrics(run)) == epoch - 1
    resumed = train(config(npy), run, resume=True)
    assert same_parameters(resumed, load_model(reference))
    assert metrics(run) == metrics(reference)


@pytest.fixture
def nan_row(npy, monkeypatch):
    """Training data (fixed-binarized MNIST) whose row 7 is NaN: the loss of the batch holding
    it is NaN. Returns {epoch: step} where that batch comes (batch size 20, seed 0)."""
    images = torch.from_numpy(np.load(npy)).reshape(240, 784).float().div(255).round()
    data = Dataset("nan-row", images[:216].clone(), images[216:], None, (28, 28), "fixed")
    monkeypatch.setattr(iwae.training.source, "load_dataset", lambda *args, **kwargs: data)
    init_model = iwae.training.paper.init_model

    clean = images[7].clone()

    def poisoned_after_init(config, data, train, device):    # the output bias sees clean data
        train[7] = clean
        model = init_model(config, data, train, device)
        train[7] = float("nan")
        return model
    monkeypatch.setattr(iwae.training.paper, "init_model", poisoned_after_init)
    g = torch.Generator().manual_seed(1)                       # the trainer's data RNG: seed + 1
    return {epoch: int((torch.randperm(200, generator=g) == 7).nonzero()) // 20 + 1 for epoch in (1, 2, 3)}


def test_skip_policy_and_interrupt_resume_bitwise(npy, nan_row, tmp_path):
    """--on-nonfinite skip: NaN batches are skipped and counted; a mid-epoch resume is exact."""
    cfg = config(npy, epochs=2, on_nonfinite="skip")
    with Inject(nan_grad={5, 17}) as inject:
        whole = train(cfg, tmp_path / "whole")
        calls = inject.step
    assert [m["skipped_steps"] for m in metrics(tmp_path / "whole")] == [2, 2]    # NaN row + NaN gradient
    assert all(torch.isfinite(p).all() for p in whole.parameters())
    adam = checkpoint.load(tmp_path / "whole" / "checkpoint.pt")["optimizer"]["state"]
    assert {int(s["step"]) for s in adam.values()} == {20 - 4}              # no update when skipped
    assert calls in (16 + 2, 20)                   # optimizer.step() calls: skipped ones may be left out
    with Inject(nan_grad={5, 17}, interrupt={4}) as inject, pytest.raises(Interrupted):
        train(cfg, tmp_path / "split")
    with Inject(nan_grad={5, 17}, start=inject.step):
        resumed = train(cfg, tmp_path / "split", resume=True)
    assert same_parameters(resumed, whole)
    assert metrics(tmp_path / "split") == metrics(tmp_path / "whole")


# ---------------------------------------------------------------- non-finite values

def test_nonfinite_gradient_stops_keeping_the_last_good_checkpoint(npy, tmp_path):
    run = tmp_path / "run"
    with Inject(nan_grad={1}), pytest.raises(TrainingError) as err:
        train(config(npy, epochs=3), run)
    assert str(err.value) == "non-finite gradient at epoch 1, step 1; no checkpoint was written"
    assert not run.exists()                                    # nothing saved, nothing left behind
    with Inject(nan_grad={13}), pytest.raises(TrainingError) as err:
        train(config(npy, epochs=3), run)
    assert str(err.value) == (f"non-finite gradient at epoch 2, step 3; the last good checkpoint, "
                              f"{run / 'checkpoint.pt'}, is kept")
    state = checkpoint.load(run / "checkpoint.pt")
    assert state["epoch"] == 1 and state["position"] is None and len(metrics(run)) == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_nonfinite_loss_stops_keeping_the_last_good_checkpoint(npy, nan_row, tmp_path):
    run = tmp_path / "run"
    train(config(npy, epochs=1, on_nonfinite="skip"), run)
    assert [m["skipped_steps"] for m in metrics(run)] == [1]
    before = (run / "checkpoint.pt").read_bytes()
    with pytest.raises(TrainingError) as err:                  # the policy may change on resume
        train(config(npy, epochs=3, on_nonfinite="stop"), run, resume=True)
    assert str(err.value) == (f"non-finite loss at epoch 2, step {nan_row[2]}; the last good checkpoint, "
                              f"{run / 'checkpoint.pt'}, is kept")
    assert (run / "checkpoint.pt").read_bytes() == before and len(metrics(run)) == 1


def test_nonfinite_weights_from_init_from_fail_in_one_line(npy, tmp_path, capsys):
    source = tmp_path / "source"
    train(config(npy, epochs=1, limit_train=20), source)
    state = checkpoint.load(source / "checkpoint.pt")
    for tensor in state["model"].values():
        tensor.fill_(float("nan"))
    checkpoint.save(state, source / "checkpoint.pt")
    rc = main(["train", "--out", str(tmp_path / "run"), "--dataset", npy, "--init-from", str(source),
               *SMALL])
    err = capsys.readouterr().err
    assert rc == 2 and err == ("iwae: error: non-finite loss at epoch 1, step 1; no checkpoint was written "
                               "(--on-nonfinite skip skips such batches)\n")
    assert not (tmp_path / "run").exists()                 # a new run that saved nothing leaves nothing


# ---------------------------------------------------------------- bad input: one line, exit 2

def cli(*argv):
    """(exit status, stderr) of iwae.app.cli.main in process."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(list(map(str, argv)))
        except SystemExit as exit:
            rc = exit.code
    return rc, err.getvalue()


def one_line_error(rc, err):
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("iwae: error: "), err
    return err[len("iwae: error: "):-1]


@pytest.fixture(scope="module")
def small_run(npy, tmp_path_factory):
    run = tmp_path_factory.mktemp("small") / "run"
    train(config(npy, epochs=1, limit_train=40), run)
    return run


@pytest.fixture
def run_copy(small_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(small_run, run)
    return run


def bad_npy(tmp_path, name, array):
    path = tmp_path / name
    np.save(path, array, allow_pickle=True)
    return str(path)


BAD_FLAGS = [
    (["--dataset", "nosuch"], "unknown dataset 'nosuch': not one of mnist, fashion-mnist, binarized-mnist, "
                              "omniglot, and no such file or folder"),
    (["--objective", "iwea"], "unknown bound 'iwea'; expected one of elbo, iwae, miwae, ciwae, piwae, renyi, vr-max (or 'vae')"),
    (["--estimator", "drge"], "unknown estimator 'drge'; expected one of standard, stl, dreg, rws, vimco, reinforce"),
    (["--k", "0"], "argument --k: must be an integer >= 1, got 0 (see: iwae train --help)"),
    (["--k", "-3"], "argument --k: must be an integer >= 1, got -3 (see: iwae train --help)"),
    (["--k", "two"], "argument --k: expected an integer, got 'two' (see: iwae train --help)"),
    (["--objective", "miwae", "--k", "6", "--m", "4"], "m must be a positive divisor of k=6, got 4"),
    (["--objective", "miwae", "--k", "6"], "miwae needs m, the number of groups (m must divide k=6)"),
    (["--objective", "ciwae", "--beta", "1.5"], "beta must be in [0, 1], got 1.5"),
    (["--objective", "ciwae", "--beta", "-0.1"], "beta must be in [0, 1], got -0.1"),
    (["--objective", "ciwae", "--beta", "nan"], "beta must be in [0, 1], got nan"),
    (["--lr", "inf"], "lr and adam_eps must be finite and > 0, got inf and 0.0001"),
    (["--seed", "-1"], "seed must be in [0, 2**63 - 1), got -1"),
    (["--adam-betas", "0.9"], "argument --adam-betas: expected two numbers B1,B2, got '0.9' (see: iwae train --help)"),
    (["--adam-betas", "0.9,1"], "adam_betas must be two numbers in [0, 1), got (0.9, 1.0)"),
    (["--adam-eps", "0"], "lr and adam_eps must be finite and > 0, got 0.001 and 0.0"),
    (["--layers", "3"], "argument --layers: invalid choice: 3 (choose from 1, 2) (see: iwae train --help)"),
    (["--on-nonfinite", "ignore"], "argument --on-nonfinite: invalid choice: 'ignore' (choose from 'stop', "
                                   "'skip') (see: iwae train --help)"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate (see: iwae --help)"),
]


@pytest.mark.parametrize("flags,message", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_flags_fail_in_one_line(npy, tmp_path, flags, message):
    rc, err = cli("train", "--out", tmp_path / "run", *flags)
    assert one_line_error(rc, err) == message
    assert not (tmp_path / "run").exists()


def test_adam_settings_reach_the_optimizer(npy, tmp_path):
    rc, err = cli("train", "--out", tmp_path / "run", "--dataset", npy, *SMALL, "--epochs", "1",
                  "--adam-betas", "0.99,0.999", "--adam-eps", "1e-8")
    assert rc == 0, err
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["adam_betas"] == [0.99, 0.999] and config["adam_eps"] == 1e-8
    group = checkpoint.load(tmp_path / "run" / "checkpoint.pt")["optimizer"]["param_groups"][0]
    assert tuple(group["betas"]) == (0.99, 0.999) and group["eps"] == 1e-8


def test_a_k_too_large_for_memory_fails_in_one_line(npy, tmp_path):
    rc, err = cli("train", "--out", tmp_path / "run", "--dataset", npy, *SMALL, "--k", 10 ** 11)
    message = one_line_error(rc, err)       # the noise alone: 1e11 x 20 x 50 floats
    assert message == "out of memory (tried to allocate 372529.0 GiB): lower --k or --batch-size", message
    assert not (tmp_path / "run").exists()


BAD_DATA = [
    ("flat.npy", np.random.rand(30), r"expected an array \[N, D\] or \[N, H, W\], got shape \(30,\)"),
    ("rgb.npy", np.random.rand(30, 4, 4, 3), r"expected an array \[N, D\] or \[N, H, W\], got shape \(30, 4, 4, 3\)"),
    ("complex.npy", np.ones((30, 16), complex), r"unsupported dtype complex128"),
    ("text.npy", np.full((30, 16), "a"), r"unsupported dtype <U1"),
    ("objects.npy", np.array([[None] * 16] * 30), r"not a readable \.npy file \(Object arrays cannot be loaded"),
    ("range.npy", np.linspace(-1, 2, 480).reshape(30, 16), r"values outside \[0, 1\] \(min -1, max 2\)"),
    ("nan.npy", np.where(np.eye(30, 16) > 0, np.nan, 0.5), r"16 non-finite values \(NaN or Inf\)"),
    ("empty.npy", np.zeros((0, 16)), r"no data \(shape \(0, 16\)\)"),
]


@pytest.mark.parametrize("name,array,message", BAD_DATA, ids=[b[0] for b in BAD_DATA])
def test_bad_user_data_fails_in_one_line(tmp_path, name, array, message):
    path = bad_npy(tmp_path, name, array)
    rc, err = cli("train", "--out", tmp_path / "run", "--dataset", path, *SMALL)
    assert re.search(message, one_line_error(rc, err)), err
    assert not (tmp_path / "run").exists()


def test_truncated_and_corrupted_data_files_fail_the_checksum(data_dir, tmp_path):
    for damage in ("truncated", "corrupted"):
        root = tmp_path / damage
        shutil.copytree(Path(data_dir) / "mnist", root / "mnist")
        path = root / "mnist" / "train-images-idx3-ubyte.gz"
        data = bytearray(path.read_bytes())
        if damage == "truncated":
            data = data[: len(data) // 2]
        else:
            data[len(data) // 2] ^= 0x10
        path.chmod(0o644)
        path.write_bytes(data)
        rc, err = cli("train", "--out", tmp_path / "run", "--data-dir", root, *SMALL)
        assert re.fullmatch(rf"{re.escape(str(path))}: checksum mismatch: expected md5 f68b3c2dcbeaaa9fbdd348bbdeb94873, "
                            r"got [0-9a-f]{32}", one_line_error(rc, err)), err
        assert not (tmp_path / "run").exists()


def test_missing_truncated_and_corrupted_checkpoints(run_copy, npy):
    ckpt = run_copy / "checkpoint.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    rc, err = cli("evaluate", run_copy, "--k", "2", "--limit-test", "5")
    assert one_line_error(rc, err).startswith(f"cannot read checkpoint {ckpt}: "), err
    corrupted = bytearray(data)
    corrupted[len(data) // 2] ^= 0x01                  # inside the weights: torch.load alone misses it
    ckpt.write_bytes(corrupted)
    rc, err = cli("train", "--out", run_copy, "--resume", "--epochs", "2", "--final-k", "0", "--quiet")
    assert one_line_error(rc, err) == f"cannot read checkpoint {ckpt}: checksum mismatch (the file is corrupted)"
    ckpt.write_bytes(b"")
    rc, err = cli("evaluate", run_copy)
    assert one_line_error(rc, err).startswith(f"cannot read checkpoint {ckpt}: ")
    ckpt.unlink()
    rc, err = cli("evaluate", run_copy)
    assert one_line_error(rc, err) == f"no checkpoint at {ckpt}"
    rc, err = cli("train", "--out", run_copy, "--resume", "--final-k", "0", "--quiet")
    assert one_line_error(rc, err) == (f"no checkpoint at {ckpt}, but {run_copy / 'metrics.jsonl'} records 1 "
                                       "epoch(s); restore it or start a new run")
    checkpoint.save({"model": {}, "epoch": 1}, ckpt)          # readable, but not a whole checkpoint
    rc, err = cli("train", "--out", run_copy, "--resume", "--final-k", "0", "--quiet")
    assert one_line_error(rc, err) == f"checkpoint {ckpt} is incomplete or inconsistent: 'config'"


def test_checkpoint_of_another_architecture(small_run, npy, tmp_path):
    rc, err = cli("train", "--out", tmp_path / "run", "--dataset", npy, "--layers", "2",
                  "--init-from", small_run, *SMALL)
    message = one_line_error(rc, err)
    assert re.fullmatch(rf"checkpoint {re.escape(str(small_run / 'checkpoint.pt'))} does not fit this "
                        r"model's architecture \(missing [\w.]+, [\w.]+, [\w.]+ and \d+ more; "
                        r"size mismatch for .*\)", message), message
    assert not (tmp_path / "run").exists()
    other = bad_npy(tmp_path, "d100.npy", np.random.rand(50, 10, 10))      # 100 pixels, not 784
    rc, err = cli("train", "--out", tmp_path / "run", "--dataset", other, "--init-from", small_run, *SMALL)
    assert ("(size mismatch for encoder.0.net.0.weight: [200, 784] in the checkpoint, [200, 100] here, "
            "decoder.4.weight: [784, 200] in the checkpoint, [100, 200] here") in one_line_error(rc, err)


def test_resume_with_disagreeing_flags_or_config(run_copy, npy):
    rc, err = cli("train", "--out", run_copy, "--resume", "--k", "7", "--seed", "3")
    assert one_line_error(rc, err) == (f"--resume: the flags disagree with {run_copy / 'config.json'} on k, seed; "
                                       "drop them or use another --out")
    config_path = run_copy / "config.json"
    saved = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**saved, "k": 3}))             # edited behind the checkpoint's back
    rc, err = cli("train", "--out", run_copy, "--resume")
    assert one_line_error(rc, err) == (f"checkpoint {run_copy / 'checkpoint.pt'} was written by a run with "
                                       "other settings (k) than its config.json")
    for text, reason in [("{not json", "Expecting property name"), ("[1, 2]", "not a JSON object"),
                         (json.dumps({**saved, "evil": 1}), "unknown config keys: evil"),
                         (json.dumps({**saved, "k": "5"}), "k has the wrong type: '5'"),
                         (json.dumps({**saved, "lr": None}), "lr has the wrong type: None")]:
        config_path.write_text(text)
        rc, err = cli("train", "--out", run_copy, "--resume")
        assert one_line_error(rc, err).startswith(f"{config_path} is not a valid config: {reason}"), err
    config_path.write_text(json.dumps(saved))
    rc, err = cli("train", "--out", run_copy, "--resume", "--epochs", "1", "--final-k", "0", "--quiet")
    assert rc == 0, err                                        # already done: nothing to do
    train(config(saved["dataset"], epochs=3, limit_train=40), run_copy, resume=True)
    rc, err = cli("train", "--out", run_copy, "--resume", "--epochs", "2")
    assert one_line_error(rc, err) == (f"epochs 2 is fewer than the 3 epoch(s) {run_copy} has trained "
                                       "(or begun); give at least that many")
    rc, err = cli("train", "--out", run_copy, "--dataset", npy)
    assert one_line_error(rc, err) == f"{run_copy} already holds a run; pass --resume to continue it or choose another --out"


def test_resume_on_changed_data_is_refused(npy, tmp_path):
    data = tmp_path / "data.npy"
    shutil.copy(npy, data)
    run = tmp_path / "run"
    train(config(str(data), epochs=1, limit_train=20), run)
    images = np.load(data)
    images[3, 10, 10] = 255 - images[3, 10, 10]                    # one pixel of one training image
    np.save(data, images)
    rc, err = cli("train", "--out", run, "--resume", "--epochs", "2", "--final-k", "0", "--quiet")
    assert one_line_error(rc, err) == (f"checkpoint {run / 'checkpoint.pt'} was trained on other data than "
                                       f"{str(data)!r} holds now (its training images changed); start a new run")


def test_a_run_in_use_is_refused(run_copy):
    import fcntl
    fd = os.open(run_copy, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        rc, err = cli("train", "--out", run_copy, "--resume", "--epochs", "2", "--final-k", "0", "--quiet")
        assert one_line_error(rc, err) == f"{run_copy} is in use by another training process"
    finally:
        os.close(fd)


def test_unwritable_or_full_output_directory_leaves_nothing(npy, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, err = cli("train", "--out", blocker / "run", "--dataset", npy, *SMALL)
    assert one_line_error(rc, err) == f"[Errno 20] cannot create the run directory {blocker / 'run'}: Not a directory"
    rc, err = cli("train", "--out", "/proc/iwae-test/run", "--dataset", npy, *SMALL)
    assert one_line_error(rc, err).startswith("[Errno 2] cannot create the run directory /proc/iwae-test/run")
    if os.geteuid() != 0:                            # root ignores permission bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        rc, err = cli("train", "--out", locked / "run", "--dataset", npy, *SMALL)
        assert "Permission denied" in one_line_error(rc, err)
    real_save = torch.save

    def full_disk(state, f):
        f.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", full_disk)
    run = tmp_path / "new"
    rc, err = cli("train", "--out", run, "--dataset", npy, *SMALL)
    assert one_line_error(rc, err) == f"[Errno 28] cannot write {run / 'checkpoint.pt'}: No space left on device"
    assert not run.exists()                          # a new run that could save nothing leaves nothing
    monkeypatch.setattr(torch, "save", real_save)
    train(config(npy, epochs=1, limit_train=20), run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    monkeypatch.setattr(torch, "save", full_disk)
    rc, err = cli("train", "--out", run, "--resume", "--epochs", "2", "--final-k", "0", "--quiet")
    assert one_line_error(rc, err) == f"[Errno 28] cannot write {run / 'checkpoint.pt'}: No space left on device"
    after = {p.name: p.read_bytes() for p in run.iterdir()}
    assert after.keys() == before.keys()             # no temporary files
    assert after["checkpoint.pt"] == before["checkpoint.pt"] and after["metrics.jsonl"] == before["metrics.jsonl"]


# ---------------------------------------------------------------- security

class Marker:
    """Unpickling this would create a file: what a malicious checkpoint does."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_checkpoint_is_refused_without_running_it(run_copy, npy, tmp_path):
    marker = tmp_path / "pwned"
    ckpt = run_copy / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=True)
    state["metrics"] = [Marker(marker)]
    torch.save(state, ckpt)                          # a plain pickle of an arbitrary object
    assert not marker.exists()
    for argv in (["evaluate", run_copy, "--k", "2"],
                 ["train", "--out", run_copy, "--resume", "--epochs", "2", "--final-k", "0", "--quiet"],
                 ["train", "--out", tmp_path / "other", "--init-from", run_copy, "--dataset", npy, *SMALL]):
        rc, err = cli(*argv)
        message = one_line_error(rc, err)
        assert message == (f"cannot read checkpoint {ckpt}: it holds pickled objects other than tensors and "
                           "plain containers, which are refused unread (Weights only load failed)"), message
        assert not marker.exists()
    with pytest.raises(CheckpointError):
        load_model(run_copy)
    assert not marker.exists()
    with open(ckpt, "wb") as f:                      # a bare pickle, not even a torch archive
        pickle.dump(Marker(marker), f)
    rc, err = cli("evaluate", run_copy)
    assert one_line_error(rc, err).startswith(f"cannot read checkpoint {ckpt}: ")
    assert not marker.exists()


def test_config_fields_cannot_write_outside_the_run(small_run, npy, tmp_path, monkeypatch):
    """init_from is only read; dataset names are never joined into the data directory."""
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in small_run.iterdir()}
    run = tmp_path / "run"
    train(config(npy, epochs=1, limit_train=20, init_from=str(small_run)), run)
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in small_run.iterdir()} == before
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "config.json", "metrics.jsonl"]
    # a config.json whose dataset climbs out of the data directory is not looked up there
    cache = tmp_path / "cache"
    (cache / "mnist").mkdir(parents=True)
    shutil.copy(npy, tmp_path / "escaped.npy")
    monkeypatch.chdir(cache / "mnist")                   # ../escaped.npy is cache/escaped.npy: absent
    assert (cache / "../escaped.npy").is_file()
    with pytest.raises(DataError, match="unknown dataset '../escaped.npy'"):
        load_dataset("../escaped.npy", cache)
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("mnist/../../escaped.npy", cache)


def test_plain_http_mirror_is_refused(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"^refusing to download http://example\.com/mnist/"
                                        r"train-images-idx3-ubyte\.gz: only https:// URLs are accepted$"):
        download_dataset("mnist", tmp_path, mirror="http://example.com")
    monkeypatch.setenv("IWAE_MIRROR", "http://mirror.example.org/iwae")
    rc, err = cli("train", "--out", tmp_path / "run", "--data-dir", tmp_path / "empty", *SMALL)
    assert one_line_error(rc, err).startswith("refusing to download http://mirror.example.org/iwae/mnist/")
    assert not list((tmp_path / "empty").rglob("*.gz"))

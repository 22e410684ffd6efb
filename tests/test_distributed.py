"""Data-parallel training and evaluation: 2 CPU processes (gloo) on 127.0.0.1 against one process.

One spawned pair trains an epoch through the library, a torchrun pair resumes it through
the CLI, and a torchrun pair evaluates it; the reference runs in this process.
"""
import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import iwae
from iwae.evaluation.likelihood import block_seed, seeded_log_likelihood
from iwae.runtime import distributed
from iwae.training.spec import PaperSpec
from iwae.app.runs import evaluate_run
from iwae.training.paper import train

LIMIT_TRAIN = 101        # 5 global batches of 20, then 1 example: shards of 1 and 0 (reweighted)
TIMEOUT = 150            # seconds for one 2-process launch


def config(**kw):
    return PaperSpec(**{"limit_train": LIMIT_TRAIN, "epochs": 1, "k": 3, "eval_examples": 30, **kw})


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback_env(port):
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
    if any(name == "lo" for _, name in socket.if_nameindex()):
        env["GLOO_SOCKET_IFNAME"] = "lo"               # gloo talks over the loopback only
    return env


def _rank(rank, world, env, run_dir, out, data_dir):
    """One spawned rank: train through the library, then save its own parameters."""
    import faulthandler
    faulthandler.dump_traceback_later(TIMEOUT - 10, exit=True)       # a hang shows where each rank is
    os.environ.update(env, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    try:
        model = train(config(data_dir=data_dir, quiet=True), run_dir)
        torch.save(model.state_dict(), f"{out}/rank{rank}.pt")
    finally:
        distributed.cleanup()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir, one_thread):
    """A 2-rank epoch (spawned, library) and the same epoch in one process."""
    root = tmp_path_factory.mktemp("ddp")
    ctx = mp.get_context("spawn")
    env = loopback_env(free_port())
    procs = [ctx.Process(target=_rank, args=(r, 2, env, str(root / "ddp"), str(root), data_dir)) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(TIMEOUT)
    for p in procs:
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    single = train(config(data_dir=data_dir, quiet=True), root / "single")
    return root, single


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_ranks_match_one_process(runs):
    root, single = runs
    ranks = [torch.load(root / f"rank{r}.pt") for r in (0, 1)]
    for name, a in ranks[0].items():
        assert torch.equal(a, ranks[1][name]), name                        # DDP keeps the ranks equal
    worst = max((ranks[0][n] - p).abs().max().item() for n, p in single.state_dict().items())
    assert worst < 1e-4, worst                 # float rounding only (other noise: ~1e-3 after 6 steps)
    (d,), (s,) = metrics(root / "ddp"), metrics(root / "single")
    assert d["steps"] == s["steps"] == 6
    assert d["train_bound"] == pytest.approx(s["train_bound"], rel=1e-6)    # the global batch's loss
    assert d["test_bound"] == pytest.approx(s["test_bound"], rel=1e-6)
    assert sorted(p.name for p in (root / "ddp").iterdir()) == ["checkpoint.pt", "config.json", "metrics.jsonl"]


def torchrun(*args, env):
    """`torchrun --nproc_per_node 2 -m iwae ARGS` on 127.0.0.1; on a timeout the agent and
    both workers (its own session) are killed."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", env["MASTER_PORT"], "-m", "iwae", *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env}, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"torchrun {' '.join(args)} ran past {TIMEOUT} s: {stderr[-3000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def test_resume_and_evaluate_under_torchrun(runs, data_dir):
    root, single = runs
    run = root / "ddp"
    out = torchrun("train", "--out", str(run), "--resume", "--epochs", "2", "--data-dir", data_dir,
                   "--final-k", "20", "--final-limit-test", "50", "--quiet", env=loopback_env(free_port()))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("test NLL (L_20, 50 test images)") == 1                 # rank 0 alone prints
    train(config(epochs=2, data_dir=data_dir, quiet=True), root / "single", resume=True)
    d, s = metrics(run)[1], metrics(root / "single")[1]
    assert d["steps"] == s["steps"] == 12
    assert d["train_bound"] == pytest.approx(s["train_bound"], rel=1e-5)
    assert d["test_bound"] == pytest.approx(s["test_bound"], rel=1e-5)

    # the final evaluation was shared by the ranks; one process gets the same numbers
    shared = json.loads((run / "eval.json").read_text())
    alone = evaluate_run(run, k=20, limit=50, data_dir=data_dir)
    assert shared["test_nll"] == pytest.approx(alone["test_nll"], abs=1e-9)
    assert shared["elbo_nll"] == pytest.approx(alone["elbo_nll"], abs=1e-9)
    assert shared["active_units"] == alone["active_units"]

    # `iwae evaluate` under torchrun: blocks of 100 images, the first on rank 0, the second on rank 1
    out = torchrun("evaluate", str(run), "--data-dir", data_dir, "--k", "10", "--limit-test", "150", "--json",
                   "--per-example", str(root / "ll.npy"), env=loopback_env(free_port()))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    alone = evaluate_run(run, k=10, limit=150, data_dir=data_dir, per_example=root / "alone.npy")
    assert result["n_test"] == 150 and result["test_nll"] == pytest.approx(alone["test_nll"], abs=1e-9)
    assert np.abs(np.load(root / "ll.npy") - np.load(root / "alone.npy")).max() < 1e-9


def test_blocks_are_seeded_by_their_global_index():
    torch.manual_seed(0)
    model = iwae.paper_model()
    x = torch.rand(25, 784, generator=torch.Generator().manual_seed(0)).bernoulli()
    whole = seeded_log_likelihood(model, x, 10, seed=7, block=10)
    assert torch.equal(whole[:20], seeded_log_likelihood(model, x[:20], 10, seed=7, block=10))
    assert not torch.equal(whole, seeded_log_likelihood(model, x, 10, seed=8, block=10))


def test_helpers():
    assert distributed.split_sizes(7, 2) == [4, 3] and distributed.split_sizes(1, 2) == [1, 0]
    assert distributed.shard_range(7, distributed.Context(1, 2)) == (4, 7)
    assert distributed.per_rank_batch(20, 4) == 5
    assert block_seed(0, 1) != block_seed(1, 0)
    assert distributed.world_size({"WORLD_SIZE": "3"}) == 3 and distributed.world_size({}) == 1
    assert distributed.backend(cuda=False) == "gloo"


@pytest.mark.parametrize("rank,printed", [("0", True), ("1", False)])
def test_indivisible_batch_is_one_line_on_rank_0(tmp_path, data_dir, capsys, monkeypatch, rank, printed):
    from iwae.app.cli import main
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", rank)
    assert main(["train", "--out", str(tmp_path / "r"), "--data-dir", data_dir, "--limit-train", "40"]) == 2
    expected = ("iwae: error: --batch-size 20 is the global batch and must be divisible by the 3 processes "
                "(per-rank batch = batch / processes); use a multiple of 3 or another --nproc_per_node\n")
    assert capsys.readouterr().err == (expected if printed else "")
    assert not (tmp_path / "r").exists()


def test_single_process_commands_refuse_torchrun(capsys, monkeypatch):
    from iwae.app.cli import main
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["sample", "nowhere"]) == 2
    assert capsys.readouterr().err == ("iwae: error: `iwae sample` runs in one process; under torchrun only "
                                       "train and evaluate share the work (run it without torchrun)\n")

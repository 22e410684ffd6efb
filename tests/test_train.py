"""Training on real MNIST: schedule, run directory, exact resume, and the CLI end to end."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import iwae
from iwae.training.rundir import RunExists, SpecDiffers
from iwae.training.spec import PaperSpec
from iwae.training.schedule import PAPER_EPOCHS, learning_rate, stage
from iwae.training.paper import train


def test_paper_schedule():
    assert PAPER_EPOCHS == 3280
    assert [stage(e) for e in (0, 1, 3, 4, 12, 13, 39, 40, 3279, 5000)] == [0, 1, 1, 2, 2, 3, 3, 4, 7, 7]
    assert learning_rate(0) == pytest.approx(1e-3)
    assert learning_rate(1) == pytest.approx(1e-3 * 10 ** (-1 / 7))
    assert learning_rate(3279) == pytest.approx(1e-4)
    code = [learning_rate(e, "code") for e in (0, 1, 4, 13, 40, 121, 364, 1093)]
    assert code == pytest.approx([1.0e-3, 7.2e-4, 5.2e-4, 3.7e-4, 2.7e-4, 1.9e-4, 1.4e-4, 1.0e-4])


def test_cosine_schedule_falls_from_lr_to_near_zero_over_the_run():
    rates = [learning_rate(e, "cosine", 4e-3, epochs=10) for e in range(10)]
    assert rates[0] == 4e-3 and rates[5] == pytest.approx(2e-3) and rates[9] == pytest.approx(4e-3 * 0.0245, rel=1e-2)
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert learning_rate(12, "cosine", 4e-3, epochs=10) == rates[9]                    # past the run: its last


def small_config(**kw):
    base = dict(limit_train=200, epochs=2, k=3, eval_examples=40)
    base.update(kw)
    return PaperSpec(**base)


ROOT = Path(__file__).resolve().parents[1]
PREVIOUS_MAIN = "8368054"      # main before the run specification and the run directory's owner (issue 35)


def previous_main_trains(run_dir, data_dir, **config):
    """Train with the previous main's code (its src/iwae from git, in a child process), with
    the settings it knows (``bound`` under its earlier name, ``objective``)."""
    threads = torch.get_num_threads()        # as this process: matmuls round by their blocking
    config = {("objective" if k == "bound" else k): v for k, v in config.items()}
    code = (f"import torch; torch.set_num_threads({threads}); from benchmarks.common import load_baseline; "
            f"base = load_baseline({PREVIOUS_MAIN!r}); import dataclasses, iwae_base.training.config as c, "
            "iwae_base.training.paper as p; known = {f.name for f in dataclasses.fields(c.Config)}; "
            f"config = c.Config(**{{k: v for k, v in {config!r}.items() if k in known}}); "
            f"p.train(config, {str(run_dir)!r}, data_dir={str(data_dir)!r}, quiet=True)")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT)


def strip(run_dir):
    """metrics.jsonl's records less their timings."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(l).items() if k not in ("seconds", "steps_per_second")} for l in lines]


def test_the_previous_main_trains_the_same_run_bitwise_and_its_run_resumes_here(tmp_path, data_dir):
    known = subprocess.run(["git", "cat-file", "-e", f"{PREVIOUS_MAIN}^{{commit}}"], capture_output=True, cwd=ROOT)
    if known.returncode != 0:
        pytest.skip(f"this checkout's history lacks {PREVIOUS_MAIN}")
    for name, epochs in (("old", 2), ("split", 1)):
        old = previous_main_trains(tmp_path / name, data_dir, **small_config(epochs=epochs).to_dict())
        assert old.returncode == 0, old.stderr[-2000:]
    whole = train(small_config(data_dir=data_dir, quiet=True), tmp_path / "whole")
    resumed = train(small_config(data_dir=data_dir, quiet=True), tmp_path / "split", resume=True)
    old = iwae.load_model(tmp_path / "old")
    for (name, a), b, c in zip(whole.state_dict().items(), resumed.state_dict().values(), old.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a, c), name
    assert strip(tmp_path / "whole") == strip(tmp_path / "old") == strip(tmp_path / "split")


def test_resume_continues_bitwise(tmp_path, data_dir):
    whole = train(small_config(data_dir=data_dir, quiet=True), tmp_path / "whole")
    train(small_config(epochs=1, data_dir=data_dir, quiet=True), tmp_path / "split")
    resumed = train(small_config(data_dir=data_dir, quiet=True), tmp_path / "split", resume=True)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert [m["epoch"] for m in strip(tmp_path / "split")] == [1, 2]
    assert strip(tmp_path / "split") == strip(tmp_path / "whole")


def test_run_directory_contents(tmp_path, data_dir):
    model = train(small_config(epochs=2, bound="vae", k=2, data_dir=data_dir, quiet=True), tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["bound"] == "vae" and config["k"] == 2 and config["adam_eps"] == 1e-4
    metrics = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert [m["steps"] for m in metrics] == [10, 20]                  # 200 images / batch 20
    assert metrics[0]["lr"] == pytest.approx(1e-3) and metrics[1]["lr"] == pytest.approx(10 ** (-3 - 1 / 7))
    assert set(metrics[0]) >= {"train_bound", "test_bound", "eval_k", "seconds"}
    loaded = iwae.load_model(tmp_path / "run")
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    assert loaded.log_weights(torch.zeros(2, 784), 3).shape == (3, 2)


def test_training_improves_the_bound(tmp_path, data_dir):
    train(small_config(limit_train=2000, epochs=3, k=5, eval_examples=200, data_dir=data_dir, quiet=True),
          tmp_path / "run")
    metrics = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    bounds = [m["test_bound"] for m in metrics]
    assert bounds[2] > bounds[0] + 5, bounds                        # nats per image


def test_existing_run_and_disagreeing_resume_are_refused(tmp_path, data_dir):
    train(small_config(epochs=1, data_dir=data_dir, quiet=True), tmp_path / "run")
    with pytest.raises(RunExists, match=f"^{tmp_path / 'run'} already holds a run$"):
        train(small_config(epochs=1, data_dir=data_dir, quiet=True), tmp_path / "run")
    with pytest.raises(SpecDiffers) as err:
        train(small_config(k=7, data_dir=data_dir, quiet=True), tmp_path / "run", resume=True)
    assert str(err.value) == f"the settings disagree with {tmp_path / 'run' / 'config.json'} on k"
    assert err.value.names == ["k"]


def iwae_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "iwae", *args], capture_output=True, text=True, env=env)


def test_cli_train_evaluate_end_to_end(tmp_path, data_dir):
    run = tmp_path / "run"
    out = iwae_cli("train", "--out", str(run), "--data-dir", data_dir, "--limit-train", "400",
                   "--epochs", "1", "--k", "2", "--final-k", "20", "--final-limit-test", "50", "--quiet")
    assert out.returncode == 0, out.stderr
    assert "test NLL (L_20, 50 test images):" in out.stdout
    out = iwae_cli("evaluate", str(run), "--data-dir", data_dir, "--k", "30", "--limit-test", "40",
                   "--json", "--per-example", str(tmp_path / "ll.npy"))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["k"] == 30 and result["n_test"] == 40 and len(result["active_units"]) == 1
    assert 50 < result["test_nll"] < 600 and result["kl_gap"] > 0
    import numpy as np
    per_example = np.load(tmp_path / "ll.npy")
    assert per_example.shape == (40,) and abs(-per_example.mean() - result["test_nll"]) < 1e-9


@pytest.mark.parametrize("args,message", [
    (["--objective", "iwea"], "iwae: error: unknown bound 'iwea'; expected one of elbo, iwae, miwae, ciwae, piwae, renyi, vr-max (or 'vae')"),
    (["--objective", "miwae", "--k", "6", "--m", "4"], "iwae: error: m must be a positive divisor of k=6, got 4"),
    (["--objective", "ciwae", "--beta", "1.5"], "iwae: error: beta must be in [0, 1], got 1.5"),
    (["--estimator", "dreg", "--objective", "vae"],
     "iwae: error: estimator 'dreg' does not apply to bound 'elbo'; it supports iwae, miwae, piwae, renyi"),
])
def test_cli_bad_configurations_fail_with_one_line(tmp_path, data_dir, args, message):
    out = iwae_cli("train", "--out", str(tmp_path / "r"), "--data-dir", data_dir, *args)
    assert out.returncode == 2
    assert out.stderr.strip() == message
    assert not (tmp_path / "r").exists()


def test_evaluate_a_missing_run_fails_with_one_line(tmp_path):
    out = iwae_cli("evaluate", str(tmp_path / "nothing"))
    assert out.returncode == 2
    assert out.stderr.strip() == f"iwae: error: {tmp_path / 'nothing'} is not a run directory (no config.json)"

"""Run tracking: the per-epoch diagnostics in metrics.jsonl and the TensorBoard events,
read back with TensorBoard's own EventAccumulator."""
import json
import math
import os
import signal
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import iwae
from iwae.app.cli import main
from iwae.data import load_dataset
from iwae.evaluation.units import effective_sample_size
from iwae.training.guards import Interrupted
from iwae.app.runs import evaluate_run

RUN = {"k": 3, "epochs": 2, "batch_size": 20, "compile": "off", "eval_examples": 20, "quiet": True,
       "device": "cpu", "tensorboard": 1}
PER_EPOCH = {"train_bound": "bound/train", "test_bound": "bound/test", "lr": "optimizer/lr",
             "steps_per_second": "speed/steps_per_second", "skipped_steps": "steps/skipped",
             "ess_fraction": "weights/ess_fraction", "log_weight_spread": "weights/log_weight_spread"}


def test_effective_sample_size_of_known_weights():
    k = 7
    equal = torch.zeros(k, 3, dtype=torch.float64) + torch.tensor([0.0, -50.0, 10.0], dtype=torch.float64)
    torch.testing.assert_close(effective_sample_size(equal), torch.full((3,), float(k), dtype=torch.float64))
    dominant = torch.full((k, 2), -1000.0, dtype=torch.float64)
    dominant[3] = 0.0
    torch.testing.assert_close(effective_sample_size(dominant), torch.ones(2, dtype=torch.float64))
    two = torch.full((k, 1), -1000.0, dtype=torch.float64)
    two[0] = two[5] = 0.0
    torch.testing.assert_close(effective_sample_size(two), torch.full((1,), 2.0, dtype=torch.float64))


@pytest.fixture(scope="module")
def mnist(data_dir):
    data = load_dataset("mnist", data_dir)
    return data.train[:60], data.test[:20]


def events(run):
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_events_hold_the_metrics_and_the_image_grids(mnist, tmp_path):
    train, test = mnist
    torch.manual_seed(0)
    iwae.fit(iwae.paper_model(1), train, out=tmp_path / "run", eval_data=test, **RUN)
    acc, records = events(tmp_path / "run"), metrics(tmp_path / "run")
    tags = acc.Tags()
    assert set(PER_EPOCH.values()) | {"bound/train_running", "units/active_layer1", "epoch"} <= set(tags["scalars"])
    for key, tag in PER_EPOCH.items():
        logged = acc.Scalars(tag)
        assert [e.step for e in logged] == [r["steps"] for r in records] == [3, 6]
        for event, record in zip(logged, records):
            assert math.isclose(event.value, record[key], rel_tol=1e-6, abs_tol=1e-6)
    assert [e.value for e in acc.Scalars("units/active_layer1")] == [r["active_units"][0] for r in records]
    assert [e.step for e in acc.Scalars("bound/train_running")] == [1, 2, 3, 4, 5, 6]
    assert all(0 < r["ess_fraction"] <= 1 and r["log_weight_spread"] >= 0 for r in records)
    samples, recon = acc.Images("images/prior_samples"), acc.Images("images/reconstructions")
    assert [(i.height, i.width) for i in samples] == [(8 * 30 + 2, 8 * 30 + 2)] * 2     # 8 x 8 tiles
    assert [(i.height, i.width) for i in recon] == [(2 * 30 + 2, 8 * 30 + 2)] * 2      # data over recon


def test_a_resumed_run_logs_every_step_once(mnist, tmp_path):
    train, test = mnist
    torch.manual_seed(0)
    iwae.fit(iwae.paper_model(1), train, out=tmp_path / "whole", eval_data=test, **RUN)
    model, calls = iwae.paper_model(1), []
    torch.manual_seed(0)
    model = iwae.paper_model(1)

    def interrupt(module, inputs, output):                # SIGINT during epoch 2, step 5
        calls.append(1)
        if len(calls) == 6:
            os.kill(os.getpid(), signal.SIGINT)
    hook = model.decoder.register_forward_hook(interrupt)
    with pytest.raises(Interrupted):
        iwae.fit(model, train, out=tmp_path / "part", eval_data=test, **RUN)
    hook.remove()
    torch.manual_seed(0)
    iwae.fit(iwae.paper_model(1), train, out=tmp_path / "part", eval_data=test, resume=True, **RUN)
    whole, part = events(tmp_path / "whole"), events(tmp_path / "part")
    for tag in ["bound/train_running", *PER_EPOCH.values()]:
        steps = [e.step for e in part.Scalars(tag)]
        assert steps == [e.step for e in whole.Scalars(tag)] and len(steps) == len(set(steps))
    assert [e.value for e in part.Scalars("bound/train")] == [e.value for e in whole.Scalars("bound/train")]


def test_final_active_units_are_those_iwae_evaluate_reports(data_dir, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--limit-train", "40", "--epochs", "1", "--k", "2", "--layers", "2",
                 "--eval-examples", "10", "--final-k", "0", "--quiet", "--device", "cpu",
                 "--data-dir", data_dir]) == 0
    assert metrics(run)[-1]["active_units"] == evaluate_run(run, k=2, limit=5, data_dir=data_dir)["active_units"]
    assert not (run / "tensorboard").exists()                # only with --tensorboard


def test_without_tensorboard_installed_the_flag_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)    # import fails
    assert main(["train", "--out", str(tmp_path / "run"), "--tensorboard", "--epochs", "1"]) == 2
    assert capsys.readouterr().err == ('iwae: error: TensorBoard events need the tensorboard package: '
                                       'pip install "iwae[tensorboard]"\n')
    assert not (tmp_path / "run").exists()

"""iwae.fit: the one training loop for any model; a user's conv net trained, interrupted and
resumed bitwise; the config, data and model checks; --device cpu end to end."""
import json
import os
import signal

import sys

import pytest
import torch
import torch.nn as nn

import iwae
import iwae.training.fit
from iwae.training.checkpoint import CheckpointError
from iwae.app.cli import main
from iwae.data import Dataset, load_dataset
from iwae.training.guards import Interrupted

SMALL = {"k": 2, "epochs": 2, "batch_size": 20, "compile": "off", "eval_examples": 20, "quiet": True,
         "device": "cpu"}


@pytest.fixture(scope="module")
def mnist(data_dir):
    data = load_dataset("mnist", data_dir)
    return data.train[:100], data.test[:20]


def conv(conv_model):
    torch.manual_seed(0)
    return conv_model(latent=4, channels=4)


def states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_conv_model_trains_and_resumes_bitwise_after_an_interruption(conv_model, mnist, tmp_path):
    train, test = mnist
    whole = iwae.fit(conv(conv_model), train, out=tmp_path / "whole", eval_data=test, **SMALL)
    model = conv(conv_model)
    calls = []

    def interrupt(module, inputs, output):              # SIGINT in the middle of epoch 1
        calls.append(1)
        if len(calls) == 4:
            os.kill(os.getpid(), signal.SIGINT)
    hook = model.decoder.register_forward_hook(interrupt)
    with pytest.raises(Interrupted, match=r"^interrupted at epoch 1, step 3; resume with: iwae\.fit\(\.\.\., "
                                          r"out='.*part', resume=True\)$"):
        iwae.fit(model, train, out=tmp_path / "part", eval_data=test, **SMALL)
    hook.remove()
    resumed = iwae.fit(conv(conv_model), train, out=tmp_path / "part", eval_data=test, resume=True, **SMALL)
    assert states_equal(whole.state_dict(), resumed.state_dict())
    metrics = [json.loads(line) for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2] and all("test_bound" in m for m in metrics)
    config = json.loads((tmp_path / "part" / "config.json").read_text())
    assert config["model"] == "Model" and config["data"] == "tensor [100, 784]"
    loaded = iwae.load_model(tmp_path / "part", model=conv(conv_model))
    assert states_equal(loaded.state_dict(), resumed.state_dict())
    with pytest.raises(ValueError, match="was trained by iwae.fit with a Model; pass a new instance"):
        iwae.load_model(tmp_path / "part")


def test_fit_takes_a_dataset_name(data_dir, tmp_path, monkeypatch):
    # binarized-mnist, cut to 60 training images: fixed binarization (never re-drawn) and its
    # validation split as the held-out set
    real = load_dataset("binarized-mnist", data_dir)
    small = Dataset(real.name, real.train[:60], real.test[:20], real.valid[:20], real.image_shape,
                    real.binarization)
    asked = []
    monkeypatch.setattr(sys.modules["iwae.training.fit"], "load_dataset", lambda name, where: asked.append((name, where)) or small)
    torch.manual_seed(0)
    iwae.fit(iwae.paper_model(1), "binarized-mnist", out=tmp_path / "run", data_dir=data_dir,
             **{**SMALL, "epochs": 1})
    assert asked == [("binarized-mnist", data_dir)]
    metrics = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert "valid_bound" in metrics and metrics["eval_k"] == 2
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"] == "binarized-mnist"


@pytest.mark.parametrize("data,message", [
    (torch.rand(10, 28, 28), r"^data must have shape \[N, D\] with N, D >= 1, got \[10, 28, 28\]$"),
    (torch.ones(10, 784, dtype=torch.int64), r"^data must be a float tensor, got torch.int64$"),
    (torch.full((10, 784), 2.0), r"^data has values outside \[0, 1\], which a Bernoulli likelihood cannot "
                                 r"model \(min 2, max 2\)$"),
    (torch.full((10, 784), float("nan")), r"^data holds NaN or infinite values$"),
    (torch.rand(10, 100), r"^Model.log_weights does not take data of shape \[N, 100\]: "),
    ([[0.0] * 784], r"^data must be a torch.Tensor \[N, D\] or a dataset name, got list$"),
])
def test_bad_data_is_one_value_error(data, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        iwae.fit(iwae.paper_model(1), data, out=tmp_path / "run", **SMALL)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kwargs,message", [
    ({"k": 0}, r"^k must be an integer >= 1, got 0$"),
    ({"epochs": -1}, r"^epochs must be an integer >= 1, got -1$"),
    ({"estimator": "magic"}, r"^unknown estimator 'magic'"),
    ({"device": "tpu"}, r"^device must be auto, cpu, cuda or cuda:N, got 'tpu'$"),
    ({"compile": "always"}, r"^compile must be one of auto, off, step, got 'always'$"),
])
def test_bad_settings_are_one_value_error(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        iwae.fit(iwae.paper_model(1), torch.rand(20, 784), out=tmp_path / "run", **{**SMALL, **kwargs})


def test_a_module_without_log_weights_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"^iwae.fit trains modules with a log_weights\(x, k\) method; "
                                         r"Linear has none$"):
        iwae.fit(nn.Linear(784, 2), torch.rand(20, 784), out=tmp_path / "run", **SMALL)


def test_dreg_on_a_model_without_the_parameter_split_is_refused(tmp_path):
    class Bare(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = iwae.paper_model(1)

        def log_weights(self, x, k, **options):
            return self.model.log_weights(x, k, **options)
    with pytest.raises(ValueError, match=r"^dreg treats q's and p's parameters differently: the model needs "
                                         r"encoder_parameters\(\)"):
        iwae.fit(Bare(), torch.rand(20, 784).round(), out=tmp_path / "run", estimator="dreg", **SMALL)


def test_resume_with_a_different_model_is_refused(conv_model, mnist, tmp_path):
    train, _ = mnist
    iwae.fit(conv(conv_model), train, out=tmp_path / "run", **{**SMALL, "epochs": 1})
    with pytest.raises(CheckpointError, match=r"does not fit this model's architecture"):
        iwae.fit(conv_model(latent=8, channels=4), train, out=tmp_path / "run", resume=True, **SMALL)
    with pytest.raises(ValueError, match=r"^resume: the settings disagree with .*config.json on k; pass the run's or use another out$"):
        iwae.fit(conv(conv_model), train, out=tmp_path / "run", resume=True, **{**SMALL, "k": 3})


def test_the_cli_trains_evaluates_samples_and_plots_with_device_cpu(data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--limit-train", "40", "--epochs", "1", "--k", "2",
                 "--eval-examples", "10", "--final-k", "20", "--final-limit-test", "10", "--quiet",
                 "--device", "cpu", "--compile", "off", "--data-dir", data_dir]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["device"] == "cpu" and config["compile"] == "off"
    assert main(["evaluate", str(run), "--k", "20", "--limit-test", "10", "--json", "--device", "cpu",
                 "--data-dir", data_dir]) == 0
    assert main(["sample", str(run), "--n", "4", "--device", "cpu", "--data-dir", data_dir]) == 0
    assert main(["plot", str(run), "--limit", "20", "--device", "cpu", "--data-dir", data_dir]) == 0
    assert main(["diagnose", str(run), "--k", "2", "--estimators", "dreg", "--draws", "2", "--examples", "3",
                 "--device", "cpu", "--quiet", "--data-dir", data_dir]) == 0
    assert iwae.load_model(run, device="cpu").decoder[0].weight.device.type == "cpu"


def test_negative_final_k_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--final-k", "-5"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == ("iwae: error: argument --final-k: must be an integer >= 0, got -5 "
                                       "(see: iwae train --help)\n")


def test_batch_norm_with_running_statistics_is_refused_in_one_line(tmp_path):
    encoder = nn.Sequential(nn.Linear(784, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 4))
    model = iwae.Model(iwae.GaussianLayer(encoder), nn.Sequential(nn.Linear(2, 784)))
    with pytest.raises(ValueError, match=r"^Model.encoder.0.net.1 is a BatchNorm1d that updates running statistics "
                                         r"as it runs, which iwae's torch.func gradients cannot do; build it with "
                                         r"track_running_stats=False, or use nn.GroupNorm or nn.LayerNorm$"):
        iwae.fit(model, torch.rand(20, 784), out=tmp_path / "run", **SMALL)
    encoder[1] = nn.BatchNorm1d(16, track_running_stats=False)           # batch statistics only: fine
    iwae.fit(model, torch.rand(20, 784), out=tmp_path / "run", **{**SMALL, "epochs": 1})


def test_checkpoint_every_writes_after_every_nth_epoch_and_the_last_and_resumes_the_same(tmp_path):
    x = torch.rand(40, 12)

    def model():
        torch.manual_seed(0)
        return iwae.paper_model(1, input_dim=12, likelihood=iwae.Gaussian())
    options = dict(k=2, batch_size=20, compile="off", quiet=True, device="cpu")
    every = iwae.fit(model(), x, out=tmp_path / "every", epochs=5, checkpoint_every=2, **options)
    assert len((tmp_path / "every" / "metrics.jsonl").read_text().splitlines()) == 5
    assert torch.load(tmp_path / "every" / "checkpoint.pt", weights_only=False)["epoch"] == 5
    plain = iwae.fit(model(), x, out=tmp_path / "plain", epochs=5, **options)
    assert states_equal(every.state_dict(), plain.state_dict())
    iwae.fit(model(), x, out=tmp_path / "part", epochs=3, checkpoint_every=2, **options)
    assert torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)["epoch"] == 3
    resumed = iwae.fit(model(), x, out=tmp_path / "part", epochs=5, resume=True, checkpoint_every=2, **options)
    assert states_equal(resumed.state_dict(), plain.state_dict())
    with pytest.raises(ValueError, match=r"^checkpoint_every must be an integer >= 1, got 0$"):
        iwae.fit(model(), x, out=tmp_path / "bad", epochs=1, checkpoint_every=0, **options)


def _gaussian_model(d=6):
    torch.manual_seed(0)
    return iwae.Model(iwae.GaussianLayer(iwae.mlp([d, 16], 4)), iwae.mlp([2, 16], 2 * d), iwae.Gaussian(),
                      missing=True)


def test_patience_stops_on_the_held_out_bound_and_keeps_the_best_epochs_parameters():
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.randn(40, 6, generator=g)     # the decoder's scales shrink from ~1 towards 0.1, past
    held = 0.5 * torch.randn(30, 6, generator=g)  # the held-out rows' 0.5: their bound rises, then falls
    given = held.masked_fill(torch.rand(held.shape, generator=g) < 0.3, float("nan"))
    settings = {**SMALL, "k": 3, "batch_size": 10}
    settings.pop("epochs")
    stopped = iwae.training.fit.train(_gaussian_model(), x, eval_data=held, eval_given=given, epochs=200,
                                      patience=3, **settings)
    bounds = [r["test_bound"] for r in stopped.history]
    best = stopped.best_epoch
    assert len(bounds) == best + 3 < 200 and best > 1 and bounds[best - 1] == max(bounds)   # measured: 10
    assert all(b < bounds[best - 1] for b in bounds[best:])
    again = iwae.training.fit.train(_gaussian_model(), x, eval_data=held, eval_given=given, epochs=best, **settings)
    assert states_equal(stopped.model.state_dict(), again.model.state_dict())   # the best epoch's parameters
    assert again.best_epoch is None


def test_a_held_score_replaces_the_bound_and_a_refit_trains_on_from_the_best_epoch_on_every_entry():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=g)
    holes = x.masked_fill(torch.rand(x.shape, generator=g) < 0.2, float("nan"))
    scores = iter([0.0, 1.0, 0.5, 0.2, 0.1] + [0.0] * 100)                   # best after epoch 2
    settings = {**SMALL, "k": 3, "batch_size": 10}
    settings.pop("epochs")
    kwargs = dict(eval_data=x, eval_given=holes, held_score=lambda model, epoch: next(scores), epochs=50,
                  patience=3)
    refit = iwae.training.fit.train(_gaussian_model(), holes, refit_data=x, refit=1.0, **kwargs, **settings)
    assert refit.best_epoch == 2 and [r["epoch"] for r in refit.history] == [1, 2, 3, 4, 5, 6, 7]
    assert [r.get("held_score") for r in refit.history] == [0.0, 1.0, 0.5, 0.2, 0.1, None, None]
    assert all("test_bound" not in r for r in refit.history)                   # the score replaced it
    scores = iter([0.0, 1.0, 0.5, 0.2, 0.1] + [0.0] * 100)
    stopped = iwae.training.fit.train(_gaussian_model(), holes, **kwargs, **settings)   # no refit: the best epoch's
    assert len(stopped.history) == 5 and stopped.best_epoch == 2
    assert states_equal(stopped.model.state_dict(), iwae.training.fit.train(_gaussian_model(), holes, epochs=2,
                                                                             **settings).model.state_dict())
    assert not states_equal(stopped.model.state_dict(), refit.model.state_dict())   # two epochs on from there


@pytest.mark.parametrize("kwargs, message", [({}, "needs held-out data"), ({"out": "run", "eval_data": "held"},
                                                                            "no run directory")])
def test_patience_needs_held_out_data_in_memory(kwargs, message, tmp_path):
    x = torch.randn(20, 6)
    kwargs = {key: (tmp_path / "run" if v == "run" else x if v == "held" else v) for key, v in kwargs.items()}
    with pytest.raises(ValueError, match=message):
        iwae.training.fit.train(_gaussian_model(), x, patience=2, **{**SMALL, **kwargs})

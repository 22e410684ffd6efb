"""Device handling without a GPU: every public entry point runs on the `meta` device, where a
tensor created on the CPU by mistake fails (meta and CPU tensors do not mix); --device
errors are one line."""
import pytest
import torch

import iwae
from iwae.evaluation import diagnostics as diagnose
from iwae.app.cli import main
from iwae.runtime.devices import parse_device
from iwae.evaluation.units import unit_kl
from iwae.runtime.optim import make_optimizer
from iwae.training.step import make_step

META = torch.device("meta")
CONFIGS = [("iwae", "standard", {}), ("elbo", "standard", {}), ("miwae", "standard", {"m": 2}),
           ("ciwae", "standard", {"beta": 0.5}), ("piwae", "standard", {"m": 2}), ("iwae", "stl", {}),
           ("iwae", "dreg", {}), ("piwae", "dreg", {"m": 2}), ("iwae", "rws", {}),
           ("renyi", "standard", {"alpha": 0.5}), ("renyi", "stl", {"alpha": 0.5}), ("renyi", "dreg", {"alpha": 0.5}),
           ("vr-max", "standard", {}), ("iwae", "vimco", {}), ("renyi", "vimco", {"alpha": 0.5}),
           ("piwae", "vimco", {"m": 2})]


@pytest.fixture(params=[1, 2], ids=["1-layer", "2-layer"])
def meta_model(request):
    return iwae.paper_model(request.param).to(META)


def x_meta(n=3):
    return torch.empty(n, 784, device=META)


def test_log_weights_on_meta(meta_model):
    log_w = meta_model.log_weights(x_meta(), 4)
    assert log_w.device == META and log_w.shape == (4, 3)
    zs = meta_model.sample_q(x_meta(), 2)
    assert all(z.device == META for z in zs)
    assert meta_model.log_weights(x_meta(), 2, zs=zs, stop_q=True).device == META


def test_masked_log_weights_and_imputation_on_meta(meta_model):
    from iwae.evaluation.imputation import impute, multiple_impute
    mask = torch.empty(3, 784, dtype=torch.bool, device=META)
    assert meta_model.log_weights(x_meta(), 4, mask=mask).shape == (4, 3)
    reader = iwae.Model(list(meta_model.encoder), meta_model.decoder, meta_model.likelihood,
                        list(meta_model.decoder_layers), missing=True)     # NaN-coded x
    assert reader.log_weights(x_meta(), 4).device == META
    for estimator in ("standard", "stl", "dreg"):
        iwae.loss(reader, x_meta(), 4, "iwae", estimator).backward()
        assert all(p.grad.device == META for p in reader.parameters())
    assert impute(meta_model, x_meta(), mask, draws=5).device == META
    draws = multiple_impute(meta_model, x_meta(), 2, mask, draws=5)
    assert draws.device == META and draws.shape == (2, 3, 784)


@pytest.mark.parametrize("bound,estimator,kw", CONFIGS)
def test_loss_and_gradients_on_meta(meta_model, bound, estimator, kw):
    loss = iwae.loss(meta_model, x_meta(), 4, bound, estimator, **kw)
    loss.backward()
    assert loss.device == META
    assert all(p.grad is not None and p.grad.device == META for p in meta_model.parameters())


@pytest.mark.parametrize("estimator", ["standard", "dreg", "vimco"])
def test_a_training_step_on_meta(meta_model, estimator):
    step = make_step(meta_model, make_optimizer(meta_model.parameters(), 1e-3), 3, estimator=estimator,
                     compile="off")
    assert step(x_meta()).device == META
    assert all(p.device == META for p in meta_model.parameters())


@pytest.fixture(params=["sbn", "1-layer", "2-layer"])
def bernoulli_meta_model(request):
    if request.param == "sbn":
        return iwae.sbn_model().to(META)
    return iwae.paper_model(int(request.param[0]), latent="bernoulli").to(META)


def test_bernoulli_latents_on_meta(bernoulli_meta_model):
    model = bernoulli_meta_model
    log_w = model.log_weights(x_meta(), 4)
    assert log_w.device == META and log_w.shape == (4, 3)
    zs = model.sample_q(x_meta(), 2)
    assert all(z.device == META for z in zs)
    assert model.log_weights(x_meta(), 2, zs=zs).device == META
    for bound, estimator, kw in (("iwae", "vimco", {}), ("renyi", "vimco", {"alpha": 0.3}), ("iwae", "rws", {})):
        model.zero_grad()
        loss = iwae.loss(model, x_meta(), 4, bound, estimator, **kw)
        loss.backward()
        assert loss.device == META
        assert all(p.grad is not None and p.grad.device == META for p in model.parameters())
    step = make_step(model, make_optimizer(model.parameters(), 1e-3), 3, estimator="vimco", compile="off")
    assert step(x_meta()).device == META
    assert model.sample(5).device == META and model.reconstruct(x_meta()).device == META
    assert all(m.device == META for m in model.encode(x_meta()))


def test_a_bf16_training_step_on_meta(meta_model):
    # k * batch = 1000 rows: the decoder's matmuls pass BF16_MIN_MACS and run in bf16
    step = make_step(meta_model, make_optimizer(meta_model.parameters(), 1e-3), 50, compile="off",
                     precision="bf16")
    loss = step(x_meta(20))
    assert loss.device == META and loss.dtype == torch.float32
    assert all(p.device == META and p.dtype == torch.float32 for p in meta_model.parameters())


def test_log_likelihood_on_meta(meta_model):
    ll, elbo = iwae.log_likelihood(meta_model, x_meta(), 10, max_samples=8, with_elbo=True, compile="off")
    assert ll.device == META and elbo.device == META and ll.shape == (3,)


def test_ais_bdmc_and_the_local_posterior_on_meta(meta_model):
    from iwae.evaluation.gaps import fit_local_posterior
    log_p, chains = iwae.ais(meta_model, x_meta(), steps=2, chains=2, leapfrog=2, with_chains=True)
    assert log_p.device == META and chains.device == META and chains.shape == (2, 3)
    assert iwae.ais(meta_model, x_meta(), steps=2, chains=2, leapfrog=2, init="prior").device == META
    r = iwae.bdmc(meta_model, 3, steps=2, chains=2, leapfrog=2)
    assert r["x"].device == r["lower"].device == r["upper"].device == META
    local = fit_local_posterior(meta_model, x_meta(), steps=2, k=2)
    assert all(m.device == META for m in local.means)


def test_sampling_reconstruction_and_units_on_meta(meta_model):
    assert meta_model.sample(5).device == META
    assert meta_model.reconstruct(x_meta()).device == META
    assert all(mu.device == META for mu in meta_model.encode(x_meta()))     # active units' means
    assert all(u.device == META for u in unit_kl(meta_model, x_meta()))


def test_diagnose_draws_on_meta(meta_model):
    groups = [("encoder", list(meta_model.encoder_parameters())),
              ("decoder", list(meta_model.decoder_parameters()))]
    projections = diagnose.random_projections([sum(p.numel() for p in ps) for _, ps in groups])
    spec = diagnose.parse_estimators("dreg")[0]
    stats = diagnose.draw_moments(meta_model, x_meta(), 4, spec, None, 2, 0, groups, projections)
    assert all(s.mean.device == META and s.n == 2 for s in stats.values())


@pytest.mark.parametrize("spec,message", [
    ("tpu", "device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    ("cuda:x", "device must be auto, cpu, cuda or cuda:N, got 'cuda:x'"),
])
def test_bad_device_names(spec, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        parse_device(spec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:7"])
def test_cuda_without_cuda_is_refused(spec):
    with pytest.raises(ValueError, match=f"^device '{spec}': CUDA is not available here"):
        parse_device(spec)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_device_that_does_not_exist_is_refused():
    n = torch.cuda.device_count()
    with pytest.raises(ValueError, match=f"this machine has {n} CUDA device"):
        parse_device(f"cuda:{n}")


def test_auto_is_the_cpu_without_cuda():
    assert parse_device("auto") == (torch.device("cuda", torch.cuda.current_device())
                                    if torch.cuda.is_available() else torch.device("cpu"))


@pytest.mark.parametrize("command", ["train", "evaluate RUN", "sample RUN", "plot RUN", "diagnose RUN",
                                     "reproduce --table 1 --epochs 1"])
@pytest.mark.parametrize("spec,message", [
    ("tpu", "argument --device: device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
    pytest.param("cuda:7", "argument --device: device 'cuda:7': CUDA is not available here",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="without CUDA")),
])
def test_every_command_refuses_a_bad_device_in_one_line(command, spec, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(command.replace("RUN", str(tmp_path)).split() + ["--device", spec])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"iwae: error: {message}")

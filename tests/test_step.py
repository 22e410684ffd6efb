"""The training step (iwae.step), the optimizer update (iwae.optim) and compiled evaluation.

Every estimator's gradient is checked against an independent plain-autograd formula of it
(the surrogates of the DReG reference code), in float64 to 1e-12; the direct Adam update is
BITWISE Adam.step; the compiled step and evaluation are the eager ones up to float rounding.
"""
import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import iwae
from iwae import bounds
from iwae.core.objective import Functional, Objective
from iwae.runtime import compile as runtime_compile, decisions, torch_private
from iwae.runtime.optim import AdamUpdate, make_optimizer
from iwae.training.step import make_step

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [("iwae", "standard", {}), ("elbo", "standard", {}), ("miwae", "standard", {"m": 2}),
           ("ciwae", "standard", {"beta": 0.3}), ("piwae", "standard", {"m": 2}),
           ("iwae", "stl", {}), ("iwae", "dreg", {}), ("miwae", "dreg", {"m": 2}),
           ("piwae", "dreg", {"m": 2}), ("iwae", "rws", {})]


def grads(model):
    return [p.grad.clone() for p in model.parameters()]


def assert_grads_close(a, b, rtol):
    for ga, gb in zip(a, b):
        scale = gb.abs().max().clamp_min(1e-300)
        assert ((ga - gb).abs().max() / scale).item() < rtol


def binary(n, dtype=torch.float64, seed=0):
    return torch.rand(n, 784, dtype=dtype, generator=torch.Generator().manual_seed(seed)).bernoulli()


def reference_gradients(model, x, k, bound, estimator, m=None, beta=None):
    """Each estimator as the DReG reference code writes it: surrogates differentiated by
    plain autograd, one backward pass per parameter group."""
    objective = Objective(bound, k, m, beta)
    options = {"stl": {"stop_q": True}, "dreg": {"stop_q": True}, "rws": {"stop_z": True}}.get(estimator, {})
    log_w = model.log_weights(x, k, **options)
    enc, dec = list(model.encoder_parameters()), list(model.decoder_parameters())
    if estimator == "rws":
        weighted = (torch.softmax(log_w.detach(), 0) * log_w).sum(0).mean()
        surrogates = (weighted, -weighted)
    elif estimator == "dreg":
        groups = log_w.reshape(objective.encoder_groups, k // objective.encoder_groups, -1)
        w = torch.softmax(groups.detach(), dim=1)
        decoder = -(bounds.iwae_bound(log_w) if bound == "piwae" else objective.value(log_w)).mean()
        surrogates = (-(w.square() * groups).sum(1).mean(), decoder)
    else:
        surrogates = (objective.surrogate(log_w, "encoder"), objective.surrogate(log_w, "decoder"))
    g_enc = torch.autograd.grad(surrogates[0], enc, retain_graph=True)
    g_dec = torch.autograd.grad(surrogates[1], dec)
    by_param = dict(zip(map(id, enc), g_enc)) | dict(zip(map(id, dec), g_dec))
    return [by_param[id(p)] for p in model.parameters()]


@pytest.mark.parametrize("bound,estimator,kw", CONFIGS)
@pytest.mark.parametrize("layers", [1, 2])
def test_every_estimator_equals_its_reference_formula_in_float64(layers, bound, estimator, kw):
    torch.manual_seed(0)
    model = iwae.paper_model(layers).double()
    x = binary(5)
    step = make_step(model, torch.optim.SGD(model.parameters(), lr=0.1), 4, bound, estimator, compile="off", **kw)
    torch.manual_seed(3)
    loss = step.forward_backward(x)
    after = torch.randn(3)                                # the RNG stream after the step
    torch.manual_seed(3)
    expected = reference_gradients(model, x, 4, bound, estimator, **kw)
    torch.testing.assert_close(loss, -Objective(bound, 4, **kw).value(
        (torch.manual_seed(3), model.log_weights(x, 4))[1]).mean().detach(), rtol=1e-12, atol=1e-9)
    assert torch.equal(after, torch.randn(3))            # same draws, in the same order
    assert_grads_close(grads(model), expected, 1e-12)


@pytest.mark.parametrize("bound,kw", [("iwae", {}), ("miwae", {"m": 2}), ("piwae", {"m": 2})])
def test_dreg_in_one_pass_equals_the_two_pass_reference_for_two_layers(bound, kw):
    # DReG scales the gradient at each z once; z_2 depends on z_1 through q(z_2 | z_1)
    torch.manual_seed(0)
    model = iwae.paper_model(2).double()
    x, objective = binary(4), Objective(bound, 6, **kw)
    from iwae.core.estimators import dreg
    f = Functional(model)
    params = tuple(p.detach() for p in f.parameters())
    torch.manual_seed(5)
    one = dreg.gradients(f, params, x, objective)
    f.has_sample_q = False                                     # the reference's two passes
    torch.manual_seed(5)
    two = dreg.gradients(f, params, x, objective)
    torch.testing.assert_close(one[0], two[0], rtol=0, atol=0)
    assert_grads_close(one[1], two[1], 1e-12)


def test_direct_adam_update_is_bitwise_adam_step():
    torch.manual_seed(0)
    a = iwae.paper_model(1)
    b = copy.deepcopy(a)
    x = binary(20, torch.float32)
    opt_a = make_optimizer(a.parameters(), 1e-3)
    step = make_step(a, opt_a, 5, compile="off")
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-3, eps=1e-4, fused=True)
    for i in range(4):
        torch.manual_seed(i)
        step(x)
        torch.manual_seed(i)
        loss = iwae.loss(b, x, 5)
        opt_b.zero_grad(set_to_none=True)
        loss.backward()
        opt_b.step()
        for group in (opt_a.param_groups[0], opt_b.param_groups[0]):
            group["lr"] = 1e-3 / (i + 2)                 # the trainer's schedule changes lr
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
        assert torch.equal(opt_a.state[p]["exp_avg_sq"], opt_b.state[q]["exp_avg_sq"])
        assert torch.equal(opt_a.state[p]["step"], opt_b.state[q]["step"])


def test_direct_adam_update_runs_the_optimizer_hooks_and_honours_dropped_grads():
    model = iwae.paper_model(1)
    opt = make_optimizer(model.parameters(), 1e-3)
    update = AdamUpdate(opt)
    assert update._direct() is False                    # no state yet: it runs opt.step()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    before = [p.detach().clone() for p in model.parameters()]
    assert update._direct() is True and calls == ["pre", "post"]
    assert not any(torch.equal(p, q) for p, q in zip(model.parameters(), before))

    def drop(o, a, k):                                  # the trainer's guard on a NaN gradient
        for p in model.parameters():
            p.grad = None
    opt.register_step_pre_hook(drop)
    before = [p.detach().clone() for p in model.parameters()]
    steps = [opt.state[p]["step"].clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    update()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert all(torch.equal(opt.state[p]["step"], s) for p, s in zip(model.parameters(), steps))


@pytest.mark.parametrize("layers,k,estimator", [(1, 2, "standard"), (2, 5, "dreg")])
def test_whole_step_compiled_equals_the_eager_step(layers, k, estimator):
    # one torch.compile of the whole forward+backward (10-30 s); same samples (fallback_random)
    torch.manual_seed(0)
    model = iwae.paper_model(layers).double()
    x = binary(20)
    eager = make_step(model, torch.optim.SGD(model.parameters(), lr=0.1), k, estimator=estimator, compile="off")
    compiled = make_step(model, torch.optim.SGD(model.parameters(), lr=0.1), k, estimator=estimator,
                         compile="step")
    torch.manual_seed(1)
    l1 = eager.forward_backward(x)
    g1 = grads(model)
    torch.manual_seed(1)
    l2 = compiled.forward_backward(x)
    torch.testing.assert_close(l2, l1, rtol=1e-12, atol=1e-9)
    assert_grads_close(grads(model), g1, 1e-11)
    for batch in (x[:7], x):                  # a new batch shape compiles anew; the old one is kept
        torch.manual_seed(2)
        l1 = eager.forward_backward(batch)
        g1 = grads(model)
        torch.manual_seed(2)
        torch.testing.assert_close(compiled.forward_backward(batch), l1, rtol=1e-12, atol=1e-9)
        assert_grads_close(grads(model), g1, 1e-11)


def small_step(seed, likelihood="bernoulli"):
    """(loss, gradients) of the first compiled step of a new 12-16-2 model (its parameters from
    seed) on 20 binary rows: Bernoulli or a fixed-scale Gaussian, either one decoder output
    per column, so the two models have the same repr."""
    from iwae.core.densities import Bernoulli, Gaussian
    from iwae.core.model import GaussianLayer, Model
    from iwae.core.nets import mlp
    torch.manual_seed(seed)
    p = Bernoulli() if likelihood == "bernoulli" else Gaussian(1.0)
    model = Model(GaussianLayer(mlp([12, 16], 4)), mlp([2, 16], 12), p)
    step = make_step(model, torch.optim.SGD(model.parameters(), lr=0.1), 3, compile="step")
    torch.manual_seed(1)
    return step.forward_backward(binary(20)[:, :12].float()), grads(model)


def assert_same_step(a, b):
    assert torch.equal(a[0], b[0]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))


def test_a_model_like_the_last_reuses_its_compiled_step_with_a_fresh_compiles_numbers():
    # the Imputer's next fit, a cross-validation's next fold: a new model of the same structure
    # is not traced again (1.4-3.7 s of a small fit), and its step is a fresh compile's, bitwise
    from torch._dynamo.utils import counters
    small_step(0)
    graphs = counters["stats"]["unique_graphs"]
    reused = small_step(1)
    assert counters["stats"]["unique_graphs"] == graphs
    runtime_compile._compiled_steps.clear()
    assert_same_step(reused, small_step(1))
    assert counters["stats"]["unique_graphs"] == graphs + 1


def test_a_model_whose_repr_matches_but_graph_does_not_gets_its_own():
    # the shared graph's guards refuse the Gaussian model (fail_on_recompile): it is compiled
    # anew, with a fresh compile's numbers, and the Bernoulli model's next fit is right again,
    # on its first graph (not traced a third time)
    from torch._dynamo.utils import counters
    first = small_step(0)
    graphs = counters["stats"]["unique_graphs"]
    gaussian = small_step(0, "gaussian")
    assert counters["stats"]["unique_graphs"] == graphs + 1 and not torch.equal(gaussian[0], first[0])
    assert_same_step(small_step(0), first)
    assert counters["stats"]["unique_graphs"] == graphs + 1
    runtime_compile._compiled_steps.clear()
    assert_same_step(small_step(0, "gaussian"), gaussian)


def test_a_custom_backward_is_kept_by_running_its_step_eagerly(custom_backward_model, recwarn):
    # torch.compile drops an autograd.Function's backward under torch.func (pytorch/pytorch#193279):
    # compiled, this step's gradients were the undoubled ones
    model = custom_backward_model
    x, plain, images = binary(6)[:, :12], iwae.paper_model(1), binary(2, torch.float32)
    state = torch.get_rng_state()
    assert decisions.custom_backwards(model, x) == ["DoubledGradient"]
    assert decisions.custom_backwards(plain, images) == []
    assert torch.equal(torch.get_rng_state(), state)
    steps = {c: make_step(model, torch.optim.SGD(model.parameters(), lr=0.1), 3, compile=c) for c in ("off", "step")}
    got = {}
    for c, step in steps.items():
        torch.manual_seed(1)
        got[c] = (step.forward_backward(x), grads(model))
    assert torch.equal(got["step"][0], got["off"][0])
    assert all(torch.equal(a, b) for a, b in zip(got["step"][1], got["off"][1]))
    assert [str(w.message) for w in recwarn if "eagerly" in str(w.message)] == [
        "iwae: step runs eagerly: the model's log weights use torch.autograd.Function DoubledGradient, whose "
        "backward torch.compile drops under torch.func (pytorch/pytorch#193279)"]


def test_compile_policy():
    model = iwae.paper_model(1)
    opt = make_optimizer(model.parameters(), 1e-3)
    mode = lambda k, **kw: make_step(model, opt, k, **kw).compile
    assert mode(1) == "off" and mode(50) == "off"                # run length unknown
    assert mode(1, planned_steps=10 ** 7) == "step" and mode(50, planned_steps=10 ** 7) == "step"
    assert mode(5, planned_steps=1000) == "off"                  # a short run: no compiling
    assert mode(5, planned_steps=10 ** 7, compile="off") == "off"
    assert mode(5, compile="step") == "step"
    with pytest.raises(ValueError, match="compile must be one of auto, off, step, got 'everything'"):
        make_step(model, opt, 5, compile="everything")


class Subnormals(nn.Module):
    """Records whether a float32 subnormal survives inside log_weights (FTZ/DAZ off) or not."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.zeros(1))
        self.seen = []

    def log_weights(self, x, k):
        tiny = torch.tensor([1e-39], dtype=torch.float32) * 1.0   # below 1.18e-38: subnormal
        self.seen.append(bool(tiny.item() == 0.0))
        return (self.a * x.sum(-1)).expand(k, -1)


@pytest.mark.skipif(not torch.set_flush_denormal(False), reason="no FTZ/DAZ on this CPU")
def test_the_step_flushes_subnormals_and_leaves_them_alone_after():
    model = Subnormals()
    step = make_step(model, make_optimizer(model.parameters(), 1e-3), 2, compile="off")
    step(torch.ones(3, 2))
    model.log_weights(torch.ones(3, 2), 2)
    assert model.seen == [True, False]                    # flushed in the step, not after it


def test_non_finite_loss_gives_nan_gradients_like_the_plain_loop():
    model = iwae.paper_model(1)
    with torch.no_grad():
        model.decoder[0].weight[0, 0] = float("nan")
    step = make_step(model, make_optimizer(model.parameters(), 1e-3), 5)
    loss = step.forward_backward(binary(20, torch.float32))
    assert not torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())
    assert not torch.isfinite(model.decoder[-1].weight.grad).all()


def test_any_model_trains_through_the_step(conv_model):
    torch.manual_seed(0)
    model = conv_model(latent=4, channels=4)
    step = make_step(model, make_optimizer(model.parameters(), 1e-2), 3, estimator="dreg")
    x = binary(8, torch.float32)
    first = step(x).item()
    for _ in range(20):
        last = step(x).item()
    assert last < first - 10                              # it learns this batch


def test_shared_parameters_accumulate():
    torch.manual_seed(0)
    model = iwae.paper_model(2).double()
    model.decoder_layers[0].net[2] = model.encoder[1].net[2]      # one 100x100 layer used twice
    x = binary(3)
    step = make_step(model, torch.optim.SGD(model.parameters(), lr=0.1), 4, compile="off")
    torch.manual_seed(1)
    step.forward_backward(x)
    tied = grads(model)
    model.zero_grad()
    torch.manual_seed(1)
    (-bounds.iwae_bound(model.log_weights(x, 4)).mean()).backward()
    assert_grads_close(tied, grads(model), 1e-12)


@pytest.mark.parametrize("has_it", [True, False])
def test_the_cpu_compile_asks_for_the_exp_tanh_only_where_this_torch_has_it(monkeypatch, has_it):
    # torch.compile refuses an unknown Inductor option; cpp.use_decompose_tanh is new in torch 2.8
    asked = {}
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: asked.update(kwargs) or fn)
    monkeypatch.setattr(torch_private, "has_inductor_option", lambda name: has_it and name == runtime_compile.TANH)
    runtime_compile.compiled(lambda x: x, torch.device("cpu"))
    tanh = {runtime_compile.TANH: True} if has_it else {}
    assert asked["options"] == {"fallback_random": True, "cpp_wrapper": True, **tanh}


def test_compiled_evaluation_equals_the_eager_one():
    torch.manual_seed(0)
    model = iwae.paper_model(2).double()
    x = binary(7)
    torch.manual_seed(3)
    fast, fast_elbo = iwae.log_likelihood(model, x, 600, batch_size=4, max_samples=500, with_elbo=True,
                                          compile="step")
    torch.manual_seed(3)
    plain, plain_elbo = iwae.log_likelihood(model, x, 600, batch_size=4, max_samples=500, with_elbo=True,
                                            compile="off")
    torch.testing.assert_close(fast, plain, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(fast_elbo, plain_elbo, rtol=1e-12, atol=1e-9)
    assert not fast.is_inference()                              # usable outside inference_mode


class ChunkRecorder(nn.Module):
    """Records the (samples, datapoints) of every log_weights call; log w = 0."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def log_weights(self, x, k):
        self.shapes.append((k, x.shape[0]))
        return torch.zeros(k, x.shape[0], dtype=torch.float64)


def test_evaluation_chunks_are_capped_for_wide_data():
    import iwae.evaluation.likelihood as evaluation
    model = ChunkRecorder()
    iwae.log_likelihood(model, torch.zeros(10, 784), 5000, batch_size=10, compile="off")
    assert max(k * b for k, b in model.shapes) * 784 * 4 <= evaluation.CHUNK_BYTES


def test_l5000_of_a_batch_of_100_mnist_images_is_250_chunks_of_one_shape():
    model = ChunkRecorder()                   # one shape: one compiled graph, no recompile
    iwae.log_likelihood(model, torch.zeros(100, 784), 5000, compile="off")
    assert model.shapes == [(20, 100)] * 250


def test_an_optimizer_step_without_its_hooks_still_steps():
    from iwae.runtime import torch_private
    model = iwae.paper_model(1)
    opt = make_optimizer(model.parameters(), 1e-3)
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    before = [p.detach().clone() for p in model.parameters()]
    torch_private.step_without_hooks(opt)
    assert calls == [] and not any(torch.equal(p, q) for p, q in zip(model.parameters(), before))


# ----------------------------------------------------------------------------- CUDA

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("compile", ["off", "step"])
def test_cuda_graph_step_equals_the_eager_step(compile):
    torch.manual_seed(0)
    model = iwae.paper_model(1).double().cuda()
    twin = copy.deepcopy(model)
    opt = make_optimizer(model.parameters(), 1e-3, capturable=True)
    step = make_step(model, opt, 5, compile=compile)
    assert type(step).__name__ == "CudaGraphStep"
    eager = make_step(twin, make_optimizer(twin.parameters(), 1e-3), 5, compile="off")
    x = binary(20).cuda()
    before = [p.detach().clone() for p in model.parameters()]
    step.forward_backward(x)                              # captures; must not change the model
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before)) and step.graphs == 1
    for i in range(3):                                    # the same draws: seeded before each step
        torch.manual_seed(10 + i)
        loss = step(x)
        torch.manual_seed(10 + i)
        eager_loss = eager(x)
        torch.testing.assert_close(loss, eager_loss, rtol=1e-9, atol=1e-9)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-7, atol=1e-9)


@cuda
def test_cuda_graph_step_follows_learning_rate_changes_and_new_shapes():
    torch.manual_seed(0)
    model = iwae.paper_model(1).cuda()
    opt = make_optimizer(model.parameters(), 1e-3, capturable=True)
    step = make_step(model, opt, 5)
    x = binary(20, torch.float32).cuda()
    step(x)
    for group in opt.param_groups:
        group["lr"] = 0.0                                 # a float, as the trainer sets it
    before = [p.detach().clone() for p in model.parameters()]
    step(x)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    step(x[:7])
    assert step.graphs == 2


@cuda
def test_cuda_graph_step_keeps_the_trainers_non_finite_check():
    from iwae.training.guards import FiniteGuard
    torch.manual_seed(0)
    model = iwae.paper_model(1).cuda()
    opt = make_optimizer(model.parameters(), 1e-3, capturable=True)
    guard = FiniteGuard(opt)                              # registered first, as iwae.fit does
    step = make_step(model, opt, 5)
    x = binary(20, torch.float32).cuda()
    assert torch.isfinite(step(x)) and not guard.tripped()
    with torch.no_grad():
        model.decoder[0].weight[0, 0] = float("nan")
    before = [p.detach().clone() for p in model.parameters()]
    assert not torch.isfinite(step(x)) and guard.tripped()
    assert all(torch.equal(p, q) or torch.isnan(q).any() for p, q in zip(model.parameters(), before))


@cuda
def test_compiled_evaluation_on_cuda_equals_the_cpu_one():
    torch.manual_seed(0)
    model = iwae.paper_model(1).double()
    x = binary(6)
    cpu = iwae.log_likelihood(model, x, 2000, compile="off")
    gpu = iwae.log_likelihood(model.cuda(), x.cuda(), 2000, compile="step")
    assert abs(cpu.mean().item() - gpu.mean().item()) < 0.05    # other draws: Monte Carlo error


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_benchmark_refuses_cuda_without_a_gpu():
    done = subprocess.run([sys.executable, "-m", "benchmarks.step", "--device", "cuda"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDA is not available" in lines[0]


def test_a_parameter_shared_by_two_modules_gets_both_gradients():
    torch.manual_seed(0)
    model = iwae.paper_model(2).double()
    model.decoder_layers[0].net[2].weight = model.encoder[1].net[2].weight   # 100x100, two modules
    shared = model.encoder[1].net[2].weight
    x = binary(3)
    step = make_step(model, torch.optim.SGD(model.parameters(), lr=0.1), 4, compile="off")
    torch.manual_seed(1)
    step.forward_backward(x)
    tied = grads(model)
    assert model.decoder_layers[0].net[2].weight is shared and model.encoder[1].net[2].weight is shared
    model.zero_grad()
    torch.manual_seed(1)
    (-bounds.iwae_bound(model.log_weights(x, 4)).mean()).backward()
    assert_grads_close(tied, grads(model), 1e-12)

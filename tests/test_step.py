"""The training step (iwae.step) and the fast evaluation path against the plain code.

Exactness: the "autograd" path and FusedAdamUpdate are BITWISE the plain loop
(iwae.loss; zero_grad; backward; Adam.step). The "manual" path sums in another order, so
it is compared in float64 to 1e-12 relative (loss, gradients) and to 1e-10 after several
optimizer steps; it draws the same samples (the same torch.randn calls).
"""
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import iwae
import iwae.evaluation as evaluation
from iwae.densities import Bernoulli, Gaussian, bernoulli_terms, softplus_sum
from iwae.objective import Objective
from iwae.step import (CompiledKernels, EagerKernels, FusedAdamUpdate, ManualPlan, Workspace,
                       inference_log_weights, loss_and_grad, make_optimizer, make_step,
                       manual_unsupported)

BOUNDS = [("iwae", {}), ("elbo", {}), ("miwae", {"m": 2}), ("ciwae", {"beta": 0.3})]
ROOT = Path(__file__).resolve().parents[1]


def grads(model):
    return [p.grad.clone() for p in model.parameters()]


def assert_grads_close(a, b, rtol):
    for ga, gb in zip(a, b):
        scale = gb.abs().max().clamp_min(1e-300)
        assert ((ga - gb).abs().max() / scale).item() < rtol


def binary(n, dtype=torch.float64, seed=0):
    return torch.rand(n, 784, dtype=dtype, generator=torch.Generator().manual_seed(seed)).bernoulli()


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("bound,kw", BOUNDS)
def test_manual_loss_and_gradient_equal_autograd_in_float64(layers, bound, kw):
    torch.manual_seed(0)
    model = iwae.paper_model(layers).double()
    x = binary(5)
    step = make_step(model, torch.optim.SGD(model.parameters(), lr=0.1), 6, bound, **kw, compile="off")
    assert step.path == "manual"
    torch.manual_seed(3)
    loss = step.forward_backward(x)
    manual = grads(model)
    after_manual = torch.randn(3)                     # the RNG stream after the step
    torch.manual_seed(3)
    expected = iwae.loss(model, x, 6, bound, **kw)
    model.zero_grad()
    expected.backward()
    after_plain = torch.randn(3)
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-12, atol=1e-10)
    assert_grads_close(manual, grads(model), 1e-12)
    assert torch.equal(after_manual, after_plain)      # same draws, in the same order


def test_autograd_path_and_direct_adam_update_are_bitwise_the_plain_loop():
    torch.manual_seed(0)
    a = iwae.paper_model(1)
    b = copy.deepcopy(a)
    x = binary(20, torch.float32)
    opt_a = make_optimizer(a.parameters(), 1e-3)
    step = make_step(a, opt_a, 5, path="autograd")
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
    update = FusedAdamUpdate(opt)
    assert update() is False                            # no state yet: the caller runs opt.step()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    before = [p.detach().clone() for p in model.parameters()]
    assert update() is True and calls == ["pre", "post"]
    assert not any(torch.equal(p, q) for p, q in zip(model.parameters(), before))

    def drop(o, a, k):                                  # the trainer's guard on a NaN gradient
        for p in model.parameters():
            p.grad = None
    opt.register_step_pre_hook(drop)
    before = [p.detach().clone() for p in model.parameters()]
    steps = [opt.state[p]["step"].clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    assert update() is True
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert all(torch.equal(opt.state[p]["step"], s) for p, s in zip(model.parameters(), steps))


@pytest.mark.parametrize("layers", [1, 2])
def test_manual_training_follows_the_plain_loop_in_float64(layers):
    torch.manual_seed(0)
    a = iwae.paper_model(layers).double()
    b = copy.deepcopy(a)
    opt_a = make_optimizer(a.parameters(), 1e-3)
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-3, eps=1e-4)
    step = make_step(a, opt_a, 4, compile="off")
    assert step.path == "manual"
    for i in range(5):
        x = binary(20, seed=i)
        torch.manual_seed(i)
        la = step(x)
        torch.manual_seed(i)
        lb = iwae.loss(b, x, 4)
        opt_b.zero_grad(set_to_none=True)
        lb.backward()
        opt_b.step()
        torch.testing.assert_close(la, lb.detach(), rtol=1e-12, atol=1e-9)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_compiled_kernels_equal_the_eager_ones():
    torch.manual_seed(0)
    model = iwae.paper_model(1).double()
    x = binary(20)
    eager = make_step(model, torch.optim.SGD(model.parameters(), lr=0.1), 25, compile="off")
    compiled = make_step(model, torch.optim.SGD(model.parameters(), lr=0.1), 25, compile="kernels")
    assert compiled.compile_mode(20, x.device) == "kernels"
    torch.manual_seed(1)
    l1 = eager.forward_backward(x)
    g1 = grads(model)
    torch.manual_seed(1)
    l2 = compiled.forward_backward(x)
    torch.testing.assert_close(l2, l1, rtol=1e-12, atol=1e-9)
    assert_grads_close(grads(model), g1, 1e-12)


@pytest.mark.parametrize("layers,k", [(1, 2), (2, 5)])
def test_whole_step_compiled_equals_the_eager_step(layers, k):
    # one torch.compile of the whole forward+backward (10-20 s); same samples (fallback_random)
    torch.manual_seed(0)
    model = iwae.paper_model(layers).double()
    x = binary(20)
    eager = make_step(model, torch.optim.SGD(model.parameters(), lr=0.1), k, compile="off")
    compiled = make_step(model, torch.optim.SGD(model.parameters(), lr=0.1), k, compile="step")
    torch.manual_seed(1)
    l1 = eager.forward_backward(x)
    g1 = grads(model)
    torch.manual_seed(1)
    l2 = compiled.forward_backward(x)
    torch.testing.assert_close(l2, l1, rtol=1e-12, atol=1e-9)
    assert_grads_close(grads(model), g1, 1e-11)


def test_compile_policy():
    model = iwae.paper_model(1)
    opt = make_optimizer(model.parameters(), 1e-3)
    cpu = torch.device("cpu")
    mode = lambda k, **kw: make_step(model, opt, k, **kw).compile_mode(20, cpu)
    assert mode(1) == "off" and mode(5) == "off"                 # run length unknown
    assert mode(1, planned_steps=10 ** 7) == "step" and mode(50, planned_steps=10 ** 7) == "step"
    assert mode(1, planned_steps=1000) == "off"                  # a short run: no compiling
    assert mode(50) == "kernels" and mode(50, planned_steps=2000) == "kernels"
    assert mode(50, planned_steps=100) == "off"
    os.environ["IWAE_COMPILE"] = "0"
    try:
        assert mode(50) == "off" and mode(1, planned_steps=10 ** 7) == "off"
    finally:
        del os.environ["IWAE_COMPILE"]
    with pytest.raises(ValueError, match="compile must be one of"):
        make_step(model, opt, 5, compile="everything")


def test_flush_zeroes_only_negligible_weights():
    # normalised weights e^-40 ~ 4e-18 and e^-80 ~ 2e-35 are below eps(float32)^2 = 1.4e-14
    log_w = torch.tensor([[0.0, 0.0], [-40.0, -1.0], [-80.0, -2.0]], dtype=torch.float32)
    objective = Objective("iwae", 3)
    _, flushed = loss_and_grad(log_w, objective)
    _, plain = loss_and_grad(log_w, objective, flush=False)
    w = torch.softmax(log_w, 0)
    torch.testing.assert_close(plain, w / 2)
    torch.testing.assert_close(flushed, torch.where(w < torch.finfo(torch.float32).eps ** 2, 0.0, w / 2))
    assert flushed[1, 0] == 0 and flushed[2, 0] == 0 and plain[2, 0] > 0
    assert (flushed[:, 1] == plain[:, 1]).all()


def test_flush_changes_nothing_in_float64_at_ordinary_spreads():
    torch.manual_seed(0)
    model = iwae.paper_model(1).double()
    x = binary(6)
    results = []
    for flush in (True, False):
        step = make_step(model, torch.optim.SGD(model.parameters(), lr=0.1), 8, flush=flush, compile="off")
        torch.manual_seed(2)
        results.append((step.forward_backward(x), grads(model)))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    assert_grads_close(results[0][1], results[1][1], 1e-12)


def test_non_finite_loss_gives_nan_gradients_like_the_plain_loop():
    model = iwae.paper_model(1)
    with torch.no_grad():
        model.decoder[0].weight[0, 0] = float("nan")
    step = make_step(model, make_optimizer(model.parameters(), 1e-3), 5)
    loss = step.forward_backward(binary(20, torch.float32))
    assert not torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())
    assert not torch.isfinite(model.decoder[-1].weight.grad).all()


def test_unsupported_models_and_estimators_use_autograd():
    model = iwae.paper_model(1)
    opt = make_optimizer(model.parameters(), 1e-3)
    assert make_step(model, opt, 5).path == "manual"
    assert make_step(model, opt, 5, estimator="dreg").path == "autograd"
    assert make_step(model, opt, 5, "piwae", m=5).path == "autograd"
    gaussian = iwae.paper_model(1, likelihood=Gaussian())
    assert make_step(gaussian, make_optimizer(gaussian.parameters(), 1e-3), 5).path == "autograd"
    softplus = iwae.paper_model(1, scale="softplus")
    assert make_step(softplus, make_optimizer(softplus.parameters(), 1e-3), 5).path == "autograd"
    hooked = iwae.paper_model(1)
    hooked.decoder[0].register_forward_hook(lambda m, i, o: None)
    assert make_step(hooked, make_optimizer(hooked.parameters(), 1e-3), 5).path == "autograd"
    conv = iwae.Model(iwae.GaussianLayer(nn.Sequential(nn.Linear(784, 8), nn.ReLU(), nn.Linear(8, 4))),
                      nn.Sequential(nn.Linear(2, 784)))
    assert "tanh MLP" in manual_unsupported(conv, Objective("iwae", 5), "standard")
    with pytest.raises(ValueError, match="the manual step does not apply"):
        make_step(gaussian, opt, 5, path="manual")
    # the autograd fallback still trains
    step = make_step(gaussian, make_optimizer(gaussian.parameters(), 1e-3), 3)
    assert torch.isfinite(step(torch.rand(4, 784)))


def test_shared_parameters_accumulate():
    torch.manual_seed(0)
    model = iwae.paper_model(2).double()
    model.decoder_layers[0].net[2] = model.encoder[1].net[2]      # one 100x100 layer used twice
    x = binary(3)
    step = make_step(model, torch.optim.SGD(model.parameters(), lr=0.1), 4, compile="off")
    torch.manual_seed(1)
    step.forward_backward(x)
    manual = grads(model)
    torch.manual_seed(1)
    loss = iwae.loss(model, x, 4)
    model.zero_grad()
    loss.backward()
    assert_grads_close(manual, grads(model), 1e-12)


@pytest.mark.parametrize("logits_scale", [1.0, 30.0, 300.0])
def test_softplus_sum_and_bernoulli_terms_are_exact(logits_scale):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, 784, generator=g, dtype=torch.float64) * logits_scale
    logits[0, 0, :5] = torch.tensor([1e4, -1e4, 0.0, 88.0, -745.0])
    x = torch.rand(3, 784, generator=g, dtype=torch.float64).round()

    def exact(l):                                      # F.softplus returns l itself above l = 20
        return (l.clamp(min=0) + torch.log1p(torch.exp(-l.abs()))).sum(-1)
    torch.testing.assert_close(softplus_sum(logits), exact(logits), rtol=1e-13, atol=1e-10)
    expected = (x * logits).sum(-1) - exact(logits)
    torch.testing.assert_close(bernoulli_terms(x, logits), expected, rtol=1e-13, atol=1e-10)
    odd = logits[..., :100]                                      # a width that is not 16 * n
    torch.testing.assert_close(softplus_sum(odd), exact(odd), rtol=1e-13, atol=1e-10)


def test_bernoulli_log_prob_kernel_path_equals_the_formula():
    x = binary(20)
    logits = torch.randn(110, 20, 784, dtype=torch.float64) * 4       # above KERNEL_MIN_NUMEL
    expected = (x * logits).sum(-1) - F.softplus(logits).sum(-1)
    with torch.no_grad():
        torch.testing.assert_close(Bernoulli().log_prob(x, logits), expected, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("layers", [1, 2])
def test_inference_log_weights_equal_model_log_weights(layers):
    torch.manual_seed(0)
    model = iwae.paper_model(layers).double()
    x = binary(4)
    plan, ws = ManualPlan(model), Workspace()
    for kernels in (EagerKernels, CompiledKernels):
        for k in (7, 3):                                          # the workspace shrinks too
            torch.manual_seed(k)
            fast = inference_log_weights(plan, x, k, ws, kernels)
            torch.manual_seed(k)
            with torch.no_grad():
                expected = model.log_weights(x, k)
            torch.testing.assert_close(fast, expected, rtol=1e-12, atol=1e-9)


def test_log_likelihood_fast_path_equals_the_generic_path(monkeypatch):
    torch.manual_seed(0)
    model = iwae.paper_model(2).double()
    x = binary(7)
    torch.manual_seed(3)
    fast, fast_elbo = iwae.log_likelihood(model, x, 600, batch_size=4, max_samples=500, with_elbo=True)
    monkeypatch.setattr(evaluation, "_fast_log_weights", lambda model, x, k: None)
    torch.manual_seed(3)
    plain, plain_elbo = iwae.log_likelihood(model, x, 600, batch_size=4, max_samples=500, with_elbo=True)
    torch.testing.assert_close(fast, plain, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(fast_elbo, plain_elbo, rtol=1e-12, atol=1e-9)
    assert not fast.is_inference()                              # usable outside inference_mode


def test_evaluation_chunks_are_capped_for_wide_data():
    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.sizes = []

        def log_weights(self, x, k):
            self.sizes.append(k * x.shape[0])
            return torch.zeros(k, x.shape[0], dtype=torch.float64)

    model = Recorder()
    iwae.log_likelihood(model, torch.zeros(10, 784), 5000, batch_size=10)
    assert max(model.sizes) * 784 * 4 <= evaluation.CHUNK_BYTES


# ----------------------------------------------------------------------------- CUDA

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_cuda_graph_step_trains_like_the_eager_step():
    torch.manual_seed(0)
    model = iwae.paper_model(1).cuda()
    eager_model = copy.deepcopy(model)
    opt = make_optimizer(model.parameters(), 1e-3, capturable=True)
    step = make_step(model, opt, 50)
    assert step.path == "cuda-graph"
    eager = make_step(eager_model, make_optimizer(eager_model.parameters(), 1e-3), 50, path="manual")
    x = binary(20, torch.float32).cuda()
    before = [p.detach().clone() for p in model.parameters()]
    loss = step.forward_backward(x)                       # captures; must not change the model
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert torch.isfinite(loss) and step.graphs == 1
    losses, eager_losses = [], []
    for _ in range(200):
        losses.append(step(x).item())
        eager_losses.append(eager(x).item())
    late, eager_late = sum(losses[-20:]) / 20, sum(eager_losses[-20:]) / 20
    assert abs(late - eager_late) < 0.05 * abs(eager_late)       # other draws, the same training
    assert late < sum(losses[:20]) / 20


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
def test_cuda_graph_step_matches_manual_gradients_in_float64():
    torch.manual_seed(0)
    model = iwae.paper_model(1).double().cuda()
    opt = make_optimizer(model.parameters(), 1e-3, capturable=True)
    step = make_step(model, opt, 4)
    x = binary(6).cuda()
    step.forward_backward(x)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_benchmark_refuses_cuda_without_a_gpu():
    done = subprocess.run([sys.executable, "-m", "benchmarks.step", "--device", "cuda"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDA is not available" in lines[0]

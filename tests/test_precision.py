"""bf16 matmuls (iwae.core.nets.matmul_dtype, make_step(precision="bf16"), --precision): only the
nets' large Linear layers multiply in bf16; log w, the loss, gradients, parameters and Adam's state
stay fp32, and evaluation is fp32 whatever a run trained with."""
import copy
import json

import pytest
import torch

import iwae
from iwae.app.cli import main
from iwae.core import nets
from iwae.core.nets import BF16_MIN_MACS, matmul_dtype
from iwae.runtime.optim import make_optimizer
from iwae.training.rundir import read_spec
from iwae.training.spec import PaperSpec
from iwae.training.paper import train
from iwae.training.step import make_step


def batch(n=20, seed=0):
    return torch.rand(n, 784, generator=torch.Generator().manual_seed(seed)).bernoulli()


def test_log_weights_are_fp32_and_close_to_the_fp32_ones():
    torch.manual_seed(0)
    model, x = iwae.paper_model(1), batch()
    torch.manual_seed(1)
    ref = model.log_weights(x, 50)
    torch.manual_seed(1)
    with matmul_dtype(torch.bfloat16):
        low = model.log_weights(x, 50)
    assert low.dtype == torch.float32 and not torch.equal(low, ref)       # the decoder ran in bf16
    # bf16 keeps 8 bits of mantissa: a relative error of ~2^-8 in a 784-pixel sum of ~200 nats
    assert (low - ref).abs().max() < 0.5 and (low.logsumexp(0) - ref.logsumexp(0)).abs().max() < 0.2
    assert nets.MATMUL.dtype is None                                      # the context is left


def test_small_products_stay_fp32_bitwise():
    layer = nets.MatmulDtypeLinear(784, 200)
    x = torch.randn(20, 784)
    assert 20 * 784 * 200 < BF16_MIN_MACS
    with matmul_dtype(torch.bfloat16):
        assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))


def test_the_nets_are_plain_linear_layers_to_a_checkpoint():
    model = iwae.paper_model(1)
    assert all(isinstance(m, torch.nn.Linear) for m in model.decoder if not isinstance(m, torch.nn.Tanh))
    fresh = iwae.paper_model(1)
    fresh.load_state_dict(model.state_dict())                             # same keys, same shapes


@pytest.mark.parametrize("compile", ["off", "step"])
@pytest.mark.parametrize("estimator", ["standard", "dreg"])
def test_bf16_steps_are_finite_close_to_fp32_and_keep_fp32_state(compile, estimator):
    torch.manual_seed(0)
    init, xs = iwae.paper_model(2), [batch(seed=s) for s in range(5)]
    losses = {}
    for precision in ("fp32", "bf16"):
        model = copy.deepcopy(init)
        opt = make_optimizer(model.parameters(), 1e-3)
        step = make_step(model, opt, 50, "iwae", estimator, compile=compile, precision=precision)
        torch.manual_seed(1)
        losses[precision] = torch.stack([step(x) for x in xs])
        assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
        assert all(v.dtype == torch.float32 for s in opt.state.values() for v in s.values())
    assert losses["bf16"].dtype == torch.float32 and torch.isfinite(losses["bf16"]).all()
    assert (losses["bf16"] - losses["fp32"]).abs().max() < 0.5      # nats, of a loss of ~540
    assert nets.MATMUL.dtype is None


def test_tf32_without_cuda_is_refused_by_the_step():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    model = iwae.paper_model(1)
    with pytest.raises(ValueError, match="^precision tf32 is for CUDA matmuls only, and this step runs on cpu; "
                                         "use fp32 or bf16$"):
        make_step(model, make_optimizer(model.parameters(), 1e-3), 5, precision="tf32")


def test_an_unknown_precision_is_one_line():
    with pytest.raises(ValueError, match=r"^precision must be one of fp32, bf16, tf32, got 'fp16'$"):
        PaperSpec(precision="fp16").validate()


def test_cli_tf32_without_cuda_exits_2_in_one_line(tmp_path, capsys, data_dir):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    rc = main(["train", "--out", str(tmp_path / "run"), "--precision", "tf32", "--limit-train", "40",
               "--epochs", "1", "--final-k", "0", "--quiet", "--data-dir", str(data_dir), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert err == "iwae: error: precision tf32 is for CUDA matmuls only, and this step runs on cpu; use fp32 or bf16\n"
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_precision_is_saved_and_honoured_on_resume(tmp_path, data_dir):
    small = dict(limit_train=60, k=50, eval_examples=10, precision="bf16")
    train(PaperSpec(epochs=1, **small, data_dir=data_dir, quiet=True), tmp_path / "run")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["precision"] == "bf16"
    with pytest.raises(ValueError, match="disagree with .*config.json on precision"):
        train(PaperSpec(epochs=2, **{**small, "precision": "fp32"}, data_dir=data_dir, quiet=True), tmp_path / "run",
              resume=True)
    rc = main(["train", "--out", str(tmp_path / "run"), "--resume", "--epochs", "2", "--final-k", "0",
               "--quiet", "--data-dir", str(data_dir)])
    assert rc == 0 and read_spec(tmp_path / "run").precision == "bf16"
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_a_bf16_run_resumes_bitwise(tmp_path, data_dir):
    small = dict(limit_train=60, k=50, eval_examples=10, precision="bf16", compile="off")
    whole = train(PaperSpec(epochs=2, **small, data_dir=data_dir, quiet=True), tmp_path / "whole")
    train(PaperSpec(epochs=1, **small, data_dir=data_dir, quiet=True), tmp_path / "split")
    resumed = train(PaperSpec(epochs=2, **small, data_dir=data_dir, quiet=True), tmp_path / "split", resume=True)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_bf16_run_is_evaluated_in_fp32(tmp_path, data_dir):
    from iwae.app.runs import evaluate_run
    train(PaperSpec(epochs=1, limit_train=60, k=50, eval_examples=10, precision="bf16", data_dir=data_dir,
                    quiet=True), tmp_path / "run")
    result = evaluate_run(tmp_path / "run", k=10, limit=20, data_dir=data_dir)
    model = iwae.load_model(tmp_path / "run")
    from iwae.evaluation.likelihood import EVAL_SEED, fixed_binarization, seeded_log_likelihood
    from iwae.data import load_dataset
    test = fixed_binarization(load_dataset("mnist", data_dir).test[:20], "dynamic", EVAL_SEED)
    assert result["test_nll"] == -seeded_log_likelihood(model, test, 10).mean().item()   # fp32 all through

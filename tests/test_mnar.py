"""Values missing not at random (not-MIWAE, docs/missing.md): a missingness model p(s | x) in
the log weights, imputation under it, iwae.Imputer(mechanism=...) and iwae impute --mechanism.

The recovery test simulates a one-factor linear-Gaussian table x = W z + 1 + 0.3 eps and removes
each value with the known self-masking probability sigmoid(w_j (x_j - b_j)), w_j = 2 and b_j the
column's mean (about half the cells, mostly the high ones).
"""
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import iwae
from iwae.app.cli import main
from iwae.core.densities import Bernoulli, Columns, Gaussian, StudentT
from iwae.core.missingness import LinearMasking, SelfMasking
from iwae.evaluation.imputation import impute, multiple_impute

NAN = float("nan")


pytestmark = pytest.mark.usefixtures("one_thread")


def pair(likelihood, dim=6, layers=1, missingness=None, **options):
    """(the MAR model, the same networks with a missingness model)."""
    torch.manual_seed(0)
    base = iwae.paper_model(layers, input_dim=dim, likelihood=likelihood)
    parts = (list(base.encoder), base.decoder, likelihood, list(base.decoder_layers))
    return iwae.Model(*parts, **options), iwae.Model(*parts, missingness=missingness, **options)


def nan_data(n=5, dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    return torch.where(torch.rand(n, dim, generator=g) > 0.5, x, torch.full_like(x, NAN))


def constant_linear(dim, seed=2):
    """A LinearMasking missingness model that ignores x: weight 0, bias c (logit p(s_j = 1) = c_j)."""
    model = LinearMasking(dim)
    with torch.no_grad():
        model.linear.bias.copy_(torch.randn(dim, generator=torch.Generator().manual_seed(seed)))
    return model


@pytest.mark.parametrize("likelihood", [Gaussian(), StudentT()], ids=["gaussian", "student-t"])
@pytest.mark.parametrize("layers", [1, 2])
def test_a_missingness_model_that_ignores_x_adds_the_constant_log_p_s(likelihood, layers):
    mechanism = constant_linear(6)
    mar, mnar = pair(likelihood, layers=layers, missingness=mechanism, missing=True)
    x = nan_data()
    s = ~torch.isnan(x)
    c = mechanism.linear.bias.detach()
    log_p_s = torch.where(s, F.logsigmoid(c), F.logsigmoid(-c)).sum(-1)      # [B]
    for options in ({}, {"stop_q": True}):
        torch.manual_seed(3)
        today = mar.log_weights(x, 5, **options)
        torch.manual_seed(3)
        got = mnar.log_weights(x, 5, **options)
        torch.testing.assert_close(got, today + log_p_s, rtol=1e-6, atol=1e-5)
    zs = mar.sample_q(x, 4)     # given samples, an explicit mask, x's missing entries junk
    junk = torch.where(s, x, torch.full_like(x, 1e3))
    torch.testing.assert_close(mnar.log_weights(junk, 4, zs=zs, mask=s), mar.log_weights(x, 4, zs=zs) + log_p_s, rtol=1e-6,
                               atol=1e-5)


def test_self_masking_with_w_zero_is_mar_plus_the_log_of_one_half_per_entry():
    mar, mnar = pair(Gaussian(), missingness=SelfMasking(6), missing=True)
    x = nan_data()
    torch.manual_seed(3)
    today = mar.log_weights(x, 5)
    torch.manual_seed(3)
    torch.testing.assert_close(mnar.log_weights(x, 5), today + 6 * np.log(0.5), rtol=1e-6, atol=1e-5)


def test_self_masking_logits_and_the_sign_option():
    free, positive, negative = SelfMasking(3), SelfMasking(3, "positive"), SelfMasking(3, "negative")
    with torch.no_grad():
        for m in (free, positive, negative):
            m.raw_w.copy_(torch.tensor([-1.0, 0.0, 2.0]))
            m.b.copy_(torch.tensor([0.5, -1.0, 0.0]))
    x = torch.tensor([[[1.0, 2.0, -1.0]]])
    torch.testing.assert_close(free.logits(x), -torch.tensor([-1.0, 0.0, 2.0]) * (x - free.b))
    assert (positive.w > 0).all() and (negative.w < 0).all()
    torch.testing.assert_close(positive.w, F.softplus(torch.tensor([-1.0, 0.0, 2.0])))
    s = torch.tensor([[True, False, True]])
    expected = F.logsigmoid(free.logits(x))[..., 0] + F.logsigmoid(-free.logits(x))[..., 1] \
        + F.logsigmoid(free.logits(x))[..., 2]
    torch.testing.assert_close(free.log_prob(s, x), expected)


def bound(model, x, k, seed):
    torch.manual_seed(seed)
    return torch.logsumexp(model.log_weights(x, k), 0).mean() - np.log(k)


@pytest.mark.parametrize("mechanism", ["self-masking", "linear"])
def test_the_gradient_through_the_sampled_x_m_matches_a_finite_difference_in_float64(mechanism):
    dim = 4
    missingness = SelfMasking(dim) if mechanism == "self-masking" else LinearMasking(dim)
    with torch.no_grad():
        for p in missingness.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(5)))
    _, model = pair(Gaussian(), dim=dim, missingness=missingness, missing=True)
    model = model.double()
    x = nan_data(3, dim).double()
    params = list(model.parameters())
    g = torch.Generator().manual_seed(7)
    direction = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    model.zero_grad()
    bound(model, x, 6, seed=11).backward()
    analytic = sum((p.grad * v).sum() for p, v in zip(params, direction))
    decoder = sum((p.grad * v).sum() for p, v in zip(params, direction) if p in set(model.decoder.parameters()))
    h = 1e-6

    def at(t):
        with torch.no_grad():
            for p, v in zip(params, direction):
                p.add_(t * v)
            value = bound(model, x, 6, seed=11)
            for p, v in zip(params, direction):
                p.sub_(t * v)
        return value

    numeric = (at(h) - at(-h)) / (2 * h)
    torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-7)
    # the decoder's gradient includes the path through x_m = mu(z) + sigma(z) eps: without it
    # (x_m detached) the directional derivative differs
    model.zero_grad()
    torch.manual_seed(11)
    zs = model.sample_q(x, 6)
    _, xm = model.sample_missing(zs)
    log_w = model.log_weights(x, 6, zs=zs, xm=xm.detach())
    (torch.logsumexp(log_w, 0).mean()).backward()
    stopped = sum((p.grad * v).sum() for p, v in zip(params, direction) if p in set(model.decoder.parameters()))
    assert abs(float(stopped - decoder)) > 1e-3 * abs(float(decoder))


def test_dreg_agrees_with_the_standard_gradient_in_mean_and_keeps_its_decoder_part():
    """In float64, on one row repeated 16000 times (the batch mean is a Monte Carlo average),
    DReG's encoder gradient (the path through x_m(z) included in d log w / d z) is the standard
    one within 15% of its norm (measured 9.6%; 20% at 4000 rows: the gap is noise, it halves as
    the rows quadruple); its decoder part equals the standard one under the same RNG (both
    draw z, then x_m). STL runs too (it is biased for k > 1 [Tucker et al. 2019], so only finite)."""
    _, model = pair(Gaussian(), dim=3, missingness=SelfMasking(3, "positive"), missing=True)
    model = model.double()
    x = torch.tensor([[0.3, NAN, -0.5]], dtype=torch.float64).expand(16000, 3).contiguous()
    grads = {}
    for estimator in ("standard", "stl", "dreg"):
        model.zero_grad()
        torch.manual_seed(0)
        iwae.loss(model, x, 5, "iwae", estimator).backward()
        grads[estimator] = torch.cat([p.grad.flatten() for p in model.parameters()])
    ref = grads["standard"]
    assert torch.isfinite(grads["stl"]).all()
    decoder = torch.tensor([not any(p is q for q in model.encoder_parameters()) for p in model.parameters()
                            for _ in range(p.numel())])
    encoder = ~decoder
    assert (grads["dreg"][encoder] - ref[encoder]).norm() < 0.15 * ref[encoder].norm()
    torch.testing.assert_close(grads["dreg"][decoder], ref[decoder])


def test_imputation_weighs_the_sampled_x_m_and_keeps_observed_entries():
    _, model = pair(StudentT(), missingness=SelfMasking(6, "positive"), missing=True)
    x = nan_data(4)
    observed = ~torch.isnan(x)
    filled = impute(model, x, draws=50)
    assert torch.equal(filled[observed], x[observed]) and not torch.isnan(filled).any()
    draws = multiple_impute(model, x, 3, draws=50)
    assert draws.shape == (3, 4, 6) and torch.equal(draws[:, observed], x[observed].expand(3, -1))
    torch.manual_seed(4)        # by hand: sum_l w~_l x_m,l at the draws the weights were taken at
    zs = model.sample_q(x, 50)
    _, xm = model.sample_missing(zs)
    w = torch.softmax(model.log_weights(x, 50, zs=zs, xm=xm), 0).unsqueeze(-1)
    torch.manual_seed(4)
    torch.testing.assert_close(impute(model, x, draws=50), torch.where(observed, x, (w * xm).sum(0)))


def simulated(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    W = np.array([[1.0, 1.2, -0.8, 1.5]])
    x = rng.normal(size=(n, 1)) @ W + 0.3 * rng.normal(size=(n, 4)) + 1.0
    w, b = np.full(4, 2.0), x.mean(0)
    observed = rng.random(x.shape) < 1 / (1 + np.exp(w * (x - b)))
    return x, np.where(observed, x, np.nan), w, b


def test_self_masking_recovers_a_known_mechanism_and_beats_mar():
    """Tolerances: |w_j - 2| < 0.5 and |b_j - b_true_j| < 0.15 for every column (measured:
    w within 0.15 of 2, b within 0.04); the self-masking imputations' RMSE below 0.6x MAR's (measured
    0.49 against 1.61), and their mean error on the missing cells a third of MAR's."""
    x, given, w, b = simulated()
    missing = np.isnan(given)
    options = dict(epochs=200, hidden=32, lr=1e-2, batch_size=128, draws=200)
    mar = iwae.Imputer(**options).fit(given)
    mnar = iwae.Imputer(mechanism="self-masking", **options).fit(given)
    fitted = mnar.missingness_
    assert fitted["feature"] == ["0", "1", "2", "3"] and mar.missingness_ is None
    assert np.abs(fitted["w"] - w).max() < 0.5, fitted["w"]
    assert np.abs(fitted["b"] - b).max() < 0.15, (fitted["b"], b)
    errors = {name: (imp.transform(given) - x)[missing] for name, imp in (("mar", mar), ("mnar", mnar))}
    rmse = {name: np.sqrt((e ** 2).mean()) for name, e in errors.items()}
    assert rmse["mnar"] < 0.6 * rmse["mar"], rmse
    assert abs(errors["mnar"].mean()) < abs(errors["mar"].mean()) / 3


def test_linear_missingness_in_x_units_matches_the_model():
    x, given, _, _ = simulated(200)
    imp = iwae.Imputer(mechanism="linear", epochs=2, hidden=8, draws=20).fit(given)
    fitted = imp.missingness_
    std = (x - imp.mean_) / imp.scale_
    inside = imp.model_.missingness.logits(torch.as_tensor(std, dtype=torch.float32)).detach().numpy()
    np.testing.assert_allclose(x @ fitted["weight"].T + fitted["bias"], inside, atol=1e-5)


@pytest.mark.parametrize("mechanism, mask_input, reads_mask", [("mar", "auto", False), ("self-masking", "auto", True),
                                                              ("linear", "auto", True), ("self-masking", False, False),
                                                              ("mar", True, True)])
def test_the_encoder_reads_the_mask_under_a_missingness_model_unless_told(mechanism, mask_input, reads_mask):
    _, given, _, _ = simulated(40)
    imp = iwae.Imputer(mechanism=mechanism, mask_input=mask_input, epochs=1, hidden=4, draws=5).fit(given)
    first = next(m for m in imp.model_.encoder.modules() if isinstance(m, torch.nn.Linear))
    assert imp.model_.mask_input == reads_mask and first.in_features == given.shape[1] * (2 if reads_mask else 1)


def test_the_imputer_refuses_bad_mechanisms_in_one_line():
    _, given, _, _ = simulated(50)
    fast = dict(epochs=1, hidden=4, draws=5)
    with pytest.raises(ValueError, match="^mechanism must be one of mar, self-masking, linear, got 'mnar'$"):
        iwae.Imputer(mechanism="mnar", **fast).fit(given)
    with pytest.raises(ValueError, match="^sign must be None"):
        iwae.Imputer(mechanism="self-masking", sign="up", **fast).fit(given)
    binary = given.copy()
    binary[:, 2] = (np.arange(50) % 2).astype(float)
    with pytest.raises(ValueError) as err:
        iwae.Imputer(mechanism="self-masking", **fast).fit(binary)
    assert "binary, categorical, ordinal or count column(s) cannot give: 2;" in str(err.value) and "\n" not in str(err.value)
    iwae.Imputer(mechanism="self-masking", likelihood="gaussian", **fast).fit(binary)   # continuous: allowed
    with pytest.warns(UserWarning, match="nothing missing"):
        iwae.Imputer(mechanism="linear", **fast).fit(np.nan_to_num(given, nan=1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        iwae.Imputer(**fast).fit(np.nan_to_num(given, nan=1.0))             # mar: no warning


@pytest.mark.parametrize("likelihood", [Bernoulli(), Columns([(Gaussian(), [0, 1]), (Bernoulli(), [2])])],
                         ids=["bernoulli", "columns"])
def test_a_model_refuses_a_bernoulli_likelihood_under_a_missingness_model(likelihood):
    base = iwae.paper_model(1, input_dim=3)
    with pytest.raises(ValueError, match="cannot give; use Gaussian or StudentT$"):
        iwae.Model(list(base.encoder), base.decoder, likelihood, missingness=SelfMasking(3))


def test_iwae_impute_mechanism(tmp_path, capsys):
    _, given, _, _ = simulated(40)
    np.save(tmp_path / "t.npy", given)
    fast = ["--epochs", "2", "--k", "2", "--threads", "1"]
    code = main(["impute", str(tmp_path / "t.npy"), "--out", str(tmp_path / "f.npy"), "--mechanism", "self-masking",
                 "--sign", "positive"] + fast)
    out, _ = capsys.readouterr()
    assert code == 0 and "self-masking p(observed | x_j) = sigmoid(-w_j (x_j - b_j)): 0 w=" in out
    assert not np.isnan(np.load(tmp_path / "f.npy")).any()
    code = main(["impute", str(tmp_path / "t.npy"), "--out", str(tmp_path / "g.npy"), "--mechanism", "x"] + fast)
    _, err = capsys.readouterr()
    assert code == 2 and err.strip() == "iwae: error: mechanism must be one of mar, self-masking, linear, got 'x'"
    complete = tmp_path / "complete.npy"
    np.save(complete, np.nan_to_num(given, nan=1.0))
    code = main(["impute", str(complete), "--out", str(tmp_path / "h.npy"), "--mechanism", "linear"] + fast)
    _, err = capsys.readouterr()
    assert code == 0 and "UserWarning" not in err
    assert [line for line in err.splitlines() if "warning" in line] == ["iwae: warning: mechanism='linear' on data with nothing missing: p(s | x) "
                                              "is fitted to an all-observed mask and tells nothing about the mechanism"]


def test_not_miwae_on_meta():
    meta = torch.device("meta")
    base = iwae.paper_model(1, input_dim=5, likelihood=Gaussian())
    model = iwae.Model(list(base.encoder), base.decoder, Gaussian(), missing=True,
                       missingness=SelfMasking(5, "positive")).to(meta)
    x, mask = torch.empty(3, 5, device=meta), torch.empty(3, 5, dtype=torch.bool, device=meta)
    assert model.log_weights(x, 4, mask=mask).device == meta
    for estimator in ("standard", "stl", "dreg"):
        model.zero_grad()
        iwae.loss(model, x, 4, "iwae", estimator).backward()
        assert all(p.grad.device == meta for p in model.parameters())
    assert impute(model, x, mask, draws=5).device == meta
    assert multiple_impute(model, x, 2, mask, draws=5).shape == (2, 3, 5)

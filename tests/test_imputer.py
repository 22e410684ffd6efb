"""iwae.Imputer, the scikit-learn estimator (docs/missing.md): the sklearn contract, the kinds
of input it takes and gives back, and its one-line refusals of bad input."""
import math
import pickle
import subprocess
import sys
import warnings

import joblib
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline

import iwae
from iwae.missing.imputer import _piled, default_activation, default_k, default_sizes
from iwae.core.densities import Columns, Gaussian, StudentT
from iwae.core.tabular import InflatedGaussian

FAST = dict(epochs=2, k=3, latent=2, hidden=8, draws=20, batch_size=16)


def table(n=40, d=5, seed=0, missing=0.3):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    x = z @ rng.normal(size=(2, d)) + 0.3 * rng.normal(size=(n, d))
    holes = rng.random((n, d)) < missing
    out = x.copy()
    out[holes] = np.nan
    return x, out


def test_import_iwae_stays_light_and_imputer_is_lazy():
    code = ("import sys, iwae; before = 'sklearn' in sys.modules; iwae.Imputer; "
            "print(before, 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_fit_transform_fills_every_hole_keeps_observed_bits_and_leaves_the_input_alone():
    _, x = table()
    before = x.copy()
    out = iwae.Imputer(**FAST).fit_transform(x)
    assert np.array_equal(x, before, equal_nan=True)                 # the caller's array
    observed = ~np.isnan(x)
    assert not np.isnan(out).any() and out.dtype == x.dtype
    assert np.array_equal(out[observed], x[observed])
    again = iwae.Imputer(**FAST).fit(x)
    assert np.array_equal(again.transform(x), out)                   # seeded: deterministic


def test_new_rows_and_float32_and_torch_and_pandas_come_back_as_they_went_in():
    _, x = table()
    imp = iwae.Imputer(**FAST).fit(x)
    new = table(seed=3)[1]
    assert not np.isnan(imp.transform(new)).any()
    f32 = imp.transform(new.astype(np.float32))
    assert f32.dtype == np.float32 and np.array_equal(f32[~np.isnan(new)], new.astype(np.float32)[~np.isnan(new)])
    t = torch.tensor(new, dtype=torch.float32)
    out = imp.transform(t)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and not torch.isnan(out).any()
    assert torch.equal(out[~torch.isnan(t)], t[~torch.isnan(t)])
    frame = pd.DataFrame(x, columns=list("abcde"), index=range(100, 140))
    imp = iwae.Imputer(**FAST).fit(frame)
    got = imp.transform(frame)
    assert isinstance(got, pd.DataFrame) and list(got.columns) == list("abcde") and list(got.index) == list(frame.index)
    assert list(imp.get_feature_names_out()) == list("abcde")
    out = iwae.Imputer(**FAST).set_output(transform="pandas").fit_transform(x)
    assert isinstance(out, pd.DataFrame) and list(out.columns) == [f"x{j}" for j in range(5)]


def test_sample_and_score():
    _, x = table()
    imp = iwae.Imputer(**FAST).fit(x)
    draws = imp.sample(x, 4)
    assert draws.shape == (4, 40, 5) and not np.isnan(draws).any()
    assert imp.sample(x.astype(np.float32), 2).dtype == np.float32
    observed = ~np.isnan(x)
    assert all(np.array_equal(d[observed], x[observed]) for d in draws)
    assert draws[:, ~observed].std(0).mean() > 0                     # the draws differ
    assert np.isfinite(imp.score(x))


def test_transform_and_score_is_one_pass_of_both():
    _, x = table()
    imp = iwae.Imputer(**{**FAST, "draws": 500}).fit(x)
    filled, score = imp.transform_and_score(x)
    assert np.array_equal(filled, imp.transform(x))
    # 40 rows are one chunk of both passes, so score draws the same z's from the same seed: equal
    # but for rounding (measured 1.5e-8); without the Jacobian or the - log L it would be off by nats
    assert abs(score - imp.score(x)) < 1e-6


def test_not_fitted_clone_and_params():
    imp = iwae.Imputer(k=7, epochs=3, likelihood="student-t")
    for call in (lambda: imp.transform(np.zeros((2, 2))), lambda: imp.sample(np.zeros((2, 2)), 2),
                 lambda: imp.score(np.zeros((2, 2)))):
        with pytest.raises(NotFittedError):
            call()
    twin = clone(imp)
    assert twin.get_params() == imp.get_params() and twin is not imp
    twin.set_params(k=9)
    assert twin.k == 9 and imp.k == 7


def test_pipeline_cross_val_score_and_grid_search_on_nan_data():
    _, x = table(n=60)
    y = (np.nan_to_num(x[:, 1]) > 0).astype(int)
    pipe = make_pipeline(iwae.Imputer(**FAST), LogisticRegression())
    assert pipe.fit(x, y).score(x, y) > 0.5
    assert len(cross_val_score(pipe, x, y, cv=2)) == 2
    search = GridSearchCV(iwae.Imputer(**FAST), {"k": [2, 4]}, cv=2).fit(x)
    assert search.best_params_["k"] in (2, 4)


def test_pickle_and_joblib_round_trips_give_the_same_imputations(tmp_path):
    _, x = table()
    imp = iwae.Imputer(**FAST).fit(x)
    joblib.dump(imp, tmp_path / "imp.joblib")
    assert np.array_equal(joblib.load(tmp_path / "imp.joblib").transform(x), imp.transform(x))
    assert np.array_equal(pickle.loads(pickle.dumps(imp)).sample(x, 2), imp.sample(x, 2))


def test_auto_gives_binary_columns_a_bernoulli_and_student_t_fits():
    _, x = table()
    x[:, 2] = np.where(np.isnan(x[:, 2]), np.nan, (x[:, 2] > 0).astype(float))
    imp = iwae.Imputer(**FAST).fit(x)
    assert isinstance(imp.model_.likelihood, Columns) and imp.binary_.tolist() == [False, False, True, False, False]
    filled = imp.transform(x)[:, 2]
    assert ((filled >= 0) & (filled <= 1)).all() and imp.scale_[2] == 1 and imp.mean_[2] == 0
    st = iwae.Imputer(likelihood="student-t", **FAST).fit(x)
    assert isinstance(st.model_.likelihood, StudentT) and not np.isnan(st.transform(x)).any()


def test_a_row_with_nothing_observed_is_imputed_from_the_prior():
    _, x = table()
    x[3] = np.nan
    out = iwae.Imputer(**FAST).fit_transform(x)
    assert np.isfinite(out[3]).all()


def test_the_default_sizes_follow_the_shape():                # 569 // 64 = 8 steps an epoch, 150 // 64 = 2
    assert default_sizes(569, 30) == (10, 128, 375)
    assert default_sizes(150, 4) == (2, 32, 1500)
    assert default_sizes(442, 10) == (5, 80, 500)
    assert default_sizes(100_000, 200) == (10, 128, 20)


@pytest.mark.parametrize("epochs, patience, expected", [(None, "auto", (1000, 63)), (50, "auto", (50, None)),
                                                        (None, None, (375, None)), (None, 7, (375, 7)),
                                                        (50, 7, (50, 7))])
def test_the_budget_stops_on_the_data_unless_epochs_fix_it(epochs, patience, expected):
    # 569 rows: 8 steps an epoch; MAX_STEPS 8000 -> 1000 epochs, PATIENCE_STEPS 500 -> 63
    assert iwae.Imputer(epochs=epochs, patience=patience)._stopping(569, 375) == expected
    if patience == "auto":                   # a missingness model would learn the hold-out's holes
        assert iwae.Imputer(epochs=epochs, mechanism="self-masking")._stopping(569, 375) == (epochs or 375, None)


@pytest.mark.parametrize("compile, epochs, rows, step", [("auto", 334, 569, "step"), ("auto", 124, 569, "off"),
                                                         ("auto", 125, 569, "step"), ("off", 334, 569, "off"),
                                                         ("step", 1, 10, "step")])
def test_compile_auto_compiles_the_step_of_fits_of_a_thousand_steps_or_more(compile, epochs, rows, step):
    # 569 rows in batches of 64: 8 steps an epoch (the ragged last left out), so 124 epochs are 992 steps, 125 1000
    imputer = iwae.Imputer(compile=compile)
    imputer.epochs_ = epochs
    assert imputer._compile(rows) == step


def bad(x, **kw):
    return lambda: iwae.Imputer(**FAST, **kw).fit(x)


def _with(x, where, value):
    x = x.copy()
    x[where] = value
    return x


X0 = table()[1]
FITTED = None


@pytest.mark.parametrize("make,message", [
    (lambda: bad(np.array([[1.0, b"x"], [2.0, b"y"]], dtype=object)),
     r"^X has non-numeric entries; pass a pandas DataFrame, whose string"),
    (lambda: bad(_with(X0, (0, 0), np.inf)), r"^X holds infinite values; mark missing entries as NaN$"),
    (lambda: bad(X0, likelihood="bernoulli"), r"^likelihood='bernoulli' needs 0/1 data; non-binary columns: 0, 1, 2, 3, 4$"),
    (lambda: (lambda: iwae.Imputer(epochs=0).fit(X0)),
     r"^epochs must be None \(from the data's shape\) or an integer >= 1, got 0$"),
    (lambda: (lambda: iwae.Imputer(k=0).fit(X0)), r"^k must be None \(from the data's shape\) or an integer >= 1, got 0$"),
    (lambda: bad(X0, likelihood="poisson"), r"^likelihood must be one of auto, gaussian, student-t, bernoulli, got 'poisson'$"),
    (lambda: bad(X0, mask_input="yes"), r"^mask_input must be 'auto', True or False, got 'yes'$"),
    (lambda: bad(X0, activation="gelu"), r"^activation must be 'auto' or one of tanh, silu, relu, elu, got 'gelu'$"),
    (lambda: bad(X0, activation=["silu"]), r"^activation must be 'auto' or one of tanh, silu, relu, elu, got \['silu'\]$"),
    (lambda: bad(np.zeros(5)), r"^Expected a 2-d array \[N, D\], got shape \[5\]; Reshape your data"),
    (lambda: bad(X0[:1]), r"^Found array with 1 sample\(s\) \(shape=\(1, 5\)\) while the Imputer needs at least 2"),
    (lambda: (lambda imp=iwae.Imputer(**FAST).fit(X0): imp.transform(X0[:, :4])),
     r"^X has 4 features, but Imputer is expecting 5 features as input$"),
], ids=["bytes-array", "inf", "bernoulli-on-reals",
        "zero-epochs", "zero-k", "unknown-likelihood", "bad-mask-input", "bad-activation", "list-activation", "1-d", "one-row", "other-column-count"])
def test_bad_input_is_one_line_and_modifies_nothing(make, message):
    call = make()
    before = X0.copy()
    with pytest.raises(ValueError, match=message) as err:
        call()
    assert len(str(err.value).splitlines()) == 1
    assert np.array_equal(X0, before, equal_nan=True)


@pytest.mark.parametrize("activation, module", [("auto", torch.nn.Tanh), ("tanh", torch.nn.Tanh),
                                                ("silu", torch.nn.SiLU), ("elu", torch.nn.ELU)])
def test_the_hidden_units_are_the_activation_asked(activation, module):
    imp = iwae.Imputer(activation=activation, **FAST).fit(X0)              # 5 columns: "auto" is tanh
    kinds = {type(m) for m in imp.model_.modules()} & {torch.nn.Tanh, torch.nn.SiLU, torch.nn.ReLU, torch.nn.ELU}
    assert kinds == {module} and imp.activation_ == module.__name__.lower()


def test_the_default_activation_is_silu_from_sixteen_modelled_columns():
    assert [default_activation(d) for d in (1, 15, 16, 200)] == ["tanh", "tanh", "silu", "silu"]


def test_the_default_k_is_ten_from_sixteen_modelled_columns():
    assert [default_k(d) for d in (1, 15, 16, 200)] == [20, 20, 10, 10]


@pytest.mark.parametrize("columns, k, expected", [(5, None, 20), (16, None, 10), (16, 3, 3)])
def test_the_training_bound_takes_the_k_asked(columns, k, expected, monkeypatch):
    from iwae.missing import imputer as imputer_module
    seen, train = [], imputer_module.train
    monkeypatch.setattr(imputer_module, "train", lambda *a, **kw: seen.append(kw["k"]) or train(*a, **kw))
    x = np.random.default_rng(0).normal(size=(40, columns))
    imp = iwae.Imputer(**{**FAST, "k": k}).fit(np.where(x > 1.5, np.nan, x))
    assert seen == [expected] and imp.k_ == expected


def _constant_columns(x):
    """x with column 2 constant at 4.0 where observed and column 3 with one observed value, 7.5."""
    x = _with(_with(x, (~np.isnan(x[:, 2]), 2), 4.0), (slice(1, None), 3), np.nan)
    x[0, 3] = 7.5
    x[[1, 2], 2] = np.nan
    return x


def test_constant_columns_under_mar_are_left_out_of_the_network_and_take_their_value():
    x = _constant_columns(X0)
    with pytest.warns(UserWarning, match=r"^column\(s\) with a single observed value: 2, 3; their missing "
                                         r"entries take that value \(mechanism='mar'\)$") as caught:
        imp = iwae.Imputer(**FAST).fit(x)
    assert len(caught) == 1
    out = imp.transform(x)
    assert (out[:, 2] == 4.0).all() and (out[:, 3] == 7.5).all() and not np.isnan(out).any()
    assert imp.modeled_.tolist() == [True, True, False, False, True]
    assert imp._standardised(x).shape == (40, 3)
    assert (imp.sample(x, 3)[:, :, 2:4] == [4.0, 7.5]).all() and np.isfinite(imp.score(x))


@pytest.mark.parametrize("mechanism", ["self-masking", "linear"])
def test_constant_columns_under_a_missingness_model_stay_in_it_with_a_fixed_scale(mechanism):
    x = _constant_columns(X0)
    with pytest.warns(UserWarning, match=r"^column\(s\) with a single observed value: 2, 3; modelled with a "
                                         r"fixed scale of \|value\| \(1 for 0\)"):
        imp = iwae.Imputer(**FAST, mechanism=mechanism).fit(x)
    assert imp.modeled_.all() and imp.scale_[2:4].tolist() == [4.0, 7.5] and imp.mean_[2:4].tolist() == [4.0, 7.5]
    like = imp.model_.likelihood
    assert isinstance(like, Columns) and [p[0].scale for p in like.parts] == [None, 1.0]
    out = imp.transform(x)
    observed = ~np.isnan(x)
    assert np.isfinite(out).all() and np.array_equal(out[observed], x[observed])
    assert np.isfinite(imp.train_bound_) and len(imp.missingness_["feature"]) == 5


def test_an_empty_column_follows_simple_imputers_keep_empty_features():
    from sklearn.impute import SimpleImputer
    x = _with(X0, (slice(None), 1), np.nan)
    frame = pd.DataFrame(x, columns=list("abcde"))
    for keep in (False, True):
        expected = SimpleImputer(keep_empty_features=keep).fit(frame)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ours = iwae.Imputer(**FAST, keep_empty_features=keep).fit(frame)
            out = ours.transform(frame)
        assert out.shape == expected.transform(frame).shape
        assert list(out.columns) == list(ours.get_feature_names_out()) == list(expected.get_feature_names_out())
        messages = [str(w.message) for w in caught]
        assert messages == ([] if keep else ["Skipping features without any observed values: ['b']. At least one "
                                              "non-missing value is needed for imputation with iwae.Imputer."])
        if keep:
            assert (out["b"] == 0).all()
    assert iwae.Imputer(**FAST).fit(x).transform(x).shape == (40, 4)
    assert iwae.Imputer(**FAST, keep_empty_features=True).fit(x).sample(x, 2).shape == (2, 40, 5)


def test_sparse_input_is_refused_in_one_line():
    from scipy import sparse
    with pytest.raises(TypeError, match=r"^a sparse matrix was passed, but the Imputer needs dense data"):
        iwae.Imputer(**FAST).fit(sparse.csr_matrix(np.eye(4)))


def test_scikit_learns_estimator_checks_pass():
    from sklearn.utils.estimator_checks import check_estimator
    results = check_estimator(iwae.Imputer(epochs=1, k=2, latent=2, hidden=4, draws=5, batch_size=16), on_fail=None)
    failed = [(r["check_name"], str(r["exception"])[:200]) for r in results if r["status"] == "failed"]
    assert len(results) > 40 and not failed


@pytest.fixture
def no_file_writes(monkeypatch):
    """Any file opened for writing (by open() or os.open, in this process) fails the test."""
    import builtins
    import os
    real_open, real_os_open = builtins.open, os.open

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            raise AssertionError(f"wrote {file}")
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise AssertionError(f"wrote {path}")
        return real_os_open(path, flags, *args, **kwargs)
    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(os, "open", guarded_os_open)


def test_fit_transform_and_fit_without_out_write_no_file(no_file_writes):
    """The Imputer and iwae.fit(out=None) train in memory (the step eager: torch.compile keeps a
    cache of its own); what they learned comes back in memory."""
    _, x = table()
    imputer = iwae.Imputer(**FAST, compile="off")
    filled = imputer.fit_transform(x)
    assert not np.isnan(filled).any() and np.isfinite(imputer.train_bound_)
    model = iwae.paper_model(1, input_dim=5, likelihood=iwae.Gaussian())
    from iwae.training.fit import train
    trained = train(model, torch.randn(40, 5), k=2, epochs=2, compile="off", quiet=True, device="cpu")
    assert [r["epoch"] for r in trained.history] == [1, 2] and trained.model is model
    assert trained.train_bound == trained.history[-1]["train_bound"]


def linear_gaussian(n, d, rank, noise, seed=0, missing=0.3):
    """(x, x with MCAR holes, the closed-form E[x_m | x_o] of its Gaussian): x = z W + noise e."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(rank, d))
    x = rng.normal(size=(n, rank)) @ w + noise * rng.normal(size=(n, d))
    holes = np.where(rng.random((n, d)) < missing, np.nan, x)
    cov = w.T @ w + noise ** 2 * np.eye(d)
    exact = np.zeros_like(x)
    for i in range(n):
        m, o = np.isnan(holes[i]), ~np.isnan(holes[i])
        if m.any() and o.any():
            exact[i, m] = cov[np.ix_(m, o)] @ np.linalg.solve(cov[np.ix_(o, o)], x[i, o])
    return x, holes, exact


def test_early_stopping_stops_soon_on_independent_columns_and_imputes_their_means():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 4)) * [1, 2, 3, 4] + [0, 10, -5, 1]
    holes = np.where(rng.random(x.shape) < 0.3, np.nan, x)
    imp = iwae.Imputer(patience=10, compile="off")
    out = imp.fit_transform(holes)
    refit = math.ceil(iwae.missing.imputer.REFIT * imp.best_epoch_)
    assert imp.n_epochs_ == imp.best_epoch_ + 10 + refit and imp.best_epoch_ + 10 <= 40 < imp.epochs_
    assert len(imp.history_) == imp.n_epochs_ and all(r["held_error"] is None or 0 < r["held_error"] < 3 for r in imp.history_) and imp.history_[imp.best_epoch_ - 1]["held_error"] is not None
    miss = np.isnan(holes)
    gap = np.abs(out - np.nanmean(holes, 0)) / np.nanstd(holes, 0)
    assert gap[miss].mean() < 0.1                                    # the column means, within 0.1 sd


def test_early_stopping_trains_on_to_the_closed_form_conditional_mean_of_a_low_rank_table():
    x, holes, exact = linear_gaussian(500, 8, 2, 0.3)
    imp = iwae.Imputer(compile="off", draws=300)                     # the error is measured every 15 epochs here
    out = imp.fit_transform(holes)
    miss = np.isnan(holes)
    mse, best = np.mean((out - x)[miss] ** 2), np.mean((exact - x)[miss] ** 2)
    # measured: 1.175x at epoch 24 (64 units); seeds 0-3, compiled: 1.04-1.21x (64), 1.09-1.19x (128)
    assert mse < 1.25 * best and imp.best_epoch_ >= 20


def test_held_out_entries_are_trained_without_and_come_back_as_given():
    x, holes, _ = linear_gaussian(60, 5, 2, 0.3)
    imp = iwae.Imputer(**FAST, patience=2)
    out = imp.fit_transform(holes)
    observed = ~np.isnan(holes)
    assert np.array_equal(out[observed], holes[observed])            # held-out entries included, bit for bit
    train_x, budget = imp._budget(imp._standardised(holes))
    held = torch.isnan(train_x) & ~torch.isnan(imp._standardised(holes))
    assert 0 < held.sum() and abs(held.sum().item() / observed.sum() - 0.1) < 0.05
    assert torch.isnan(budget["eval_given"]).sum() == torch.isnan(train_x).sum()     # all 60 rows, shuffled
    assert np.array_equal(imp.transform(holes), out) and np.array_equal(iwae.Imputer(**FAST, patience=2).fit_transform(holes), out)


def test_the_held_out_score_is_the_squared_error_in_standardised_units(monkeypatch):
    # digits: a column whose given rows are all 0 while a held-out entry is not; scored over the
    # given rows' spread (clamped at 1e-6) it was ~1e13 and the early stopping stopped at random
    rng = np.random.default_rng(0)
    imputer = iwae.Imputer(patience=None, **FAST).fit(rng.normal(size=(40, 3)))
    truth = torch.tensor([[0.5, 0.0, 1.0], [1.5, 0.0, -1.0], [2.0, 5.0, 0.0]])
    given = truth.clone()
    given[0, 0] = given[2, 1] = given[1, 2] = float("nan")              # held out: 0.5, 5.0 and -1.0
    monkeypatch.setattr(iwae.missing.imputer, "impute", lambda model, x, draws: torch.zeros_like(x))
    score = imputer._held_score(truth, given, every=1)
    assert score(imputer.model_, 0) == pytest.approx(-(0.5 ** 2 + 5.0 ** 2 + 1.0 ** 2) / 3)


def point_mass_table():
    """(x [300, 6], its columns' resolution floors, the shares of their most common value and of
    the most common of the rest): a normal column to 0.01, integers 0-2, a point mass at 0 of
    60% beside normal values (MNIST's zero pixels), 0 or 8 (97% zeros), a point mass at 0 of
    20%, and one of 40% at 0 and 20% at 3 (MNIST's saturated pixels); 20% missing."""
    rng = np.random.default_rng(0)
    n = 300
    normal = lambda: rng.normal(2.0, 1.0, n)
    u = rng.random(n)
    x = np.c_[np.round(rng.normal(size=n), 2), rng.integers(0, 3, n), np.where(rng.random(n) < 0.6, 0.0, normal()),
              np.where(rng.random(n) < 0.97, 0, 8), np.where(rng.random(n) < 0.2, 0.0, normal()),
              np.where(u < 0.4, 0.0, np.where(u < 0.6, 3.0, normal()))]
    x[rng.random(x.shape) < 0.2] = np.nan
    x[:2] = [[0.5, 0.0, 0.0, 0.0, 0.0, 0.0], [-0.5, 2.0, 1.5, 8.0, 1.0, 1.0]]     # every level observed
    std = np.nanstd(x, 0)
    observed = [column[~np.isnan(column)] for column in x.T]
    levels, counts = zip(*(np.unique(c, return_counts=True) for c in observed))
    share = np.array([c.max() / c.sum() for c in counts])
    rest = np.array([np.sort(c)[-2] / (c.sum() - c.max()) for c in counts])
    gap = np.array([np.diff(v).min() / s / math.sqrt(2 * math.pi) for v, s in zip(levels, std)])
    fine = [len(v) >= iwae.missing.imputer.FINE_LEVELS for v in levels]
    assert fine == [True, False, True, False, True, True] and share[0] < 0.1 and share[2] > 0.5 > share[4] > max(0.1, gap[4])
    assert gap[3] > 1.0 and rest[2] < 0.1 and rest[4] < 0.1 and 0.5 > share[5] > rest[5] > 0.1
    return x, gap, share, rest


def test_a_fine_columns_point_mass_is_an_inflated_gaussians_under_mar():
    # a point mass on a finely recorded column (MNIST's zero pixels) gets its own probability;
    # every learned scale is floored at the resolution over sqrt(2 pi), at most 1, or where the
    # rest has a point mass of its own, at its share (docs/missing.md, "Ties")
    x, gap, _, rest = point_mass_table()
    imputer = iwae.Imputer(patience=None, **FAST).fit(x)
    (normal, columns), (inflated, inflated_columns) = imputer.model_.likelihood.parts
    assert type(normal) is Gaussian and isinstance(inflated, InflatedGaussian)
    assert columns.tolist() == [0, 1, 3] and inflated_columns.tolist() == [2, 4, 5]
    np.testing.assert_allclose(normal.min_scale, [gap[0], gap[1], 1.0], rtol=1e-4)   # x in float32: gaps of 0.01
    np.testing.assert_allclose(inflated.normal.min_scale, [gap[2], gap[4], rest[5]], rtol=1e-4, atol=1e-8)  # float32 gaps
    standardised = (0.0 - np.nanmean(x, 0)) / np.nanstd(x, 0)
    np.testing.assert_allclose(inflated.points, standardised[[2, 4, 5]], rtol=1e-6)
    assert imputer.point_masses_ == {"2": 0.0, "4": 0.0, "5": 0.0}
    draws = imputer.sample(x, m=5)
    holes = np.isnan(x[:, 2])
    assert (draws[:, holes, 2] == 0.0).mean() > 0.3               # the point itself, not its float32 round trip
    copy = pickle.loads(pickle.dumps(imputer))
    assert np.array_equal(copy.transform(x), imputer.transform(x)) and copy.point_masses_ == imputer.point_masses_


@pytest.mark.parametrize("counts,piled", [
    ([30, 10, 8, 5], True),                 # a grey level's zeros: 3x the level beside them
    ([5, 8, 10, 30], True),                 # a saturated sensor's top
    ([10, 30, 8, 5], False),                # the most common value inside the range
    ([30, 25, 8, 5], False),                # at an end, but under 1.5x the level beside it
    ([3] + [2] * 21, False),                # 1.5x its neighbour, but under 10% of the values
    ([30, 10], False),                      # two levels: a binary column, not a pile
])
def test_a_pile_at_an_end_of_a_coarser_columns_range(counts, piled):
    assert _piled([(np.arange(len(counts), dtype=float), np.array(counts))]).tolist() == [piled]


def test_a_coarse_columns_pile_of_zeros_is_an_inflated_gaussians_point_mass():
    # digits' grey levels 0-16, 40% of them 0: a point mass there, as on a finely recorded column
    rng = np.random.default_rng(0)
    x = np.c_[rng.normal(size=200), np.where(rng.random(200) < 0.4, 0, rng.integers(1, 17, 200)).astype(float)]
    x[rng.random(x.shape) < 0.2] = np.nan
    imputer = iwae.Imputer(patience=None, **FAST).fit(x)
    assert imputer.point_masses_ == {"1": 0.0} and isinstance(imputer.model_.likelihood.parts[1][0], InflatedGaussian)


@pytest.mark.parametrize("settings", [dict(mechanism="self-masking"), dict(likelihood="student-t")],
                         ids=["self-masking", "student-t"])
def test_a_point_mass_without_an_inflated_gaussian(settings):
    # a missingness model draws x_m by reparameterisation, which a point mass cannot give: its
    # Gaussian's floor is then the point mass's share, at most TIE_FLOOR = 0.5; Student's t has no floor
    x, gap, share, _ = point_mass_table()
    imputer = iwae.Imputer(patience=None, **settings, **FAST).fit(x)
    assert imputer.point_masses_ == {}
    if "mechanism" in settings:
        np.testing.assert_allclose(imputer.model_.likelihood.min_scale, [gap[0], gap[1], 0.5, 1.0, share[4], share[5]],
                                   rtol=1e-4)
    else:
        assert isinstance(imputer.model_.likelihood, StudentT)

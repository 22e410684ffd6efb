"""``iwae.Imputer``: a scikit-learn transformer that trains a deep latent variable model on
incomplete data with the IWAE bound over the observed entries and imputes the missing ones
[Mattei & Frellsen 2019] (docs/missing.md).

    imputer = iwae.Imputer()                 # NaN = missing
    filled = imputer.fit_transform(X)        # numpy, pandas DataFrame or torch tensor in and out
    draws = imputer.sample(X, m=20)          # [m, N, D] multiple imputations

Imported only when ``iwae.Imputer`` is first used (scikit-learn and pandas stay out of
``import iwae``). Training runs through the project's one loop (``iwae.fit``) in memory,
touching no file; imputation is ``iwae.evaluation.imputation``.
"""
import math
import time
import warnings

import numpy as np
import torch
from scipy import sparse
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ..core.densities import Bernoulli, Columns, Gaussian, StudentT
from ..core.missingness import SIGNS, LinearMasking, SelfMasking
from ..core.model import GaussianLayer, Model
from ..core.nets import mlp
from ..evaluation.imputation import DRAWS, impute, multiple_impute
from ..evaluation.likelihood import log_likelihood
from ..runtime.compile import decide
from ..runtime.devices import parse_device
from ..runtime.rng import forked_rng
from ..training.fit import train

LIKELIHOOD_NAMES = ("auto", "gaussian", "student-t", "bernoulli")
CONTINUOUS = {"gaussian": Gaussian, "student-t": StudentT}
MECHANISMS = {"mar": None, "self-masking": SelfMasking, "linear": LinearMasking}
AUTO_CONTINUOUS = "gaussian"   # the continuous likelihood of likelihood="auto" (docs/missing.md)
TARGET_STEPS = 3000            # epochs=None: about this many steps of batch_size rows
MIN_EPOCHS = 20
HIDDEN = 128                   # units per hidden layer (the authors' width)
MAX_LATENT = 10


def default_sizes(n, d, batch_size=64):
    """(latent, hidden, epochs) for a table of n rows and d columns (docs/missing.md):
    latent = min(ceil(d / 2), 10) (the authors' d/2, capped at their other choice, 10),
    hidden = 128, epochs = max(20, ceil(3000 / steps per epoch))."""
    steps_per_epoch = math.ceil(n / batch_size)
    return min(math.ceil(d / 2), MAX_LATENT), HIDDEN, max(MIN_EPOCHS, math.ceil(TARGET_STEPS / steps_per_epoch))


class Imputer(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Missing-value imputation by an importance weighted autoencoder trained on the observed
    entries (NaN = missing).

    likelihood: "auto" (columns whose observed values are all 0 or 1 Bernoulli, the others
        Gaussian), "gaussian", "student-t" or "bernoulli" (every column binary).
    k: importance samples of the training bound. epochs, latent, hidden: None picks them from
        the data's shape (``default_sizes``). hidden_layers: per network. batch_size, lr: Adam's.
    draws: importance samples L per row for transform, sample and score. estimator: "standard",
        "stl" or "dreg". mask_input: the encoder also reads the mask; "auto": under a missingness
        model (mechanism not "mar"), where s tells about x_m and p(z | x_o, s) is not p(z | x_o),
        so q(z | .) needs s; not under "mar", where it does not. seed: training and
        imputation noise (transform is deterministic for a fitted imputer). device: "auto",
        "cpu", "cuda", "cuda:N". compile: the training step's, "auto" ("step" for fits of enough steps that compiling once repays itself:
        iwae.runtime.compile.decide, docs/missing.md), "step"
        or "off".
    verbose: the loop's progress bar.
    mechanism: "mar" (missing at random: MIWAE), "self-masking" (each value's missingness
        depends on that value: logit p(observed) = -w_j (x_j - b_j), learned) or "linear"
        (logistic on all of x); the last two are not-MIWAE [Ipsen et al. 2021] and need
        continuous columns. sign: self-masking's w_j sign when known, None, "positive" (high
        values go missing) or "negative".

    Fitted attributes: ``model_`` (an iwae.Model on standardised data), ``mean_``, ``scale_``
    (of the observed values only; 0 and 1 for Bernoulli columns), ``binary_`` (Bernoulli
    columns), ``n_features_in_`` (and ``feature_names_in_`` for a DataFrame), ``epochs_``,
    ``train_bound_`` (the last epoch's mean bound, standardised scale), ``fit_seconds_``,
    ``missingness_`` (None for "mar"; else the fitted p(s | x) in X's units, ``missingness``).
    """

    def __init__(self, likelihood="auto", k=20, epochs=None, *, latent=None, hidden=None, hidden_layers=2,
                 batch_size=64, lr=1e-3, draws=DRAWS, estimator="standard", mask_input="auto", seed=0,
                 device="auto", compile="auto", verbose=False, mechanism="mar", sign=None):
        self.likelihood, self.k, self.epochs = likelihood, k, epochs
        self.latent, self.hidden, self.hidden_layers = latent, hidden, hidden_layers
        self.batch_size, self.lr, self.draws, self.estimator = batch_size, lr, draws, estimator
        self.mask_input, self.seed, self.device, self.compile, self.verbose = mask_input, seed, device, compile, verbose
        self.mechanism, self.sign = mechanism, sign

    def fit(self, X, y=None):
        """Standardise with the observed values' statistics and train on X (NaN = missing)."""
        if self.likelihood not in LIKELIHOOD_NAMES:
            raise ValueError(f"likelihood must be one of {', '.join(LIKELIHOOD_NAMES)}, got {self.likelihood!r}")
        if self.mask_input not in ("auto", True, False):
            raise ValueError(f"mask_input must be 'auto', True or False, got {self.mask_input!r}")
        for name in ("epochs", "latent", "hidden"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be None (from the data's shape) or an integer >= 1, got {value!r}")
        values, _ = _as_array(X, self, reset=True)
        observed = ~np.isnan(values)
        _check_columns(values, observed, self._column_names())
        self.binary_ = _binary_columns(values, observed)
        if self.likelihood == "bernoulli" and not self.binary_.all():
            raise ValueError("likelihood='bernoulli' needs 0/1 data; non-binary columns: "
                             + _names(self._column_names(), ~self.binary_))
        if self.likelihood in CONTINUOUS:
            self.binary_ = np.zeros_like(self.binary_)
        self._check_mechanism(observed)
        self.mean_ = np.where(self.binary_, 0.0, np.nanmean(values, 0))
        self.scale_ = np.where(self.binary_, 1.0, np.nanstd(values, 0))
        n, d = values.shape
        latent, hidden, epochs = default_sizes(n, d, self.batch_size)
        self.epochs_ = self.epochs if self.epochs is not None else epochs
        began = time.perf_counter()
        device = parse_device(self.device)
        with forked_rng(device):
            torch.manual_seed(self.seed)
            model = self._build(d, self.latent or latent, self.hidden or hidden)
            trained = train(model, self._standardised(values), k=self.k, estimator=self.estimator,
                            epochs=self.epochs_, batch_size=self.batch_size, lr=self.lr, schedule="constant",
                            seed=self.seed, device=str(device), compile=self._compile(n), quiet=not self.verbose)
        self.train_bound_ = trained.train_bound
        self.fit_seconds_ = time.perf_counter() - began
        self.model_ = model.eval()
        self.missingness_ = missingness(self)
        return self

    def _compile(self, n):
        """The training step's compile for a fit on n rows: "auto" decides by its number of steps."""
        steps = self.epochs_ * math.ceil(n / self.batch_size)
        return decide(self.compile, "table step", steps, parse_device(self.device))

    def _check_mechanism(self, observed):
        if self.mechanism not in MECHANISMS:
            raise ValueError(f"mechanism must be one of {', '.join(MECHANISMS)}, got {self.mechanism!r}")
        if self.sign not in SIGNS:
            raise ValueError(f"sign must be None, 'positive' or 'negative', got {self.sign!r}")
        if self.mechanism == "mar":
            return
        if self.binary_.any():
            raise ValueError(f"mechanism={self.mechanism!r} draws the missing values by reparameterisation, which "
                             "binary (Bernoulli) column(s) cannot give: " + _names(self._column_names(), self.binary_)
                             + "; use mechanism='mar', or likelihood='gaussian' to treat them as continuous")
        if observed.all():
            warnings.warn(f"mechanism={self.mechanism!r} on data with nothing missing: p(s | x) is fitted to an "
                          "all-observed mask and tells nothing about the mechanism", UserWarning, stacklevel=3)

    def transform(self, X):
        """X with every missing entry replaced by E[x_m | x_o] (self-normalised importance
        sampling, ``draws`` samples); observed entries bit for bit; the same kind as X."""
        values, kind = self._checked(X)
        filled = self._run(lambda m, x: impute(m, x, draws=self.draws), values)
        return _like(np.where(np.isnan(values), filled, values), kind)

    def sample(self, X, m=5):
        """m multiple imputations of X by sampling importance resampling: [m, N, D] (numpy,
        or a torch tensor for a tensor X)."""
        values, kind = self._checked(X)
        draws = self._run(lambda model, x: multiple_impute(model, x, m, draws=self.draws), values)
        out = np.where(np.isnan(values)[None], draws, values[None])
        return _like(out, kind if kind[0] in ("torch", "numpy") else ("numpy", np.float64))

    def score(self, X, y=None):
        """The mean over rows of the IWAE bound L_draws of log p(x_o) (nats, in X's units); with a
        mechanism other than "mar", of log p(x_o, s) (the missingness model's term included)."""
        values, _ = self._checked(X)
        bound = self._run(lambda m, x: log_likelihood(m, x, self.draws, compile="off"), values, units=False)
        observed = ~np.isnan(values)
        jacobian = (np.log(self.scale_)[None] * (observed & ~self.binary_[None])).sum(1)
        return float((bound - jacobian).mean())

    def _column_names(self):
        names = getattr(self, "feature_names_in_", None)
        return list(names) if names is not None else [str(j) for j in range(self.n_features_in_)]

    def _checked(self, X):
        check_is_fitted(self, "model_")
        values, kind = _as_array(X, self, reset=False)
        bad = self.binary_ & ~(np.isnan(values) | (values == 0) | (values == 1)).all(0)
        if bad.any():
            raise ValueError("non-binary values in Bernoulli (0/1) column(s): " + _names(self._column_names(), bad))
        return values, kind

    def _standardised(self, values):
        return torch.as_tensor((values - self.mean_) / self.scale_, dtype=torch.float32)

    def _run(self, fn, values, units=True):
        """fn(model, standardised NaN-coded tensor), seeded by self.seed, as numpy (back in X's
        units if units)."""
        device = next(self.model_.parameters()).device
        with forked_rng(device), torch.no_grad():
            torch.manual_seed(self.seed + 1)
            out = fn(self.model_, self._standardised(values).to(device)).double().cpu().numpy()
        return out * self.scale_ + self.mean_ if units else out

    def _build(self, d, latent, hidden):
        """The networks: tanh MLPs of hidden_layers x hidden units, q Gaussian, p as likelihood."""
        binary = self.binary_
        continuous = CONTINUOUS[AUTO_CONTINUOUS if self.likelihood in ("auto", "bernoulli") else self.likelihood]()
        likelihood = Bernoulli() if binary.all() else continuous
        if binary.any() and not binary.all():
            likelihood = Columns([(continuous, np.flatnonzero(~binary).tolist()),
                                  (Bernoulli(), np.flatnonzero(binary).tolist())])
        n_params = getattr(likelihood, "n_params", None) or d * likelihood.params_per_dim
        sizes = [hidden] * self.hidden_layers
        mask_input = self.mechanism != "mar" if self.mask_input == "auto" else bool(self.mask_input)
        encoder = GaussianLayer(mlp([d * (2 if mask_input else 1)] + sizes, 2 * latent))
        kind = MECHANISMS[self.mechanism]
        mechanism = None if kind is None else SelfMasking(d, self.sign) if kind is SelfMasking else LinearMasking(d)
        return Model(encoder, mlp([latent] + sizes, n_params), likelihood, missing=True, mask_input=mask_input,
                     missingness=mechanism)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags


def missingness(imputer):
    """A fitted Imputer's p(s | x) in X's units (None for mechanism="mar"), as a dict:
    self-masking: {"feature", "w", "b"} with logit p(s_j = 1 | x_j) = -w_j (x_j - b_j);
    linear: {"feature", "weight" [D, D], "bias" [D]} with logit p(s = 1 | x) = weight @ x + bias.
    The model's parameters act on standardised x_std = (x - mean_) / scale_; they are mapped back."""
    model = imputer.model_.missingness
    if model is None:
        return None
    mean, scale, names = imputer.mean_, imputer.scale_, imputer._column_names()
    if isinstance(model, SelfMasking):
        w, b = (t.detach().double().cpu().numpy() for t in (model.w, model.b))
        return {"feature": names, "w": w / scale, "b": mean + b * scale}
    weight = model.linear.weight.detach().double().cpu().numpy() / scale[None]
    bias = model.linear.bias.detach().double().cpu().numpy() - weight @ mean
    return {"feature": names, "weight": weight, "bias": bias}


def _as_array(X, imputer, reset):
    """(float64 [N, D] numpy copy of X, kind), with the bad-input checks of docs/missing.md.
    kind: ("numpy", dtype), ("pandas", (index, columns, dtype)) or ("torch", (dtype, device))."""
    kind = ("numpy", None)
    if isinstance(X, torch.Tensor):
        kind = ("torch", (X.dtype, X.device))
        X = X.detach().cpu().numpy()
    elif hasattr(X, "dtypes") and hasattr(X, "columns"):          # a pandas DataFrame
        numeric = [str(c) for c, t in X.dtypes.items() if not (t.kind in "biuf")]
        if numeric:
            raise ValueError(f"non-numeric column(s) {', '.join(numeric)}; encode them as numbers first "
                             "(one-hot or ordinal, e.g. sklearn.preprocessing.OneHotEncoder)")
        kind = ("pandas", (X.index, X.columns, None))
        names = np.asarray([str(c) for c in X.columns], dtype=object)
        if reset:
            imputer.feature_names_in_ = names
        elif getattr(imputer, "feature_names_in_", None) is not None and list(names) != list(imputer.feature_names_in_):
            raise ValueError("X's column names differ from those the Imputer was fitted on")
        X = X.to_numpy(dtype=np.float64, na_value=np.nan)
    elif reset and hasattr(imputer, "feature_names_in_"):
        del imputer.feature_names_in_
    values = _numeric(X)
    if reset and values.shape[0] < 2:
        raise ValueError(f"Found array with {values.shape[0]} sample(s) (shape={values.shape}) while the "
                         "Imputer needs at least 2 rows to fit")
    if kind[0] == "numpy":
        kind = ("numpy", values.dtype if np.asarray(X).dtype.kind == "f" else np.float64)
        values = values.astype(np.float64)
    if np.isinf(values).any():
        raise ValueError("X holds infinite values; mark missing entries as NaN")
    if reset:
        imputer.n_features_in_ = values.shape[1]
    elif values.shape[1] != imputer.n_features_in_:
        raise ValueError(f"X has {values.shape[1]} features, but Imputer is expecting {imputer.n_features_in_} "
                         "features as input")
    return values, kind


def _numeric(X):
    """A float copy of X (float32 stays float32) with scikit-learn's messages, each one line."""
    if sparse.issparse(X):
        raise TypeError("a sparse matrix was passed, but the Imputer needs dense data (NaN = missing); "
                        "use X.toarray()")
    given = np.asarray(X)
    if np.iscomplexobj(given):
        raise ValueError("Complex data not supported")
    try:
        values = np.array(given) if given.dtype.kind == "f" else np.array(given, dtype=np.float64)
    except ValueError:
        raise ValueError("X has non-numeric entries; encode them as numbers first (one-hot or ordinal, "
                         "e.g. sklearn.preprocessing.OneHotEncoder)") from None
    if values.ndim != 2:
        raise ValueError(f"Expected a 2-d array [N, D], got shape {list(values.shape)}; Reshape your data "
                         "with array.reshape(-1, 1) for a single feature or array.reshape(1, -1) for a single sample")
    if values.shape[1] < 1:
        raise ValueError(f"Found array with 0 feature(s) (shape={values.shape}) while a minimum of 1 is required.")
    return values


def _check_columns(values, observed, names):
    empty = ~observed.any(0)
    if empty.any():
        raise ValueError("column(s) with no observed value: " + _names(names, empty) + "; drop them")
    spread = np.nanmax(values, 0) - np.nanmin(values, 0)
    if (spread == 0).any():
        raise ValueError("constant column(s) (one observed value): " + _names(names, spread == 0) + "; drop them")


def _binary_columns(values, observed):
    return ((values == 0) | (values == 1) | ~observed).all(0)


def _names(names, which):
    return ", ".join(n for n, w in zip(names, which) if w)


def _like(values, kind):
    """values (float64 numpy) as the kind of input it came from."""
    what, info = kind
    if what == "torch":
        dtype, device = info
        return torch.as_tensor(values, dtype=dtype if dtype.is_floating_point else torch.float64, device=device)
    if what == "pandas":
        import pandas as pd
        index, columns, _ = info
        return pd.DataFrame(values, index=index, columns=columns)
    return values.astype(info, copy=False)

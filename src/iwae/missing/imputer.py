"""``iwae.Imputer``: a scikit-learn transformer that trains a deep latent variable model on
incomplete data with the IWAE bound over the observed entries and imputes the missing ones
[Mattei & Frellsen 2019] (docs/missing.md).

    imputer = iwae.Imputer()                 # NaN (or pandas' NA) = missing
    filled = imputer.fit_transform(X)        # numpy, pandas DataFrame or torch tensor in and out
    draws = imputer.sample(X, m=20)          # [m, N, D] multiple imputations (m DataFrames)

A DataFrame may mix numeric, bool, categorical and string columns: each column gets its own
likelihood (``iwae.missing.types``) and comes back with its dtype.

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
from torch import nn
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ..core.densities import Bernoulli, Columns, Gaussian, StudentT
from ..core.tabular import Categorical, InflatedGaussian, LogNormal, NegativeBinomial, Ordinal
from ..core.missingness import SIGNS, LinearMasking, SelfMasking
from ..core.model import GaussianLayer, Model
from ..core.nets import mlp
from ..evaluation.imputation import DRAWS, impute, multiple_impute
from ..evaluation.likelihood import log_likelihood
from ..runtime.decisions import decide
from ..runtime.devices import parse_device
from ..runtime.rng import forked_rng
from ..training.fit import train
from ..training.loop import batches_per_epoch
from .encoding import NEEDED, table_input
from .types import CODED, MAX_CATEGORIES, infer, infer_array

LIKELIHOOD_NAMES = ("auto", "gaussian", "student-t", "bernoulli")
CONTINUOUS = {"gaussian": Gaussian, "student-t": StudentT}
MECHANISMS = {"mar": None, "self-masking": SelfMasking, "linear": LinearMasking}
AUTO_CONTINUOUS = "gaussian"   # the continuous likelihood of likelihood="auto" (docs/missing.md)
TARGET_STEPS = 3000            # epochs=None: about this many steps of batch_size rows
MIN_EPOCHS = 20
HIDDEN = 128                   # units per hidden layer: at most the authors' width,
HIDDEN_PER_COLUMN = 8          # ... this many per modelled column,
MIN_HIDDEN = 32                # ... at least this many (docs/missing.md, "A width from the table's")
HOLDOUT = 0.1                  # patience given: the fraction of the observed entries held out to stop on
HELD_ROWS = 1000               # patience given: the most rows whose entries are held out
SCORE_STEPS = 100              # patience given: their imputation error is measured about every this many steps (docs/missing.md)
SCORE_DRAWS = 50               # ... from this many importance samples per row
REFIT = 0.5                    # then, from the best epoch, this fraction of its epochs on every entry
PATIENCE_STEPS = 500           # patience="auto": stop after about this many steps without a lower error
MAX_STEPS = 8000               # ... within at most about this many (results/imputer_budget.md)
MAX_LATENT = 10
ACTIVATIONS = {"tanh": nn.Tanh, "silu": nn.SiLU, "relu": nn.ReLU, "elu": nn.ELU}   # the hidden units' (docs/missing.md)
WIDE = HIDDEN // HIDDEN_PER_COLUMN   # activation="auto": SiLU from this many modelled columns (the full width) on, else tanh
K = 20                         # k=None: the training bound's importance samples (the authors'), ...
WIDE_K = 10                    # ... this many from WIDE modelled columns on (docs/missing.md, "Importance samples")
TABLES = ("pandas", "objects")  # inputs whose columns are typed, coded and decoded as a DataFrame's
FINE_LEVELS = 64               # a real column with this many distinct values and one of them
POINT_MASS = 0.1               # ... holding this share of its observed values has a point mass (an InflatedGaussian;
TIE_FLOOR = 0.5                # ... without one, a Gaussian floored at that share, at most this: docs/missing.md, "Ties")
PILE_UP = 1.5                  # a coarser column's point mass: at an end, this many times the level beside it


def default_sizes(n, d, batch_size=64):
    """(latent, hidden, epochs) for a table of n rows and d columns (docs/missing.md):
    latent = min(ceil(d / 2), 10) (the authors' d/2, capped at their other choice, 10),
    hidden = min(128, max(32, 8 d)) (the authors' 128 from 16 columns on; a narrow table's
    128 x 128 layers cost most of its step for no lower error), epochs = max(20, ceil(3000 /
    steps per epoch))."""
    steps_per_epoch = batches_per_epoch(n, batch_size, drop_last=True)
    hidden = min(HIDDEN, max(MIN_HIDDEN, HIDDEN_PER_COLUMN * d))
    return min(math.ceil(d / 2), MAX_LATENT), hidden, max(MIN_EPOCHS, math.ceil(TARGET_STEPS / steps_per_epoch))


def default_activation(d):
    """activation="auto" for d modelled columns: "silu" from WIDE columns on, where SiLU's
    error was lower on three of the four such tables of the benchmark and level on the
    fourth, else "tanh" (the authors'), lower on the narrower ones (docs/missing.md, "Activation")."""
    return "silu" if d >= WIDE else "tanh"


def default_k(d):
    """k=None for d modelled columns: WIDE_K from WIDE columns on, where the error at WIDE_K
    samples was level with K's on the benchmark's four such tables and each step half the
    arithmetic, else K (docs/missing.md, "Importance samples")."""
    return WIDE_K if d >= WIDE else K


class Imputer(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Missing-value imputation by an importance weighted autoencoder trained on the observed
    entries (NaN = missing).

    likelihood: the real columns' likelihood: "auto" (Gaussian), "gaussian" or "student-t"
        (either also makes numeric 0/1 columns real, unless types says otherwise), or
        "bernoulli" (every column binary).
    types: "auto" (from each column's dtype and observed values: iwae.missing.types) or a dict
        {column: type} overriding some columns (names for a DataFrame, positions for an
        array), type one of "real", "positive", "count", "binary", "categorical", "ordinal"; an
        array's categorical or ordinal column has its observed values as categories (in
        order) and is imputed with one of them.
    k: importance samples of the training bound; None: from the table's width (``default_k``:
        WIDE_K for tables of WIDE modelled columns or more, K below). epochs, latent, hidden:
        None picks them from the data's shape (``default_sizes``). hidden_layers: per network. activation: the hidden
        units', one of ACTIVATIONS, or "auto" (``default_activation``: SiLU for tables of WIDE
        modelled columns or more, tanh below). batch_size, lr: Adam's;
        schedule: the learning rate's over the epochs, "constant" or "cosine" (lr down to 0).
    draws: importance samples L per row for transform, sample and score. estimator: "standard",
        "stl" or "dreg". mask_input: the encoder also reads the mask; "auto": under a missingness
        model (mechanism not "mar"), where s tells about x_m and p(z | x_o, s) is not p(z | x_o),
        so q(z | .) needs s; not under "mar", where it does not. seed: training and
        imputation noise (transform is deterministic for a fitted imputer). device: "auto",
        "cpu", "cuda", "cuda:N". compile: the training step's, "auto" ("step" for fits of enough steps that compiling once repays itself:
        iwae.runtime.decisions, docs/missing.md), "step"
        or "off".
    verbose: the loop's progress bar.
    mechanism: "mar" (missing at random: MIWAE), "self-masking" (each value's missingness
        depends on that value: logit p(observed) = -w_j (x_j - b_j), learned) or "linear"
        (logistic on all of x); the last two are not-MIWAE [Ipsen et al. 2021] and need
        continuous columns. sign: self-masking's w_j sign when known, None, "positive" (high
        values go missing) or "negative".

    patience: "auto" (with epochs=None and mechanism="mar": a budget from the data, P =
        PATIENCE_STEPS steps in epochs, at most MAX_STEPS; otherwise the epochs, no stopping), None (train
        for epochs, or the shape's budget of about 3,000 steps) or P epochs: hold out HOLDOUT of
        the observed entries, measure their imputation error about every SCORE_STEPS steps,
        stop once it has not improved for P epochs (epochs then the most), go back to the best
        epoch's parameters and train REFIT times its epochs more with the held-out entries
        back in (docs/missing.md).
    keep_empty_features: a column with no observed value is dropped from the output (False,
        with scikit-learn's warning) or kept and filled with 0 (True), as SimpleImputer's.

    Degenerate columns (docs/missing.md): a column whose observed values are all equal (one
    observed value included) is, under "mar", kept out of the network (it is the same on
    every row, so it tells nothing about the others) and its missing entries take that value;
    under a missingness model it stays in the network with a Gaussian of fixed scale (its
    missing values may differ from the observed one). A categorical column of more than
    MAX_CATEGORIES distinct labels that types= does not name (an identifier, free text) is kept
    out of the network too, its missing entries the most frequent label (SimpleImputer's
    "most_frequent"). One warning line each. A real column
    recorded finely (FINE_LEVELS or more distinct values) whose most common value holds
    POINT_MASS or more of its observed values (MNIST's zero pixels, a debt of 0) is modelled,
    under "mar" with the Gaussian, by an InflatedGaussian: that value with a learned
    probability, else a Gaussian (docs/missing.md, "Ties"); so is a coarser column whose most
    common value piles up at an end of its range (POINT_MASS of its values, PILE_UP times the
    level beside it: digits' zero grey levels).

    Fitted attributes: ``types_`` ({column name: type}; an array's columns are named "0",
    "1", ...), ``model_`` (an iwae.Model on the standardised modelled columns; None
    when no column is modelled), ``mean_``, ``scale_`` (of the observed values only; 0 and 1
    for Bernoulli columns; a constant column's value and |value| (1 for 0); 0 and 1 for an
    empty column; a most_frequent_ column's label's code and 1), ``binary_`` (Bernoulli
    columns), ``constant_``, ``empty_``, ``most_frequent_`` (the identifier-like columns
    above), ``modeled_`` (the columns the network models), ``n_features_in_`` (and ``feature_names_in_`` for a
    DataFrame), ``activation_`` (the hidden units'), ``k_`` (the training bound's samples), ``epochs_`` (the budget), ``patience_`` (None: no early stopping), ``n_epochs_`` (epochs trained), ``best_epoch_`` (the
    epoch whose parameters the refit started from), ``history_`` (per epoch: train_bound, held_error (with
    patience, where measured: the held-out entries' mean error), seconds),
    ``train_bound_`` (the last epoch's mean bound, standardised scale), ``fit_seconds_``,
    ``point_masses_`` ({column name: its point mass's value} for the InflatedGaussian columns),
    ``missingness_`` (None for "mar"; else the fitted p(s | x) in X's units, ``missingness``).
    """

    def __init__(self, likelihood="auto", k=None, epochs=None, *, types="auto", latent=None, hidden=None,
                 hidden_layers=2, batch_size=64, lr=1e-3, draws=DRAWS, estimator="standard", mask_input="auto",
                 seed=0, device="auto", compile="auto", verbose=False, mechanism="mar", sign=None,
                 keep_empty_features=False, patience="auto", schedule="constant", activation="auto"):
        self.likelihood, self.k, self.epochs, self.types = likelihood, k, epochs, types
        self.latent, self.hidden, self.hidden_layers = latent, hidden, hidden_layers
        self.batch_size, self.lr, self.draws, self.estimator = batch_size, lr, draws, estimator
        self.mask_input, self.seed, self.device, self.compile, self.verbose = mask_input, seed, device, compile, verbose
        self.mechanism, self.sign, self.keep_empty_features = mechanism, sign, keep_empty_features
        self.patience, self.schedule, self.activation = patience, schedule, activation

    def fit(self, X, y=None):
        """Standardise with the observed values' statistics and train on X (NaN = missing)."""
        if self.likelihood not in LIKELIHOOD_NAMES:
            raise ValueError(f"likelihood must be one of {', '.join(LIKELIHOOD_NAMES)}, got {self.likelihood!r}")
        if not (isinstance(self.activation, str) and (self.activation == "auto" or self.activation in ACTIVATIONS)):
            raise ValueError(f"activation must be 'auto' or one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if self.mask_input not in ("auto", True, False):
            raise ValueError(f"mask_input must be 'auto', True or False, got {self.mask_input!r}")
        for name in ("k", "epochs", "latent", "hidden", "patience"):
            value = getattr(self, name)
            if name == "patience" and value == "auto":
                continue
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                what = "no early stopping" if name == "patience" else "from the data's shape"
                auto = "'auto', " if name == "patience" else ""
                raise ValueError(f"{name} must be {auto}None ({what}) or an integer >= 1, got {value!r}")
        values, _, _ = _as_array(X, self, reset=True)
        observed = ~np.isnan(values)
        self._check_mechanism(observed)
        self._columns(values, observed)
        discrete = self.modeled_ & ~self.constant_ & ~np.isin(self._types(), ("real", "positive"))
        if self.mechanism != "mar" and discrete.any():
            raise ValueError(f"mechanism={self.mechanism!r} draws the missing values by reparameterisation, which "
                             "binary, categorical, ordinal or count column(s) cannot give: "
                             + _names(self._column_names(), discrete) + "; use mechanism='mar', or "
                             "types={column: 'real'} (likelihood='gaussian' for 0/1 columns) to treat them as continuous")
        n, d = values.shape
        modelled = int(self.modeled_.sum())
        latent, hidden, epochs = default_sizes(n, modelled, self.batch_size)
        self.activation_ = default_activation(modelled) if self.activation == "auto" else self.activation
        self.k_ = default_k(modelled) if self.k is None else self.k
        self.epochs_, self.patience_ = self._stopping(n, epochs)
        began = time.perf_counter()
        self.model_, self.train_bound_, self.n_epochs_, self.best_epoch_, self.history_ = None, float("nan"), 0, 0, []
        self.point_masses_, self._points = {}, np.full(int(self.modeled_.sum()), np.nan)
        if self.modeled_.any():
            device = parse_device(self.device)
            train_x, budget = self._budget(self._standardised(values))
            with forked_rng(device):
                torch.manual_seed(self.seed)
                levels = _levels(train_x.numpy())
                self._points = self._inflated(levels)
                model = self._build(train_x, self.latent or latent, self.hidden or hidden, levels)
                trained = train(model, train_x, k=self.k_, estimator=self.estimator, batch_size=self.batch_size,
                                lr=self.lr, schedule=self.schedule, seed=self.seed, device=str(device),
                                compile=self._compile(n), quiet=not self.verbose, drop_last=True,
                                diagnostics=False, **budget)
            self.train_bound_ = trained.train_bound
            self.model_ = model.eval()
            self.n_epochs_, self.best_epoch_ = len(trained.history), trained.best_epoch or len(trained.history)
            self.history_ = [{"epoch": r["epoch"], "train_bound": r["train_bound"],
                              "held_error": -r["held_score"] if "held_score" in r else None,
                              "seconds": r["seconds"]} for r in trained.history]
        self.fit_seconds_ = time.perf_counter() - began
        self.missingness_ = missingness(self)
        self.point_masses_ = self._point_values(values)
        return self

    def _columns(self, values, observed):
        """The fitted column attributes (empty_, constant_, most_frequent_, binary_, modeled_,
        mean_, scale_), with the constant and identifier-like columns' warnings."""
        names = self._column_names()
        types = self._chosen_types(names, values, observed)
        self.types_ = dict(zip(names, types.tolist()))
        self.empty_ = ~observed.any(0)
        filled = np.where(observed, values, 0.0)
        high = np.where(observed, values, -np.inf).max(0)
        low = np.where(observed, values, np.inf).min(0)
        self.constant_ = ~self.empty_ & (high == low)
        self.most_frequent_ = np.array([not c.modelled for c in self.columns_]) & ~self.empty_ & ~self.constant_
        self.binary_ = (types == "binary") & ~self.empty_ & ~self.constant_
        self.modeled_ = ~self.empty_ & ~(self.constant_ & (self.mechanism == "mar")) & ~self.most_frequent_
        count = np.maximum(observed.sum(0), 1)
        mean = filled.sum(0) / count
        std = np.sqrt((np.where(observed, values - mean, 0.0) ** 2).sum(0) / count)
        value = np.where(self.constant_, high, 0.0)
        centred = (types == "real") & ~self.empty_
        scaled = centred | ((types == "positive") & ~self.empty_)
        self.mean_ = np.where(self.constant_, value, np.where(centred, mean, 0.0))
        self.mean_[self.most_frequent_] = [_mode(values[:, j]) for j in np.flatnonzero(self.most_frequent_)]
        self.scale_ = np.where(self.constant_, np.where(value == 0, 1.0, np.abs(value)), np.where(scaled, std, 1.0))
        if self.constant_.any():
            what = ("their missing entries take that value (mechanism='mar')" if self.mechanism == "mar" else
                    f"modelled with a fixed scale of |value| (1 for 0), their missing values free to differ "
                    f"(mechanism={self.mechanism!r})")
            warnings.warn(f"column(s) with a single observed value: {_names(names, self.constant_)}; {what}",
                          UserWarning, stacklevel=3)
        if self.most_frequent_.any():
            warnings.warn(f"column(s) with more than {MAX_CATEGORIES} distinct labels (identifiers or free text?): "
                          f"{_names(names, self.most_frequent_)}; kept out of the model, their missing entries take "
                          "the most frequent label (types={column: 'categorical'} models one)", UserWarning, stacklevel=3)

    def _chosen_types(self, names, values, observed):
        """Each column's type (str array [D]): columns_' (types= or inferred), with
        likelihood="gaussian"/"student-t" making inferred numeric 0/1 columns real."""
        given = {str(c) for c in self.types} if isinstance(self.types, dict) else set()
        types = np.array([c.type for c in self.columns_], dtype=object)
        if self.likelihood in CONTINUOUS:
            numeric_binary = np.array([c.type == "binary" and not c.categories and c.name not in given
                                       for c in self.columns_], dtype=bool)
            types[numeric_binary] = "real"
        if self.likelihood == "bernoulli":
            binary = _binary_columns(values, observed)
            if not binary.all():
                raise ValueError("likelihood='bernoulli' needs 0/1 data; non-binary columns: " + _names(names, ~binary))
            types[:] = "binary"
        return types.astype(str)

    def _types(self):
        return np.array(list(self.types_.values()))

    def _stopping(self, n, epochs):
        """(epochs_, patience_): patience="auto" with epochs=None under "mar" stops on the data
        (at most MAX_STEPS steps, patience PATIENCE_STEPS steps, in epochs of n rows); with
        epochs given, or under a missingness model (whose p(s | x) would learn the hold-out's
        random holes as missingness), it trains the epochs (None); an integer patience stops
        within epochs (or the shape's budget)."""
        if self.patience == "auto" and self.epochs is None and self.mechanism == "mar":
            per_epoch = self._per_epoch(n)
            return max(MIN_EPOCHS, math.ceil(MAX_STEPS / per_epoch)), math.ceil(PATIENCE_STEPS / per_epoch)
        return (self.epochs if self.epochs is not None else epochs), (None if self.patience == "auto" else self.patience)

    def _budget(self, x):
        """(the training table, the loop's budget settings) for the standardised table x: with
        patience_ None, all of x for epochs_ epochs; with patience_ P, x less a random HOLDOUT
        of the observed entries of at most HELD_ROWS rows, for at most epochs_ epochs, stopping
        once their imputation error has not improved for P epochs, then REFIT more on all of x
        from the best epoch's parameters (iwae.training.loop)."""
        if self.patience_ is None:
            return x, {"epochs": self.epochs_}
        rng = np.random.default_rng(self.seed)
        rows = torch.as_tensor(rng.permutation(x.shape[0])[:HELD_ROWS])
        held = torch.zeros(x.shape, dtype=torch.bool)
        held[rows] = torch.as_tensor(rng.random((len(rows), x.shape[1])) < HOLDOUT) & ~torch.isnan(x[rows])
        train_x = x.masked_fill(held, float("nan"))
        every = max(1, math.ceil(SCORE_STEPS / self._per_epoch(x.shape[0])))
        return train_x, {"epochs": self.epochs_, "patience": self.patience_, "eval_data": x[rows],
                         "eval_given": train_x[rows], "eval_examples": len(rows),
                         "held_score": self._held_score(x[rows], train_x[rows], every),
                         "refit_data": x, "refit": REFIT}

    def _held_score(self, truth, given, every):
        """held_score for the loop: every `every` epochs, minus the held-out entries' error when
        imputed from the rest of their rows (SCORE_DRAWS draws, seeded): squared in standardised
        units (over the column's observed standard deviation: truth is standardised) for
        continuous columns; 0/1 for binary, categorical and ordinal ones (docs/missing.md: the
        held-out bound peaks long before it)."""
        out = torch.isnan(given) & ~torch.isnan(truth)                     # [n, d] the held-out entries
        kinds = self._kinds()
        discrete = torch.as_tensor(np.isin(kinds, ("binary", "categorical", "ordinal")))

        def score(model, epoch):
            if epoch % every:
                return None
            device = next(model.parameters()).device
            with forked_rng(device), torch.no_grad():
                torch.manual_seed(self.seed + 2)
                model.eval()
                filled = impute(model, given.to(device), draws=SCORE_DRAWS).cpu()
                model.train()
            error = torch.where(discrete, (filled != truth).to(given.dtype), (filled - truth) ** 2)
            return -error[out].mean().item()
        return score

    def _per_epoch(self, n):
        """Steps in an epoch of n rows: each is a full batch (the fit's drop_last=True)."""
        return batches_per_epoch(n, self.batch_size, drop_last=True)

    def _compile(self, n):
        """The training step's compile for a fit on n rows: "auto" decides by its most steps."""
        steps = self.epochs_ * self._per_epoch(n)
        return decide(self.compile, "table step", steps, parse_device(self.device))

    def _check_mechanism(self, observed):
        if self.mechanism not in MECHANISMS:
            raise ValueError(f"mechanism must be one of {', '.join(MECHANISMS)}, got {self.mechanism!r}")
        if self.sign not in SIGNS:
            raise ValueError(f"sign must be None, 'positive' or 'negative', got {self.sign!r}")
        if self.mechanism != "mar" and observed.all():
            warnings.warn(f"mechanism={self.mechanism!r} on data with nothing missing: p(s | x) is fitted to an "
                          "all-observed mask and tells nothing about the mechanism", UserWarning, stacklevel=3)

    def transform(self, X):
        """X with every missing entry replaced by E[x_m | x_o] (self-normalised importance
        sampling, ``draws`` samples); observed entries bit for bit; the same kind as X. A
        constant column's missing entries under "mar" take its value; an empty column is
        dropped (or, keep_empty_features=True, its missing entries are 0). A value the model
        cannot read (a category fit never saw, a Bernoulli column's value other than 0 or 1) is
        read as missing and comes back as it is, with one warning line."""
        return self.transform_and_score(X)[0]

    def sample(self, X, m=5):
        """m multiple imputations of X by sampling importance resampling (categories drawn, not
        averaged): [m, N, D] (numpy, or a torch tensor for a tensor X), or for a DataFrame a
        list of m DataFrames like X (for an object array, [m, N, D] objects)."""
        values, kind, given = self._checked(X)
        draws = self._filled(values, lambda model, x: multiple_impute(model, x, m, draws=self.draws), m)
        out = np.where(np.isnan(values)[None], draws, values[None])
        if kind[0] in TABLES:
            draws = [self._kept(one, kind, given) for one in out]
            return draws if kind[0] == "pandas" else np.stack(draws)
        return self._kept(out, kind, given)

    def score(self, X, y=None):
        """The mean over rows of the IWAE bound L_draws of log p(x_o) (nats, in X's units) over
        the modelled columns (0 when none is); with a mechanism other than "mar", of
        log p(x_o, s) (the missingness model's term included)."""
        values, _, _ = self._checked(X)
        if self.model_ is None:
            return 0.0
        bound = self._run(lambda m, x: log_likelihood(m, x, self.draws, compile="off"), values, units=False)
        return self._mean_bound(values, bound)

    def transform_and_score(self, X):
        """(transform(X), a score(X)) from one pass over X: the score from the imputation's
        own draws' log weights (the same estimator as score's, L_draws, on other draws), in
        about half the time of the two calls (what ``iwae impute`` prints)."""
        values, kind, given = self._checked(X)
        bounds = []

        def fill(model, x):
            filled, bound = impute(model, x, draws=self.draws, bound=True)
            bounds.append(bound)
            return filled
        filled = self._filled(values, fill)
        score = self._mean_bound(values, bounds[0].cpu().numpy()) if bounds else 0.0
        return self._kept(np.where(np.isnan(values), filled, values), kind, given), score

    def _mean_bound(self, values, bound):
        """The mean over rows of bound [N] (nats, the standardised modelled columns') in X's units."""
        modeled = self.modeled_
        observed = ~np.isnan(values[:, modeled])
        jacobian = (np.log(self.scale_[modeled])[None] * observed).sum(1)      # scale_ is 1 where unscaled
        return float((bound - jacobian).mean())

    def get_feature_names_out(self, input_features=None):
        """The output's column names: X's, less the empty columns unless keep_empty_features."""
        names = super().get_feature_names_out(input_features)
        return names if self.keep_empty_features else names[~self.empty_]

    def _filled(self, values, fn, m=None):
        """Every column's fill for values [N, D] ([m, N, D] when m is given): the network's fn
        on the modelled columns, mean_ on the others (a constant column's value, an empty one's 0)."""
        shape = values.shape if m is None else (m, *values.shape)
        out = np.broadcast_to(self.mean_, shape).copy()
        if self.model_ is not None:
            out[..., self.modeled_] = self._run(fn, values)
        return out

    def _kept(self, values, kind, given):
        """values [..., D] less the empty columns (with scikit-learn's warning) unless
        keep_empty_features, as the kind of input they came from; an array's observed cells
        (given [N, D], X's floats) as X had them, a DataFrame's as decode keeps them."""
        kept = np.ones_like(self.empty_)
        if self.empty_.any() and not self.keep_empty_features:
            empty = np.flatnonzero(self.empty_)
            if getattr(self, "feature_names_in_", None) is not None:
                empty = self.feature_names_in_[empty]
            warnings.warn(f"Skipping features without any observed values: {empty}. At least one non-missing "
                          "value is needed for imputation with iwae.Imputer.", UserWarning, stacklevel=3)
            kept = ~self.empty_
        if kind[0] in TABLES:
            decoded = _decoded(kind[1], values, self.columns_, kept)
            return decoded if kind[0] == "pandas" else decoded.to_numpy(dtype=object)
        for j in _labelled(self.columns_):          # codes back to the values they stand for (values is ours)
            values[..., j] = np.reshape(self.columns_[j].labels(values[..., j].ravel()), values.shape[:-1])
        values = np.where(np.isnan(given), values, given)
        return _like(values[..., kept], kind)

    def _column_names(self):
        names = getattr(self, "feature_names_in_", None)
        return list(names) if names is not None else [str(j) for j in range(self.n_features_in_)]

    def _checked(self, X):
        """_as_array(X) for transform, sample and score, with a Bernoulli column's values other
        than 0 and 1 read as missing (one warning line)."""
        check_is_fitted(self, "modeled_")
        values, kind, given = _as_array(X, self, reset=False)
        bad = self.binary_[None] & ~(np.isnan(values) | (values == 0) | (values == 1))
        if bad.any():
            warnings.warn("values other than 0 and 1 in Bernoulli column(s) " + _names(self._column_names(), bad.any(0))
                          + "; the model reads those cells as missing and they come back as they are", UserWarning,
                          stacklevel=3)
            values[bad] = np.nan
        return values, kind, given

    def _standardised(self, values):
        """The modelled columns of values, standardised, as a float32 tensor (NaN = missing)."""
        m = self.modeled_
        return torch.as_tensor((values[:, m] - self.mean_[m]) / self.scale_[m], dtype=torch.float32)

    def _run(self, fn, values, units=True):
        """fn(model, standardised NaN-coded tensor of the modelled columns), seeded by
        self.seed, as numpy (back in X's units if units)."""
        device = next(self.model_.parameters()).device
        with forked_rng(device), torch.no_grad():
            torch.manual_seed(self.seed + 1)
            out = fn(self.model_, self._standardised(values).to(device)).double().cpu().numpy()
        m = self.modeled_
        if not units:
            return out
        point = np.array([self.point_masses_.get(n, np.nan) for n in self._column_names()])[m]
        return np.where(out == self._points, point, out * self.scale_[m] + self.mean_[m])   # a point mass exactly

    def _build(self, x, latent, hidden, levels):
        """The networks over the modelled columns of x [N, d] (standardised, NaN = missing;
        levels: its _levels): MLPs of hidden_layers x hidden units of the activation, q Gaussian, p each
        column's likelihood (a constant column's a Gaussian of scale 1 in its standardised
        units: a learned one would shrink to 0 on its one value; a point mass's column's an
        InflatedGaussian at self._points). The encoder reads x (and the mask where
        mask_input says) or, for a table with categorical, ordinal, count or positive
        columns, their features (iwae.missing.encoding) built from [x, mask]."""
        d = x.shape[1]
        kinds = self._kinds()
        categories = [len(c.categories) for c, m in zip(self.columns_, self.modeled_) if m]
        floors = _floors([_without(level, point) for level, point in zip(levels, self._points)])
        likelihood = _likelihood(kinds, categories, self.likelihood, floors, self._points)
        n_params = getattr(likelihood, "n_params", None) or d * likelihood.params_per_dim
        sizes, act = [hidden] * self.hidden_layers, ACTIVATIONS[self.activation_]
        mask_input = self.mechanism != "mar" if self.mask_input == "auto" else bool(self.mask_input)
        if np.isin(kinds, NEEDED).any():
            features = table_input(kinds.tolist(), categories, x.numpy().astype(np.float64), mask_input)
            encoder = GaussianLayer(nn.Sequential(features, mlp([features.width] + sizes, 2 * latent, act)))
            mask_input = True                  # the features need the mask; they pass it on if asked
        else:
            encoder = GaussianLayer(mlp([d * (2 if mask_input else 1)] + sizes, 2 * latent, act))
        kind = MECHANISMS[self.mechanism]
        mechanism = None if kind is None else SelfMasking(d, self.sign) if kind is SelfMasking else LinearMasking(d)
        return Model(encoder, mlp([latent] + sizes, n_params, act), likelihood, missing=True, mask_input=mask_input,
                     missingness=mechanism)

    def _kinds(self):
        """The modelled columns' types, "constant" for a constant one (str array [d])."""
        return np.where(self.constant_, "constant", self._types())[self.modeled_]

    def _inflated(self, levels):
        """Per modelled column (levels: _levels of the standardised table), where an
        InflatedGaussian puts its point mass: a real column's _points under "mar" with the
        Gaussian, else NaN."""
        if self.mechanism != "mar" or _continuous(self.likelihood) is not Gaussian:
            return np.full(len(levels), np.nan)
        return np.where(self._kinds() == "real", _points(levels), np.nan)

    def _point_values(self, values):
        """{column name: value} of the modelled columns with a point mass: the observed value of
        values (X's, float64) nearest to the point in X's units (the value itself, not its
        round trip through float32)."""
        m = self.modeled_
        names = [n for n, kept in zip(self._column_names(), m) if kept]
        near = self.mean_[m] + self._points * self.scale_[m]                # [d], NaN where no point mass
        columns, found = values[:, m], {}
        for j in np.flatnonzero(np.isfinite(near)):
            observed = columns[~np.isnan(columns[:, j]), j]
            found[names[j]] = float(observed[np.abs(observed - near[j]).argmin()])
        return found

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags


def missingness(imputer):
    """A fitted Imputer's p(s | x) in X's units (None for mechanism="mar"), as a dict:
    self-masking: {"feature", "w", "b"} with logit p(s_j = 1 | x_j) = -w_j (x_j - b_j);
    linear: {"feature", "weight" [D, D], "bias" [D]} with logit p(s = 1 | x) = weight @ x + bias.
    The model's parameters act on standardised x_std = (x - mean_) / scale_; they are mapped back."""
    model = None if imputer.model_ is None else imputer.model_.missingness
    if model is None:
        return None
    kept = imputer.modeled_
    mean, scale = imputer.mean_[kept], imputer.scale_[kept]
    names = [n for n, k in zip(imputer._column_names(), kept) if k]
    if isinstance(model, SelfMasking):
        w, b = (t.detach().double().cpu().numpy() for t in (model.w, model.b))
        return {"feature": names, "w": w / scale, "b": mean + b * scale}
    weight = model.linear.weight.detach().double().cpu().numpy() / scale[None]
    bias = model.linear.bias.detach().double().cpu().numpy() - weight @ mean
    return {"feature": names, "weight": weight, "bias": bias}


def _as_array(X, imputer, reset):
    """(float64 [N, D] numpy copy of X, kind, X's floats as given), with the bad-input checks of
    docs/missing.md; a DataFrame's columns coded by their types (columns_, inferred when reset),
    an array's categorical and ordinal columns too (a value fit never saw: NaN, read as
    missing; X's floats as given (None for a DataFrame) keep it for the output). kind:
    ("numpy", dtype), ("pandas", the DataFrame), ("objects", an object array [N, D] as a
    DataFrame with columns "0", "1", ...: strings without names, as SimpleImputer takes them) or
    ("torch", (dtype, device))."""
    kind = ("numpy", None)
    objects = _objects(X)
    if objects is not None:                                  # strings in an array: a table
        import pandas as pd
        kind = ("objects", pd.DataFrame(objects, columns=[str(j) for j in range(objects.shape[1])]))
        X = kind[1]
    if isinstance(X, torch.Tensor):
        kind = ("torch", (X.dtype, X.device))
        X = X.detach().cpu().numpy()
    elif hasattr(X, "dtypes") and hasattr(X, "columns"):          # a pandas DataFrame
        kind = kind if kind[0] == "objects" else ("pandas", X)
        names = np.asarray([str(c) for c in X.columns], dtype=object)
        if reset:
            if kind[0] == "pandas":
                imputer.feature_names_in_ = names
            elif hasattr(imputer, "feature_names_in_"):
                del imputer.feature_names_in_
            imputer.columns_ = infer(X, _named(imputer.types) if kind[0] == "objects" else imputer.types)
        elif getattr(imputer, "feature_names_in_", None) is not None and list(names) != list(imputer.feature_names_in_):
            raise ValueError("X's column names differ from those the Imputer was fitted on")
        elif X.shape[1] != imputer.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but Imputer is expecting {imputer.n_features_in_} "
                             "features as input")
        X = np.stack([c.encode(X.iloc[:, j]) for j, c in enumerate(imputer.columns_)], 1) if X.shape[1] \
            else np.empty((len(X), 0))
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
        if kind[0] not in TABLES:
            imputer.columns_ = infer_array(values, imputer.types)
    elif values.shape[1] != imputer.n_features_in_:
        raise ValueError(f"X has {values.shape[1]} features, but Imputer is expecting {imputer.n_features_in_} "
                         "features as input")
    given = None if kind[0] in TABLES else values.copy()
    if kind[0] not in TABLES:           # an array's categorical and ordinal columns (types=): codes
        for j in _labelled(imputer.columns_):
            values[:, j] = imputer.columns_[j].encode(values[:, j])
    return values, kind, given


def _objects(X):
    """X as a 2-d object array where it holds a string (a numpy array of objects or of str, or
    a list: its cells as they are, None and NaN missing), else None: numbers alone stay an
    array of floats."""
    if isinstance(X, (list, tuple)):                 # a list of numbers is read as numpy reads it
        X = np.array(X, dtype=object) if np.asarray(X).dtype.kind in "OU" else None
    if not isinstance(X, np.ndarray) or X.ndim != 2 or X.dtype.kind not in "OU":
        return None
    cells = X.astype(object)
    return cells if any(isinstance(v, str) for v in cells.flat) else None


def _named(types):
    """types for an object array's table, whose columns are named by position: {"0": ...}."""
    return {str(c): t for c, t in types.items()} if isinstance(types, dict) else types


def _labelled(columns):
    """The positions of an array's columns that are coded by their sorted observed values."""
    return [j for j, c in enumerate(columns) if c.type in CODED[1:]]


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
        raise ValueError("X has non-numeric entries; pass a pandas DataFrame, whose string and categorical "
                         "columns the Imputer models itself (docs/missing.md)") from None
    if values.ndim != 2:
        raise ValueError(f"Expected a 2-d array [N, D], got shape {list(values.shape)}; Reshape your data "
                         "with array.reshape(-1, 1) for a single feature or array.reshape(1, -1) for a single sample")
    if values.shape[1] < 1:
        raise ValueError(f"Found array with 0 feature(s) (shape={values.shape}) while a minimum of 1 is required.")
    return values


def _levels(x):
    """Per column of x [N, d] (NaN = missing): (its distinct observed values, sorted; their counts)."""
    return [np.unique(column[~np.isnan(column)], return_counts=True) for column in x.T]


def _resolution(levels):
    """Per column of _levels: the smallest gap between two of its distinct observed values (0
    where it has fewer than two): the resolution it was recorded at, in x's units (integers
    standardised by s: 1 / s)."""
    return np.array([np.diff(values).min() if len(values) > 1 else 0.0 for values, _ in levels])


def _point_masses(levels):
    """Per column of _levels with at least FINE_LEVELS distinct values, the share of its observed
    values that equal its most common one where that is POINT_MASS or more (else 0)."""
    shares = np.array([counts.max() / counts.sum() if len(values) >= FINE_LEVELS else 0.0 for values, counts in levels])
    return np.where(shares >= POINT_MASS, shares, 0.0)


def _piled(levels):
    """Per column of _levels, whether its most common value holds POINT_MASS or more of its
    observed values at an end of its range, PILE_UP times as many as the level beside it (a
    grey level's zeros, a saturated sensor): a mass a Gaussian cannot put at its boundary."""
    def piled(values, counts):
        top = counts.argmax()
        if len(values) < 3 or top not in (0, len(values) - 1):
            return False
        return counts[top] >= POINT_MASS * counts.sum() and counts[top] >= PILE_UP * counts[1 if top == 0 else -2]
    return np.array([piled(values, counts) for values, counts in levels], dtype=bool)


def _points(levels):
    """Per column of _levels, its most common observed value where _point_masses has a point
    mass or _piled finds one, else NaN: where an InflatedGaussian puts it (docs/missing.md, "Ties")."""
    modes = np.array([values[counts.argmax()] if len(values) else np.nan for values, counts in levels])
    return np.where((_point_masses(levels) > 0) | _piled(levels), modes, np.nan)


def _floors(levels):
    """Per column of _levels (of x standardised), the least scale of its learned Gaussian:
    resolution / sqrt(2 pi), where its density at a tie reaches 1 / resolution; on a column
    with a point mass (MNIST's zero pixels, recorded to 1/255 of their range) at least the
    point mass's share, at most TIE_FLOOR; and at most 1 (the column's standard deviation): a
    wider floor leaves its mean unpinned (docs/missing.md, "Ties")."""
    resolution = _resolution(levels) / math.sqrt(2 * math.pi)
    return np.minimum(np.maximum(resolution, np.minimum(_point_masses(levels), TIE_FLOOR)), 1.0)


def _without(level, point):
    """A column's _levels without the value point (NaN: as it is): what an InflatedGaussian's
    Gaussian part sees, whose own ties (MNIST's saturated 253s beside the zeros) need their floor."""
    values, counts = level
    keep = values != point
    return (values[keep], counts[keep]) if np.isfinite(point) else level


def _continuous(setting):
    """The real columns' likelihood class for the Imputer's likelihood setting."""
    return CONTINUOUS[AUTO_CONTINUOUS if setting in ("auto", "bernoulli") else setting]


def _likelihood(kinds, categories, continuous, floors, points):
    """p(x | z) for the modelled columns' kinds (and categories, C per column): one part per
    likelihood (per C for categorical and ordinal columns), in a Columns when more than one;
    continuous: the Imputer's likelihood setting, for the real columns; floors [d]: the least
    scale of a learned Gaussian's columns; points [d]: a real column's point mass (an
    InflatedGaussian's), NaN where none (docs/missing.md, "Ties")."""
    real = _continuous(continuous)
    make = {"real": lambda c: real(), "inflated": None, "binary": lambda c: Bernoulli(),
            "constant": lambda c: Gaussian(1.0), "categorical": Categorical, "ordinal": Ordinal,
            "count": lambda c: NegativeBinomial(), "positive": lambda c: LogNormal()}
    kinds = np.where(np.isfinite(points), "inflated", kinds)
    groups = {}
    for j, kind in enumerate(kinds):
        groups.setdefault((kind, categories[j] if kind in ("categorical", "ordinal") else 0), []).append(j)
    def part(kind, c, cols):                 # make's order is the parts' order; these two take floors
        if kind == "inflated":
            return InflatedGaussian(points[cols].tolist(), min_scale=floors[cols].tolist())
        if kind == "real" and real is Gaussian:
            return Gaussian(min_scale=floors[cols].tolist())
        return make[kind](c)
    parts = [(part(kind, c, groups[kind, c]), groups[kind, c])
             for kind, c in sorted(groups, key=lambda g: (list(make).index(g[0]), g[1]))]
    return parts[0][0] if len(parts) == 1 else Columns(parts)


def _decoded(frame, values, columns, kept):
    """frame's kept columns with their missing cells from values [N, D] (codes), each column
    its own dtype (iwae.missing.types.Column.decode); frame itself untouched."""
    import pandas as pd
    return pd.concat([columns[j].decode(values[:, j], frame.iloc[:, j]) for j in np.flatnonzero(kept)], axis=1)


def _mode(codes):
    """The most frequent of a column's observed codes (float64, NaN = missing), the least code
    on a tie: SimpleImputer(strategy="most_frequent")'s least label where the labels are
    sorted (strings; a category dtype's codes follow its own order)."""
    return float(np.bincount(codes[~np.isnan(codes)].astype(np.int64)).argmax())


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
    return values.astype(info, copy=False)

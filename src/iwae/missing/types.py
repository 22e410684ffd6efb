"""Column types of an incomplete table: which likelihood models each column, how its cells
become numbers for the network and how the numbers become cells again (docs/missing.md,
"Mixed tables").

Types, their likelihoods (iwae.core.densities, iwae.core.tabular) and their codes:

- "real": Gaussian (or the Imputer's continuous likelihood) on the value standardised with
  the observed values' mean and standard deviation;
- "binary": Bernoulli on 0/1 (a bool column: False/True);
- "categorical": a softmax over the column's C categories, coded 0..C-1 (the labels sorted,
  or a pandas category dtype's own categories in their order);
- "ordinal": cumulative logits over the C ordered categories of an ordered pandas category;
- "count": a negative binomial on the non-negative integers as they are;
- "positive": a log-normal on the value divided by its observed standard deviation.

``types="auto"`` decides from the pandas dtype and the observed values (``infer``):
datetime and timedelta columns are refused; bool -> binary; an ordered category -> ordinal,
another category -> categorical; object and string columns -> categorical (strings and
numbers mixed included: each value a label, with a warning); a categorical column of more
than MAX_CATEGORIES distinct labels (an identifier, free text) is kept out of the model and
filled with its most frequent label (``Column.modelled``), unless types names it; numbers
whose observed values are all 0 or 1 -> binary; integer columns (numpy or nullable Int64)
whose observed values are non-negative, include 0 and take fewer than MAX_CATEGORIES distinct
values -> count; integer columns of positive values with fewer than FEW_LEVELS distinct
values (a year of a survey, a grade 1..5) -> ordinal over those values (a Gaussian on a few
levels collapses onto them); any other number -> real. A dict {column: type} overrides any column.
"""
import warnings
from dataclasses import dataclass, field

import numpy as np

TYPES = ("real", "positive", "count", "binary", "categorical", "ordinal")
CODED = ("binary", "categorical", "ordinal")   # cells coded by position in ``categories``
MAX_CATEGORIES = 50            # distinct labels of a modelled "auto" categorical column; more: an identifier
FEW_LEVELS = 10                # an integer column with fewer distinct values and no 0: ordinal levels


@dataclass
class Column:
    """One column of the table: its name, type, labels (coded types), and what it came as."""
    name: str
    type: str
    categories: list = field(default_factory=list)     # label of code 0, 1, ... (coded types)
    dtype: object = None                               # the pandas dtype (None for arrays)
    modelled: bool = True                              # False: filled with its most frequent label

    def encode(self, cells):
        """cells (a pandas Series or a numpy column) -> float64 codes, NaN where missing. A
        label fit never saw is NaN too: the model reads it as missing, and the Imputer gives
        the observed cells back as they were (warned, unless the column is not modelled, where
        new labels are expected)."""
        missing = _missing(cells)
        if self.type not in CODED or (self.type == "binary" and not self.categories):
            values = np.full(len(missing), np.nan)
            values[~missing] = np.asarray(_present(cells, missing), dtype=np.float64)
            return values
        lookup = {label: code for code, label in enumerate(self.categories)}
        present = _present(cells, missing)
        new = sorted({str(v) for v in present if v not in lookup})
        listed = f"{', '.join(new[:5])}{' ...' if len(new) > 5 else ''}"
        if new and self.modelled:
            warnings.warn(f"column {self.name!r} holds categories not seen in fit: {listed}; the model reads "
                          "those cells as missing and they come back as they are", UserWarning, stacklevel=5)
        codes = np.full(len(missing), np.nan)
        codes[~missing] = [lookup.get(v, np.nan) for v in present]
        return codes

    def labels(self, codes):
        """The labels at codes (floats, rounded to the nearest category): a list."""
        return [self.categories[int(c)] for c in np.clip(np.rint(codes), 0, len(self.categories) - 1)]

    def decode(self, codes, cells):
        """The column cells (a pandas Series) with its missing cells set from codes (float64 [N]):
        the same dtype, observed cells untouched; a coded column's label at the code, a numeric
        0/1 column's mode (not the probability an array gets), an integer column's nearest
        integer."""
        missing = _missing(cells)
        out = cells.copy()
        if not missing.any():
            return out
        fill = codes[missing]
        if self.type in CODED and self.categories:
            fill = self.labels(fill)
        else:                                    # a 0/1 column of a table is two categories: its mode
            fill = _cast(np.rint(fill) if self.type == "binary" else fill, cells.dtype)
        out[missing] = fill
        return out


def infer(frame, types):
    """[Column] for a DataFrame (types "auto" or {name: type}); see the module docstring."""
    import pandas as pd
    chosen = _chosen(types, [str(c) for c in frame.columns])
    columns = []
    for name, cells in zip(frame.columns, (frame.iloc[:, j] for j in range(frame.shape[1]))):
        name, dtype = str(name), cells.dtype
        if pd.api.types.is_datetime64_any_dtype(dtype) or pd.api.types.is_timedelta64_dtype(dtype):
            raise ValueError(f"column {name!r} holds dates or times ({dtype}); convert it to numbers "
                             "(e.g. days since a date) or drop it")
        kind = chosen.get(name) or _auto(name, cells)
        labels = _labels(cells, kind)
        many = name not in chosen and kind == "categorical" and len(set(_present(cells, _missing(cells)))) > MAX_CATEGORIES
        columns.append(_checked(Column(name, kind, labels, dtype, modelled=not many), cells))
    return columns


def infer_array(values, types):
    """[Column] for a float array [N, D] (NaN = missing): binary where every observed value is
    0 or 1, real otherwise, unless types ({position: type}) says."""
    chosen = _chosen(types, list(range(values.shape[1])))
    columns = []
    for j in range(values.shape[1]):
        cells = values[:, j]
        kind = chosen.get(j) or ("binary" if _zero_one(cells) else "real")
        labels = sorted(set(cells[~np.isnan(cells)].tolist())) if kind in ("categorical", "ordinal") else []
        columns.append(_checked(Column(str(j), kind, labels), cells))
    return columns


def _chosen(types, names):
    if isinstance(types, str) and types == "auto":
        return {}
    if not isinstance(types, dict):
        raise ValueError(f"types must be 'auto' or a dict {{column: type}}, got {types!r}")
    unknown = [str(c) for c in types if c not in names and str(c) not in map(str, names)]
    if unknown:
        raise ValueError(f"types names column(s) not in X: {', '.join(unknown)}")
    bad = {str(c): t for c, t in types.items() if t not in TYPES}
    if bad:
        raise ValueError(f"types must be among {', '.join(TYPES)}; got " + ", ".join(f"{c}={t!r}" for c, t in bad.items()))
    return {n: types.get(n, types.get(str(n))) for n in names if n in types or str(n) in types}


def _auto(name, cells):
    import pandas as pd
    dtype = cells.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return "binary"
    if isinstance(dtype, pd.CategoricalDtype):
        return "ordinal" if dtype.ordered else "categorical"
    present = _present(cells, _missing(cells))
    if not pd.api.types.is_numeric_dtype(dtype):
        other = next((v for v in present if not isinstance(v, (str, int, float))), None)
        if other is not None:                     # a dict, a list: not a value of a table
            raise TypeError(f"column {name!r} holds {other!r}, not a cell of a table: each argument must be a "
                            f"string or a real number, not {type(other).__name__!r}")
        numbers = [v for v in present if not isinstance(v, str)]
        if numbers and len(numbers) < len(present):
            text = next(v for v in present if isinstance(v, str))
            warnings.warn(f"column {name!r} mixes strings and numbers (e.g. {text!r} and {numbers[0]!r}): each "
                          "value is a category label", UserWarning, stacklevel=5)
        return "categorical" if len(numbers) < len(present) or not len(present) else "real"
    present = np.asarray(present, dtype=np.float64)
    if _zero_one(present):
        return "binary"
    distinct = np.unique(present)
    if not pd.api.types.is_integer_dtype(dtype) or not len(distinct) or distinct[0] < 0:
        return "real"
    if distinct[0] == 0:
        return "count" if len(distinct) < MAX_CATEGORIES else "real"
    return "ordinal" if len(distinct) < FEW_LEVELS else "real"


def _labels(cells, kind):
    """The labels of a coded column, code order; [] for a numeric binary column (0/1 as is)."""
    import pandas as pd
    dtype = cells.dtype
    if kind not in CODED:
        return []
    if isinstance(dtype, pd.CategoricalDtype):
        labels = list(dtype.categories)
    elif kind == "binary" and (pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)):
        return []
    elif pd.api.types.is_bool_dtype(dtype):
        labels = [False, True]
    else:
        labels = sorted(set(_present(cells, _missing(cells))), key=_order)
    return labels


def _checked(column, cells):
    """column, after the checks its type needs of the observed values."""
    codes = column.encode(cells) if column.type in CODED or _numeric(cells) else None
    if codes is None:
        raise ValueError(f"column {column.name!r} holds non-numbers, so it cannot be {column.type!r}; "
                         "make it 'categorical'")
    present = codes[~np.isnan(codes)]
    checks = {"binary": (_zero_one(present) if not column.categories else len(column.categories) <= 2,
                         "needs values 0 and 1 (or two categories)"),
              "count": (np.all((present >= 0) & (present == np.rint(present))), "needs non-negative integers"),
              "positive": (np.all(present > 0), "needs values > 0")}
    ok, need = checks.get(column.type, (True, ""))
    if not ok:
        raise ValueError(f"column {column.name!r} cannot be {column.type!r}: it {need}")
    return column


def _cast(fill, dtype):
    """float64 fill as dtype's numbers: an integer dtype's nearest integers within its range, a
    float dtype's precision (float32 stays float32), a string dtype's text (the 0 of an empty
    column kept by keep_empty_features), as they are for any other (object)."""
    import pandas as pd
    numbers = getattr(dtype, "numpy_dtype", dtype)          # a nullable dtype's numpy type
    if pd.api.types.is_integer_dtype(numbers) and not pd.api.types.is_bool_dtype(numbers):
        limits = np.iinfo(numbers)
        return np.clip(np.rint(fill), limits.min, limits.max).astype(numbers)
    if pd.api.types.is_string_dtype(numbers) and numbers != object:   # pandas' str: an empty column's 0 as "0"
        return np.array([f"{v:g}" for v in fill], dtype=object)
    return fill.astype(numbers) if pd.api.types.is_float_dtype(numbers) else fill


def _missing(cells):
    import pandas as pd
    return np.asarray(pd.isna(cells), dtype=bool)


def _present(cells, missing):
    values = cells.to_numpy(dtype=object) if hasattr(cells, "to_numpy") else np.asarray(cells, dtype=object)
    return [v.item() if isinstance(v, np.generic) else v for v in values[~missing]]


def _numeric(cells):
    present = _present(cells, _missing(cells))
    return all(isinstance(v, (int, float, bool)) for v in present)


def _zero_one(values):
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    return bool(np.all((values == 0) | (values == 1)))


def _order(label):
    """Sort key of mixed labels: numbers before strings, each in their own order."""
    return (isinstance(label, str), label if not isinstance(label, bool) else int(label))

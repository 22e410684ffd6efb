"""Tables with holes, read and written for ``iwae impute`` (docs/missing.md).

.csv: a header line, then numbers; empty, NA, NaN (and nan) cells are missing; the header
is kept. .npy: one 2-d float array, NaN = missing. .npz: the array ``x`` or the only one,
written back under the same name. Multiple imputations [M, N, D] go to .npy/.npz as one
3-d array and to .csv as M blocks of rows behind a leading ``imputation`` column (1..M).
"""
import io
import time
from pathlib import Path

import numpy as np

from ..runtime.atomic import atomic_write, write_text

FORMATS = (".csv", ".npy", ".npz")
MISSING_CELLS = ["", "NA", "NaN", "nan"]


def _format(path, what):
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{what} {path}: expected a {', '.join(FORMATS)} file, got {suffix or 'no extension'!r}")
    return suffix


def read_table(path):
    """(values or a DataFrame, npz key or None) from a .csv, .npy or .npz file."""
    suffix = _format(path, "input")
    if not Path(path).is_file():
        raise ValueError(f"no such file: {path}")
    if suffix == ".csv":
        import pandas as pd
        try:
            return pd.read_csv(path, keep_default_na=False, na_values=MISSING_CELLS), None
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise ValueError(f"cannot read {path} as CSV: {' '.join(str(err).split())[:200]}") from None
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ValueError(f"cannot read {path}: {' '.join(str(err).split())[:200]}") from None
    if suffix == ".npy":
        return loaded, None
    with loaded:
        keys = list(loaded.keys())
        key = "x" if "x" in keys else keys[0] if len(keys) == 1 else None
        if key is None:
            raise ValueError(f"{path} holds {len(keys)} arrays ({', '.join(keys)}); name the one to impute 'x'")
        return loaded[key], key


def write_table(path, values, columns=None, key=None):
    """values [N, D] or [M, N, D] into a .csv, .npy or .npz file (replaced atomically)."""
    suffix = _format(path, "--out")
    values = np.asarray(values)
    if suffix == ".npy":
        atomic_write(path, lambda f: np.save(f, values))
    elif suffix == ".npz":
        atomic_write(path, lambda f: np.savez(f, **{key or "x": values}))
    else:
        import pandas as pd
        columns = list(columns) if columns is not None else [f"x{j}" for j in range(values.shape[-1])]
        if values.ndim == 2:
            frame = pd.DataFrame(values, columns=columns)
        else:
            frame = pd.DataFrame(values.reshape(-1, values.shape[-1]), columns=columns)
            frame.insert(0, "imputation", np.repeat(np.arange(1, values.shape[0] + 1), values.shape[1]))
        buffer = io.StringIO()
        frame.to_csv(buffer, index=False)
        write_text(path, buffer.getvalue())


def impute_file(path, out, *, multiple=None, progress=True, **options):
    """Fit an iwae.Imputer on the table in ``path`` and write its imputations to ``out``;
    returns a summary dict (shape, missing, epochs, bound, seconds)."""
    from .imputer import Imputer
    if Path(out).resolve() == Path(path).resolve():
        raise ValueError(f"--out {out} is the input file; write the imputations elsewhere")
    _format(out, "--out")
    table, key = read_table(path)
    columns = getattr(table, "columns", None)
    began = time.perf_counter()
    imputer = Imputer(verbose=progress, **options).fit(table)
    values = imputer.transform(table) if multiple is None else imputer.sample(table, multiple)
    values = values.to_numpy() if hasattr(values, "to_numpy") else values
    if columns is not None:                    # empty columns are dropped (keep_empty_features)
        columns = [c for c, e in zip(columns, imputer.empty_) if not e or imputer.keep_empty_features]
    write_table(out, values, columns, key)
    data = table.to_numpy(dtype=float, na_value=np.nan) if hasattr(table, "to_numpy") else np.asarray(table, float)
    return {"rows": data.shape[0], "columns": data.shape[1], "missing": int(np.isnan(data).sum()),
            "epochs": imputer.n_epochs_, "train_bound": imputer.train_bound_, "bound": imputer.score(table),
            "fit_seconds": imputer.fit_seconds_, "seconds": time.perf_counter() - began,
            "missingness": imputer.missingness_}

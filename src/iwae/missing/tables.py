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
            return pd.read_csv(path, keep_default_na=False, na_values=MISSING_CELLS, dtype_backend="numpy_nullable"), None
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
    """values [N, D] or [M, N, D] (or a DataFrame, or a list of M) into a .csv, .npy or .npz
    file (replaced atomically)."""
    suffix = _format(path, "--out")
    if suffix == ".csv" and not isinstance(values, np.ndarray):
        import pandas as pd
        frames = [values] if hasattr(values, "columns") else list(values)
        frame = pd.concat(frames, ignore_index=True)
        if not hasattr(values, "columns"):
            frame.insert(0, "imputation", np.repeat(np.arange(1, len(frames) + 1), [len(f) for f in frames]))
        buffer = io.StringIO()
        frame.to_csv(buffer, index=False)
        write_text(path, buffer.getvalue())
        return
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
    from pandas.api.types import is_numeric_dtype as pd_numeric
    from .imputer import Imputer
    if Path(out).resolve() == Path(path).resolve():
        raise ValueError(f"--out {out} is the input file; write the imputations elsewhere")
    _format(out, "--out")
    table, key = read_table(path)
    columns = getattr(table, "columns", None)
    array_out = columns is not None and Path(out).suffix.lower() != ".csv"
    if array_out and not all(pd_numeric(t) for t in table.dtypes):
        raise ValueError(f"--out {out}: {path} has non-numeric columns, which only a .csv holds")
    began = time.perf_counter()
    imputer = Imputer(verbose=progress, **options).fit(table)
    if multiple is None:
        values, bound = imputer.transform_and_score(table)
    else:
        values, bound = imputer.sample(table, multiple), imputer.score(table)
    if array_out:                                  # a table's cells as numbers
        values = np.stack([v.to_numpy(dtype=float) for v in values]) if multiple else values.to_numpy(dtype=float)
    write_table(out, values, None, key)
    missing = table.isna().to_numpy() if columns is not None else np.isnan(np.asarray(table, dtype=float))
    return {"rows": missing.shape[0], "columns": missing.shape[1], "missing": int(missing.sum()),
            "epochs": imputer.n_epochs_, "train_bound": imputer.train_bound_, "bound": bound,
            "fit_seconds": imputer.fit_seconds_, "seconds": time.perf_counter() - began,
            "missingness": imputer.missingness_, "point_masses": imputer.point_masses_}

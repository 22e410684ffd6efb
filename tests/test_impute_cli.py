"""`iwae impute FILE --out FILE`: .csv (header kept; empty, NA and NaN cells missing), .npy,
.npz, --multiple; bad input is one line and exit status 2, and the input file is untouched."""
import io

import numpy as np
import pandas as pd
import pytest

from iwae.app.cli import main

FAST = ["--epochs", "2", "--k", "2", "--threads", "1"]
CSV = "a,b,c\n1,2,3\n2,,5\nNA,4,7\n3,NaN,8\n4,5,\n5,6,10\n6,7,12.5\n"


def run(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_a_csv_keeps_its_header_and_observed_cells(tmp_path, capsys):
    src, dst = tmp_path / "t.csv", tmp_path / "filled.csv"
    src.write_text(CSV)
    code, out, _ = run(["impute", str(src), "--out", str(dst)] + FAST, capsys)
    assert code == 0 and "7 x 3, 4 missing; trained 2 epochs" in out and "nats per row" in out
    got, given = pd.read_csv(dst), pd.read_csv(src)
    assert list(got.columns) == ["a", "b", "c"] and not got.isna().any().any()
    observed = given.notna().to_numpy()
    assert np.array_equal(got.to_numpy()[observed], given.to_numpy()[observed])
    assert src.read_text() == CSV


def test_a_columns_point_mass_is_named(tmp_path, capsys):
    # a debt that is 0 for most rows and anything else for the others: its zeros get a
    # probability of their own (an InflatedGaussian, docs/missing.md "Ties")
    rng = np.random.default_rng(0)
    income = rng.normal(50, 10, 200).round(1)
    debt = np.where(rng.random(200) < 0.6, 0.0, rng.gamma(2.0, 500.0, 200).round(0))
    table = pd.DataFrame({"income": income, "debt": debt})
    table.loc[rng.random(200) < 0.2, "debt"] = np.nan
    src = tmp_path / "t.csv"
    table.to_csv(src, index=False)
    code, out, _ = run(["impute", str(src), "--out", str(tmp_path / "f.csv")] + FAST, capsys)
    assert code == 0 and "point masses (a probability of their own): debt at 0\n" in out


def test_npy_npz_and_multiple_imputations(tmp_path, capsys):
    x = pd.read_csv(io.StringIO(CSV)).to_numpy()
    np.save(tmp_path / "t.npy", x)
    assert run(["impute", str(tmp_path / "t.npy"), "--out", str(tmp_path / "m.npy"), "--multiple", "3"] + FAST,
               capsys)[0] == 0
    draws = np.load(tmp_path / "m.npy")
    assert draws.shape == (3, 7, 3) and not np.isnan(draws).any()
    np.savez(tmp_path / "t.npz", table=x)
    assert run(["impute", str(tmp_path / "t.npz"), "--out", str(tmp_path / "f.npz")] + FAST, capsys)[0] == 0
    with np.load(tmp_path / "f.npz") as f:
        assert list(f.keys()) == ["table"] and np.array_equal(f["table"][~np.isnan(x)], x[~np.isnan(x)])
    assert run(["impute", str(tmp_path / "t.npy"), "--out", str(tmp_path / "m.csv"), "--multiple", "2"] + FAST,
               capsys)[0] == 0
    long = pd.read_csv(tmp_path / "m.csv")
    assert list(long.columns) == ["imputation", "x0", "x1", "x2"] and long["imputation"].tolist() == [1] * 7 + [2] * 7


@pytest.mark.parametrize("content,out,message", [
    ("a,b\n1,x\n2,y\n3,z\n", "o.npy", "t.csv has non-numeric columns, which only a .csv holds"),
    ("a,b\n1,2\n,3\n2,4\n", "o.txt", "--out"),
    ("a,b\n1,2\ninf,3\n2,4\n", "o.csv", "X holds infinite values"),
    (None, "o.csv", "no such file"),
], ids=["strings-to-npy", "extension", "inf", "missing-file"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, content, out, message):
    src = tmp_path / "t.csv"
    if content is not None:
        src.write_text(content)
    code, _, err = run(["impute", str(src), "--out", str(tmp_path / out)] + FAST, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("iwae: error: ")
    assert message in err
    assert not (tmp_path / out).exists()
    if content is not None:
        assert src.read_text() == content


def test_a_constant_column_is_filled_with_its_value_and_an_empty_one_dropped(tmp_path, capsys):
    src = tmp_path / "t.csv"
    src.write_text("a,b,c\n1,,2\n,,3\n1,,\n,,5\n")
    code, _, err = run(["impute", str(src), "--out", str(tmp_path / "o.csv")] + FAST, capsys)
    warned = [line for line in err.splitlines() if line.startswith("iwae: warning: ")]
    assert code == 0 and len(warned) == 2
    assert "single observed value: a;" in warned[0] and "without any observed values: ['b']" in warned[1]
    out = pd.read_csv(tmp_path / "o.csv")
    assert list(out.columns) == ["a", "c"] and (out["a"] == 1).all() and out["c"].notna().all()


@pytest.mark.parametrize("masses,line", [
    ({"debt": 0.0}, "debt at 0"),
    ({"debt": 0.0, "loan": 0.0, "top": 255.0}, "at 0: debt, loan; top at 255"),
    ({str(j): 0.0 for j in range(8)}, "at 0: 0, 1, 2, 3, 4 and 3 more columns"),
    ({str(j): 0.0 for j in range(6)}, "at 0: 0, 1, 2, 3, 4 and 1 more column"),
])
def test_point_masses_are_one_short_line(masses, line):
    from iwae.app.commands import point_masses_line
    assert point_masses_line(masses) == line


def test_an_identifier_column_is_filled_with_its_most_frequent_label(tmp_path, capsys):
    src = tmp_path / "t.csv"
    src.write_text("a,b\n" + "".join(f"{i % 7},t{i}\n" for i in range(60)) + "9,t3\n8,\n")
    code, _, err = run(["impute", str(src), "--out", str(tmp_path / "o.csv")] + FAST, capsys)
    warned = [line for line in err.splitlines() if line.startswith("iwae: warning: ")]
    assert code == 0 and len(warned) == 1 and "more than 50 distinct labels (identifiers or free text?): b;" in warned[0]
    assert pd.read_csv(tmp_path / "o.csv")["b"].iloc[-1] == "t3"


def test_out_must_not_be_the_input(tmp_path, capsys):
    src = tmp_path / "t.csv"
    src.write_text(CSV)
    code, _, err = run(["impute", str(src), "--out", str(src)] + FAST, capsys)
    assert code == 2 and "is the input file" in err and src.read_text() == CSV


def test_string_and_integer_cells_come_back_as_written(tmp_path, capsys):
    """A .csv with a string column and an integer column with holes: observed cells come back
    as the same text (no "3.0"), missing strings as one of the column's strings, and
    --types overrides a column's inferred type."""
    src, dst = tmp_path / "t.csv", tmp_path / "o.csv"
    text = "n,colour,size\n" + "".join(f"{i},{c},{s}\n" for i, c, s in
                                      zip(range(12), ["red", "blue", "", "red"] * 3, [3, "", 5, 7] * 3))
    src.write_text(text)
    code, out, _ = run(["impute", str(src), "--out", str(dst), "--types", "size=count"] + FAST, capsys)
    assert code == 0
    given, got = src.read_text().splitlines(), dst.read_text().splitlines()
    assert got[0] == given[0] and len(got) == len(given)
    for before, after in zip(given[1:], got[1:]):
        for cell, filled in zip(before.split(","), after.split(",")):
            assert filled == cell if cell else filled
        assert after.split(",")[1] in ("red", "blue") and "." not in after.split(",")[2]


def test_a_bad_types_option_is_one_line(tmp_path, capsys):
    src = tmp_path / "t.csv"
    src.write_text(CSV)
    with pytest.raises(SystemExit) as exit_:
        main(["impute", str(src), "--out", str(tmp_path / "o.csv"), "--types", "a"] + FAST)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "argument --types: expected COLUMN=TYPE[,COLUMN=TYPE...], got 'a'" in err

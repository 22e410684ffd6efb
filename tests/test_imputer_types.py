"""iwae.Imputer on mixed tables (issue 36): column types inferred from pandas dtypes or given,
each column its own likelihood, the same dtypes out, observed cells bit for bit, the caller's
DataFrame untouched, and one-line refusals of what cannot be modelled."""
import numpy as np
import pandas as pd
import pytest
import torch

from iwae.missing.encoding import TableInput, table_input
from iwae.missing.imputer import Imputer
from iwae.missing.types import MAX_CATEGORIES, _cast

FAST = dict(epochs=3, k=2, draws=20, compile="off", device="cpu")


@pytest.fixture(scope="module")
def frame():
    """40 rows, one column of each kind, ~20% of each column's cells missing (NA of its dtype)."""
    rng = np.random.default_rng(0)
    n = 40
    base = pd.DataFrame({
        "real": rng.normal(10, 2, n),
        "flag": rng.integers(0, 2, n).astype(float),
        "colour": pd.Categorical(rng.choice(["red", "green", "blue"], n), categories=["red", "green", "blue"]),
        "stage": pd.Categorical(rng.choice(["I", "II", "III"], n), categories=["I", "II", "III"], ordered=True),
        "word": pd.Series(rng.choice(["yes", "no", "maybe"], n), dtype=object),
        "smoker": pd.array(rng.integers(0, 2, n).astype(bool), dtype="boolean"),
        "children": pd.array(rng.poisson(1.5, n), dtype="Int64"),
        "year": pd.array(rng.integers(2001, 2004, n), dtype="Int64"),
        "income": pd.array(rng.integers(1000, 5000, n), dtype="Int64"),
    })
    holes = rng.random(base.shape) < 0.2
    holes[0] = False                                  # row 0 complete, row 1 has every kind missing
    holes[1] = True
    return base.mask(holes)


def test_types_are_inferred_from_dtypes_as_documented(frame):
    imputer = Imputer(**FAST).fit(frame)
    assert imputer.types_ == {"real": "real", "flag": "binary", "colour": "categorical", "stage": "ordinal",
                              "word": "categorical", "smoker": "binary", "children": "count", "year": "ordinal",
                              "income": "real"}


def test_types_can_be_overridden(frame):
    imputer = Imputer(types={"children": "real", "year": "categorical", "real": "positive"}, **FAST).fit(frame)
    assert (imputer.types_["children"], imputer.types_["year"], imputer.types_["real"]) == ("real", "categorical",
                                                                                           "positive")


def test_dtypes_index_and_observed_cells_round_trip_and_the_input_is_untouched(frame):
    given = frame.copy(deep=True)
    shuffled = frame.set_index(pd.Index([f"r{i}" for i in range(len(frame))]))
    out = Imputer(**FAST).fit_transform(shuffled)
    pd.testing.assert_frame_equal(frame, given)
    assert out.dtypes.equals(shuffled.dtypes) and out.index.equals(shuffled.index)
    assert not out.isna().any().any()
    for column in frame.columns:
        observed = shuffled[column].notna().to_numpy()
        assert out[column][observed].equals(shuffled[column][observed])
    assert set(out["word"]) <= {"yes", "no", "maybe"} and list(out["colour"].cat.categories) == ["red", "green", "blue"]
    assert out["stage"].cat.ordered and out["children"].dtype == "Int64"
    assert set(out["year"]) <= {2001, 2002, 2003}
    assert set(out["flag"]) <= {0.0, 1.0}               # a table's 0/1 column gets its mode


@pytest.mark.parametrize("dtype", ["float32", "float16", "Float32", "Int8", "UInt8"])
def test_numbers_come_back_in_their_own_dtype(frame, dtype):
    # a float32 column's fill is float32 (pandas refuses to upcast it in place), an integer
    # dtype's its nearest integers
    column = (frame["income"] // 40).astype(dtype) if dtype[0] != "f" else frame["real"].astype(dtype)
    out = Imputer(**FAST).fit_transform(frame.assign(x=column))["x"]
    assert out.dtype == column.dtype and out.notna().all() and out[column.notna()].equals(column.dropna())


def test_an_integer_fill_is_clipped_to_its_dtypes_range():
    assert _cast(np.array([300.0, -5.4, -200.0]), pd.Int8Dtype()).tolist() == [127, -5, -128]
    assert _cast(np.array([-3.0, 1.6]), np.dtype(np.uint16)).tolist() == [0, 2]

def test_multiple_imputations_are_dataframes_with_drawn_categories(frame):
    draws = Imputer(**FAST).fit(frame).sample(frame, m=3)
    assert isinstance(draws, list) and len(draws) == 3
    for one in draws:
        assert one.dtypes.equals(frame.dtypes) and not one.isna().any().any()
        assert set(one["word"]) <= {"yes", "no", "maybe"} and (one["children"] >= 0).all()


def test_a_category_determined_by_a_number_is_imputed_from_it():
    """sign = "neg"/"pos" of a N(0, 1) column, a second column noise; sign hidden on 30% of
    the rows (x always observed). A model that reads x gets >= 90% right (chance: ~50%; the
    rows with |x| < 0.1, about 8%, are the hard ones)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=600)
    table = pd.DataFrame({"x": x, "noise": rng.normal(size=600), "sign": np.where(x < 0, "neg", "pos")})
    hidden = rng.random(600) < 0.3
    holes = table.assign(sign=table["sign"].mask(hidden))
    out = Imputer(epochs=100, seed=0, compile="off", device="cpu").fit_transform(holes)
    assert (out["sign"][hidden] == table["sign"][hidden]).mean() >= 0.9


def test_a_one_category_column_is_constant(frame):
    table = frame.assign(only=pd.Series(["same"] * 20 + [None] * 20, dtype=object))
    with pytest.warns(UserWarning, match="single observed value: only;"):
        out = Imputer(**FAST).fit_transform(table)
    assert (out["only"] == "same").all()


def test_a_cell_neither_string_nor_number_is_refused_in_one_line(frame):
    with pytest.raises(TypeError, match=r"^column 'bad' holds \{'a': 1\}, not a cell of a table: each argument must be "
                       "a string or a real number, not 'dict'$"):
        Imputer(**FAST).fit(frame.assign(bad=pd.Series(["x", {"a": 1}] * 20, dtype=object)))


def test_a_datetime_column_is_refused_in_one_line(frame):
    table = pd.concat([frame, frame], ignore_index=True).assign(bad=pd.Series(pd.date_range("2020-01-01", periods=80)))
    with pytest.raises(ValueError) as err:
        Imputer(**FAST).fit(table)
    assert "column 'bad' holds dates or times (datetime64" in str(err.value) and "\n" not in str(err.value)


@pytest.fixture(scope="module")
def identifiers(frame):
    """frame twice over with an identifier-like column: 60 labels, 'id07' the most frequent
    (3 times), 'id00'..'id05' twice each (a tie below it), ~25% missing."""
    labels = [f"id{i:02d}" for i in range(60)] + ["id07"] * 2 + [f"id{i:02d}" for i in range(6)]
    column = pd.Series(labels + [None] * (80 - len(labels)), dtype=object)
    return pd.concat([frame, frame], ignore_index=True).assign(name=column)


def test_an_identifier_column_takes_its_most_frequent_label_as_simple_imputer(identifiers):
    from sklearn.impute import SimpleImputer
    with pytest.warns(UserWarning, match=f"^column.s. with more than {MAX_CATEGORIES} distinct labels .identifiers or "
                      "free text.[)]: name; kept out of the model, their missing entries take the most frequent label"):
        imputer = Imputer(**FAST).fit(identifiers)
    out = imputer.transform(identifiers)
    expected = SimpleImputer(strategy="most_frequent", missing_values=None).fit_transform(identifiers[["name"]])[:, 0]
    assert out["name"].tolist() == expected.tolist() and set(out["name"][identifiers["name"].isna()]) == {"id07"}
    assert imputer.most_frequent_.tolist() == [False] * 9 + [True] and not imputer.modeled_[-1]
    new = identifiers.assign(name=identifiers["name"].replace({"id30": "someone new"}))
    assert imputer.transform(new)["name"].tolist() == [v if v != "id30" else "someone new" for v in expected]


def test_types_categorical_models_a_column_of_many_labels(identifiers):
    imputer = Imputer(types={"name": "categorical"}, **FAST).fit(identifiers)
    assert imputer.modeled_[-1] and not imputer.most_frequent_.any()
    assert len(imputer.columns_[-1].categories) == 60 and set(imputer.transform(identifiers)["name"]) <= set(
        identifiers["name"].dropna())


def test_a_category_dtype_of_many_declared_but_few_observed_labels_is_modelled(frame):
    # the identifier rule counts the labels a column holds, not those its dtype declares
    declared = ["red", "green", "blue"] + [f"unused{i}" for i in range(60)]
    imputer = Imputer(**FAST).fit(frame.assign(colour=frame["colour"].cat.set_categories(declared)))
    assert not imputer.most_frequent_.any() and imputer.modeled_[2]


def test_an_empty_string_column_kept_is_filled_with_0_as_text(frame):
    # keep_empty_features=True fills an empty column with 0, as SimpleImputer: "0" in a str column
    table = frame.assign(note=pd.Series([None] * len(frame), dtype="str"))
    out = Imputer(keep_empty_features=True, **FAST).fit_transform(table)
    assert out["note"].dtype == table["note"].dtype and (out["note"] == "0").all()


def test_strings_and_numbers_mixed_are_labels(frame):
    mixed = pd.Series(["a", 1, "b", 2.5] * 10, dtype=object).mask(frame["real"].isna())
    with pytest.warns(UserWarning, match=r"^column 'bad' mixes strings and numbers \(e.g. 'a' and 1\): each value is"):
        imputer = Imputer(**FAST).fit(frame.assign(bad=mixed))
    out = imputer.transform(frame.assign(bad=mixed))["bad"]
    assert imputer.columns_[-1].categories == [1, 2.5, "a", "b"] and out.dtype == object
    assert set(out) <= {"a", 1, "b", 2.5} and out[mixed.notna()].tolist() == mixed.dropna().tolist()


@pytest.mark.parametrize("types,message", [
    ({"word": "real"}, "column 'word' holds non-numbers, so it cannot be 'real'"),
    ({"real": "count"}, "column 'real' cannot be 'count': it needs non-negative integers"),
    ({"nope": "real"}, "types names column(s) not in X: nope"),
    ({"real": "gaussian"}, "types must be among real, positive, count"),
    ("numeric", "types must be 'auto' or a dict"),
])
def test_bad_types_are_refused_in_one_line(frame, types, message):
    with pytest.raises(ValueError, match=None) as err:
        Imputer(types=types, **FAST).fit(frame)
    assert message in str(err.value)


def test_an_unseen_category_at_transform_is_read_as_missing_and_kept(frame):
    # as SimpleImputer, transform takes labels fit never saw: the model reads them as missing
    imputer = Imputer(**FAST).fit(frame)
    other = frame.assign(word=frame["word"].replace({"maybe": "perhaps"}))
    with pytest.warns(UserWarning, match="^column 'word' holds categories not seen in fit: perhaps; the model reads "
                      "those cells as missing and they come back as they are$"):
        out = imputer.transform(other)
    unseen = other["word"] == "perhaps"
    blind = other.assign(word=other["word"].mask(unseen))
    assert unseen.sum() > 0 and (out["word"][unseen] == "perhaps").all()
    pd.testing.assert_frame_equal(out.drop(columns="word"), imputer.transform(blind).drop(columns="word"))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_an_arrays_coded_columns_are_its_own_values_in_and_out(dtype):
    # types= on an array: the codes are the positions of its sorted observed values (not the
    # values themselves, which made 13 an out-of-range code of a 13-level column)
    rng = np.random.default_rng(0)
    a = rng.normal(size=60)
    x = np.c_[a, np.clip(np.round(1.2 * a + 7), 5, 9), rng.choice([2.5, 7.0, 13.0], 60)].astype(dtype)
    holes = x.copy()
    holes[rng.random(60) < 0.3, 1:] = np.nan
    imputer = Imputer(types={1: "ordinal", 2: "categorical"}, **FAST).fit(holes)
    out, draws = imputer.transform(holes), imputer.sample(holes, m=2)
    assert out.dtype == dtype and np.array_equal(out[~np.isnan(holes)], holes[~np.isnan(holes)])
    for filled in (out, *draws):
        assert set(filled[:, 1]) <= {5, 6, 7, 8, 9} and set(filled[:, 2]) <= {2.5, 7, 13}
    new = holes.copy()
    new[:3, 2] = 4.0                                   # a category fit never saw: read as missing, kept
    with pytest.warns(UserWarning, match="^column '2' holds categories not seen in fit: 4.0; the model reads"):
        out = imputer.transform(new)
    blind = new.copy()
    blind[:3, 2] = np.nan
    assert np.array_equal(out[~np.isnan(new)], new[~np.isnan(new)])
    assert np.array_equal(out[3:], imputer.transform(blind)[3:]) and np.array_equal(out[:3, :2], imputer.transform(blind)[:3, :2])


@pytest.mark.parametrize("kind", ["array", "frame"])
def test_a_bernoulli_columns_other_values_at_transform_are_read_as_missing_and_kept(kind):
    # SimpleImputer takes any number at transform: a 0/1 column's 2 is read as missing, kept
    rng = np.random.default_rng(0)
    a = rng.normal(size=80)
    x = np.c_[a, (a + 0.3 * rng.normal(size=80) > 0).astype(float)]
    x[rng.random(80) < 0.2, 1] = np.nan
    wrap = (lambda v: v) if kind == "array" else (lambda v: pd.DataFrame(v, columns=["a", "flag"]))
    imputer = Imputer(**FAST).fit(wrap(x))
    new, blind = x.copy(), x.copy()
    new[:2, 1], blind[:2, 1] = 2.0, np.nan
    with pytest.warns(UserWarning, match=f"^values other than 0 and 1 in Bernoulli column.s. {'1' if kind == 'array' else 'flag'}; "
                      "the model reads those cells as missing and they come back as they are$"):
        out = np.asarray(imputer.transform(wrap(new)), dtype=float)
    assert np.array_equal(out[:2, 1], [2.0, 2.0])
    assert np.array_equal(out[2:], np.asarray(imputer.transform(wrap(blind)), dtype=float)[2:])


@pytest.mark.parametrize("container", [np.array, lambda rows: rows.tolist(),
                                       lambda rows: [[None if v != v else v for v in row] for row in rows.tolist()]],
                         ids=["object-array", "list", "list-of-None"])
def test_an_object_array_is_a_table_without_names(frame, container):
    # SimpleImputer takes strings in an object array: so do we, as the DataFrame they make
    table = frame[["real", "word", "colour"]].astype(object).where(frame[["real", "word", "colour"]].notna(), np.nan)
    rows = table.to_numpy(dtype=object)
    imputer = Imputer(**FAST)
    out = imputer.fit_transform(container(rows))
    named = Imputer(**FAST).fit_transform(table.set_axis(["0", "1", "2"], axis=1))
    assert isinstance(out, np.ndarray) and out.dtype == object and not hasattr(imputer, "feature_names_in_")
    assert out.tolist() == named.to_numpy(dtype=object).tolist() and imputer.types_["1"] == "categorical"
    assert imputer.sample(container(rows), m=2).shape == (2, *rows.shape)


def test_an_object_arrays_numbers_come_back_exactly_and_numbers_alone_stay_floats(frame):
    # ints beyond float64's 2**53 among strings are observed cells: given back as they were
    big = np.array([[2 ** 53 + 1 + i, "ab"[i % 2]] for i in range(20)] + [[None, "a"]], dtype=object)
    out = Imputer(**FAST).fit_transform(big)
    assert out[:20].tolist() == big[:20].tolist() and isinstance(out[20, 0], float)
    numbers = frame[["real", "flag"]].to_numpy(dtype=object)
    assert Imputer(**FAST).fit_transform(numbers).dtype == np.float64


def test_missingness_models_refuse_discrete_columns(frame):
    with pytest.raises(ValueError, match="categorical, ordinal or count column.s. cannot give: flag, colour, stage"):
        Imputer(mechanism="self-masking", **FAST).fit(frame)


def test_a_numeric_table_keeps_todays_model_and_numbers():
    """No coded column: the encoder reads x as before (no TableInput), so numeric results stay
    those of the numeric path: a DataFrame and its array impute the same, to the bit."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 4))
    x[rng.random(x.shape) < 0.2] = np.nan
    from_array = Imputer(**FAST).fit(x)
    from_frame = Imputer(**FAST).fit(pd.DataFrame(x, columns=list("abcd")))
    assert not isinstance(from_frame.model_.encoder[0].net[0], TableInput)
    np.testing.assert_array_equal(from_array.transform(x), from_frame.transform(pd.DataFrame(x, columns=list("abcd"))))


def test_the_encoder_features_one_hot_and_log_scale():
    """[x, mask] -> real as is, a 3-category column one-hot (0s when missing), a count's
    standardised log(1 + x), the mask when asked: by hand on two rows."""
    values = np.array([[0.5, 2.0, 3.0], [np.nan, np.nan, 0.0], [1.0, 0.0, 7.0]])
    features = table_input(["real", "categorical", "count"], [0, 3, 0], values, mask=True)
    x = torch.tensor([[0.5, 2.0, 3.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    logged = np.log1p([3.0, 0.0, 7.0])
    z = (np.log1p([3.0, 0.0]) - logged.mean()) / logged.std()
    expected = torch.tensor([[0.5, 0, 0, 1, z[0], 1, 1, 1], [0.0, 0, 0, 0, z[1], 0, 0, 1]], dtype=torch.float32)
    assert features.width == 8
    torch.testing.assert_close(features(torch.cat([x, mask], -1)), expected)


def test_the_encoder_features_run_on_meta():
    values = np.array([[0.5, 2.0, 3.0, 1.5], [np.nan, 1.0, 0.0, 2.0], [1.0, 0.0, 7.0, 0.5]])
    features = table_input(["real", "ordinal", "count", "positive"], [0, 3, 0, 0], values, mask=False).to("meta")
    out = features(torch.zeros(5, 8, device="meta"))
    assert out.device.type == "meta" and out.shape == (5, 1 + 3 + 2)



def test_set_output_pandas_keeps_the_dtypes(frame):
    out = Imputer(**FAST).set_output(transform="pandas").fit_transform(frame)
    assert out.dtypes.equals(frame.dtypes) and out.index.equals(frame.index)

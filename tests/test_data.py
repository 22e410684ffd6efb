"""The data layer: real MNIST / Fashion-MNIST / binarized MNIST files, the readers' error
messages on corrupt input, Omniglot's layout, user data, binarization and data dirs."""
import gzip
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from iwae.data import (DATASETS, DataError, binarize, describe_datasets, load_dataset,
                       remove_pixels, resolve_data_dir)
from iwae.data.binarized import read_amat, read_mat
from iwae.data.idx import read_idx
from iwae.data.omniglot import read_chardata

MNIST_TRAIN_LABELS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]   # README
MNIST_TEST_LABELS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def mnist(data_dir):
    return load_dataset("mnist", data_dir, download=False)


@pytest.fixture(scope="module")
def binarized(data_dir):
    return load_dataset("binarized-mnist", data_dir, download=False)


def msg(text):
    """pytest.raises match for exactly this message."""
    return "^" + re.escape(text) + "$"


# ---------------------------------------------------------------- real files

def test_mnist_shapes_and_pixel_means(mnist):
    assert mnist.train.shape == (60000, 784) and mnist.test.shape == (10000, 784)
    assert mnist.train.dtype == torch.float32 and mnist.dim == 784
    assert mnist.valid is None and mnist.image_shape == (28, 28)
    assert mnist.binarization == "dynamic"
    assert mnist.train.min() == 0 and mnist.train.max() == 1
    assert round(mnist.train.mean(dtype=torch.float64).item(), 4) == 0.1307   # README: 0.1307
    assert round(mnist.test.mean(dtype=torch.float64).item(), 4) == 0.1325    # and 0.1325
    # grey levels are k/255, all 256 of them
    levels = (mnist.test * 255).round()
    assert torch.allclose(mnist.test * 255, levels, atol=1e-4) and len(levels.unique()) == 256


def test_mnist_paper_split_is_first_59600_and_last_400(mnist, data_dir):
    paper = load_dataset("mnist", data_dir, validation="paper", download=False)
    assert paper.train.shape == (59600, 784) and paper.valid.shape == (400, 784)
    assert torch.equal(paper.train, mnist.train[:59600])
    assert torch.equal(paper.valid, mnist.train[-400:])
    assert torch.equal(paper.test, mnist.test)


def test_idx_label_files_decode_to_readme_counts(data_dir):
    train = read_idx(Path(data_dir) / "mnist" / "train-labels-idx1-ubyte.gz", 1)
    test = read_idx(Path(data_dir) / "mnist" / "t10k-labels-idx1-ubyte.gz", 1)
    assert np.bincount(train).tolist() == MNIST_TRAIN_LABELS
    assert np.bincount(test).tolist() == MNIST_TEST_LABELS


def test_fashion_mnist_shapes(data_dir):
    ds = load_dataset("fashion_mnist", data_dir, download=False)     # "_" accepted for "-"
    assert ds.name == "fashion-mnist"
    assert ds.train.shape == (60000, 784) and ds.test.shape == (10000, 784)
    assert 0 <= ds.train.min() and ds.train.max() == 1
    labels = read_idx(Path(data_dir) / "fashion_mnist" / "t10k-labels-idx1-ubyte.gz", 1)
    assert np.bincount(labels).tolist() == [1000] * 10


def test_binarized_mnist_splits_values_and_means(binarized, data_dir):
    assert binarized.train.shape == (50000, 784)
    assert binarized.valid.shape == (10000, 784) and binarized.test.shape == (10000, 784)
    assert binarized.binarization == "fixed"
    for split in (binarized.train, binarized.valid, binarized.test):
        assert ((split == 0) | (split == 1)).all()
    # sums of 0/1 floats are exact in float64: means to 6 decimals as in the README
    assert round(binarized.train.sum(dtype=torch.float64).item() / (50000 * 784), 6) == 0.130562
    assert round(binarized.valid.sum(dtype=torch.float64).item() / (10000 * 784), 6) == 0.131127
    assert round(binarized.test.sum(dtype=torch.float64).item() / (10000 * 784), 6) == 0.132512


def test_binarized_mnist_mat_and_plain_amat_match_amat_gz(binarized, data_dir, tmp_path):
    src = Path(data_dir) / "binarized_mnist"
    dst = tmp_path / "binarized_mnist"
    dst.mkdir()
    (dst / "binarized_mnist_train.mat").symlink_to(src / "binarized_mnist_train.mat")
    (dst / "binarized_mnist_test.mat").symlink_to(src / "binarized_mnist_test.mat")
    (dst / "binarized_mnist_valid.amat").write_bytes(
        gzip.decompress((src / "binarized_mnist_valid.amat.gz").read_bytes()))
    other = load_dataset("binarized-mnist", tmp_path, download=False)
    assert torch.equal(other.train, binarized.train)
    assert torch.equal(other.valid, binarized.valid)
    assert torch.equal(other.test, binarized.test)


def test_gaussian_likelihood_uses_data_as_is(binarized, data_dir):
    ds = load_dataset("binarized-mnist", data_dir, likelihood="gaussian", download=False)
    assert ds.binarization == "none"
    assert torch.equal(ds.test, binarized.test)


def test_gunzipped_idx_file_is_accepted(mnist, data_dir, tmp_path):
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").symlink_to(
        Path(data_dir) / "mnist" / "train-images-idx3-ubyte.gz")
    (tmp_path / "mnist" / "t10k-images-idx3-ubyte").write_bytes(
        gzip.decompress((Path(data_dir) / "mnist" / "t10k-images-idx3-ubyte.gz").read_bytes()))
    ds = load_dataset("mnist", tmp_path, download=False)
    assert torch.equal(ds.test, mnist.test)


def test_corrupted_real_file_fails_its_checksum(data_dir, tmp_path):
    good = (Path(data_dir) / "mnist" / "t10k-images-idx3-ubyte.gz").read_bytes()
    bad = good[:len(good) // 2]
    (tmp_path / "mnist").mkdir()
    path = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(bad)
    (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").symlink_to(
        Path(data_dir) / "mnist" / "train-images-idx3-ubyte.gz")
    got = hashlib.md5(bad).hexdigest()
    with pytest.raises(DataError, match=msg(
            f"{path}: checksum mismatch: expected md5 9fb629c4189551a2d022fa330f9573f3, got {got}")):
        load_dataset("mnist", tmp_path, download=False)


# ---------------------------------------------------------------- IDX reader

def idx_bytes(array, magic=None):
    """An IDX file holding the uint8 array."""
    magic = 0x800 | array.ndim if magic is None else magic
    dims = np.array(array.shape, ">i4").tobytes()
    return magic.to_bytes(4, "big") + dims + array.astype(np.uint8).tobytes()


def test_idx_roundtrip_plain_and_gzipped(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (3, 5, 7), dtype=np.uint8)
    (tmp_path / "a").write_bytes(idx_bytes(images))
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(images)))
    assert np.array_equal(read_idx(tmp_path / "a", 3), images)
    assert np.array_equal(read_idx(tmp_path / "a.gz", 3), images)


def test_idx_wrong_magic(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(DataError, match=msg(
            f"{path}: not an IDX file of 3 dimension(s): magic 0x00000801, expected 0x00000803")):
        read_idx(path, 3)


def test_idx_truncated_payload_and_header(tmp_path):
    path = tmp_path / "images"
    path.write_bytes(idx_bytes(np.zeros((2, 28, 28), np.uint8))[:-10])
    with pytest.raises(DataError, match=msg(
            f"{path}: size mismatch: header says 2x28x28 = 1584 bytes, file has 1574")):
        read_idx(path, 3)
    path.write_bytes(idx_bytes(np.zeros((2, 28, 28), np.uint8))[:9])
    with pytest.raises(DataError, match=msg(
            f"{path}: size mismatch: 9 bytes, shorter than its 16-byte header")):
        read_idx(path, 3)


def test_idx_truncated_and_invalid_gzip(tmp_path):
    path = tmp_path / "images.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.ones((2, 28, 28), np.uint8)))[:-12])
    with pytest.raises(DataError, match=re.escape(f"{path}: not a valid gzip file (")):
        read_idx(path, 3)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=re.escape(f"{path}: not a valid gzip file (")):
        read_idx(path, 3)


def test_idx_wrong_image_count_in_data_dir(tmp_path, data_dir):
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").symlink_to(
        Path(data_dir) / "mnist" / "train-images-idx3-ubyte.gz")
    path = tmp_path / "mnist" / "t10k-images-idx3-ubyte"
    path.write_bytes(idx_bytes(np.zeros((5, 28, 28), np.uint8)))
    with pytest.raises(DataError, match=msg(f"{path}: 5 images, expected 10000")):
        load_dataset("mnist", tmp_path, download=False)


# ---------------------------------------------------------------- .amat / .mat readers

def test_amat_parser_accepts_any_whitespace(tmp_path):
    rows = np.random.default_rng(1).integers(0, 2, (3, 784), dtype=np.uint8)
    lines = [" ".join(map(str, r)) for r in rows]
    path = tmp_path / "x.amat"
    path.write_text(lines[0] + " \r\n" + lines[1].replace(" ", "\t") + "\r\n\n" + lines[2])  # no final newline
    assert np.array_equal(read_amat(path), rows)


def test_amat_canonical_layout_fast_path_and_its_fallback(tmp_path):
    """Lines "v v ... v\\n" are read by strided views; a stray byte in that layout still gets
    the general parser's error naming its line."""
    rows = np.random.default_rng(2).integers(0, 2, (5, 784), dtype=np.uint8)
    text = "".join(" ".join(map(str, r)) + "\n" for r in rows)
    path = tmp_path / "x.amat"
    path.write_text(text)
    assert np.array_equal(read_amat(path), rows)
    path.write_text(text[:3 * 1568 + 10] + "2" + text[3 * 1568 + 11:])     # same length, one '2'
    with pytest.raises(DataError, match=msg(f"{path}: not a 0/1 .amat file: byte b'2' on line 4")):
        read_amat(path)


@pytest.mark.parametrize("text, error", [
    ("0 1" * 0 + " ".join(["1"] * 783) + "\n", "line 1 has 783 values, expected 784"),
    ("0 " * 784 + "\n" + "0 2" + "\n", "not a 0/1 .amat file: byte b'2' on line 2"),
    ("01 " * 392 + "\n", "not a 0/1 .amat file: values not separated on line 1"),
    ("\n\n", "no images in the file"),
])
def test_amat_parser_errors(tmp_path, text, error):
    path = tmp_path / "x.amat"
    path.write_text(text)
    with pytest.raises(DataError, match=msg(f"{path}: {error}")):
        read_amat(path)


def test_mat_reader_errors(tmp_path):
    path = tmp_path / "x.mat"
    scipy.io.savemat(path, {"Y": np.zeros((2, 784))})
    with pytest.raises(DataError, match=msg(f"{path}: no variable 'X' (variables: Y)")):
        read_mat(path)
    scipy.io.savemat(path, {"X": np.zeros((2, 783))})
    with pytest.raises(DataError, match=msg(f"{path}: X has shape (2, 783), expected (N, 784)")):
        read_mat(path)
    scipy.io.savemat(path, {"X": np.full((2, 784), 0.5)})
    with pytest.raises(DataError, match=msg(f"{path}: X holds values other than 0 and 1")):
        read_mat(path)
    path.write_bytes(b"garbage" * 30)
    with pytest.raises(DataError, match=re.escape(f"{path}: not a readable MATLAB file (")):
        read_mat(path)


# ---------------------------------------------------------------- Omniglot

def glyphs(n, seed):
    """[n, 28, 28] asymmetric test images with values in [0, 1]."""
    g = np.random.default_rng(seed).random((n, 28, 28))
    g[:, :3, :] = 1.0        # a bar along the top: transposing would move it to the left
    g[:, 3:, :3] = 0.0
    return g


def write_chardata(path, train, test):
    """A chardata.mat laid out like Burda's: one image per column in MATLAB (column-major) order."""
    column = lambda images: images.transpose(0, 2, 1).reshape(len(images), 784).T   # [784, N]
    scipy.io.savemat(path, {"data": column(train), "testdata": column(test),
                            "target": np.zeros((50, train.shape[0]))})


def test_omniglot_layout_and_orientation(tmp_path):
    train, test = glyphs(30, 0), glyphs(10, 1)
    (tmp_path / "omniglot").mkdir()
    write_chardata(tmp_path / "omniglot" / "chardata.mat", train, test)
    ds = load_dataset("omniglot", tmp_path, download=False)
    assert ds.train.shape == (30, 784) and ds.test.shape == (10, 784) and ds.valid is None
    assert ds.binarization == "dynamic" and ds.image_shape == (28, 28)
    assert 0 <= ds.train.min() and ds.train.max() <= 1
    # rows come back as the original images in row-major order (top bar stays on top)
    assert np.allclose(ds.train.numpy().reshape(-1, 28, 28), train, atol=1e-7)
    assert np.allclose(ds.test.numpy().reshape(-1, 28, 28), test, atol=1e-7)
    assert (ds.train.reshape(-1, 28, 28)[:, 0, :] == 1).all()


def test_omniglot_paper_split_seed_123(tmp_path):
    train = glyphs(1400, 2)
    (tmp_path / "omniglot").mkdir()
    write_chardata(tmp_path / "omniglot" / "chardata.mat", train, glyphs(3, 3))
    full = load_dataset("omniglot", tmp_path, download=False)
    paper = load_dataset("omniglot", tmp_path, validation="paper", download=False)
    assert paper.train.shape == (55, 784) and paper.valid.shape == (1345, 784)
    order = np.random.RandomState(123).permutation(1400)     # Burda's datasets.py
    assert torch.equal(paper.valid, full.train[order[-1345:]])
    assert torch.equal(paper.train, full.train[order[:-1345]])


def test_omniglot_too_small_for_paper_split(tmp_path):
    path = tmp_path / "omniglot" / "chardata.mat"
    path.parent.mkdir()
    write_chardata(path, glyphs(30, 0), glyphs(2, 1))
    with pytest.raises(DataError, match=msg(
            f"{path}: 30 training images, need more than 1345 for the paper's validation split")):
        load_dataset("omniglot", tmp_path, validation="paper", download=False)


def test_omniglot_layout_errors(tmp_path):
    path = tmp_path / "chardata.mat"
    scipy.io.savemat(path, {"data": np.zeros((700, 4)), "testdata": np.zeros((784, 2))})
    with pytest.raises(DataError, match=msg(f"{path}: 'data' has shape (700, 4), expected (784, N)")):
        read_chardata(path)
    scipy.io.savemat(path, {"data": np.zeros((784, 4))})
    with pytest.raises(DataError, match=msg(f"{path}: no variable 'testdata' (variables: data)")):
        read_chardata(path)
    scipy.io.savemat(path, {"data": np.full((784, 4), 2.0), "testdata": np.zeros((784, 2))})
    with pytest.raises(DataError, match=re.escape(f"{path} 'data': values outside [0, 1] (min 2, max 2)")):
        read_chardata(path)


# ---------------------------------------------------------------- user data

def test_npy_images_uint8_with_held_out_test(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (20, 5, 7), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    ds = load_dataset(str(tmp_path / "x.npy"))
    assert ds.image_shape == (5, 7) and ds.dim == 35
    assert ds.train.shape == (18, 35) and ds.test.shape == (2, 35) and ds.valid is None
    assert ds.binarization == "dynamic"
    assert torch.allclose(ds.test, torch.from_numpy(images[-2:].reshape(2, 35) / 255).float())


def test_npy_flat_binary_is_fixed_and_at_least_one_test_row(tmp_path):
    x = np.random.default_rng(0).integers(0, 2, (5, 784)).astype(np.float64)
    np.save(tmp_path / "x.npy", x)
    ds = load_dataset(str(tmp_path / "x.npy"))
    assert ds.binarization == "fixed" and ds.image_shape == (28, 28)
    assert ds.train.shape == (4, 784) and ds.test.shape == (1, 784)
    np.save(tmp_path / "y.npy", np.zeros((3, 10), bool))      # bool -> float, non-square D
    ds = load_dataset(str(tmp_path / "y.npy"))
    assert ds.train.dtype == torch.float32 and ds.image_shape == (1, 10)


def test_npz_splits_and_single_array(tmp_path):
    rng = np.random.default_rng(0)
    train, test, valid = rng.random((6, 4, 4)), rng.random((3, 4, 4)), rng.random((2, 4, 4))
    np.savez(tmp_path / "a.npz", train=train, test=test, valid=valid)
    ds = load_dataset(str(tmp_path / "a.npz"), validation="paper")
    assert torch.allclose(ds.valid, torch.from_numpy(valid.reshape(2, 16)).float())
    assert ds.test.shape == (3, 16) and ds.train.shape == (6, 16)
    np.savez(tmp_path / "b.npz", pixels=train)
    ds = load_dataset(str(tmp_path / "b.npz"))
    assert ds.train.shape == (5, 16) and ds.test.shape == (1, 16)


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((3, 4)), y=np.zeros((3, 4)))
    with pytest.raises(DataError, match=msg(
            f"{tmp_path / 'a.npz'}: expected keys train and optional test/valid, or a single array; found x, y")):
        load_dataset(str(tmp_path / "a.npz"))
    np.savez(tmp_path / "b.npz", train=np.zeros((3, 4, 4)), test=np.zeros((3, 5, 5)))
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'b.npz'}: splits have different image shapes")):
        load_dataset(str(tmp_path / "b.npz"))
    np.save(tmp_path / "c.npy", np.zeros((3, 4)))
    with pytest.raises(DataError, match=re.escape("validation='paper' needs a 'valid' array")):
        load_dataset(str(tmp_path / "c.npy"), validation="paper")


def test_value_checks(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.linspace(-1, 3, 40).reshape(10, 4))
    with pytest.raises(DataError, match=msg(
            f"{path} 'train': values outside [0, 1] (min -1, max 3); "
            "scale them to [0, 1] or use likelihood='gaussian'")):
        load_dataset(str(path))
    ds = load_dataset(str(path), likelihood="gaussian")
    assert ds.binarization == "none" and ds.train.min() == -1
    x = np.zeros((10, 4))
    x[0, 0], x[1, 1], x[2, 2] = np.nan, np.inf, -np.inf
    np.save(path, x)
    with pytest.raises(DataError, match=msg(f"{path} 'train': 3 non-finite values (NaN or Inf)")):
        load_dataset(str(path), likelihood="gaussian")
    np.save(path, np.zeros((2, 3, 4, 5)))
    with pytest.raises(DataError, match=msg(
            f"{path} 'train': expected an array [N, D] or [N, H, W], got shape (2, 3, 4, 5)")):
        load_dataset(str(path))
    np.save(path, np.zeros((1, 4)))
    with pytest.raises(DataError, match=msg(
            f"{path}: 1 example(s); need at least 2 to hold out a test split")):
        load_dataset(str(path))


def test_image_folder(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (4, 6, 5), dtype=np.uint8)
    for i, g in enumerate(grey):
        Image.fromarray(g).save(tmp_path / f"{i:02d}.png")
    rgb = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "10.png")
    ds = load_dataset(str(tmp_path))
    assert ds.image_shape == (6, 5) and ds.train.shape == (4, 30) and ds.test.shape == (1, 30)
    assert torch.allclose(ds.train, torch.from_numpy(grey.reshape(4, 30) / 255).float())
    luminance = (rgb / 255) @ np.array([0.299, 0.587, 0.114])
    assert np.allclose(ds.test.numpy().reshape(6, 5), luminance, atol=1e-6)
    Image.fromarray(grey[0][:, :4]).save(tmp_path / "20.png")
    with pytest.raises(DataError, match=msg(
            f"{tmp_path / '20.png'}: image is 4x6, expected 5x6 like 00.png")):
        load_dataset(str(tmp_path))


def test_unknown_names_and_options(tmp_path):
    with pytest.raises(DataError, match=msg(
            "unknown dataset 'cifar': not one of mnist, fashion-mnist, binarized-mnist, omniglot, "
            "and no such file or folder")):
        load_dataset("cifar")
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(DataError, match=msg(
            f"{tmp_path / 'x.csv'}: unsupported file type '.csv' (use .npy, .npz or a folder of PNG/JPEG images)")):
        load_dataset(str(tmp_path / "x.csv"))
    with pytest.raises(DataError, match=msg("unknown validation 'last': expected one of none, paper")):
        load_dataset("mnist", validation="last")
    with pytest.raises(DataError, match=msg("unknown likelihood 'poisson': expected one of bernoulli, gaussian")):
        load_dataset("mnist", likelihood="poisson")


# ---------------------------------------------------------------- binarize

def test_binarize_mean_matches_probabilities():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1000, generator=g)
    x[:2] = torch.tensor([0.0, 1.0])
    draws = binarize(x.expand(4000, -1), generator=g)                 # [4000, 1000]
    assert draws.dtype == x.dtype and draws.shape == (4000, 1000)
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    # each mean has sd <= sqrt(0.25 / 4000) = 0.0079; 0.045 is 5.7 sd
    assert (draws.mean(0) - x).abs().max() < 0.045
    assert draws[:, 0].sum() == 0 and draws[:, 1].sum() == 4000


def test_binarize_is_reproducible_with_a_seeded_generator():
    x = torch.full((50, 784), 0.5)
    a = binarize(x, torch.Generator().manual_seed(7))
    b = binarize(x, torch.Generator().manual_seed(7))
    c = binarize(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_binarize_keeps_nan_and_draws_the_rest_as_without_it():
    x = torch.rand(30, 20, generator=torch.Generator().manual_seed(0))
    holes = remove_pixels(x, 0.4, seed=0)
    g, g_holes = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    full, both = binarize(x, g), binarize(holes, g_holes)
    nan = torch.isnan(holes)
    assert torch.equal(torch.isnan(both), nan) and torch.equal(both[~nan], full[~nan])
    assert torch.equal(g.get_state(), g_holes.get_state())            # one draw per entry either way


# ---------------------------------------------------------------- data dir, listing, missing files

def test_resolve_data_dir_order(monkeypatch, tmp_path):
    monkeypatch.setenv("IWAE_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(str(tmp_path / "arg")) == tmp_path / "arg"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("IWAE_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_data_dir(None) == tmp_path / "xdg" / "iwae"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_dir(None) == tmp_path / "home" / ".cache" / "iwae"


def test_describe_datasets(data_dir, tmp_path):
    listed = {d["name"]: d for d in describe_datasets(data_dir)}
    assert list(listed) == list(DATASETS) == ["mnist", "fashion-mnist", "binarized-mnist", "omniglot"]
    assert listed["mnist"]["found"] and listed["binarized-mnist"]["found"]
    assert listed["mnist"]["path"] == str(Path(data_dir) / "mnist")
    assert listed["mnist"]["files"] == ["train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"]
    assert listed["omniglot"]["found"] is (Path(data_dir) / "omniglot" / "chardata.mat").is_file()
    assert not any(d["found"] for d in describe_datasets(tmp_path))


def test_missing_files_without_download(tmp_path):
    with pytest.raises(DataError, match=msg(
            f"mnist: missing train-images-idx3-ubyte.gz, t10k-images-idx3-ubyte.gz in {tmp_path / 'mnist'} "
            "(download=False); put the files there")):
        load_dataset("mnist", tmp_path, download=False)


def test_binarized_mnist_is_never_fetched_over_http(tmp_path, monkeypatch):
    monkeypatch.delenv("IWAE_MIRROR", raising=False)
    with pytest.raises(DataError, match=msg(
            "binarized-mnist: missing binarized_mnist_train.amat.gz, binarized_mnist_valid.amat.gz, "
            f"binarized_mnist_test.amat.gz in {tmp_path / 'binarized_mnist'}; the files are served only "
            "over plain http (http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/), "
            "which iwae does not download: fetch them yourself and put them there")):
        load_dataset("binarized-mnist", tmp_path)

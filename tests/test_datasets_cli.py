"""Every dataset through the command line: train, evaluate, sample, plot, reproduce, `iwae datasets`.

Real files (IWAE_DATA_DIR) for binarized-mnist and fashion-mnist; a synthetic chardata.mat of
Burda's layout for Omniglot (the real file is not available here); synthetic user arrays and
images. Runs are tiny and in-process (iwae.app.cli.main) except `reproduce`, which spawns its runs.
"""
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import scipy.io
import torch

from iwae.app import plots
from iwae.training.tracking import GAP
from iwae.app.cli import main
from iwae.training.rundir import read_spec
from iwae.data import load_dataset
from iwae.app.reproduce import PAPER_TABLE3
from iwae.training.rundir import CHECKPOINT, load_model
from iwae.evaluation.likelihood import fixed_binarization

TINY = ["--limit-train", "40", "--epochs", "1", "--k", "2", "--final-k", "5", "--final-limit-test", "10",
        "--eval-examples", "10", "--quiet"]


pytestmark = pytest.mark.usefixtures("one_thread")


def cli(capsys, *argv):
    """(exit status, stdout, stderr) of `iwae ARGV`, run in this process."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:                       # argparse usage errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def ok(capsys, *argv):
    rc, out, err = cli(capsys, *argv)
    assert rc == 0, err
    return out


def train_and_evaluate(capsys, run, dataset, *extra, n_test=10):
    """Train a tiny run; its eval.json and a separate `iwae evaluate --json`, both checked finite.

    n_test: the test images evaluated, min(10, the size of the test split).
    """
    out = ok(capsys, "train", "--dataset", dataset, "--out", run, *TINY, *extra)
    assert f"test NLL (L_5, {n_test} test images)" in out
    final = json.loads((run / "eval.json").read_text())
    data_dir = [extra[extra.index("--data-dir") + 1]] if "--data-dir" in extra else []
    result = json.loads(ok(capsys, "evaluate", run, "--k", "5", "--limit-test", "10", "--json",
                           *(["--data-dir", *data_dir] if data_dir else [])))
    assert result["n_test"] == n_test and result["k"] == 5
    assert math.isfinite(final["test_nll"]) and math.isfinite(result["test_nll"])
    return result


def read_png(path):
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(path)


def grid_height(rows, h, scale=1):
    """Height in pixels of a titled image grid (see plots.image_grid)."""
    return (rows * (h + GAP) + GAP + plots.TITLE_PX) * scale


def sample_and_plot(capsys, run, shape, *extra):
    """`iwae sample` (4 samples: a 2x2 grid of shape tiles) and `iwae plot`; the PNGs checked."""
    h, w = shape
    png = Path(ok(capsys, "sample", run, "--n", "4", "--out", run / "s.png", *extra).strip())
    pixels = read_png(png)
    assert pixels.shape[0] == grid_height(2, h) and pixels.shape[1] >= 2 * (w + GAP) + GAP
    paths = [Path(p) for p in ok(capsys, "plot", run, "--limit", "20", *extra).split()]
    assert [p.name for p in paths] == ["learning_curves.png", "reconstructions.png", "active_units.png"]
    assert read_png(run / "reconstructions.png").shape[0] == grid_height(2, h, scale=2)   # data + recon
    for p in paths:
        read_png(p)


# ------------------------------------------------------------------ named datasets, real files

def test_binarized_mnist_is_used_as_is(tmp_path, data_dir, capsys, monkeypatch):
    """The fixed binarization: the 0/1 rows of the files are what is trained and evaluated on.

    torch.bernoulli is made to fail, so the run proves no binarization draw happens anywhere
    (the training batches, the held-out set, the final and the separate evaluation).
    """
    def no_draws(*args, **kwargs):
        raise AssertionError("binarized-mnist must not be re-binarized")

    monkeypatch.setattr(torch, "bernoulli", no_draws)
    with pytest.raises(AssertionError):                      # the guard catches the dynamic path
        fixed_binarization(torch.full((1, 4), 0.5), "dynamic")
    run = tmp_path / "run"
    result = train_and_evaluate(capsys, run, "binarized-mnist", "--data-dir", data_dir)
    again = json.loads(ok(capsys, "evaluate", run, "--k", "5", "--limit-test", "10", "--json",
                          "--data-dir", data_dir))
    assert again == result                                   # same seed: the same numbers
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "valid_bound" in metrics[0]                       # its own 10k validation split

    ds = load_dataset("binarized-mnist", data_dir, download=False)
    assert ds.binarization == "fixed"
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (50000, 10000, 10000)
    mat = scipy.io.loadmat(Path(data_dir) / "binarized_mnist" / "binarized_mnist_test.mat")["X"]
    assert torch.equal(ds.test, torch.from_numpy(mat.astype(np.float32)))   # the .mat copy, bit for bit
    for seed in (1, 2):                                      # evaluation seeds change no pixel
        assert fixed_binarization(ds.test, ds.binarization, seed) is ds.test


def test_fashion_mnist_train_evaluate_sample_plot(tmp_path, data_dir, capsys):
    run = tmp_path / "run"
    train_and_evaluate(capsys, run, "fashion-mnist", "--data-dir", data_dir)
    assert read_spec(run).dataset == "fashion-mnist"
    sample_and_plot(capsys, run, (28, 28), "--data-dir", data_dir)


def test_binary_data_with_a_gaussian_likelihood_is_refused(tmp_path, data_dir, capsys):
    rc, out, err = cli(capsys, "train", "--dataset", "binarized-mnist", "--likelihood", "gaussian",
                       "--data-dir", data_dir, "--out", tmp_path / "run", *TINY)
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith("iwae: error: binarized-mnist: every training value is 0 or 1")
    assert "use likelihood bernoulli" in err and not (tmp_path / "run").exists()


# ------------------------------------------------------------------ Omniglot, synthetic file

def test_omniglot_from_a_synthetic_chardata_mat(tmp_path, capsys):
    """Burda's layout: data 784 x N and testdata 784 x M, one image per column, values in [0, 1]."""
    rng = np.random.default_rng(0)
    (tmp_path / "data" / "omniglot").mkdir(parents=True)
    scipy.io.savemat(tmp_path / "data" / "omniglot" / "chardata.mat",
                     {"data": rng.random((784, 60)), "testdata": rng.random((784, 20))})
    rc, out, _ = cli(capsys, "datasets", "--data-dir", tmp_path / "data")
    assert rc == 0 and line_of(out, "omniglot").split()[1] == "found"
    train_and_evaluate(capsys, tmp_path / "run", "omniglot", "--data-dir", tmp_path / "data")
    assert torch.load(tmp_path / "run" / CHECKPOINT, weights_only=False)["input_dim"] == 784


# ------------------------------------------------------------------ your own data

def test_user_npy_of_non_square_images(tmp_path, capsys):
    """uint8 [N, 12, 10]: the paper net takes 120 inputs, and the pictures have 12x10 tiles."""
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (60, 12, 10), dtype=np.uint8))
    run = tmp_path / "run"
    train_and_evaluate(capsys, run, path, n_test=6)                 # the last 10% held out
    model = load_model(run)
    assert model.encoder[0].net[0].in_features == 120 and model.decoder[-1].out_features == 120
    ds = load_dataset(str(path))
    assert ds.image_shape == (12, 10) and ds.binarization == "dynamic" and len(ds.test) == 6
    assert 0 <= ds.train.min() and ds.train.max() <= 1
    sample_and_plot(capsys, run, (12, 10))


def test_user_folder_of_png_images(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(50):
        matplotlib.image.imsave(folder / f"{i:03d}.png", rng.random((9, 7)), cmap="gray", vmin=0, vmax=1)
    run = tmp_path / "run"
    train_and_evaluate(capsys, run, folder, n_test=5)
    assert load_dataset(str(folder)).image_shape == (9, 7)
    assert torch.load(run / CHECKPOINT, weights_only=False)["input_dim"] == 63


def test_continuous_npz_with_a_gaussian_likelihood(tmp_path, capsys):
    """Values outside [0, 1] are fine for a Gaussian; the decoder gives a mean and a log sigma per pixel."""
    rng = np.random.default_rng(0)
    path = tmp_path / "x.npz"
    np.savez(path, train=rng.normal(0, 2, (60, 6, 5)), test=rng.normal(0, 2, (15, 6, 5)))
    run = tmp_path / "run"
    result = train_and_evaluate(capsys, run, path, "--likelihood", "gaussian")
    assert math.isfinite(result["elbo_nll"])
    model = load_model(run)
    assert model.likelihood.config() == {"name": "gaussian", "scale": None}
    assert model.decoder[-1].out_features == 2 * 30
    assert load_dataset(str(path), likelihood="gaussian").binarization == "none"
    sample_and_plot(capsys, run, (6, 5))


def bad_inputs(tmp_path):
    csv_file = tmp_path / "x.csv"
    csv_file.write_text("0,1\n1,0\n")
    outside = tmp_path / "outside.npy"
    np.save(outside, np.linspace(-1, 2, 40).reshape(10, 4))
    nan = tmp_path / "nan.npy"
    x = np.full((10, 4), 0.5)
    x[3, 2] = np.nan
    np.save(nan, x)
    binary = tmp_path / "binary.npy"
    np.save(binary, np.eye(10, 4))
    return [
        (["--dataset", csv_file], "unsupported file type '.csv'"),
        (["--dataset", outside], "values outside [0, 1] (min -1, max 2)"),
        (["--dataset", nan, "--likelihood", "gaussian"], "1 non-finite values (NaN or Inf)"),
        (["--dataset", "no-such-dataset"], "unknown dataset 'no-such-dataset'"),
        (["--dataset", binary, "--likelihood", "gaussian"], "every training value is 0 or 1"),
        (["--dataset", outside, "--likelihood", "poisson"], "argument --likelihood: invalid choice"),
    ]


def test_bad_inputs_fail_with_one_line(tmp_path, capsys):
    for extra, message in bad_inputs(tmp_path):
        run = tmp_path / "run"
        rc, out, err = cli(capsys, "train", "--out", run, *TINY, *extra)
        assert rc == 2, (extra, err)
        assert len(err.splitlines()) == 1 and err.startswith("iwae: error: "), err
        assert message in err, err
        assert not run.exists()


# ------------------------------------------------------------------ iwae datasets

def line_of(out, name):
    return next(line for line in out.splitlines() if line.split()[:1] == [name])


def test_datasets_lists_names_status_and_paths(data_dir, capsys):
    out = ok(capsys, "datasets", "--data-dir", data_dir)
    for name, folder in [("mnist", "mnist"), ("fashion-mnist", "fashion_mnist"),
                         ("binarized-mnist", "binarized_mnist"), ("omniglot", "omniglot")]:
        fields = line_of(out, name).split()
        assert fields[1] == ("missing" if name == "omniglot" else "found")
        assert fields[2] == str(Path(data_dir) / folder)
    assert "omniglot: needs chardata.mat" in out
    listed = json.loads(ok(capsys, "datasets", "--data-dir", data_dir, "--json"))
    assert {d["name"]: d["found"] for d in listed} == {
        "mnist": True, "fashion-mnist": True, "binarized-mnist": True, "omniglot": False}
    assert all({"name", "description", "files", "found", "path"} <= set(d) for d in listed)


# ------------------------------------------------------------------ reproduce, Table 3

def test_reproduce_table_3_on_a_tiny_budget(tmp_path, data_dir):
    done = subprocess.run(
        [sys.executable, "-m", "iwae", "reproduce", "--table", "3", "--epochs", "1", "--limit-train", "40",
         "--limit-test", "20", "--final-k", "10", "--jobs", "2", "--out", str(tmp_path / "runs"),
         "--results", str(tmp_path / "results"), "--data-dir", data_dir],
        capture_output=True, text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader((tmp_path / "results" / "table3.csv").open()))
    assert len(rows) == 12 and {r["dataset"] for r in rows} == {"binarized-mnist"}
    assert {(int(r["layers"]), r["objective"], int(r["k"])) for r in rows} == set(PAPER_TABLE3)
    assert all(math.isfinite(float(r["test_nll"])) for r in rows)
    table = (tmp_path / "results" / "table3.md").read_text()
    for (layers, objective, k), nll in PAPER_TABLE3.items():
        prefix = f"| binarized-mnist | {layers} | {objective} | {k} | 1 | "
        line = next(line for line in table.splitlines() if line.startswith(prefix))
        assert line.split("|")[9].strip() == str(nll)        # the paper's NLL column
        assert math.isfinite(float(line.split("|")[13]))      # train - test L_k (overfitting)
    assert all(math.isfinite(float(r["train_minus_test"])) for r in rows)

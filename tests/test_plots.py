"""The pictures: exact grid layouts, seeded samples, reconstructions, curves, and `iwae sample/plot`."""
import json

import matplotlib.image
import numpy as np
import pytest
import torch

import iwae
from iwae.app import plots
from iwae.training.tracking import GAP, GAP_VALUE
from iwae.app.cli import main
from iwae.training.spec import PaperSpec
from iwae.training.paper import train

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LEVEL = 0.5 / 255 + 1e-6          # half a grey level of an 8-bit PNG


def read_png(path):
    """The RGBA pixels [height, width, 4] of a PNG file, after checking its signature."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    return matplotlib.image.imread(path)


def tile(pixels, row, col, shape, scale=1, band=0, grid_width=None):
    """The grey levels [H, W] of the grid tile in (row, col), one pixel per scale x scale square.

    grid_width: the grid's width in pixels, where a wider title centres it in the PNG.
    """
    h, w = shape
    top = band + (GAP + row * (h + GAP)) * scale
    left = (pixels.shape[1] - grid_width) // 2 if grid_width else 0
    left += (GAP + col * (w + GAP)) * scale
    return pixels[top:top + h * scale:scale, left:left + w * scale:scale, 0]


@pytest.fixture
def model():
    torch.manual_seed(0)
    return iwae.Model(iwae.paper_gaussian_layer([784, 32], 4), iwae.mlp([4, 32], 784))


def metrics(held="test", epochs=5):
    return [{"epoch": e, "steps": 30 * e, "lr": 1e-3 * 10 ** (-e / 7), "train_bound": -200 + 5 * e,
             f"{held}_bound": -198 + 4 * e, "eval_k": 5, "seconds": 1.5} for e in range(1, epochs + 1)]


def test_image_grid_places_every_image_pixel_for_pixel(tmp_path):
    images = torch.rand(23, 6 * 5, generator=torch.Generator().manual_seed(0))
    pixels = read_png(plots.image_grid(images, (6, 5), tmp_path / "g.png", nrow=10))
    assert pixels.shape == (3 * (6 + 2) + 2, 10 * (5 + 2) + 2, 4)            # 3 rows of 10, gaps of 2
    for i, image in enumerate(images):
        np.testing.assert_allclose(tile(pixels, i // 10, i % 10, (6, 5)), image.reshape(6, 5), atol=LEVEL)
    assert np.allclose(pixels[:2, :, :3], GAP_VALUE, atol=LEVEL)          # the frame
    assert np.allclose(tile(pixels, 2, 5, (6, 5)), GAP_VALUE, atol=LEVEL)  # past the last image


def test_image_grid_title_and_scale(tmp_path):
    images = torch.rand(4, 25)
    pixels = read_png(plots.image_grid(images, (5, 5), tmp_path / "g.png", nrow=2, title="t", scale=3))
    assert pixels.shape == ((plots.TITLE_PX + 2 * 7 + 2) * 3, (2 * 7 + 2) * 3, 4)
    np.testing.assert_allclose(tile(pixels, 1, 1, (5, 5), 3, plots.TITLE_PX * 3), images[3].reshape(5, 5),
                               atol=LEVEL)
    with pytest.raises(ValueError, match=r"expected images \[N >= 1, 10\] for image_shape \(2, 5\), got \[4, 25\]"):
        plots.image_grid(images, (2, 5), tmp_path / "bad.png")


def test_a_wider_title_widens_the_png_and_centres_the_grid(tmp_path):
    images = torch.rand(4, 9)
    pixels = read_png(plots.image_grid(images, (3, 3), tmp_path / "g.png", nrow=4, title="a long title"))
    assert pixels.shape[0] == plots.TITLE_PX + 3 + 4 and pixels.shape[1] > 4 * 5 + 2
    for i, image in enumerate(images):
        np.testing.assert_allclose(tile(pixels, 0, i, (3, 3), band=plots.TITLE_PX, grid_width=4 * 5 + 2),
                                   image.reshape(3, 3), atol=LEVEL)
    assert np.all(pixels[-1, 0] == 1)                                         # white beside the grid


def test_samples_are_seeded_and_leave_the_callers_rng_alone(tmp_path, model):
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    a = read_png(plots.plot_samples(model, (28, 28), tmp_path / "a.png", n=100, seed=1))
    assert torch.equal(torch.rand(3), expected)
    b = read_png(plots.plot_samples(model, (28, 28), tmp_path / "b.png", n=100, seed=1))
    c = read_png(plots.plot_samples(model, (28, 28), tmp_path / "c.png", n=100, seed=2))
    assert a.shape == (plots.TITLE_PX + 10 * 30 + 2, 10 * 30 + 2, 4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    torch.manual_seed(1)
    first = model.sample(100)[0].reshape(28, 28)
    np.testing.assert_allclose(tile(a, 0, 0, (28, 28), band=plots.TITLE_PX), first, atol=LEVEL)


def test_reconstructions_show_the_images_above_their_reconstructions(tmp_path, model):
    x = torch.bernoulli(torch.full((12, 784), 0.3), generator=torch.Generator().manual_seed(0))
    pixels = read_png(plots.plot_reconstructions(model, x, (28, 28), tmp_path / "r.png", n=10))
    band = 2 * plots.TITLE_PX
    assert pixels.shape == (band + 2 * (2 * 30 + 2), 2 * (10 * 30 + 2), 4)
    recon = model.reconstruct(x[:10])
    for i in range(10):
        np.testing.assert_allclose(tile(pixels, 0, i, (28, 28), 2, band), x[i].reshape(28, 28), atol=LEVEL)
        np.testing.assert_allclose(tile(pixels, 1, i, (28, 28), 2, band), recon[i].reshape(28, 28), atol=LEVEL)


@pytest.mark.parametrize("held", ["test", "valid"])
def test_learning_curves(tmp_path, held):
    assert read_png(plots.plot_learning_curves(metrics(held), tmp_path / "l.png")).shape == (400, 1000, 4)


def test_learning_curves_refuse_missing_values(tmp_path):
    with pytest.raises(ValueError, match="^no metrics to plot"):
        plots.plot_learning_curves([], tmp_path / "l.png")
    broken = metrics()
    del broken[2]["lr"]
    with pytest.raises(ValueError, match="^metrics record 3 lacks lr$"):
        plots.plot_learning_curves(broken, tmp_path / "l.png")


def test_active_units(tmp_path):
    variances = [torch.logspace(-4, 0, 50), torch.tensor([0.5, 1e-3, 0.2])]
    assert read_png(plots.plot_active_units(variances, tmp_path / "a.png")).shape == (400, 600, 4)


def test_plot_runs_draws_one_panel_per_layer_count_and_skips_runs_without_epochs(tmp_path):
    from iwae.training import rundir
    dirs = []
    for name, layers, epochs in [("a", 1, 5), ("b", 2, 3), ("c", 1, 0), ("d", 2, 5)]:
        run_dir = tmp_path / name
        with rundir.open_run(run_dir, PaperSpec(layers=layers)):      # config.json
            pass
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics(epochs=epochs)))
        dirs.append(run_dir)
    (dirs[0] / "eval.json").write_text(json.dumps({"test_nll": 160.0}))     # a finished run: a star
    assert read_png(plots.plot_runs(dirs, tmp_path / "r.png", "T")).shape == (500, 1200, 4)
    assert read_png(plots.plot_runs(dirs[:1], tmp_path / "r.png", "T")).shape == (500, 600, 4)


def test_read_metrics(tmp_path):
    from iwae.training import rundir
    lines = [json.dumps(m) for m in metrics()]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n\n" + lines[2] + "\n")
    assert rundir.read_metrics(tmp_path) == metrics()[:3]
    (tmp_path / "metrics.jsonl").write_text(lines[0] + "\n" + '{"epoch": 2' + "\n")
    with pytest.raises(ValueError) as err:
        rundir.read_metrics(tmp_path)
    assert str(err.value) == f"{tmp_path / 'metrics.jsonl'}, line 2: malformed JSON (Expecting ',' delimiter)"
    (tmp_path / "metrics.jsonl").write_text("[1, 2]\n")
    with pytest.raises(ValueError, match=r"line 1: expected a JSON object$"):
        rundir.read_metrics(tmp_path)


@pytest.fixture
def run(tmp_path):
    """A two-epoch run on a synthetic data set of 6 x 10 grey images."""
    g = torch.Generator().manual_seed(0)
    data = tmp_path / "data.npz"
    np.savez(data, train=torch.rand(60, 6, 10, generator=g).numpy(),
             test=torch.rand(12, 6, 10, generator=g).numpy())
    config = PaperSpec(dataset=str(data), epochs=2, k=2, eval_examples=10, schedule="constant", quiet=True)
    train(config, tmp_path / "run")
    return tmp_path / "run"


def test_cli_sample_and_plot(run, capsys):
    assert main(["sample", str(run), "--n", "12", "--seed", "3"]) == 0
    assert capsys.readouterr().out == f"{run / 'samples.png'}\n"
    samples = read_png(run / "samples.png")
    assert samples.shape[0] == plots.TITLE_PX + 3 * 8 + 2                    # 3 rows of 4 images, 6 x 10
    assert main(["plot", str(run), "--limit", "50"]) == 0
    names = ["learning_curves.png", "reconstructions.png", "active_units.png"]
    assert capsys.readouterr().out == "".join(f"{run / name}\n" for name in names)
    recon = read_png(run / "reconstructions.png")
    assert recon.shape[0] == 2 * (plots.TITLE_PX + 2 * 8 + 2)               # 2 rows of 10 images, 6 x 10
    tiles = [tile(recon, 0, i, (6, 10), 2, 2 * plots.TITLE_PX, grid_width=2 * (10 * 12 + 2)) for i in range(10)]
    assert set(np.unique(tiles)) == {0, 1}                                   # binarized test images
    for name in names:
        read_png(run / name)


def test_cli_plot_of_a_missing_run_fails_with_one_line(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err == f"iwae: error: {tmp_path / 'nothing'} is not a run directory (no config.json)\n"

"""`iwae train --missing P` and `iwae evaluate --missing P`: MCAR pixels removed from every
image (seeded), the bound over the observed pixels, the imputation of the removed ones."""
import json

import pytest
import torch

from iwae.app.cli import main
from iwae.data import DataError, remove_pixels
from iwae.evaluation.likelihood import fixed_binarization

TINY = ["--dataset", "binarized-mnist", "--epochs", "1", "--limit-train", "100", "--eval-examples", "20",
        "--final-k", "10", "--final-limit-test", "20", "--compile", "off", "--quiet"]


def test_remove_pixels_takes_the_same_number_from_every_row_seeded():
    x = torch.rand(50, 40)
    holes = remove_pixels(x, 0.5, seed=3)
    assert (torch.isnan(holes).sum(1) == 20).all()
    assert torch.equal(holes[~torch.isnan(holes)], x[~torch.isnan(holes)])
    assert torch.equal(torch.isnan(remove_pixels(x, 0.5, seed=3)), torch.isnan(holes))
    assert not torch.equal(torch.isnan(remove_pixels(x, 0.5, seed=4)), torch.isnan(holes))
    assert torch.equal(remove_pixels(x, 0.0, seed=3), x)
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(DataError, match=r"^the missing fraction must be in \[0, 1\)"):
            remove_pixels(x, bad, seed=0)


def test_fixed_binarization_keeps_nan_and_draws_the_rest_as_without_it():
    x = torch.rand(30, 20)
    holes = remove_pixels(x, 0.4, seed=0)
    both = fixed_binarization(holes, "dynamic", seed=5)
    nan = torch.isnan(holes)
    assert torch.equal(torch.isnan(both), nan)
    assert torch.equal(both[~nan], fixed_binarization(x, "dynamic", seed=5)[~nan])


def test_train_and_evaluate_with_missing_pixels(tmp_path, capsys, data_dir):
    run = tmp_path / "holes"
    assert main(["train", "--missing", "0.5", "--out", str(run), "--data-dir", str(data_dir)] + TINY) == 0
    out = capsys.readouterr().out
    assert "with 50% of every image's pixels removed" in out and "imputed right" in out
    assert json.loads((run / "config.json").read_text())["missing"] == 0.5
    record = json.loads((run / "eval.json").read_text())
    assert record["missing"] == 0.5 and 0.5 < record["imputation_accuracy"] <= 1
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(m["train_bound"] == m["train_bound"] for m in metrics)          # not NaN
    complete = tmp_path / "complete"
    assert main(["train", "--out", str(complete), "--data-dir", str(data_dir)] + TINY) == 0
    capsys.readouterr()
    assert main(["evaluate", str(complete), "--missing", "0.5", "--k", "10", "--limit-test", "20", "--json",
                 "--quiet", "--data-dir", str(data_dir)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["missing"] == 0.5 and 0.5 < result["imputation_accuracy"] <= 1
    assert main(["train", "--out", str(run), "--resume", "--missing", "0.3", "--data-dir", str(data_dir)]
                + TINY[:2]) == 2
    assert "missing" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["1", "-0.1", "x", "1.5"])
def test_missing_outside_0_1_is_one_line_and_exit_2(value, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--missing", value])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1 and "--missing" in err

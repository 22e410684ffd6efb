"""Half-observed binarized MNIST: the paper's 1-layer net trained on images with 50% of their
pixels removed, beside the same net trained on complete images (docs/missing.md).

    python -m benchmarks.imputation_images [--epochs 20] [--k 1000] [--limit-test 2000]

Trains both with ``iwae train`` (resumable: a finished run is not trained again), evaluates
each with ``iwae evaluate --missing 0.5`` (the bound of the observed pixels of equally masked
test images, and the fraction of removed pixels the single imputation gets right), and draws
results/imputation_images.png: originals, masked, single imputation, three multiple imputations.
"""
import argparse
import contextlib
import io
import json
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parents[1] / "results"


def train(run, epochs, missing, data_dir, limit_train=None):
    from iwae.app.cli import main
    from iwae.training import rundir
    if rundir.recorded_epochs(run) >= epochs:
        return
    args = ["train", "--dataset", "binarized-mnist", "--epochs", str(epochs), "--out", str(run), "--final-k", "0",
            "--quiet"] + (["--missing", str(missing)] if missing else []) + (["--resume"] if run.exists() else [])
    args += ["--data-dir", data_dir] if data_dir else []
    args += ["--limit-train", str(limit_train)] if limit_train else []
    assert main(args) == 0, f"iwae {' '.join(args)} failed"


def evaluate(run, k, limit, data_dir):
    from iwae.app.cli import main
    args = ["evaluate", str(run), "--missing", "0.5", "--k", str(k), "--limit-test", str(limit), "--json", "--quiet"]
    args += ["--data-dir", data_dir] if data_dir else []
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(args) == 0
    return json.loads(out.getvalue())


def figure(run, path, data_dir, n=8):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from iwae.data import load_dataset, remove_pixels
    from iwae.evaluation.imputation import impute, multiple_impute
    from iwae.training.rundir import load_model
    model = load_model(run)
    model.missing = True
    test = load_dataset("binarized-mnist", data_dir).test
    x = test[torch.arange(n) * (test.shape[0] // n)]          # spread over the (digit-sorted) test set
    holes = remove_pixels(x, 0.5, 1234)
    torch.manual_seed(0)
    rows = [x, torch.nan_to_num(holes, nan=0.5), impute(model, holes, draws=1000),
            *multiple_impute(model, holes, 3, draws=1000)]
    names = ["original", "50% removed (grey)", "single imputation", "multiple 1", "multiple 2", "multiple 3"]
    fig, axes = plt.subplots(len(rows), n, figsize=(n, len(rows) * 1.1))
    for r, (row, name) in enumerate(zip(rows, names)):
        for c in range(n):
            axes[r, c].imshow(row[c].reshape(28, 28).numpy(), cmap="gray", vmin=0, vmax=1)
            axes[r, c].axis("off")
        axes[r, 0].set_title(name, fontsize=7, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--limit-test", type=int, default=2000)
    p.add_argument("--runs", type=Path, default=Path("runs/imputation_images"))
    p.add_argument("--data-dir")
    p.add_argument("--limit-train", type=int, help="the first N training images (a smoke test)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    masked, complete = args.runs / "masked", args.runs / "complete"
    train(masked, args.epochs, 0.5, args.data_dir, args.limit_train)
    train(complete, args.epochs, 0.0, args.data_dir, args.limit_train)
    results = {name: evaluate(run, args.k, args.limit_test, args.data_dir)
               for name, run in (("masked", masked), ("complete", complete))}
    figure(masked, args.out / "imputation_images.png", args.data_dir)
    lines = ["# Half-observed binarized MNIST", "",
             f"`python -m benchmarks.imputation_images --epochs {args.epochs} --k {args.k} --limit-test "
             f"{args.limit_test}`: the paper's 1-layer net, {args.epochs} epochs of the paper's schedule, k=5; "
             f"evaluated on the first {args.limit_test} test images with 50% of each image's pixels removed "
             "(seed 1234).", "",
             "| trained on | -L_k of the observed pixels (nats) | removed pixels imputed right |", "|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {'images with 50% removed' if name == 'masked' else 'complete images'} | "
                     f"{r['test_nll']:.2f} (k={r['k']}) | {100 * r['imputation_accuracy']:.2f}% |")
    lines += ["", "![originals, masked, imputations](imputation_images.png)", ""]
    (args.out / "imputation_images.md").write_text("\n".join(lines))
    (args.out / "imputation_images.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

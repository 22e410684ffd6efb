"""Pictures of a model and its run: sample grids, reconstructions, learning curves, active units.

Every function writes one PNG and returns its path. Figures are drawn on
``matplotlib.figure.Figure`` objects with the Agg renderer (no pyplot, no global state).
Image grids are placed pixel for pixel (no resampling): tiles of H x W pixels, 2-pixel
mid-grey gaps between them and around them, values clipped to [0, 1] (black to white).
"""
import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..data import load_dataset
from ..evaluation.likelihood import EVAL_SEED, fixed_binarization
from ..evaluation.units import ACTIVE_UNIT_EXAMPLES, active_units
from ..runtime.rng import forked_rng
from ..training.paper import run_data
from ..training.rundir import load_model, read_eval, read_metrics, read_spec
from ..training.schedule import STAGE_ENDS
from ..training.tracking import grid_array

DPI = 100
TITLE_PX = 24           # height of the band above a grid that holds its title


def image_grid(images, image_shape, path, nrow=10, title=None, scale=1):
    """Tile images [N, H*W] (values in [0, 1]) into one grey PNG, nrow images per row.

    The grid is (rows * (H + 2) + 2) * scale pixels high and (min(nrow, N) * (W + 2) + 2) * scale
    wide, rows = ceil(N / nrow); image i sits in row i // nrow, column i % nrow. scale: an
    integer enlargement (each pixel a square). A title adds a band of TITLE_PX * scale pixels
    on top; the PNG is as wide as the grid, or as the title where that is wider (the grid then
    centred on white).
    """
    grey = grid_array(images, image_shape, nrow).repeat(scale, 0).repeat(scale, 1)
    fig = Figure(dpi=DPI)
    height, width = grey.shape
    if title:
        band = TITLE_PX * scale
        text = fig.text(0.5, 1 - band / 2 / (height + band), title, ha="center", va="center",
                        fontsize=9 * scale)
        width = max(width, math.ceil(text.get_window_extent(FigureCanvasAgg(fig).get_renderer()).width)
                    + 8 * scale)
        height += band
    # +0.5: Agg truncates the figure size in pixels, and width / DPI * DPI may fall just short
    fig.set_size_inches((width + 0.5) / DPI, (height + 0.5) / DPI)
    fig.figimage(np.stack([grey] * 3, -1), xo=(width - grey.shape[1]) // 2,
                 origin="upper")                                     # RGB bytes: drawn as they are
    return save(fig, path)


@torch.no_grad()
def plot_samples(model, image_shape, path, n=100, seed=0):
    """n draws of the likelihood's mean under the prior (model.sample(n) -> [n, H*W]) as a
    square-ish grid; the same seed gives the same picture, and the caller's RNG is untouched."""
    with forked_rng(next(model.parameters()).device):
        torch.manual_seed(seed)
        images = model.sample(n)
    return image_grid(images, image_shape, path, nrow=math.ceil(math.sqrt(n)),
                      title=f"{n} samples from the prior (seed {seed})")


@torch.no_grad()
def plot_reconstructions(model, x, image_shape, path, n=10):
    """The first n images of x [N, H*W] in the top row, their reconstructions
    (model.reconstruct -> [n, H*W]) in the bottom row, drawn at twice the size."""
    x = x[:n]
    with forked_rng(x.device):              # upper layers of encode() draw samples
        recon = model.reconstruct(x)
    return image_grid(torch.cat([x.to(recon), recon]), image_shape, path, nrow=len(x),
                      title="top: data, bottom: reconstructions", scale=2)


def plot_learning_curves(metrics, path):
    """Bounds and learning rate per epoch from the records of metrics.jsonl (see read_metrics).

    Left: train_bound (the training objective's bound, averaged over the epoch) and the
    held-out L_k (test_bound or valid_bound) in nats; right: the learning rate, log scale.
    """
    if not metrics:
        raise ValueError("no metrics to plot: the run has not finished an epoch")
    held = "valid" if "valid_bound" in metrics[0] else "test"
    for i, record in enumerate(metrics, 1):
        missing = [key for key in ("epoch", "train_bound", f"{held}_bound", "lr") if key not in record]
        if missing:
            raise ValueError(f"metrics record {i} lacks {', '.join(missing)}")
    epoch = [m["epoch"] for m in metrics]
    fig = Figure(figsize=(10, 4), dpi=DPI, layout="constrained")
    bounds, lr = fig.subplots(1, 2)
    bounds.plot(epoch, [m["train_bound"] for m in metrics], "o-", ms=3, label="train (training objective)")
    k = metrics[-1].get("eval_k")
    bounds.plot(epoch, [m[f"{held}_bound"] for m in metrics], "o-", ms=3,
                label=f"{held} $L_{{{k}}}$" if k else held)
    bounds.set(xlabel="epoch", ylabel="bound (nats)", title="lower bounds on log p(x)")
    bounds.legend()
    bounds.grid(alpha=0.3)
    lr.plot(epoch, [m["lr"] for m in metrics], "o-", ms=3)
    lr.set(xlabel="epoch", ylabel="learning rate", yscale="log", title="learning rate")
    lr.grid(alpha=0.3, which="both")
    for ax in (bounds, lr):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return save(fig, path)


def plot_runs(run_dirs, path, title):
    """Learning curves of several runs: one panel per number of stochastic layers, one line
    per run directory with at least one epoch of metrics, the held-out bound -L_k (nats,
    k = the run's training k) against epoch; a star at a finished run's last epoch marks its
    test NLL (eval.json: -L_5000 on the full test set, below the curve since L_k rises with k).
    The epoch axis is logarithmic, with dotted lines where the paper's schedule lowers the
    learning rate (after epochs 1, 4, 13, 40, 121, 364, ...), so that each stage is visible.
    """
    runs = [(Path(d), read_spec(d).layers, read_metrics(d)) for d in run_dirs]
    runs = [run for run in runs if run[2]]
    layers = sorted({n for _, n, _ in runs}) or [1]
    fig = Figure(figsize=(6 * len(layers), 5), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(layers), squeeze=False)[0]
    for ax, n in zip(axes, layers):
        for run_dir, _, metrics in (run for run in runs if run[1] == n):
            held = "valid" if "valid_bound" in metrics[0] else "test"
            line, = ax.plot([m["epoch"] for m in metrics], [-m[f"{held}_bound"] for m in metrics],
                            "o-", ms=2, label=run_dir.name)
            evaluation = read_eval(run_dir)
            if evaluation is not None:
                ax.plot([metrics[-1]["epoch"]], [evaluation["test_nll"]], "*", ms=10, color=line.get_color())
        last = max((m["epoch"] for run in runs if run[1] == n for m in run[2]), default=1)
        for end in (e for e in STAGE_ENDS if e < last):
            ax.axvline(end, color="0.6", ls=":", lw=0.8)
        ax.set(xlabel="epoch (log scale; dotted: the schedule's stages)", xscale="log",
               ylabel="held-out -L_k (nats); \u2605 test NLL (-L_5000)",
               title=f"{title}, {n} stochastic layer{'s' if n > 1 else ''}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save(fig, path)


def plot_active_units(variances, path, threshold=1e-2):
    """The activity A_u = Cov_x(E_q[u]) of every unit (log scale), sorted descending, one line
    per stochastic layer; variances: [[d_l]] per layer (active_units' second result).

    A dashed line marks the threshold; the title gives the active units (A_u > threshold) per layer.
    """
    fig = Figure(figsize=(6, 4), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    counts = []
    for layer, v in enumerate(variances, 1):
        v = np.sort(torch.as_tensor(v).detach().cpu().double().numpy())[::-1]
        counts.append(f"{int((v > threshold).sum())}/{len(v)}")
        ax.plot(np.arange(1, len(v) + 1), v, "o-", ms=3, label=f"layer {layer}: {counts[-1]} active")
    ax.axhline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:g}")
    ax.set(xlabel="unit (sorted by activity)", ylabel="activity $A_u$ (log scale)", yscale="log",
           title=f"active units: {' + '.join(counts)}")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    return save(fig, path)


def sample_run(run_dir, path=None, *, n=100, seed=0, data_dir=None, device="cpu"):
    """plot_samples for a trained run, into path (default run_dir/samples.png).

    The image shape is that of the run's dataset, which is therefore loaded.
    """
    config = read_spec(run_dir)
    model = load_model(run_dir, device)
    data = load_dataset(config.dataset, data_dir, validation=config.validation,
                        likelihood=config.likelihood)
    return plot_samples(model, data.image_shape, path or Path(run_dir) / "samples.png", n, seed)


def plot_run(run_dir, *, data_dir=None, limit=ACTIVE_UNIT_EXAMPLES, device="cpu"):
    """learning_curves.png, reconstructions.png and active_units.png in run_dir; their paths.

    Reconstructions: the first 10 test images; active units: the first ``limit`` training
    images. Both are binarized once with the evaluation seed, as by ``iwae evaluate``.
    """
    run_dir = Path(run_dir)
    model = load_model(run_dir, device)
    device = next(model.parameters()).device
    _, data, train_x = run_data(run_dir, data_dir)
    test_x = fixed_binarization(data.test[:10], data.binarization).to(device)
    with forked_rng(device):
        torch.manual_seed(EVAL_SEED)
        _, variances = active_units(model, fixed_binarization(train_x[:limit], data.binarization).to(device))
    return [plot_learning_curves(read_metrics(run_dir), run_dir / "learning_curves.png"),
            plot_reconstructions(model, test_x, data.image_shape, run_dir / "reconstructions.png"),
            plot_active_units(variances, run_dir / "active_units.png")]


def save(fig, path):
    """fig as a PNG at path; returns the path."""
    path = Path(path)
    fig.savefig(path, format="png")
    return path


def plot_snr(result, path=None, *, axes=None, title=None, statistic="snr_mean"):
    """Encoder and decoder SNR against k (log-log), one line per estimator."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = None
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    names = [e["name"] for e in result["estimators"]]
    styles = [("o", "-"), ("s", "--"), ("^", "-."), ("v", ":"), ("D", "-"), ("P", "--"), ("X", "-."), ("*", ":")]
    for ax, group in zip(axes, ("encoder", "decoder")):
        for i, name in enumerate(names):
            rows = [r for r in result["results"] if r["estimator"] == name]
            xs = [r["k"] for r in rows]
            ys = [math.nan if r[group][statistic] is None else r[group][statistic] for r in rows]
            marker, line = styles[i % len(styles)]
            if xs:            # estimators whose decoder gradients coincide overlap: styles tell them apart
                ax.plot(xs, ys, marker=marker, linestyle=line, markersize=7 - 0.5 * (i % 5),
                        alpha=0.85, label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("k (samples per datapoint)")
        ax.set_ylabel(f"{group} SNR ({statistic.replace('snr_', '')} over parameters)")
        ax.set_title(f"{group} ({'phi' if group == 'encoder' else 'theta'})")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    if fig is not None:
        if title:
            fig.suptitle(title, fontsize=10)
        fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.86, wspace=0.25)
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return axes


def plot_gaps(result, path, title):
    """A bar plot: -log p(x) by AIS, and the approximation and amortization gaps above it."""
    m = result["mean"]
    fig = Figure(figsize=(5, 3.2), dpi=100)
    ax = fig.add_subplot()
    bars = {"approximation\n(AIS - L[q*])": m["approximation_gap"], "amortization\n(L[q*] - L[q])":
            m["amortization_gap"], "total\n(AIS - L[q])": m["approximation_gap"] + m["amortization_gap"]}
    ax.bar(list(bars), list(bars.values()), color=["#4c72b0", "#dd8452", "#8c8c8c"])
    for i, v in enumerate(bars.values()):
        ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("nats")
    ax.set_title(f"{title}\n-log p(x) by AIS: {-m['ais']:.2f} nats", fontsize=8)
    fig.tight_layout()
    return save(fig, path)

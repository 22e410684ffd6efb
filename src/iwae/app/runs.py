"""A run directory evaluated: test NLL from L_k, units, the KL gap, AIS and BDMC, the
inference gaps and the gradient diagnostics, each from the run's checkpoint and dataset;
and eval.json, the record that ``iwae train --final-k`` writes and ``iwae reproduce`` reads."""
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..evaluation.annealing import CHAINS, STEPS, ais, bdmc
from ..core.validate import positive_int
from ..evaluation.diagnostics import (DEFAULT_ESTIMATORS, DEFAULT_K, check_draws, diagnose_model, header, parse_ks,
                                      reference_of, specs_of)
from ..core.densities import Bernoulli
from ..data import remove_pixels
from ..evaluation.gaps import inference_gaps
from ..evaluation.imputation import impute
from ..runtime.rng import forked_rng
from ..evaluation.likelihood import EVAL_SEED, fixed_binarization, seeded_log_likelihood
from ..evaluation.units import units
from ..runtime import distributed
from ..runtime.atomic import write_json
from ..runtime.decisions import decision
from ..runtime.devices import parse_device
from ..training import paper, rundir
from ..training.paper import run_data
from ..training.rundir import load_model, read_spec, recorded_epochs
from .options import set_threads
from .provenance import hardware, revision

IMPUTE_DRAWS = 100          # importance samples per image for the imputation scores of --missing
METHODS = ("iwae", "ais", "bdmc")  # iwae evaluate --method: L_k (the first), AIS, BDMC
BDMC_EXAMPLES = 100         # images simulated from the model for `iwae evaluate --method bdmc`


def evaluate_run(run_dir, *, k=5000, limit=None, split="test", data_dir=None, seed=EVAL_SEED,
                 per_example=None, quiet=True, batch_size=100, device="cpu", missing=None,
                 impute_draws=IMPUTE_DRAWS):
    """Evaluate a run: -mean L_k over the split, active units, and KL(q||p) ~ L_k - ELBO.

    Returns a dict with test_nll (or train_nll), k, n_test (or n_train), active_units,
    elbo_nll, kl_gap, likelihood (whether L_k was compiled, and why: runtime.decisions), and units(): unit_variances, unit_kl (nats per unit) and
    informative_units (units with unit_kl > INFORMATIVE_NATS, per layer). The images are
    binarized once with a fixed seed; the sample noise of each block of batch_size images is
    seeded from (seed, block index), so under torchrun the ranks share the blocks and every
    rank returns the single-process numbers. device: where the model runs ('auto', 'cpu',
    'cuda', 'cuda:N'); the numbers are computed in float32 there and accumulated in float64.

    missing: a fraction P in [0, 1) of every image's pixels removed at random (seeded) before
    the bound, which is then L_k of the observed pixels, log p(x_o); default: the run's
    ``--missing``. With P > 0 the result also has ``missing`` and the imputation of the removed
    pixels from ``impute_draws`` importance samples: ``imputation_accuracy`` (the fraction of
    removed binary pixels that the single imputation, thresholded at 1/2, gets right) or
    ``imputation_mse`` (a Gaussian likelihood). docs/missing.md.
    """
    model, data, train_x, x = load_split(run_dir, split, limit, data_dir, seed, device)
    missing = getattr(read_spec(run_dir), "missing", 0.0) if missing is None else missing
    imputed = {}
    if missing:
        model.missing, complete = True, x
        x = remove_pixels(x, missing, seed)
        imputed = imputation_scores(model, complete, x, data.binarization, seed, impute_draws)
    ctx = distributed.init()                       # under torchrun: join the process group (once)
    bar = lambda blocks: tqdm(blocks, disable=quiet or not ctx.is_main, desc=f"L_{k}", unit="batch")
    compiling = decision("auto", "likelihood", k * x.numel(), x.device)
    ll, elbo = seeded_log_likelihood(model, x, k, seed=seed, block=batch_size, with_elbo=True,
                                     ctx=ctx, progress=bar, compile=compiling.choice)
    if per_example is not None and ctx.is_main:
        np.save(per_example, ll.cpu().numpy())
    nll = -ll.mean().item()
    return {f"{split}_nll": nll, "k": k, f"n_{split}": int(x.shape[0]),
            "elbo_nll": -elbo.mean().item(), "kl_gap": -elbo.mean().item() - nll, "likelihood": compiling.record(),
            **imputed, **units(model, train_x, data.binarization, seed)}


def imputation_scores(model, complete, holes, binarization, seed=EVAL_SEED, draws=IMPUTE_DRAWS):
    """How well the single imputation of ``holes`` (NaN = removed) recovers ``complete``:
    {missing, imputation_accuracy or imputation_mse, impute_draws}."""
    removed = torch.isnan(holes)
    with forked_rng(holes.device):
        torch.manual_seed(seed)
        filled = impute(model, holes, draws=draws)
    out = {"missing": removed.double().mean().item(), "impute_draws": draws}
    if binarization != "none" or isinstance(getattr(model, "likelihood", None), Bernoulli):
        out["imputation_accuracy"] = ((filled[removed] > 0.5) == (complete[removed] > 0.5)).double().mean().item()
    else:
        out["imputation_mse"] = (filled[removed] - complete[removed]).double().square().mean().item()
    return out


def load_split(run_dir, split, limit, data_dir, seed=EVAL_SEED, device="cpu"):
    """(model on device, dataset, training images on device, the split's first `limit`
    images binarized once with the seed, on device)."""
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    model = load_model(run_dir, device)
    device = next(model.parameters()).device
    _, data, train_x = run_data(run_dir, data_dir)
    x = (data.test if split == "test" else train_x)[:limit]
    return model, data, train_x.to(device), fixed_binarization(x, data.binarization, seed).to(device)


def evaluate_ais(run_dir, *, method="ais", steps=2000, chains=8, leapfrog=5, init="q", limit=None,
                 split="test", data_dir=None, seed=EVAL_SEED, quiet=True, device="cpu"):
    """log p(x) of a run's model by AIS on the split's images (method "ais"), or the BDMC
    bounds on `limit` (default 100) images simulated from it (method "bdmc"); a dict with the
    settings, the NLLs in nats, the seconds taken and, of those, the step-size pilot's
    (pilot_seconds). See iwae.ais."""
    started = time.perf_counter()
    settings = {"steps": steps, "chains": chains, "leapfrog": leapfrog, "init": init}
    clock = {}
    if method == "ais":
        model, _, _, x = load_split(run_dir, split, limit, data_dir, seed, device)
        log_p = ais(model, x, seed=seed, progress=not quiet, timings=clock, **settings)
        return {"method": "ais", f"{split}_nll": -log_p.mean().item(), f"n_{split}": int(x.shape[0]),
                "standard_error": (log_p.std() / math.sqrt(len(log_p))).item() if len(log_p) > 1 else None,
                **settings, "seconds": round(time.perf_counter() - started, 1),
                "pilot_seconds": round(clock["pilot"], 1)}
    if method == "bdmc":
        model = load_model(run_dir, device)
        result = bdmc(model, limit or BDMC_EXAMPLES, seed=seed, progress=not quiet, timings=clock, **settings)
        return {"method": "bdmc", "n_simulated": int(result["x"].shape[0]),
                "lower_nll": -result["lower"].mean().item(), "upper_nll": -result["upper"].mean().item(),
                "gap": result["gap"].item(), **settings, "seconds": round(time.perf_counter() - started, 1),
                "pilot_seconds": round(clock["pilot"], 1)}
    raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")


def run_units(run_dir, data_dir=None, device="cpu"):
    """units() for a run directory's trained model, on the data set it was trained on."""
    _, data, train_x = run_data(run_dir, data_dir)
    model = load_model(run_dir, device)
    return units(model, train_x.to(next(model.parameters()).device), data.binarization)


def train_and_evaluate(spec, out, *, resume=False, say=None):
    """``iwae train``: open the run directory out (config.json first), train spec (a PaperSpec)
    at spec.threads, then, if spec.final_k, evaluate -mean L_final_k on the test set at
    spec.eval_threads and record it with its provenance in the run (rank 0); returns that
    evaluation (None without one). say(line): what happened, for the command line."""
    started = time.perf_counter()
    with rundir.open_run(out, spec, resume) as run:
        made_by = provenance(spec.device)          # the code loaded now, not when training ends
        if resume and not run.begun and say is not None:
            say(f"{out} holds no run yet: starting it there")
        set_threads(spec.threads, training=True)
        paper.train_run(spec, run)
    if say is not None and distributed.is_main():
        say(f"trained {out} in {time.perf_counter() - started:.0f} s")
    if not spec.final_k:
        return None
    set_threads(spec.eval_threads, training=False)  # every rank takes its share of the test images
    result = evaluate_run(out, k=spec.final_k, limit=spec.final_limit_test, data_dir=spec.data_dir,
                          quiet=spec.quiet, device=spec.device)
    if distributed.is_main():
        rundir.write_eval(out, {**result, **made_by})
    return result


def provenance(device):
    """Where numbers are being made: the hardware of device and the code's git revision."""
    return {"hardware": hardware(parse_device(device) if isinstance(device, str) else device),
            "revision": revision()}


def gaps_run(run_dir, *, examples=100, q_steps=500, ais_steps=STEPS, chains=CHAINS, out=None, data_dir=None,
             seed=0, device="cpu"):
    """inference_gaps on a run's first `examples` test images; writes gaps.json and gaps.png
    into out (default the run directory); returns (result, json path, png path)."""
    from .plots import plot_gaps
    model, _, _, x = load_split(run_dir, "test", examples, data_dir, EVAL_SEED, device)
    result = {"run": str(run_dir), **inference_gaps(model, x, q_steps=q_steps, ais_steps=ais_steps,
                                                     chains=chains, seed=seed)}
    out = Path(out) if out is not None else Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / "gaps.json", out / "gaps.png"
    write_json(json_path, result)
    plot_gaps(result, png_path, title=f"inference gaps of {Path(run_dir).name} ({result['n']} test images)")
    return result, json_path, png_path


def diagnose_run(run_dir, ks=DEFAULT_K, estimators=DEFAULT_ESTIMATORS, *, draws=100, examples=20, out=None,
             data_dir=None, seed=0, progress=None, device="cpu"):
    """Diagnose a run's checkpoint on its first `examples` training images (fixed binarization).

    Writes diagnose.json and diagnose.png into `out` (default: the run directory);
    returns (the result dict, the JSON path, the PNG path). The JSON is rewritten after each
    k ("k_done", "complete"), and the values of k that an earlier diagnosis with the same run,
    epochs, draws, examples, seed and estimators already finished are taken from it, not redrawn
    (each k's draws are seeded alike whether computed alone or together).
    """
    from .plots import plot_snr
    positive_int("examples", examples)
    check_draws(draws)
    specs = specs_of(estimators)
    ks = parse_ks(",".join(map(str, ks)))
    config, data, train_x = run_data(run_dir, data_dir)
    model = load_model(run_dir, device)
    for p in model.parameters():
        p.requires_grad_(True)
    x = fixed_binarization(train_x[:examples], data.binarization).to(next(model.parameters()).device)
    out = Path(out) if out is not None else Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / "diagnose.json", out / "diagnose.png"
    result = {"run": str(run_dir), "epochs_trained": recorded_epochs(run_dir), "training": {
        key: getattr(config, key) for key in ("dataset", "layers", "bound", "estimator", "k", "m", "beta")},
        **header(specs, draws, int(x.shape[0]), seed, reference_of(model).name)}
    done = _partial(json_path, result, specs, draws, examples, seed)   # k -> (results, skipped)
    rows, skipped, started = [], [], time.perf_counter()
    for k in ks:                     # one k at a time, saved as it goes: a killed diagnosis resumes
        if k in done:
            rows += done[k][0]
            skipped += done[k][1]
        else:
            part = diagnose_model(model, x, [k], specs, draws=draws, seed=seed, progress=progress)
            rows += part["results"]
            skipped += part["skipped"]
        finished = [j for j in ks if j <= k]
        result.update({"k": ks, "k_done": finished, "complete": finished == ks, "results": rows,
                       "skipped": skipped, "threads": torch.get_num_threads(),
                       "seconds": round(time.perf_counter() - started, 1)})
        write_json(json_path, _finite(result), allow_nan=False)
    plot_snr(result, png_path, title=f"gradient SNR at {Path(run_dir).name} "
                                     f"({result['draws']} draws, {result['examples']} images)")
    return result, json_path, png_path


def _partial(path, head, specs, draws, examples, seed):
    """The per-k results of an earlier diagnosis with the same settings in `path`, if any."""
    try:
        old = json.loads(path.read_text())
        same = (old["run"] == head["run"] and old["epochs_trained"] == head["epochs_trained"]
                and (old["draws"], old["examples"], old["seed"]) == (draws, examples, seed)
                and [(e["name"], e["beta"], e["m"]) for e in old["estimators"]]
                == [(s.name, s.beta, s.m if s.m is not None else ("sqrt(k)" if s.grouped else None))
                    for s in specs])
        if not same:
            return {}
        return {k: ([r for r in old["results"] if r["k"] == k], [s for s in old["skipped"] if s["k"] == k])
                for k in old.get("k_done", old["k"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _finite(value):
    """NaN and infinities (an SNR with zero variance, say) as null, so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value

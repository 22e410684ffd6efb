"""Gradient diagnostics (``iwae diagnose``) and every objective/estimator path of ``iwae train``."""
import json

import pytest
import torch

import iwae.training.rundir
import iwae.training.paper
import iwae.training.source
from iwae.app import cli
from iwae.app import runs as diagnose_module
from iwae.training.spec import PaperSpec
from iwae.evaluation.diagnostics import diagnose_model, parse_estimators
from iwae.core.estimators import ESTIMATORS


def _row(result, name, k):
    return next(r for r in result["results"] if r["estimator"] == name and r["k"] == k)


@pytest.fixture
def perturbed(lg):
    """A linear-Gaussian model whose q is the exact posterior moved a little: E[g_phi] != 0."""
    return lg.model(mean_shift=0.3, log_sigma_shift=0.2), lg.data(10)


def test_bias_check_finds_stl_biased_and_dreg_not(perturbed):
    model, x = perturbed
    before = torch.get_rng_state()
    result = diagnose_model(model, x, [1, 16], "standard,stl,dreg", draws=200)
    assert torch.equal(torch.get_rng_state(), before)           # the caller's RNG is untouched
    for k in (1, 16):
        null, dreg = _row(result, "iwae+standard", k), _row(result, "iwae+dreg", k)
        for row in (null, dreg):                               # same expectation: t looks like noise
            assert row["same_expectation"] == {"encoder": True, "decoder": True}
            assert row["encoder"]["bias"]["frac_abs_t_gt_3"] <= 0.05
            assert row["encoder"]["bias"]["max_abs_t"] < 4.5
            assert row["encoder"]["bias"]["max_abs_projection_t"] < 4.0
    stl1, stl16 = _row(result, "iwae+stl", 1), _row(result, "iwae+stl", 16)
    assert stl1["encoder"]["bias"]["max_abs_t"] < 4.5                  # k = 1: STL is unbiased
    assert stl16["same_expectation"] == {"encoder": False, "decoder": True}
    assert stl16["encoder"]["bias"]["frac_abs_t_gt_3"] > 0.3           # k > 1: biased [Tucker et al.]
    assert stl16["encoder"]["bias"]["max_abs_t"] > 10
    assert stl16["encoder"]["bias"]["max_abs_projection_t"] > 10
    assert stl16["decoder"]["bias"]["max_abs_t"] < 4.5                 # its decoder gradient is IWAE's


def test_standard_encoder_snr_falls_with_k_and_dregs_does_not(perturbed):
    model, x = perturbed
    result = diagnose_model(model, x, [1, 10, 100], ["standard", "dreg"], draws=100)
    std = [_row(result, "iwae+standard", k)["encoder"]["snr_mean"] for k in (1, 10, 100)]
    dreg = [_row(result, "iwae+dreg", k)["encoder"]["snr_mean"] for k in (1, 10, 100)]
    assert std[0] > std[1] > std[2]                                    # [Rainforth et al. 2018]
    assert std[2] < 0.5 * std[0]
    assert dreg[2] >= dreg[0]                                          # [Tucker et al. 2019]
    dec = [_row(result, "iwae+standard", k)["decoder"]["snr_mean"] for k in (1, 10, 100)]
    assert dec[2] > dec[0]                                             # decoder SNR grows with k
    norm = [_row(result, "iwae+standard", k)["encoder"]["snr_norm"] for k in (1, 100)]
    assert norm[1] < norm[0]
    variance = [_row(result, "iwae+dreg", k)["encoder"]["variance"] for k in (1, 100)]
    assert variance[1] < variance[0]


def test_running_moments_match_torch():
    from iwae.evaluation.diagnostics import _Moments, summarize
    g = torch.randn(50, 7, dtype=torch.float64) * torch.arange(1, 8) + 3.0
    m = _Moments(7, torch.eye(7, dtype=torch.float64)[:3])
    for row in g:
        m.add(row)
    torch.testing.assert_close(m.mean, g.mean(0))
    torch.testing.assert_close(m.var, g.var(0))
    s = summarize(m)
    snr = g.mean(0).abs() / g.std(0)
    assert s["snr_mean"] == pytest.approx(snr.mean().item())
    assert s["snr_median"] == pytest.approx(snr.median().item())
    assert s["variance"] == pytest.approx(g.var(0).sum().item())
    assert s["snr_norm"] == pytest.approx(g.mean(0).norm().item() / g.var(0).sum().sqrt().item())


def test_parse_estimators_validates_configurations():
    assert [s.name for s in parse_estimators("standard,stl,dreg,rws,miwae,piwae,ciwae")] == [
        "iwae+standard", "iwae+stl", "iwae+dreg", "iwae+rws", "miwae+standard", "piwae+standard",
        "ciwae+standard"]
    assert parse_estimators("vae,miwae+dreg")[1].name == "miwae+dreg"
    for bad in ("foo", "miwae+rws", "elbo+dreg", "iwae+bogus", "standard,standard", ""):
        with pytest.raises(ValueError):
            parse_estimators(bad)


@pytest.fixture
def fast_data(monkeypatch):
    """Load each data set once per test: the CLI paths below differ only in their objective."""
    cache, load = {}, iwae.training.source.load_dataset

    def cached(name, data_dir=None, **kw):
        key = (name, str(data_dir), tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = load(name, data_dir, **kw)
        return cache[key]
    monkeypatch.setattr(iwae.training.source, "load_dataset", cached)


def test_diagnose_cli_writes_json_and_png(tmp_path, data_dir, capsys, fast_data, monkeypatch):
    run = tmp_path / "run"
    iwae.training.paper.train(PaperSpec(limit_train=40, epochs=1, k=2, eval_examples=10, data_dir=data_dir, quiet=True), run)
    out = tmp_path / "diag"
    rc = cli.main(["diagnose", str(run), "--k", "1,2,4", "--draws", "3", "--examples", "5",
                   "--out", str(out), "--data-dir", data_dir])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert str(out / "diagnose.json") in captured.out and "iwae+dreg" in captured.out
    result = json.loads((out / "diagnose.json").read_text())
    assert {"run", "epochs_trained", "training", "k", "draws", "examples", "seed", "reference", "estimators",
            "results", "skipped", "threads"} <= set(result)
    assert result["k"] == [1, 2, 4] and result["draws"] == 3 and result["examples"] == 5
    assert result["epochs_trained"] == 1 and result["training"]["k"] == 2
    names = ["iwae+standard", "iwae+stl", "iwae+dreg", "iwae+rws", "miwae+standard", "piwae+standard",
             "ciwae+standard"]
    assert [e["name"] for e in result["estimators"]] == names
    assert all(e["targets"] for e in result["estimators"])
    # M = K = sqrt(k): k = 2 is not a perfect square, so MIWAE and PIWAE skip it with a reason
    assert sorted((s["estimator"], s["k"]) for s in result["skipped"]) == [("miwae+standard", 2),
                                                                            ("piwae+standard", 2)]
    assert all("perfect square" in s["reason"] for s in result["skipped"])
    model = iwae.training.rundir.load_model(run)
    n_enc = sum(p.numel() for p in model.encoder_parameters())
    n_dec = sum(p.numel() for p in model.decoder_parameters())
    rows = [r for r in result["results"] if "same_expectation" in r]
    assert len(rows) == 7 * 3 - 2
    assert len([r for r in result["results"] if r["estimator"].endswith("(reference)")]) == 3
    for r in rows:
        assert {"estimator", "k", "m", "same_expectation", "seconds", "encoder", "decoder"} <= set(r)
        for group, n in (("encoder", n_enc), ("decoder", n_dec)):
            s = r[group]
            assert s["n_params"] == n
            assert {"snr_mean", "snr_median", "snr_norm", "mean_norm", "variance", "n_constant"} <= set(s)
            assert s["variance"] > 0 and s["snr_mean"] >= 0
            assert {"max_abs_t", "frac_abs_t_gt_3", "mean_abs_t", "n_tested", "projection_t",
                    "max_abs_projection_t"} <= set(s["bias"])
            assert len(s["bias"]["projection_t"]) == 8
    assert _row(result, "miwae+standard", 4)["m"] == 2
    assert _row(result, "ciwae+standard", 4)["same_expectation"] == {"encoder": False, "decoder": False}
    assert _row(result, "iwae+rws", 4)["same_expectation"] == {"encoder": False, "decoder": True}
    assert result["complete"] and result["k_done"] == [1, 2, 4]
    # a second diagnosis with the same settings takes finished k from the file instead of redrawing
    def no_draws(*a, **kw):
        raise AssertionError("redrew a finished k")
    monkeypatch.setattr(diagnose_module, "diagnose_model", no_draws)
    again, _, _ = diagnose_module.diagnose_run(run, [1, 4], draws=3, examples=5, out=out, data_dir=data_dir)
    assert again["complete"] and again["results"] == [r for r in result["results"] if r["k"] in (1, 4)]
    png = (out / "diagnose.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    import matplotlib.image
    assert matplotlib.image.imread(str(out / "diagnose.png")).shape[0] > 100


@pytest.mark.parametrize("argv", [
    ["--estimators", "foo"], ["--estimators", "miwae+rws"], ["--k", "0,4"], ["--k", "a"], ["--draws", "1"]])
def test_diagnose_cli_errors_are_one_line(tmp_path, capsys, argv):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(PaperSpec().to_dict()))
    rc = cli.main(["diagnose", str(tmp_path / "run"), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("iwae: error:") and err.count("\n") == 1
    assert not (tmp_path / "run" / "diagnose.json").exists()


def test_diagnose_cli_missing_run(tmp_path, capsys):
    assert cli.main(["diagnose", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("iwae: error:") and err.count("\n") == 1


def valid_paths():
    """Every (objective, estimator) the library supports, with the flags each needs at k = 4."""
    flags = {"miwae": ["--m", "2"], "piwae": ["--m", "2"], "ciwae": ["--beta", "0.5"], "renyi": ["--alpha", "0.5"]}
    return [(("vae" if bound == "elbo" else bound), name, flags.get(bound, []))
            for name, est in ESTIMATORS.items() for bound in est.SUPPORTS]


def test_every_objective_and_estimator_trains_from_the_cli(tmp_path, data_dir, capsys, fast_data):
    paths = valid_paths()
    assert len(paths) == 33             # 7 bounds x standard, stl, vimco, reinforce; dreg 4; rws 1
    for i, (objective, estimator, extra) in enumerate(paths):
        out = tmp_path / f"{objective}-{estimator}"
        rc = cli.main(["train", "--out", str(out), "--data-dir", data_dir, "--objective", objective,
                       "--estimator", estimator, *extra, "--limit-train", "40", "--epochs", "1", "--k", "4",
                       "--final-k", "0", "--eval-examples", "10", "--quiet", "--seed", str(i)])
        assert rc == 0, (objective, estimator, capsys.readouterr().err)
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert len(metrics) == 1
        m = metrics[0]
        assert m["epoch"] == 1 and m["steps"] == 2 and m["skipped_steps"] == 0 and m["eval_k"] == 4
        held = next(v for key, v in m.items() if key.endswith("_bound") and key != "train_bound")
        assert -1000 < m["train_bound"] < 0 and -1000 < held < 0, (objective, estimator, m)
        config = json.loads((out / "config.json").read_text())
        assert (config["bound"], config["estimator"]) == (objective, estimator)
        assert (config["m"], config["beta"]) == ((2, None) if objective in ("miwae", "piwae") else
                                                 (None, 0.5) if objective == "ciwae" else (None, None))
        assert config["alpha"] == (0.5 if objective == "renyi" else None)
        assert (out / "checkpoint.pt").exists()


@pytest.mark.parametrize("flags", [
    ["--objective", "vae", "--estimator", "dreg"],
    ["--objective", "ciwae", "--estimator", "dreg", "--beta", "0.5"],
    ["--objective", "miwae", "--estimator", "rws", "--m", "2"],
    ["--objective", "elbo", "--estimator", "rws"],
    ["--objective", "miwae"],                                  # m missing
    ["--objective", "piwae", "--m", "3"],                      # 3 does not divide k = 4
    ["--objective", "ciwae"],                                  # beta missing
    ["--objective", "ciwae", "--beta", "1.5"],
    ["--objective", "iwae", "--m", "2"],
    ["--objective", "iwae", "--beta", "0.5"],
    ["--objective", "iwea"],
    ["--estimator", "magic"],
])
def test_invalid_combinations_give_one_line_errors(tmp_path, data_dir, capsys, flags):
    out = tmp_path / "run"
    rc = cli.main(["train", "--out", str(out), "--data-dir", data_dir, "--k", "4", "--limit-train", "40",
                   "--epochs", "1", "--final-k", "0", "--quiet", *flags])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("iwae: error:") and err.count("\n") == 1, err
    assert not out.exists()

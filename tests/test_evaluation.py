"""The L_k evaluator, against a model whose log p(x) is known in closed form."""
import math

import pytest
import torch
import torch.nn as nn

import iwae


def test_bound_increases_with_k_and_stays_below_log_px(lg):
    # E[L_k] by averaging 2000 independent draws; the standard error of each mean is < 0.01
    # nats and consecutive gaps here are > 0.05 nats, so the ordering test has > 5 sigma.
    model, x = lg.model(mean_shift=0.8, log_sigma_shift=-0.4), lg.data(3)
    log_px = lg.log_px(x)
    torch.manual_seed(0)
    means, sems = [], []
    for k in (1, 4, 16, 64):
        draws = torch.stack([iwae.core.bounds.iwae_bound(model.log_weights(x, k)).detach() for _ in range(2000)])
        means.append(draws.mean(0))
        sems.append(draws.std(0) / math.sqrt(2000))
    for lower, upper, s1, s2 in zip(means, means[1:], sems, sems[1:]):
        assert ((upper - lower) > 5 * torch.sqrt(s1 ** 2 + s2 ** 2)).all()
    assert (means[-1] + 5 * sems[-1] < log_px).all()


def test_evaluator_matches_the_closed_form_at_large_k(lg):
    model, x = lg.model(mean_shift=0.3, log_sigma_shift=0.2), lg.data(6)
    torch.manual_seed(0)
    k = 20000
    estimate = iwae.log_likelihood(model, x, k, max_samples=4096)
    # Monte-Carlo error of log mean w: the relative standard deviation of w over sqrt(k)
    w = torch.exp(model.log_weights(x, k).detach() - lg.log_px(x))
    mc_error = (w.std(0) / math.sqrt(k)).max().item()
    assert mc_error < 0.02
    torch.testing.assert_close(estimate, lg.log_px(x), rtol=0, atol=4 * mc_error)


def test_weights_are_unbiased_for_p_of_x(lg):
    # E_q[w] = p(x): fails if an analytic KL replaces log p(z) - log q(z|x) in the weights.
    model, x = lg.model(mean_shift=0.3), lg.data(2)
    torch.manual_seed(1)
    w = torch.exp(model.log_weights(x, 200000).detach() - lg.log_px(x))       # [k, B]
    sem = w.std(0) / math.sqrt(w.shape[0])
    assert ((w.mean(0) - 1).abs() < 4 * sem).all()


class Recorder(nn.Module):
    """Any module with log_weights(x, k): records the chunks the evaluator asked for."""

    def __init__(self):
        super().__init__()
        self.chunks = []

    def log_weights(self, x, k):
        log_w = 50 * torch.randn(k, x.shape[0], dtype=torch.float64) - 1e3
        self.chunks.append(log_w)
        return log_w


def test_chunks_combine_to_the_logsumexp_over_all_samples():
    model, x = Recorder(), torch.zeros(10, 3)
    result = iwae.log_likelihood(model, x, k=1000, batch_size=4, max_samples=300)
    # x splits into batches of 4, 4, 2; each batch's 1000 samples into chunks of <= 300 / b
    assert [c.shape for c in model.chunks[:2]] == [(75, 4), (75, 4)]
    assert max(c.numel() for c in model.chunks) <= 300
    batch_ends, expected = [4, 8, 10], []
    sizes = iter(model.chunks)
    for end in batch_ends:
        taken, parts = 0, []
        while taken < 1000:
            parts.append(next(sizes))
            taken += parts[-1].shape[0]
        expected.append(torch.logsumexp(torch.cat(parts), 0) - math.log(1000))
    torch.testing.assert_close(result, torch.cat(expected), rtol=0, atol=1e-9)


def test_evaluator_rejects_bad_k():
    with pytest.raises(ValueError, match="k must be an integer >= 1, got 0"):
        iwae.log_likelihood(Recorder(), torch.zeros(2, 3), k=0)


def _constant_gaussian(layer, mean, log_sigma):
    """Make a GaussianLayer output N(mean, exp(log_sigma)^2) whatever its input."""
    head = layer.net[-1]
    d = head.out_features // 2
    with torch.no_grad():
        head.weight.zero_()
        head.bias[:d] = mean
        head.bias[d:] = log_sigma


def test_unit_kl_matches_the_closed_form():
    from iwae.evaluation.units import unit_kl
    model = iwae.paper_model(layers=2)
    _constant_gaussian(model.encoder[0], 1.0, math.log(2.0))     # q(h1 | x) = N(1, 4)
    _constant_gaussian(model.encoder[1], 0.5, 0.0)               # q(h2 | h1) = N(0.5, 1)
    _constant_gaussian(model.decoder_layers[0], -1.0, 0.0)       # p(h1 | h2) = N(-1, 1)
    kl1, kl2 = unit_kl(model, torch.rand(30, 784).bernoulli())
    # KL(N(1, 4) || N(-1, 1)) = log(1/2) + (4 + 2^2) / 2 - 1/2; KL(N(0.5, 1) || N(0, 1)) = 0.125
    torch.testing.assert_close(kl1, torch.full((100,), 3.5 - math.log(2.0)))
    torch.testing.assert_close(kl2, torch.full((50,), 0.125))
    one = iwae.paper_model(layers=1)
    _constant_gaussian(one.encoder[0], 0.0, 0.0)                 # q = the prior: nothing learnt
    assert unit_kl(one, torch.rand(5, 784).bernoulli())[0].abs().max() < 1e-7


def test_evaluations_use_every_core_and_bad_thread_counts_are_one_line(tmp_path, capsys, monkeypatch):
    # iwae evaluate / gaps set torch's threads to the cores unless --threads says otherwise;
    # --threads 0 is refused, more threads than cores is allowed with a one-line warning
    from iwae.app import cli
    threads = torch.get_num_threads()
    calls = []
    monkeypatch.setattr(cli, "COMMANDS", {**cli.COMMANDS, "evaluate": lambda args: calls.append(torch.get_num_threads()),
                                          "gaps": lambda args: calls.append(torch.get_num_threads())})
    try:
        assert cli.main(["evaluate", str(tmp_path)]) == 0 and calls[-1] == cli.cores()
        assert cli.main(["gaps", str(tmp_path)]) == 0 and calls[-1] == cli.cores()
        assert cli.main(["evaluate", str(tmp_path), "--threads", "1"]) == 0 and calls[-1] == 1
        capsys.readouterr()
        assert cli.main(["gaps", str(tmp_path), "--threads", str(cli.cores() + 1)]) == 0
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"iwae: warning: --threads {cli.cores() + 1} is more than the {cli.cores()} cores here; "
                       "oversubscribed threads slow torch down"] and calls[-1] == cli.cores() + 1
        for command in (["evaluate", str(tmp_path)], ["gaps", str(tmp_path)], ["train"]):
            with pytest.raises(SystemExit) as exit_:
                cli.main(command + ["--threads", "0"])
            err = capsys.readouterr().err
            assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1
            assert err.startswith("iwae: error: argument --threads: must be an integer >= 1, got 0")
    finally:
        torch.set_num_threads(threads)


def test_seeded_evaluation_decides_compiling_on_all_of_x_not_on_one_block(monkeypatch):
    import iwae.evaluation.likelihood as likelihood
    asked = []
    real = likelihood.log_likelihood
    monkeypatch.setattr(likelihood, "log_likelihood",
                        lambda *a, compile="auto", **kw: asked.append(compile) or real(*a, compile="off", **kw))
    import iwae.runtime.decisions as decisions
    # a machine where compiling L_4 pays from k * N * D = 4 * 5.5 * 784: for all 6 rows of x, not 5
    ns = decisions.COMPILE_SECONDS / (decisions.PER_PROBE * 4 * 5.5 * 784 * 1e-9)
    monkeypatch.setattr(decisions, "MAX_PROBE_NS", ns)
    monkeypatch.setattr(decisions, "probe_ns", lambda threads: ns)
    model, x = iwae.paper_model(1), torch.zeros(6, 784)
    likelihood.seeded_log_likelihood(model, x, 4, block=2)
    likelihood.seeded_log_likelihood(model, x[:5], 4, block=2)
    assert asked == ["step"] * 3 + ["off"] * 3

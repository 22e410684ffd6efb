"""runtime.decisions: compiling decided by the work and, for L_k, by what this machine measures."""
import json
import logging

import pytest
import torch

import iwae
from iwae.app import cli
from iwae.runtime import decisions
from iwae.runtime.devices import cpu_model

CPU = torch.device("cpu")
MAIN_JOB = 5000 * 10_000 * 784            # k N D of L_5000 on MNIST's test set


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty probe cache; measure() counts the probes and returns what the test sets."""
    monkeypatch.setattr(decisions, "CACHE", tmp_path / "iwae" / "probes.json")
    probes = {"ns": 1.0, "count": 0}

    def measure():
        probes["count"] += 1
        return probes["ns"]
    monkeypatch.setattr(decisions, "_measure", measure)
    return probes


@pytest.mark.parametrize("ns, choice", [(0.45, "step"),      # Zen 4 at two threads: compiling pays
                                        (0.05, "off")])      # a machine whose extra pass is nearly free
def test_the_main_jobs_evaluation_compiles_where_the_probe_says_it_pays(cache, ns, choice):
    cache["ns"] = ns
    made = decisions.decision("auto", "likelihood", MAIN_JOB, CPU)
    saving = decisions.PER_PROBE * ns * 1e-9 * MAIN_JOB
    assert made.choice == choice and (saving > decisions.COMPILE_SECONDS) == (choice == "step")
    assert f"predicted saving {saving:.0f} s" in made.reason and made.record() == {"compile": choice, "reason": made.reason}


def test_the_probe_runs_once_per_cpu_torch_and_thread_count_then_comes_from_the_cache(cache):
    threads = torch.get_num_threads()
    assert decisions.probe_ns(threads) == 1.0 and cache["count"] == 1
    cache["ns"] = 2.0
    assert decisions.probe_ns(threads) == 1.0 and cache["count"] == 1          # cached
    assert decisions.probe_ns(threads + 1) == 2.0 and cache["count"] == 2      # another thread count
    stored = json.loads(decisions.CACHE.read_text())
    assert stored == {f"{cpu_model()} | torch {torch.__version__} | {threads} threads": 1.0,
                      f"{cpu_model()} | torch {torch.__version__} | {threads + 1} threads": 2.0}


def test_an_unwritable_cache_still_decides(cache, tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("")
    monkeypatch.setattr(decisions, "CACHE", blocked / "probes.json")          # its folder is a file
    assert decisions.probe_ns(1) == 1.0


def test_work_too_small_for_any_machine_is_not_probed(cache):
    work = int(decisions.COMPILE_SECONDS / (decisions.PER_PROBE * decisions.MAX_PROBE_NS * 1e-9)) - 1
    made = decisions.decision("auto", "likelihood", work, CPU)
    assert made.choice == "off" and cache["count"] == 0 and "too little" in made.reason


def test_the_probe_measures_a_positive_saving():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                 # two threads on a loaded 2-core machine measure noise
    try:
        ns = decisions._measure()
    finally:
        torch.set_num_threads(threads)
    assert 0 <= ns < decisions.MAX_PROBE_NS


@pytest.mark.parametrize("what, work, choice", [("step", 30_000, "step"), ("step", 29_999, "off"),
                                                ("table step", 1_000, "step"), ("ais", None, "off")])
def test_steps_compile_from_their_threshold(what, work, choice):
    assert decisions.decide("auto", what, work, CPU) == choice


@pytest.mark.parametrize("compile, device, what, choice", [
    ("off", "cpu", "step", "off"), ("step", "cpu", "likelihood", "step"),
    ("auto", "meta", "likelihood", "off"), ("auto", "cuda", "table step", "step"),
    ("auto", "cuda", "likelihood", "off")])          # below the threshold off the CPU (MAIN_JOB < 2^36)
def test_given_choices_and_devices(cache, compile, device, what, choice):
    assert decisions.decide(compile, what, MAIN_JOB, torch.device(device)) == choice
    assert cache["count"] == 0


def test_off_the_cpu_the_likelihood_compiles_from_its_threshold(cache):
    assert decisions.decide("auto", "likelihood", 1 << 36, torch.device("cuda")) == "step"
    assert cache["count"] == 0


def test_an_unknown_compile_setting_is_refused():
    with pytest.raises(ValueError, match=r"^compile must be one of auto, off, step, got 'yes'$"):
        decisions.decide("yes", "step", 1, CPU)


def test_each_decision_is_logged_once(caplog):
    decisions._said.clear()
    with caplog.at_level(logging.INFO, logger="iwae"):
        for _ in range(3):
            decisions.decide("auto", "step", 7, CPU)
    assert caplog.messages == ["compile step: off (7 < 30000 (AUTO_MIN_WORK['step']))"]


def test_verbose_says_the_decision_and_eval_json_records_it(tmp_path, data_dir, capsys):
    decisions._said.clear()
    run = tmp_path / "run"
    common = ["--dataset", "binarized-mnist", "--limit-train", "40", "--final-limit-test", "5", "--epochs", "1",
              "--final-k", "10", "--quiet", "--data-dir", str(data_dir), "--out", str(run)]
    assert cli.main(["train", *common, "--verbose"]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("iwae: compile")]
    assert "iwae: compile likelihood: off (k*N*D = 3.92e+04 is too little to repay a compile on any machine)" in said
    assert iwae.training.rundir.read_eval(run)["likelihood"] == {
        "compile": "off", "reason": "k*N*D = 3.92e+04 is too little to repay a compile on any machine"}
    decisions._said.clear()
    assert cli.main(["evaluate", str(run), "--k", "10", "--limit-test", "5", "--quiet",
                     "--data-dir", str(data_dir)]) == 0
    assert "iwae: compile" not in capsys.readouterr().err                     # without --verbose


@pytest.mark.parametrize("speedup, warned", [(0.03, True),     # Zen 3 (AVX2): no bf16 units
                                             (7.2, False)])    # AMX: bf16 matmuls 7.2x fp32's
def test_bf16_on_a_cpu_without_bf16_units_warns_once_measured(cache, monkeypatch, recwarn, speedup, warned):
    count = []
    monkeypatch.setattr(decisions, "_measure_bf16", lambda: count.append(1) or speedup)
    model = iwae.paper_model(layers=1)
    iwae.training.step.make_step(model, torch.optim.Adam(model.parameters()), 2, compile="off", precision="bf16")
    assert decisions.bf16_speedup() == speedup
    messages = [str(w.message) for w in recwarn if "bf16" in str(w.message)]
    expected = ("precision='bf16' will be slower than 'fp32' here: a bf16 matmul of the paper decoder's shape runs "
                f"at {speedup:.2f}x fp32's speed on this CPU ({cpu_model()}), which has no bf16 matmul units; "
                "use precision='fp32'")
    assert messages == ([expected] if warned else []) and len(count) == 1          # measured once, cached


def test_the_bf16_probe_measures_a_speed_ratio():
    assert 0 < decisions._measure_bf16() < 100

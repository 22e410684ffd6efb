"""`iwae reproduce` end to end on a tiny budget: the grid, the results files, resumption."""
import csv
import json
import os
import subprocess
import sys


def reproduce(tmp_path, data_dir, table, *extra, epochs=1):
    return subprocess.run(
        [sys.executable, "-m", "iwae", "reproduce", "--table", str(table), "--epochs", str(epochs),
         "--limit-train", "40", "--limit-test", "20", "--final-k", "10", "--jobs", "2",
         "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "results"), "--data-dir", data_dir, *extra],
        capture_output=True, text=True)


def test_reproduce_tables_1_and_2_on_a_tiny_budget(tmp_path, data_dir):
    out = reproduce(tmp_path, data_dir, 1)
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader((tmp_path / "results" / "table1.csv").open()))
    assert len(rows) == 12
    assert {(r["layers"], r["objective"], r["k"]) for r in rows} == {
        (l, o, k) for l in ("1", "2") for o in ("vae", "iwae") for k in ("1", "5", "50")}
    assert all(r["epochs"] == "1" and 50 < float(r["test_nll"]) < 800 for r in rows)
    assert all(len(r["active_units"].split("+")) == int(r["layers"]) for r in rows)
    table = (tmp_path / "results" / "table1.md").read_text()
    assert "| mnist | 2 | iwae | 50 | 1 |" in table and "| 82.9 | 26+7 |" in table
    r = rows[-1]                                              # and how far above the paper's NLL
    assert f"| {r['informative_units']} | 82.9 | 26+7 | {float(r['test_nll']) - 82.9:+.2f} | 20 |" in table
    assert len([l for l in table.splitlines() if l.startswith(("- holds (mnist, 1 epochs)", "- **fails** (mnist, 1 epochs)"))]) == 16
    png = (tmp_path / "results" / "table1_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"

    # each run's eval.json says where and from which commit it was evaluated
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert all(r["hardware"].endswith("threads, CPU)") and r["revision"] in (head, f"{head}+dirty") for r in rows)

    finished = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs" / "table1").glob("*/eval.json")}
    assert len(finished) == 12
    again = reproduce(tmp_path, data_dir, 1)                  # finished runs are skipped
    assert again.returncode == 0, again.stderr
    assert {p: p.stat().st_mtime_ns for p in finished} == finished

    # an eval.json from before informative units existed gets them, recomputed identically
    path = tmp_path / "runs" / "table1" / "mnist-l2-vae-k1-e1" / "eval.json"
    result = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in result.items() if k not in ("informative_units", "unit_kl")}))
    assert reproduce(tmp_path, data_dir, 1).returncode == 0
    assert json.loads(path.read_text()) == result
    finished[path] = path.stat().st_mtime_ns
    units = " | ".join("+".join(map(str, result[key])) for key in ("active_units", "informative_units"))
    assert f"| {units} | 85.33 | 16+5 |" in (tmp_path / "results" / "table1.md").read_text()

    # --only runs part of the grid at another budget; the table then lists both budgets
    out = reproduce(tmp_path, data_dir, 1, "--only", "l1-vae-k1", epochs=2)
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader((tmp_path / "results" / "table1.csv").open()))
    assert [(r["layers"], r["objective"], r["k"], r["epochs"]) for r in rows[-2:]] == [
        ("2", "iwae", "50", "1"), ("1", "vae", "1", "2")]
    assert len(rows) == 13 and {p: p.stat().st_mtime_ns for p in finished} == finished

    # a row of the earlier csv whose run is not under --out (trained elsewhere) is kept as it
    # was, and the header names each budget's hardware and revision; a run under --out
    # replaces its old row
    path = tmp_path / "results" / "table1.csv"
    elsewhere = {**rows[0], "epochs": "7", "test_nll": "88.5", "hardware": "Another CPU (4 threads, CPU)",
                 "revision": "abc1234"}
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows([rows[0], {**rows[1], "test_nll": "1.0"}, *rows[2:], elsewhere])
    assert reproduce(tmp_path, data_dir, 1, "--only", "l1-vae-k1", epochs=2).returncode == 0
    assert list(csv.DictReader(path.open())) == rows + [elsewhere]
    md = (tmp_path / "results" / "table1.md").read_text()
    assert "| mnist | 1 | vae | 1 | 7 | 88.50 |" in md
    assert f"Hardware: {rows[0]['hardware']} (1, 2 epochs); Another CPU (4 threads, CPU) (7 epochs)." in md
    assert f"runs evaluated at {rows[0]['revision']} (1, 2 epochs); abc1234 (7 epochs);" in md
    path.write_text(path.read_text().replace("88.5", "eighty"))
    bad = reproduce(tmp_path, data_dir, 1, "--only", "l1-vae-k1", epochs=2)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == (
        f"iwae: error: {path} line 15: not a row of table 1 (could not convert string to float: 'eighty')")
    assert "eighty" in path.read_text()                       # the user's file is left as it was
    path.write_text(path.read_text().replace("eighty", "88.5"))

    bad = reproduce(tmp_path, data_dir, 1, "--only", "l3-vae-k1")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("iwae: error: --only: no run l3-vae-k1 in this table")

    out = reproduce(tmp_path, data_dir, 2)                    # continues the table-1 runs
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader((tmp_path / "results" / "table2.csv").open()))
    assert [(r["objective"], r["k"]) for r in rows] == [("iwae", "50"), ("vae", "1")]
    assert "vae k=1 -> iwae" in (tmp_path / "results" / "table2.md").read_text()


def test_orderings_compare_runs_of_equal_budget_only():
    from iwae.app.reproduce import orderings

    def r(layers, objective, k, nll, active="20", informative="20", epochs=20):
        return dict(dataset="mnist", epochs=epochs, layers=layers, objective=objective, k=k, test_nll=nll,
                    active_units=active, informative_units=informative)
    rows = [r(1, "iwae", 1, 93.7), r(1, "iwae", 5, 92.2), r(1, "iwae", 50, 92.5, "30", "19"),
            r(1, "vae", 50, 92.0, "20", "20"), r(2, "vae", 50, 91.0, epochs=50)]
    assert orderings(rows) == [
        "- **fails** (mnist, 20 epochs): 1-layer IWAE improves with k (k=1, 5, 50): 93.70 > 92.20 > 92.50",
        "- **fails** (mnist, 20 epochs): 1-layer IWAE beats VAE at k=50: IWAE 92.50, VAE 92.00",
        "- holds (mnist, 20 epochs): 1-layer IWAE k=50 has more active units than VAE k=50: IWAE 30, VAE 20",
        "- **fails** (mnist, 20 epochs): 1-layer IWAE k=50 has more informative units than VAE k=50: IWAE 19, VAE 20"]
    assert orderings(rows[-1:]) == ["(no pair of finished runs at equal budget yet)"]


def test_the_grid_cost_is_steps_times_the_measured_step(data_dir, tmp_path, capsys):
    # benchmarks/grid_cost.py on a step benchmark whose every step takes 1 ms at 1 layer and
    # 2 ms at 2, and L_5000 at 10 / 20 ms per image: Table 1 = 12 runs x 3280 epochs x 3000
    # steps, half of them at 2 ms; Table 3 the same with 2500 steps an epoch
    from benchmarks import grid_cost
    step = {"revision": "r", "machine": {"device": "cpu", "cpu": "c", "torch_threads": 1},
            "rows": [{"layers": n, "k": k, "clock": "cpu", "median_ms": {"cpu": {"iwae": float(n)}, "wall": {"iwae": 9.0}}}
                     for n in (1, 2) for k in (1, 5, 50)]}
    evaluate = {"target_clock": "cpu", "speed": [{"layers": n, "variant": "iwae", "ms_per_image": {"cpu": 10.0 * n}} for n in (1, 2)]
                + [{"layers": 1, "variant": "eager", "ms_per_image": {"cpu": 1e9}}]}
    (tmp_path / "s.json").write_text(json.dumps(step))
    (tmp_path / "e.json").write_text(json.dumps(evaluate))
    assert grid_cost.main(["--step", str(tmp_path / "s.json"), "--evaluate", str(tmp_path / "e.json"),
                           "--data-dir", data_dir]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1:]
    train1 = 3280 * 3000 * 6 * (1 + 2) / 3.6e6
    train3 = 3280 * 2500 * 6 * (1 + 2) / 3.6e6
    evaluation = 10_000 * 6 * (10 + 20) / 3.6e6
    assert [[c.strip() for c in r] for r in rows] == [
        ["1", "12", f"{3280 * 3000 * 12:,}", f"{train1:.0f}", f"{evaluation:.1f}", f"{train1 + evaluation:.0f}"],
        ["3", "12", f"{3280 * 2500 * 12:,}", f"{train3:.0f}", f"{evaluation:.1f}", f"{train3 + evaluation:.0f}"]]

    # --runs: a 2-layer k=5 run whose epochs took 5, 7 and 6 s against 3000 steps x 2 ms = 6 s
    run = tmp_path / "runs" / "table1" / "mnist-l2-vae-k5-e3"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"layers": 2, "k": 5}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "steps": 3000 * e, "seconds": s}) + "\n"
                                               for e, s in ((1, 5.0), (2, 7.0), (3, 6.0))))
    assert grid_cost.main(["--step", str(tmp_path / "s.json"), "--evaluate", "", "--tables", "1",
                           "--data-dir", data_dir, "--runs", str(tmp_path / "runs")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "| mnist-l2-vae-k5-e3 | 3 | 6.0 | 5.0 (0.83x) | 6.0 (1.00x) |"


def test_provenance_names_the_cpu_and_the_commit_dirty_only_when_the_code_differs(tmp_path):
    from iwae.app.provenance import cpu_model, hardware, revision
    assert hardware("cpu") == hardware("meta") == f"{cpu_model()} ({os.cpu_count()} threads, CPU)"
    assert revision(tmp_path) is None                       # an installed wheel: no checkout around it
    (tmp_path / "src" / "iwae").mkdir(parents=True)
    (tmp_path / ".git").mkdir()
    assert revision(tmp_path) is None                       # git fails there: no commit to name
    (tmp_path / ".git").rmdir()
    git = lambda *a: subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t",
                                     *a], capture_output=True, text=True, check=True).stdout.strip()
    for name in ("src/iwae/model.py", "results/table1.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "c")
    head = git("rev-parse", "--short", "HEAD")
    assert revision(tmp_path) == head
    (tmp_path / "results" / "table1.md").write_text("2\n")   # a reproduce rewriting its results
    assert revision(tmp_path) == head
    (tmp_path / "src" / "iwae" / "model.py").write_text("2\n")
    assert revision(tmp_path) == f"{head}+dirty"

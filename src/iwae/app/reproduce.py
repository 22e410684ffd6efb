"""``iwae reproduce``: the paper's Tables 1-3 as a resumable grid of runs.

Each run lives in <out>/table<t>/<name>; a run with eval.json is finished and skipped, a run
with a checkpoint resumes from it. Each run is a PaperSpec trained by the same function as
``iwae train`` (iwae.app.runs.train_and_evaluate): here with --jobs 1, else in worker processes
handed its spec, its output in <name>.log beside it. Results go to results/table<t>.csv and .md (our numbers
beside the paper's, with each run's hardware and code revision) and a learning-curve plot.
The table lists every finished run of the table under <out>, any budget, and keeps the rows
of the earlier results/table<t>.csv that no run under <out> replaces (runs trained on another
machine or under another --out): budgets run at different times share one table, and
rewriting it loses nothing.
"""
import contextlib
import csv
import re
import sys
import traceback
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from ..training import rundir
from ..training.rundir import TrainingError
from ..training.spec import PaperSpec
from .provenance import hardware, revision

# [Burda et al. 2016, Table 1] MNIST rows: (layers, objective, k) -> (test NLL, active units)
PAPER_TABLE1 = {
    (1, "vae", 1): (86.76, "19"), (1, "vae", 5): (86.47, "20"), (1, "vae", 50): (86.35, "20"),
    (1, "iwae", 1): (86.76, "19"), (1, "iwae", 5): (85.54, "22"), (1, "iwae", 50): (84.78, "25"),
    (2, "vae", 1): (85.33, "16+5"), (2, "vae", 5): (85.01, "17+5"), (2, "vae", 50): (84.78, "17+5"),
    (2, "iwae", 1): (85.33, "16+5"), (2, "iwae", 5): (83.89, "21+5"), (2, "iwae", 50): (82.90, "26+7"),
}
# [Table 3] fixed binarization: (layers, objective, k) -> test NLL
PAPER_TABLE3 = {
    (1, "vae", 1): 88.71, (1, "vae", 5): 88.83, (1, "vae", 50): 89.05,
    (1, "iwae", 1): 88.71, (1, "iwae", 5): 87.63, (1, "iwae", 50): 87.10,
    (2, "vae", 1): 88.08, (2, "vae", 5): 87.63, (2, "vae", 50): 87.86,
    (2, "iwae", 1): 88.08, (2, "iwae", 5): 86.17, (2, "iwae", 50): 85.32,
}
# [Table 2] 1 layer: first stage -> continued stage, (NLL, active units) after continuing
PAPER_TABLE2 = {("vae", 1, "iwae", 50): (84.88, "22"), ("iwae", 50, "vae", 1): (86.02, "23")}
FIELDS = ["dataset", "layers", "objective", "k", "epochs", "test_nll", "active_units", "informative_units",
          "n_test", "final_k", "train_minus_test", "seconds", "hardware", "revision"]
INTEGER_FIELDS = ("layers", "k", "epochs", "n_test", "final_k", "seconds")
OVERFIT_EXAMPLES = 10_000   # training and test images whose L_k the fixed-binarization table compares
TABLES = (1, 2, 3)


@dataclass(frozen=True)
class Settings:
    """What a reproduced table's runs share: ``iwae reproduce``'s options.

    out: where the runs live (finished ones are skipped); results: where the tables and the
    plot go; jobs: runs at a time, of threads torch threads each (default 1); only: comma-separated
    short names of the grid's runs (all if None); limit_train, limit_test: the first N
    training / test images (for tests); final_k: k of each run's test NLL."""

    table: int
    epochs: int
    out: str = "runs/reproduce"
    results: str = "results"
    jobs: int = 1
    threads: int | None = None
    seed: int = 0
    data_dir: str | None = None
    limit_train: int | None = None
    limit_test: int | None = None
    final_k: int = 5000
    device: str = "auto"
    only: str | None = None


def grid(table, epochs):
    """The runs of a table: dicts with name, dataset, layers, objective, k, epochs (+ init)."""
    if table in (1, 3):
        dataset = "mnist" if table == 1 else "binarized-mnist"
        return [dict(name=f"{dataset}-l{layers}-{objective}-k{k}-e{epochs}", dataset=dataset,
                     layers=layers, objective=objective, k=k, epochs=epochs)
                for layers in (1, 2) for objective in ("vae", "iwae") for k in (1, 5, 50)]
    if table == 2:
        return [dict(name=f"mnist-l1-{a}-k{ka}-then-{b}-k{kb}-e{epochs}", dataset="mnist", layers=1,
                     objective=b, k=kb, epochs=epochs, first=(a, ka))
                for (a, ka, b, kb) in PAPER_TABLE2]
    raise ValueError(f"table must be one of {', '.join(map(str, TABLES))}, got {table}")


def short_name(run):
    """A run's name without its dataset and epochs: l1-iwae-k50, l1-vae-k1-then-iwae-k50."""
    return run["name"][len(run["dataset"]) + 1:-len(f"-e{run['epochs']}")]


def select(runs, only):
    """The runs named in `only` (comma-separated short names), in grid order; all if None."""
    if only is None:
        return runs
    names = {short_name(r): r for r in runs}
    wanted = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in names]
    if unknown or not wanted:
        raise ValueError(f"--only: no run {', '.join(unknown) or ''} in this table "
                         f"(its runs: {', '.join(names)})")
    return [r for r in runs if short_name(r) in wanted]


def finished(table, out):
    """(run, run_dir) for every finished run of the table under out/table<t>, any budget,
    ordered by epochs, then as in the grid."""
    found = []
    for run_dir in rundir.evaluated_runs(Path(out) / f"table{table}"):
        match = re.fullmatch(r".+-e(\d+)", run_dir.name)
        runs = grid(table, int(match.group(1))) if match else []
        index = next((i for i, r in enumerate(runs) if r["name"] == run_dir.name), None)
        if index is not None:
            found.append(((runs[index]["epochs"], index), runs[index], run_dir))
    return [(run, run_dir) for _, run, run_dir in sorted(found, key=lambda f: f[0])]


def spec_of_run(run, settings, init_from=None):
    """The PaperSpec of one run of the grid (a Table-2 run continues init_from at lr 1e-4)."""
    threads = settings.threads or 1
    spec = PaperSpec(dataset=run["dataset"], layers=run["layers"], bound=run["objective"], k=run["k"],
                     epochs=run["epochs"], seed=settings.seed, final_k=settings.final_k, quiet=True,
                     device=settings.device, data_dir=settings.data_dir, limit_train=settings.limit_train,
                     final_limit_test=settings.limit_test, threads=threads, eval_threads=threads)
    if settings.limit_test:
        spec.eval_examples = settings.limit_test
    if init_from:
        spec.init_from, spec.schedule, spec.lr = str(init_from), "constant", 1e-4
    return spec.validate()


def run_one(run, run_dir, settings, pool=None, init_from=None):
    """Train and evaluate one run unless it is finished (in a worker of pool, if given, else
    here), its output in <name>.log beside it; returns its row."""
    if rundir.read_eval(run_dir) is None:
        log = run_dir.parent / f"{run['name']}.log"
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        spec = spec_of_run(run, settings, init_from)
        done = pool.submit(logged, spec, run_dir, log).result() if pool else logged(spec, run_dir, log)
        if done is not None:
            raise TrainingError(f"run {run['name']} failed ({done}); see {log}")
    return row(run, run_dir, settings.data_dir, settings.limit_test)


def logged(spec, run_dir, log):
    """train_and_evaluate(spec, run_dir), resumed where it stopped, its output appended to log;
    None, or the first line of the error it failed with (its traceback is in the log)."""
    from .runs import train_and_evaluate
    with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        try:
            train_and_evaluate(spec, run_dir, resume=True, say=print)
        except Exception as err:              # the worker reports; the grid stops with it
            traceback.print_exc()
            return (str(err).splitlines() or [type(err).__name__])[0]
    return None


def row(run, run_dir, data_dir=None, limit=None):
    result = rundir.read_eval(run_dir)
    if "informative_units" not in result:          # evaluated before informative units existed
        from .runs import run_units
        result.update(run_units(run_dir, data_dir))
        rundir.write_eval(run_dir, result)
    if run["dataset"] == "binarized-mnist" and "train_lk" not in result:   # App. D: it overfits
        result.update(overfitting(run_dir, run["k"], data_dir, limit or OVERFIT_EXAMPLES))
        rundir.write_eval(run_dir, result)
    metrics = rundir.read_metrics(run_dir)
    gap = round(result["train_lk"] - result["test_lk"], 2) if "train_lk" in result else ""
    return {"dataset": run["dataset"], "layers": run["layers"], "objective": run["objective"],
            "k": run["k"], "epochs": run["epochs"], "test_nll": round(result["test_nll"], 2),
            "active_units": "+".join(map(str, result["active_units"])),
            "informative_units": "+".join(map(str, result["informative_units"])),
            "n_test": result["n_test"], "final_k": result["k"], "train_minus_test": gap,
            "seconds": round(sum(m["seconds"] for m in metrics)),
            # evaluated before eval.json recorded them: this machine, revision unknown
            "hardware": result.get("hardware") or hardware(), "revision": result.get("revision") or ""}


def key(r):
    return r["dataset"], r["layers"], r["objective"], r["k"], r["epochs"]


def grid_run(table, r):
    """The grid's run dict for a row, and its index in the grid of its budget."""
    runs = grid(table, r["epochs"])
    index = next((i for i, run in enumerate(runs) if key(run) == key(r)), None)
    if index is None:
        raise ValueError(f"table {table} has no run {r['dataset']} {r['layers']}-layer {r['objective']} k={r['k']}")
    return runs[index], index


def earlier_rows(table, path, rows):
    """The rows of an earlier results csv (path) whose run is not among rows, typed as row()
    makes them; columns a csv from before they existed lacks are blank."""
    if not path.exists():
        return []
    have = {key(r) for r in rows}
    kept = []
    with path.open(newline="") as f:
        for line, r in enumerate(csv.DictReader(f), start=2):
            r = {field: r.get(field) or "" for field in FIELDS}
            try:
                r.update({field: int(r[field]) for field in INTEGER_FIELDS if r[field] != ""})
                r["test_nll"] = float(r["test_nll"])
                r["train_minus_test"] = float(r["train_minus_test"]) if r["train_minus_test"] != "" else ""
                grid_run(table, r)
            except (ValueError, KeyError) as err:
                raise ValueError(f"{path} line {line}: not a row of table {table} ({err})") from None
            if key(r) not in have:
                kept.append(r)
    return kept


def reproduce(settings):
    """Train (or resume) the grid's runs of settings (a Settings), then write its tables; the rows."""
    out = Path(settings.out) / f"table{settings.table}"
    runs = select(grid(settings.table, settings.epochs), settings.only)
    workers = ProcessPoolExecutor(settings.jobs, mp_context=get_context("spawn")) if settings.jobs > 1 else None
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(settings.jobs) as threads:
        if workers is not None:
            stack.enter_context(workers)
        if settings.table == 2:
            sources = {(r["objective"], r["k"]): r for r in grid(1, settings.epochs) if r["layers"] == 1}
            firsts = [sources[run["first"]] for run in runs]
            first_dir = Path(settings.out) / "table1"
            list(threads.map(lambda r: run_one(r, first_dir / r["name"], settings, workers), firsts))
            jobs = [(run, out / run["name"], first_dir / src["name"]) for run, src in zip(runs, firsts)]
        else:
            jobs = [(run, out / run["name"], None) for run in runs]
        cheap_first = sorted(range(len(jobs)), key=lambda i: (jobs[i][0]["k"], jobs[i][0]["layers"]))
        list(threads.map(lambda i: announce(run_one(*jobs[i][:2], settings, workers, jobs[i][2])), cheap_first))
    present = finished(settings.table, settings.out)
    rows = [row(run, run_dir, settings.data_dir, settings.limit_test) for run, run_dir in present]
    csv_path = Path(settings.results) / f"table{settings.table}.csv"
    rows = sorted(rows + earlier_rows(settings.table, csv_path, rows), key=lambda r: (r["epochs"], grid_run(settings.table, r)[1]))
    write_results(settings.table, rows, [d for _, d in present], Path(settings.results), settings)
    return rows


def overfitting(run_dir, k, data_dir=None, limit=OVERFIT_EXAMPLES):
    """{train_lk, test_lk, lk_k}: mean L_k (k the run's training k) of a run's model on the first
    `limit` training and test images (fixed binarization: the images it trained on)."""
    from ..evaluation.likelihood import fixed_binarization, seeded_log_likelihood
    from ..training.paper import run_data
    model = rundir.load_model(run_dir)
    _, data, train_x = run_data(run_dir, data_dir)
    bound = lambda x: seeded_log_likelihood(model, fixed_binarization(x[:limit], data.binarization), k)
    return {"train_lk": bound(train_x).mean().item(), "test_lk": bound(data.test).mean().item(), "lk_k": k}


def announce(r):
    print(f"{r['dataset']} {r['layers']}-layer {r['objective']} k={r['k']}: test NLL {r['test_nll']:.2f} "
          f"({r['active_units']} active units, {r['seconds']} s)", flush=True)
    return r


def paper_value(table, r, run):
    if table == 1:
        return PAPER_TABLE1.get((r["layers"], r["objective"], r["k"]), ("", ""))
    if table == 3:
        return PAPER_TABLE3.get((r["layers"], r["objective"], r["k"]), ""), ""
    return PAPER_TABLE2[(*run["first"], run["objective"], run["k"])]


def write_results(table, rows, run_dirs, results_dir, settings):
    """results/table<t>.csv and .md from rows, and the curves plot of the runs in run_dirs
    (the rows' runs present on this machine; the plot is left as it was when there are none)."""
    from .plots import plot_runs
    results_dir.mkdir(parents=True, exist_ok=True)
    with (results_dir / f"table{table}.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    budget = "the epochs column, of the paper's schedule (the paper trains 3280 epochs)"
    if table == 2:
        budget = ("the Table-1 run of the epochs column (the paper's schedule), then as many epochs again "
                  "with the other objective at lr 1e-4; the paper: 3280 epochs, then 3^7 = 2187")
    if settings.limit_train:
        budget += f", on the first {settings.limit_train} training images"
    ks = "/".join(sorted({f"L_{r['final_k']}" for r in rows if r["final_k"] != ""})) or f"L_{settings.final_k}"
    lines = [f"# Table {table}: test NLL (nats, -mean {ks} over the test images column), active units",
             "", f"Budget: {budget}. Hardware: {per_budget(rows, 'hardware', 'not recorded')}.",
             f"Code: runs evaluated at {per_budget(rows, 'revision', 'a revision not recorded')}; this table "
             f"written at {revision() or 'a revision not recorded'} by `"
             + " ".join(["iwae", "reproduce"] + sys.argv[2:]) + "`. It lists every finished run of this table "
             "under --out, whatever command ran it, and keeps the rows of the earlier csv that none of them "
             "replaces (the curves plot shows the runs under --out).", "",
             "Units: active = Burda's A_u > 1e-2; informative = mean KL(q || prior) > 0.05 nats per unit "
             "(on 500 training images). Seconds: the run's training wall clock, with whatever else shared "
             "the machine (`--jobs` runs at a time).", "",
             "| dataset | layers | objective | k | epochs | ours NLL | ours active units | ours informative "
             "| paper NLL | paper active units | ours - paper | test images | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    gaps = table == 3
    if gaps:
        lines[-2] += " train - test L_k |"
        lines[-1] += "---|"
        lines[2] += (f" Train - test L_k: the mean L_k (k as trained) on the first {OVERFIT_EXAMPLES:,} training "
                     f"images minus that on the first {OVERFIT_EXAMPLES:,} test images: how far the model "
                     "overfits the fixed binarization (the paper's App. D; its code's README puts it near "
                     "3.5 nats at the full budget).")
    for r in rows:
        run, _ = grid_run(table, r)
        nll, units = paper_value(table, r, run)
        above = f"{r['test_nll'] - nll:+.2f}" if nll != "" else ""       # nats above the paper's NLL
        objective = r["objective"] if table != 2 else f"{run['first'][0]} k={run['first'][1]} -> {r['objective']}"
        lines.append(f"| {r['dataset']} | {r['layers']} | {objective} | {r['k']} | {r['epochs']} | "
                     f"{r['test_nll']:.2f} | {r['active_units']} | {r['informative_units']} | {nll} | {units} | "
                     f"{above} | {r['n_test']} | {r['seconds']} |" + (f" {r['train_minus_test']} |" if gaps else ""))
    if table in (1, 3):
        lines += ["", "## The paper's orderings, between runs of equal budget", ""] + orderings(rows)
    (results_dir / f"table{table}.md").write_text("\n".join(lines) + "\n")
    if run_dirs:
        plot_runs(run_dirs, results_dir / f"table{table}_curves.png", title=f"Table {table}")


def per_budget(rows, field, blank):
    """'value (20, 50 epochs); other (364 epochs)': a field's values and the budgets of their rows."""
    budgets = {}
    for r in rows:
        budgets.setdefault(r[field] or blank, set()).add(r["epochs"])
    return "; ".join(f"{value} ({', '.join(map(str, sorted(e)))} epochs)" for value, e in budgets.items()) or "-"


def orderings(rows):
    """The paper's Table-1 claims, each checked between finished runs of one dataset and one
    budget: markdown lines "- holds/fails (budget): claim: the numbers compared"."""
    by = {(r["dataset"], r["epochs"], r["layers"], r["objective"], r["k"]): r for r in rows}
    units = lambda r, field: sum(map(int, r[field].split("+")))
    lines = []
    for dataset, epochs in sorted({(r["dataset"], r["epochs"]) for r in rows}):
        at = lambda layers, objective, k: by.get((dataset, epochs, layers, objective, k))
        claims = []                      # (claim, holds, the numbers)
        for layers in (1, 2):
            runs = [at(layers, "iwae", k) for k in (1, 5, 50)]
            if all(runs):
                nll = [r["test_nll"] for r in runs]
                claims.append((f"{layers}-layer IWAE improves with k (k=1, 5, 50)", nll[0] > nll[1] > nll[2],
                               " > ".join(f"{v:.2f}" for v in nll)))
            for k in (5, 50):
                vae, iwae = at(layers, "vae", k), at(layers, "iwae", k)
                if vae and iwae:
                    claims.append((f"{layers}-layer IWAE beats VAE at k={k}", iwae["test_nll"] < vae["test_nll"],
                                   f"IWAE {iwae['test_nll']:.2f}, VAE {vae['test_nll']:.2f}"))
            vae, iwae = at(layers, "vae", 50), at(layers, "iwae", 50)
            for field, what in (("active_units", "active"), ("informative_units", "informative")):
                if vae and iwae and vae[field] and iwae[field]:       # blank: a csv row from before it existed
                    claims.append((f"{layers}-layer IWAE k=50 has more {what} units than VAE k=50",
                                   units(iwae, field) > units(vae, field), f"IWAE {iwae[field]}, VAE {vae[field]}"))
        for objective in ("vae", "iwae"):
            for k in (1, 5, 50):
                one, two = at(1, objective, k), at(2, objective, k)
                if one and two:
                    claims.append((f"2 layers beat 1 layer, {objective.upper()} k={k}",
                                   two["test_nll"] < one["test_nll"],
                                   f"2 layers {two['test_nll']:.2f}, 1 layer {one['test_nll']:.2f}"))
        lines += [f"- {'holds' if holds else '**fails**'} ({dataset}, {epochs} epochs): {claim}: {numbers}"
                  for claim, holds, numbers in claims]
    return lines or ["(no pair of finished runs at equal budget yet)"]


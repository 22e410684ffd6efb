"""The walk of a run's settings through the code: every call, inside the package, that is
handed the settings object of ``iwae train`` (the spec now, the Config before) or the data
directory (a string object of its own, so that it is followed by identity), in order.

    python -m benchmarks.spec_walk [--baseline REV]

A tiny paper run (40 images, 1 epoch, no final evaluation) is trained with each version under
sys.setprofile; each call whose arguments hold the settings object is a stay in the callee's
file (the object's own methods, validating or saving itself, are not counted). Fields the
code unpacks (k, lr, ...) are not followed: their values are shared by unrelated objects. Printed: stays, distinct files, returns (a stay in a file visited before, not the
previous stay's) and returns to the loop's module. Fewer means a reader follows fewer files
to learn what a setting does.
"""
import argparse
import sys
import tempfile
from pathlib import Path

from benchmarks.common import data_dir as resolve_data_dir, load_baseline


def walk(package, make_spec, train, data_dir):
    """The files (relative to the package) of the calls handed the spec or data_dir, in order;
    make_spec(data_dir) and train(spec, out, data_dir) run the version's iwae train."""
    spec = make_spec(data_dir)
    root = str(Path(package.__file__).parent)
    stays = []

    def profile(frame, event, arg):
        if event != "call" or not frame.f_code.co_filename.startswith(root):
            return
        values = [v for name, v in frame.f_locals.items() if name != "self" or v is not spec]
        if any(v is spec or v is data_dir for v in values):
            stays.append(str(Path(frame.f_code.co_filename).relative_to(root)))
    with tempfile.TemporaryDirectory() as out:
        sys.setprofile(profile)
        try:
            train(spec, Path(out) / "run", data_dir)
        finally:
            sys.setprofile(None)
    return stays


def summary(stays, loop="training/loop.py"):
    seen, returns, to_loop = set(), 0, 0
    for i, f in enumerate(stays):
        if f in seen and stays[i - 1] != f:
            returns += 1
            to_loop += f == loop
        seen.add(f)
    return {"stays": len(stays), "files": len(seen), "returns": returns, "returns to loop.py": to_loop}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", default="8368054", help="git revision of the previous main ('' to skip)")
    p.add_argument("--data-dir")
    args = p.parse_args()
    data_dir = "".join(list(str(resolve_data_dir(args.data_dir))))    # a str object of its own
    small = dict(limit_train=40, epochs=1, k=2, eval_examples=10, compile="off")
    import iwae
    from iwae.training import paper
    from iwae.training.spec import PaperSpec
    now = walk(iwae, lambda where: PaperSpec(**small, data_dir=where, quiet=True),
               lambda spec, out, where: paper.train(spec, out), data_dir)
    rows = [("this version", summary(now), now)]
    if args.baseline:
        base = load_baseline(args.baseline)
        import iwae_base.training.config as config
        import iwae_base.training.paper as old
        stays = walk(base, lambda where: config.Config(**small),
                     lambda spec, out, where: old.train(spec, out, data_dir=where, quiet=True), data_dir)
        rows.append((f"previous main {args.baseline}", summary(stays), stays))
    for name, numbers, stays in rows:
        print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in numbers.items()))
        print("   " + " > ".join(stays))


if __name__ == "__main__":
    main()

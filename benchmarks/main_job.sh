#!/bin/bash
# The README's first command, timed as a new user meets it: a clean clone of this checkout
# beside ../shared, torch.compile's and runtime.decisions' caches empty, `iwae train --verbose`.
#   bash benchmarks/main_job.sh [CLONE]      (default: ../main-job-check, beside this checkout)
# Prints the seconds of the whole command and of its `iwae train`, the decision lines, the
# test NLL; the full output is in CLONE.log.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
clone=${1:-$here/../main-job-check}
rm -rf "$clone" "$clone.caches"
git clone -q "$here" "$clone"
cd "$clone"
export TORCHINDUCTOR_CACHE_DIR="$clone.caches/inductor" XDG_CACHE_HOME="$clone.caches/xdg"
command=$(sed -n '/^## The two commands/,/^Run the tests/p' README.md | sed -n '/^```bash$/{n;p;q}')
setup=${command%%&& \{*}                       # the install, up to the block that runs the job
job="{${command#*&& \{}"
start=$SECONDS
bash -c "$setup" > "$clone.log" 2>&1
installed=$SECONDS
bash -c ". .venv/bin/activate && ${job/iwae train;/iwae train --verbose;}" >> "$clone.log" 2>&1
echo "install ${installed}s, iwae train $((SECONDS - installed))s, total $((SECONDS - start))s ($(git rev-parse --short HEAD))"
grep -a "^iwae: compile\|trained\|test NLL" "$clone.log" | tr '\r' '\n' | grep -a "^iwae: compile\|trained\|test NLL" || true

#!/usr/bin/env bash
# Install ptynb with its test dependencies and run every test: unit, slow, notebooks (nbval)
# and browser tests (Playwright driving Debian's Chromium). Used by `.ci/run`.
set -euo pipefail
cd "$(dirname "$0")/.."

# Browser for the app tests: Playwright cannot download its own here, so use the system one.
if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi

# torch==2.13.0 satisfies the project's torch pin and is the local CPU build on these machines.
python -m pip install -q "torch==2.13.0" -e ".[test]"

# All cores through pytest-xdist (tests/conftest.py keeps each notebook and each test module on one
# worker); one BLAS/FFT thread per worker so that the workers do not fight over the cores.
# PTYNB_TEST_WORKERS=0 runs everything in this one process.
WORKERS="${PTYNB_TEST_WORKERS:-$(python -c 'import os; print(max(1, len(os.sched_getaffinity(0))))')}"
XDIST=()
if [ "$WORKERS" -gt 0 ]; then
  XDIST=(-n "$WORKERS" --dist loadgroup --no-loadscope-reorder)  # in conftest order: long ones first
  export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 PTYNB_FFT_WORKERS=1
fi
python -m pytest tests notebooks --nbval-lax -p no:cacheprovider "${XDIST[@]}" \
  --nbval-sanitize-with tests/nbval_sanitize.cfg --durations=15 "$@"

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

python -m pytest tests notebooks --nbval-lax -p no:cacheprovider \
  --nbval-sanitize-with tests/nbval_sanitize.cfg --durations=15 "$@"

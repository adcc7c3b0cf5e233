#!/usr/bin/env bash
# Set up (first time) and run the whole test suite: lint, unit, export and integration tests.
# The integration tests start their own mosquitto on a free loopback port; the display tests
# drive Debian's chromium with Playwright.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "dev,train" chromium
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q -rs "$@"

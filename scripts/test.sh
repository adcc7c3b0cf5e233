#!/usr/bin/env bash
# Set up (first time) and run the whole test suite: lint, unit, export and integration tests.
# The integration tests start their own mosquitto on a free loopback port; the display tests
# drive Debian's chromium with Playwright.
set -euo pipefail
cd "$(dirname "$0")/.."
# gst-launch-1.0 and videotestsrc: the GStreamer camera tests (Jetson CSI cameras are read the same way)
bash scripts/setup.sh "dev,train" chromium fonts-dejavu-core gstreamer1.0-tools gstreamer1.0-plugins-base
# The official AsyncAPI parser checks schemas/asyncapi.yaml (npm; skipped with a reason without node).
if command -v npm >/dev/null 2>&1 && [ ! -d schemas/validate/node_modules/@asyncapi/parser ]; then
  npm ci --prefix schemas/validate --silent --no-audit --no-fund >&2
fi
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q -rs "$@"

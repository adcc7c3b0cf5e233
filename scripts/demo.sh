#!/usr/bin/env bash
# Set up (first time) and run the appliance on the bundled sample fields, with embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "" fonts-dejavu-core
exec .venv/bin/marrow-edge run --source samples/marrow "$@"

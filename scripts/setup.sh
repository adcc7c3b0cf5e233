#!/usr/bin/env bash
# Shared set-up for demo.sh and test.sh: mosquitto (Debian) and a virtual environment.
# Usage: setup.sh EXTRAS   e.g. setup.sh ""  or  setup.sh "dev,train"
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing mosquitto (apt-get)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
    # Debian's package may start a system broker on 1883; the project starts its own.
  else
    echo "setup: mosquitto is not installed and this user cannot apt-get it: sudo apt-get install mosquitto" >&2
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
spec="."
[ -n "$extras" ] && spec=".[$extras]"
.venv/bin/pip install -q -e "$spec" 2>&1 | grep -v "^WARNING: Location" >&2 || true
.venv/bin/python -c "import edge" # fail here, not later, if the install did not work

#!/usr/bin/env bash
# Shared set-up for demo.sh and test.sh: mosquitto (Debian) and a virtual environment.
# Usage: setup.sh EXTRAS [DEBIAN_PACKAGE...]   e.g. setup.sh ""  or  setup.sh "dev,train" chromium
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"

# Debian packages: mosquitto always; test.sh adds chromium (the display's browser tests).
missing=()
for package in mosquitto "${@:2}"; do
  case "$package" in
    mosquitto) command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto) ;;
    chromium) [ -x /usr/bin/chromium ] || missing+=(chromium) ;;
    *) dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package") ;;
  esac
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${missing[*]} (apt-get)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    # Debian's mosquitto package may start a system broker on 1883; the project starts its own.
  else
    echo "setup: ${missing[*]} not installed and this user cannot apt-get: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
spec="."
[ -n "$extras" ] && spec=".[$extras]"
# constraints.txt: the runtime's locked versions, the ones an offline release ships (scripts/release.py)
.venv/bin/pip install -q --constraint constraints.txt -e "$spec" 2>&1 | grep -v "^WARNING: Location" >&2 || true
.venv/bin/python -c "import edge" # fail here, not later, if the install did not work

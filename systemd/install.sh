#!/usr/bin/env bash
# Install marrow-edge as systemd services on a Debian/Ubuntu/JetPack box (run as root).
#
#   sudo bash systemd/install.sh            # install, enable, start
#
# DESTDIR=/some/root installs into a staging tree without touching the system (packaging,
# tests); SKIP_PIP=1 leaves the virtual environment alone; SKIP_SYSTEMCTL=1 enables nothing.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
dest=${DESTDIR:-}
prefix=/opt/marrow-edge

install -d "$dest$prefix" "$dest/etc/marrow-edge" "$dest/etc/systemd/system" "$dest/etc/mosquitto/conf.d"

if [ -z "$dest" ] && ! id marrow-edge >/dev/null 2>&1; then
    useradd --system --home-dir "$prefix" --shell /usr/sbin/nologin marrow-edge
    usermod -a -G video marrow-edge
    getent group render >/dev/null && usermod -a -G render marrow-edge
fi

# The code, models and samples, then the runtime virtual environment.
tar -C "$repo" --exclude=.git --exclude=.venv --exclude='__pycache__' -cf - \
    edge build_engines training models samples pyproject.toml README.md LICENSE config.example.yaml |
    tar -C "$dest$prefix" -xf -
if [ "${SKIP_PIP:-0}" != 1 ]; then
    python3 -m venv "$dest$prefix/.venv"
    "$dest$prefix/.venv/bin/pip" install -q "$dest$prefix"
fi

# Config and the environment file: kept if present (an update must not reset a lab's settings).
[ -e "$dest/etc/marrow-edge/config.yaml" ] || install -m 0644 "$repo/config.example.yaml" "$dest/etc/marrow-edge/config.yaml"
[ -e "$dest/etc/marrow-edge/env" ] || printf 'MARROW_EDGE_CAMERA=/dev/video0\n' > "$dest/etc/marrow-edge/env"
[ -e "$dest/etc/marrow-edge/mqtt-password" ] || install -m 0600 /dev/null "$dest/etc/marrow-edge/mqtt-password"

install -m 0644 "$here"/marrow-edge-*.service "$dest/etc/systemd/system/"
install -m 0644 "$here/mosquitto/marrow-edge.conf" "$dest/etc/mosquitto/conf.d/marrow-edge.conf"

if [ -z "$dest" ] && [ "${SKIP_SYSTEMCTL:-0}" != 1 ]; then
    systemctl daemon-reload
    systemctl enable --now mosquitto marrow-edge-engines marrow-edge-capture marrow-edge-pipeline
    echo "marrow-edge installed; status: systemctl status 'marrow-edge-*'"
else
    echo "marrow-edge staged under ${dest:-/} (services not enabled)"
fi

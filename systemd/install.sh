#!/usr/bin/env bash
# Install, upgrade or remove marrow-edge as systemd services on Debian/Ubuntu/JetPack (run as root).
#
#   sudo bash systemd/install.sh                 # install, or upgrade in place (config and data kept)
#   sudo bash systemd/install.sh --uninstall     # stop and remove the services and /opt/marrow-edge
#   sudo bash systemd/install.sh --purge         # ... and the config, the slides and the bundles too
#
# Layout: the code in a virtual environment (/opt/marrow-edge/.venv, a wheel, no checkout), the
# lab's config in /etc/marrow-edge (never overwritten), bundles and sample fields in
# /var/lib/marrow-edge (bundles/<name>, samples/marrow), with the slides, journal and outbox.
#
# Environment: DESTDIR=/root/of/a/staging/tree (nothing on the system is touched: packaging,
# tests); SKIP_APT=1 installs no Debian packages; SKIP_PIP=1 leaves the virtual environment
# alone; SKIP_SYSTEMCTL=1 enables nothing; WHEELHOUSE=DIR installs offline from a folder of wheels
# (pip --no-index; an offline release's wheels/<machine>-cp<XY> is found by itself); DEVICE_ID=...
# names the box (default: from its hostname and machine id); SYSTEM_SITE_PACKAGES=1 makes the venv see the system's packages (JetPack's TensorRT and CUDA).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
dest=${DESTDIR:-}
prefix=/opt/marrow-edge
data=/var/lib/marrow-edge
units="marrow-edge-engines marrow-edge-capture marrow-edge-pipeline marrow-edge-display"
live() { [ -z "$dest" ] && [ "${SKIP_SYSTEMCTL:-0}" != 1 ] && command -v systemctl >/dev/null; }

case "${1:-}" in
--uninstall | --purge)
    if live; then
        # shellcheck disable=SC2086
        systemctl disable --now $units 2>/dev/null || true
    fi
    for u in $units; do rm -f "$dest/etc/systemd/system/$u.service"; done
    rm -f "$dest/etc/mosquitto/conf.d/marrow-edge.conf"
    rm -rf "${dest:?}$prefix"
    if [ "$1" = --purge ]; then
        rm -rf "${dest:?}/etc/marrow-edge" "${dest:?}$data" "${dest:?}/var/cache/marrow-edge"
        [ -z "$dest" ] && id marrow-edge >/dev/null 2>&1 && userdel marrow-edge
        echo "marrow-edge removed with its config, slides and bundles"
    else
        echo "marrow-edge removed; kept: /etc/marrow-edge (config) and $data (slides, bundles)"
    fi
    live && systemctl daemon-reload
    exit 0
    ;;
"") ;;
*)
    echo "usage: install.sh [--uninstall | --purge]" >&2
    exit 2
    ;;
esac

# What the box needs from Debian: the broker and venv (nothing when staging).
if [ -z "$dest" ] && [ "${SKIP_APT:-0}" != 1 ]; then
    need=""
    command -v mosquitto >/dev/null || need="$need mosquitto"
    python3 -c "import ensurepip, venv" 2>/dev/null || need="$need python3-venv"
    if [ -n "$need" ]; then
        # shellcheck disable=SC2086
        if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $need; }; then
            echo "install.sh: could not install$need with apt-get (offline?): install it from the" \
                "distribution's media or a local mirror, then run install.sh again" >&2
            exit 2
        fi
    fi
fi

if [ -z "$dest" ] && ! id marrow-edge >/dev/null 2>&1; then
    useradd --system --home-dir "$prefix" --shell /usr/sbin/nologin marrow-edge
    usermod -a -G video marrow-edge
    getent group render >/dev/null && usermod -a -G render marrow-edge
fi

install -d "$dest$prefix" "$dest/etc/marrow-edge" "$dest/etc/systemd/system" "$dest/etc/mosquitto/conf.d" \
    "$dest$data/bundles" "$dest$data/samples"

# The code: a wheel in the venv (an upgrade replaces it; the venv stays).
venv="$dest$prefix/.venv"
if [ "${SKIP_PIP:-0}" != 1 ]; then
    [ -x "$venv/bin/python" ] || python3 -m venv ${SYSTEM_SITE_PACKAGES:+--system-site-packages} "$venv"
    # An offline release carries wheels/<machine>-cp<XY>/: use the folder for this box.
    if [ -z "${WHEELHOUSE:-}" ] && [ -d "$repo/wheels" ]; then
        tag="$(uname -m)-cp$("$venv/bin/python" -c 'import sys; print("%d%d" % sys.version_info[:2])')"
        WHEELHOUSE="$repo/wheels/$tag"
        if [ ! -d "$WHEELHOUSE" ]; then
            echo "install.sh: this release has no wheels for $tag (it has: $(ls "$repo/wheels" | tr '\n' ' '))" >&2
            exit 2
        fi
    fi
    if [ -n "${WHEELHOUSE:-}" ]; then
        "$venv/bin/pip" install -q --no-index --find-links "$WHEELHOUSE" --constraint "$repo/constraints.txt" \
            --upgrade marrow-edge
    else
        "$venv/bin/pip" install -q --upgrade --constraint "$repo/constraints.txt" "$repo"
    fi
fi

# Bundles and sample fields (the demo, the engines' verification fields, the simulated microscope).
# A bundle goes in verified, through `marrow-edge bundle install` when the venv is there.
for bundle in "$repo"/models/*/; do
    name=$(basename "$bundle")
    if [ -x "$venv/bin/marrow-edge" ]; then
        "$venv/bin/marrow-edge" bundle --bundles-dir "$dest$data/bundles" install "$bundle" --name "$name" >/dev/null
    else
        rm -rf "${dest:?}$data/bundles/$name" && cp -a "$bundle" "$dest$data/bundles/$name"
    fi
done
rm -rf "${dest:?}$data/samples/marrow" && cp -a "$repo/samples/marrow" "$dest$data/samples/marrow"

# Config: written once, with a device id of its own; an upgrade keeps the lab's file as it is.
config="$dest/etc/marrow-edge/config.yaml"
if [ ! -e "$config" ]; then
    if [ -z "${DEVICE_ID:-}" ]; then
        machine=$(cat "$dest/etc/machine-id" 2>/dev/null || cat /etc/machine-id 2>/dev/null || od -An -N4 -tx4 /dev/urandom)
        host=$(hostname -s 2>/dev/null | tr -c 'A-Za-z0-9_.\n-' '-' | cut -c1-40)
        DEVICE_ID="${host:-box}-$(echo "$machine" | tr -dc 'a-f0-9' | cut -c1-6)"
    fi
    case "$DEVICE_ID" in marrow-edge-dev | "") echo "install.sh: choose another DEVICE_ID" >&2 && exit 2 ;; esac
    sed -e "s/^device_id: marrow-edge-dev$/device_id: $DEVICE_ID/" \
        -e "s|^# bundle: models/marrow-bm .*|bundle: marrow-bm                       # a name in bundles_dir (marrow-edge bundle list)|" \
        -e "s|^  url: null .*|  url: mqtt://127.0.0.1:1883             # the box's own mosquitto; the lab is reached by its bridge|" \
        -e "s|^  port: null  .*# null: off; the installed box: 9108|  port: 9108                           # Prometheus: http://127.0.0.1:9108/metrics|" \
        "$repo/config.example.yaml" >"$config"
    chmod 0644 "$config"
    echo "config: $config (device_id: $DEVICE_ID)"
else
    grep -q '^device_id: marrow-edge-dev' "$config" && echo "warning: $config still says device_id: marrow-edge-dev" >&2
fi
[ -e "$dest/etc/marrow-edge/env" ] || printf 'MARROW_EDGE_CAMERA=/dev/video0\n' >"$dest/etc/marrow-edge/env"
[ -e "$dest/etc/marrow-edge/mqtt-password" ] || install -m 0600 /dev/null "$dest/etc/marrow-edge/mqtt-password"

install -m 0644 "$here"/marrow-edge-*.service "$dest/etc/systemd/system/"
install -m 0644 "$here/mosquitto/marrow-edge.conf" "$dest/etc/mosquitto/conf.d/marrow-edge.conf"
[ -z "$dest" ] && chown -R marrow-edge:marrow-edge "$data"

if live; then
    systemctl daemon-reload
    # shellcheck disable=SC2086
    systemctl enable mosquitto $units
    # shellcheck disable=SC2086
    systemctl restart mosquitto $units
    echo "marrow-edge installed; status: systemctl status 'marrow-edge-*'; display: http://127.0.0.1:8080/"
else
    echo "marrow-edge staged under ${dest:-/} (services not enabled)"
fi

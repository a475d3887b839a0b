#!/usr/bin/env bash
# Installs what the tests beyond cargo's own need on a fresh Debian machine (run as root, from
# anywhere): nginx for tests/nginx.rs, redis-server for tests/cluster.rs and
# tests/cluster_failures.rs (each test starts its own on a free port), a Python venv with
# `websockets` and the Node `ws` package for tests/clients.rs, Chromium and playwright-core for
# tests/e2e. Idempotent; cargo's own dev-dependencies (proptest) need nothing here.
#
#   sudo bash scripts/test-deps.sh        # then: cargo test
#
# The tests find these through WSHUB_NGINX, WSHUB_REDIS_SERVER, WSHUB_PYTHON and WSHUB_NODE
# (defaults: nginx or /usr/sbin/nginx, redis-server or /usr/bin/redis-server,
# target/venv/bin/python, node).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

export DEBIAN_FRONTEND=noninteractive
packages=(nginx redis-server chromium)
command -v node >/dev/null || packages+=(nodejs)
command -v npm >/dev/null || packages+=(npm)
command -v python3 >/dev/null || packages+=(python3)
# Debian's python3 needs python3-venv (ensurepip) for `python3 -m venv`.
python3 -c 'import ensurepip, venv' 2>/dev/null || packages+=(python3-venv)

apt-get update
apt-get install -y --no-install-recommends "${packages[@]}"
# The packages may start a system nginx on :80 and a system Redis on :6379; the tests never use
# them, so leave them stopped.
for service in nginx redis-server; do
    if command -v systemctl >/dev/null && systemctl is-active --quiet "$service" 2>/dev/null; then
        systemctl stop "$service" || true
    fi
done

venv="$root/target/venv"
if [ ! -x "$venv/bin/python" ]; then
    mkdir -p "$root/target"
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -r "$root/tests/clients/requirements.txt"

(cd "$root/tests/clients" && npm ci --no-audit --no-fund)
if [ -f "$root/tests/e2e/package-lock.json" ]; then
    (cd "$root/tests/e2e" && npm ci --no-audit --no-fund)
fi

echo "test dependencies ready: $(/usr/sbin/nginx -v 2>&1), $(redis-server --version | cut -d' ' -f1-3), python websockets $("$venv/bin/python" -c 'import websockets; print(websockets.__version__)'), node ws $(cd "$root/tests/clients" && node -p 'require("ws/package.json").version')"

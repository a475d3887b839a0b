#!/usr/bin/env bash
# Runs every wshub test: unit, integration (real sockets, real nginx, Python and Node clients),
# property tests, the client library's unit tests, and the Chromium end-to-end test of the chat page.
#
# It installs what the tests need first (scripts/test-deps.sh: apt packages, a Python venv,
# npm packages), so it works on a fresh Debian machine as root. Set WSHUB_SKIP_DEPS=1 to skip
# the installs when they are known to be done.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${WSHUB_SKIP_DEPS:-0}" != 1 ]; then
  bash scripts/test-deps.sh
fi

cargo build --locked
cargo test --locked

echo "== assets/wshub.js in node, against a fake WebSocket"
node --test tests/e2e/wshub.test.mjs

echo "== end-to-end: the chat page in headless Chromium"
WSHUB_BIN="$PWD/target/debug/wshub" node tests/e2e/chat.e2e.mjs

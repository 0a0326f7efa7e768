#!/usr/bin/env bash
# Runs Sluice's whole test suite: formatting, lints, every test against a real nats-server
# and a real PostgreSQL, the dashboard in a real headless Chromium, and the API against its
# OpenAPI document. Installs what a fresh
# Debian machine lacks first.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v nats-server >/dev/null || missing+=(nats-server)
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql)
command -v python3 >/dev/null || missing+=(python3)
python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
command -v curl >/dev/null || missing+=(curl)
command -v openssl >/dev/null || missing+=(openssl)
command -v git >/dev/null || missing+=(git)
# The dashboard's browser tests drive a real headless Chromium through its WebDriver.
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}"
fi
if ! cargo nextest --version >/dev/null 2>&1; then
    echo "installing cargo-nextest"
    cargo install cargo-nextest --locked
fi

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --doc --locked
# The API against its OpenAPI document (schemathesis, from PyPI).
./scripts/api-contract.sh
# Last, so its summary closes the run.
cargo nextest run --workspace --locked --no-fail-fast

#!/usr/bin/env bash
# Installs what is missing (nats-server), builds Sluice and starts `sluice up` with the
# bundled packs. Extra arguments go to `sluice up` (see `sluice up --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v cargo >/dev/null; then
    echo "error: Rust is not installed; install it with rustup (https://rustup.rs), then run this again" >&2
    exit 1
fi
missing=()
command -v nats-server >/dev/null || missing+=(nats-server)
command -v python3 >/dev/null || missing+=(python3)
# Packs with a requirements.txt get a virtualenv of their own.
python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}"
fi
cargo build --release --locked -p sluice
exec ./target/release/sluice up --packs packs "$@"

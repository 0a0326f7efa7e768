#!/usr/bin/env bash
# The API against its own OpenAPI document: a real `sluice up` (its own nats-server, SQLite)
# with a pack whose actions touch nothing, some executions, events and keys to answer with,
# then schemathesis (from PyPI) with an admin token. It fails on any 5xx, any response that
# does not match the document (body, status, content type, headers).
#
# Left out: revoking tokens (it would revoke the token the run uses) and installing packs
# (a generated git URL reaches out to the network); tests/packs.rs covers installing.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
venv="${SLUICE_CONTRACT_VENV:-${CARGO_TARGET_DIR:-target}/contract-venv}"
if [ ! -x "$venv/bin/st" ]; then
    echo "installing schemathesis into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'schemathesis>=4,<5'
fi

cargo build --quiet --locked -p sluice
target_dir="${CARGO_TARGET_DIR:-target}"
case "$target_dir" in /*) ;; *) target_dir="$PWD/$target_dir" ;; esac
sluice="$target_dir/debug/sluice"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
nats_port=$(free_port)
http_port=$(free_port)
api="http://127.0.0.1:$http_port"

(cd "$work" && exec "$sluice" up --packs "$OLDPWD/scripts/contract-pack" \
    --nats-port "$nats_port" --http "127.0.0.1:$http_port" >"$work/sluice.log" 2>&1) &
sluice_pid=$!
stop() {
    kill "$sluice_pid" 2>/dev/null || true
    wait "$sluice_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap stop EXIT

for _ in $(seq 1 100); do
    curl -sf "$api/healthz" >/dev/null 2>&1 && break
    sleep 0.2
done
if ! curl -sf "$api/healthz" >/dev/null; then
    echo "sluice up did not start:" >&2
    cat "$work/sluice.log" >&2
    exit 1
fi
token=$(cat "$work/.sluice/admin.token")
auth="Authorization: Bearer $token"

# Something to list and show.
json() { curl -sf -H "$auth" -H 'Content-Type: application/json' "$@" >/dev/null; }
json -d '{"action": "safe.say", "parameters": {"message": "one"}}' "$api/api/v1/executions"
json -d '{"action": "safe.nothing"}' "$api/api/v1/executions"
json -X PUT -d '{"value": "db1.example.com"}' "$api/api/v1/keys/system.api_host"
json -X PUT -d '{"value": "hunter2", "secret": true}' "$api/api/v1/keys/system.api_token"
json -d '{"name": "grafana", "scope": "read", "expires": "1d"}' "$api/api/v1/tokens"
(cd "$work" && "$sluice" trigger safe.ping '{"host": "db1"}' >/dev/null)
(cd "$work" && "$sluice" trigger safe.ping '{"host": 7}' >/dev/null)

curl -sf -H "$auth" "$api/api/v1/openapi.json" -o "$work/openapi.json"
"$venv/bin/st" run "$work/openapi.json" --url "$api" -H "$auth" \
    --exclude-operation-id revoke_token --exclude-operation-id install_pack --exclude-operation-id live \
    --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance,response_headers_conformance \
    --max-examples "${SLUICE_CONTRACT_EXAMPLES:-50}" --seed "${SLUICE_CONTRACT_SEED:-1}" \
    --request-timeout 20 --no-color

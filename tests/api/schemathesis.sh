#!/usr/bin/env bash
# Property-based API check: schemathesis generates requests from /openapi.json of a running
# `patron serve` (real HTTP server, real redb store, embedded broker) with an admin key, and
# fails on any 5xx or any response that does not match the documented schema.
#
# Usage: tests/api/schemathesis.sh [PATRON_BIN]   (default: $CARGO_TARGET_DIR/debug/patron)
# Env:   SCHEMATHESIS_VENV (default ~/.cache/patron/venv-schemathesis), ST_MAX_EXAMPLES (50)
set -euo pipefail
cd "$(dirname "$0")/../.."

TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
PATRON="${1:-$TARGET/debug/patron}"
VENV="${SCHEMATHESIS_VENV:-$HOME/.cache/patron/venv-schemathesis}"
if ! "$VENV/bin/schemathesis" --version >/dev/null 2>&1; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check 'schemathesis>=4,<5'
fi

WORK="$(mktemp -d)"
OUT="out/schemathesis"
mkdir -p "$OUT"
SERVE_PID=""
cleanup() {
    [ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null && wait "$SERVE_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

# A small store with real customers, so routes answer 200 as well as 404.
"$PATRON" generate --customers 300 --days 180 --seed 11 --out "$WORK/events.jsonl" >/dev/null
"$PATRON" replay --input "$WORK/events.jsonl" --store "$WORK/state.redb" >/dev/null

# Admin reaches every route but event intake, which only an ingest key may use.
ADMIN_OUT="$("$PATRON" keys new --role admin --name schemathesis-admin)"
INGEST_OUT="$("$PATRON" keys new --role ingest --name schemathesis-ingest)"
ADMIN_KEY="$(printf '%s\n' "$ADMIN_OUT" | head -n1)"
INGEST_KEY="$(printf '%s\n' "$INGEST_OUT" | head -n1)"
config_entry() { printf '%s\n' "$1" | sed -n '/^\[\[api.keys\]\]/,$p'; }
cat > "$WORK/patron.toml" <<TOML
[store]
path = "$WORK/state.redb"

[source]
kind = "embedded"

[api]
listen = "127.0.0.1:0"

$(config_entry "$ADMIN_OUT")

$(config_entry "$INGEST_OUT")

[[segments]]
name = "big_spenders"
where = "monetary > 100"
TOML

"$PATRON" serve --config "$WORK/patron.toml" > "$WORK/serve.out" 2> "$OUT/serve.stderr.log" &
SERVE_PID=$!
URL=""
for _ in $(seq 300); do
    URL="$(sed -n 's/^HTTP: //p' "$WORK/serve.out" | head -n1)"
    [ -n "$URL" ] && break
    kill -0 "$SERVE_PID" 2>/dev/null || { cat "$OUT/serve.stderr.log"; exit 1; }
    sleep 0.1
done
[ -n "$URL" ] || { echo "serve printed no HTTP address"; exit 1; }
echo "schemathesis against $URL"

check() {
    local key="$1"; shift
    "$VENV/bin/schemathesis" run "$URL/openapi.json" \
        --header "Authorization: Bearer $key" \
        --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
        --max-examples "${ST_MAX_EXAMPLES:-50}" \
        --seed 1 \
        --report junit --report-dir "$OUT" \
        --no-color "$@"
}
check "$ADMIN_KEY" --exclude-path /v1/events
check "$INGEST_KEY" --include-path /v1/events

#!/usr/bin/env bash
# Browser test of the dashboard (issue 7): Debian's Chromium, headless, against a running
# `patron demo`. Asserts on the DOM that the page loads with a key and that every chart renders
# with data, and saves a screenshot to out/browser/dashboard.png (out/ is git-ignored).
#
#   bash tests/browser/run.sh            # builds the binary (cargo build --workspace --bins)
#   PATRON_BIN=path/to/patron bash tests/browser/run.sh   # use that binary, no build
#   bash tests/browser/run.sh --fake     # the page against tests/browser/fake_api.mjs, no build
#
# Installs chromium with apt-get when /usr/bin/chromium is missing, and playwright-core (npm,
# pinned in package-lock.json) when node_modules lacks it. Exit 0 when every check passes.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
HERE="$ROOT/tests/browser"
OUT="$ROOT/out/browser"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/patron/target}"
mkdir -p "$OUT"

say() { printf '[browser] %s\n' "$*"; }

if [ ! -x /usr/bin/chromium ]; then
    say "installing Debian's chromium"
    export DEBIAN_FRONTEND=noninteractive
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends chromium > "$OUT/apt.log" 2>&1 ||
        { tail -20 "$OUT/apt.log"; exit 1; }
fi
/usr/bin/chromium --version 2>/dev/null | grep -i chromium || true

if [ ! -f "$HERE/node_modules/playwright-core/package.json" ]; then
    say "installing playwright-core (npm ci)"
    (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error)
fi

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

WORK="$(mktemp -d "${TMPDIR:-/tmp}/patron-browser.XXXXXX")"
SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -INT "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

PORT="$(free_port)"
if [ "${1:-}" = "--fake" ]; then
    node "$HERE/fake_api.mjs" --port "$PORT" > "$OUT/fake_api.log" 2>&1 &
    SERVER_PID=$!
    URL="http://127.0.0.1:$PORT"
    KEY="fake-key"
    for _ in $(seq 50); do (echo > "/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
else
    BIN="${PATRON_BIN:-}"
    if [ -z "$BIN" ]; then
        say "building (cargo build --workspace --bins)"
        cargo build --workspace --bins
        BIN="$CARGO_TARGET_DIR/debug/patron"
    fi
    # Two objectives, so the objectives chart has something to draw; the rest is the demo's own
    # configuration. The deadline is a year past the demo's event clock (which ends today).
    DEADLINE="$(date -u -d '+1 year' +%Y-%m-%d)"
    cat > "$WORK/dashboard.toml" <<EOF
[[objectives]]
name = "reduce churn by 25%"
kpi = "churn_rate"
baseline = 0.8
target = "-25%"
deadline = "$DEADLINE"

[[objectives]]
name = "grow repeat purchases"
kpi = "repeat_purchase_rate"
baseline = 0.2
target = 0.5
deadline = "$DEADLINE"
EOF
    # A small demo, streamed slowly enough that the page sees live ingest while it is tested:
    # about 7,000 events at 300/s. [kpi] refresh_interval is short so KPIs follow along.
    say "starting patron demo on 127.0.0.1:$PORT"
    PATRON__API__LISTEN="127.0.0.1:$PORT" PATRON__KPI__REFRESH_INTERVAL="2s" \
        "$BIN" demo --config "$WORK/dashboard.toml" --customers 600 --days 365 --rate 300 \
        --seed 11 --dir "$WORK/demo" > "$OUT/demo.out" 2> "$OUT/demo.err" &
    SERVER_PID=$!
    KEY=""
    for _ in $(seq 600); do
        KEY="$(grep -o 'pk_demo_[A-Za-z0-9_]*' "$OUT/demo.out" | head -1 || true)"
        [ -n "$KEY" ] && break
        kill -0 "$SERVER_PID" 2>/dev/null || { say "demo exited:"; cat "$OUT/demo.err"; exit 1; }
        sleep 0.1
    done
    [ -n "$KEY" ] || { say "demo printed no API key"; cat "$OUT/demo.out" "$OUT/demo.err"; exit 1; }
    URL="$(grep -o 'http://[0-9.]*:[0-9]*' "$OUT/demo.out" | head -1)"
    # Wait until data is there: a few thousand events applied and committed.
    say "waiting for data at $URL"
    applied=0
    for _ in $(seq 120); do
        applied="$(curl -sf -H "Authorization: Bearer $KEY" "$URL/v1/status" |
            python3 -c 'import json, sys; print(json.load(sys.stdin).get("applied", 0))' 2>/dev/null || echo 0)"
        [ "$applied" -ge 3000 ] && break
        sleep 0.5
    done
    say "$applied events applied"
    [ "$applied" -ge 3000 ] || { say "demo did not apply events in time"; tail -20 "$OUT/demo.err"; exit 1; }
fi

say "headless chromium against $URL"
node "$HERE/dashboard.mjs" --url "$URL" --key "$KEY" --out "$OUT/dashboard.png"

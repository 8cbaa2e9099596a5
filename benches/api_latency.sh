#!/usr/bin/env bash
# GET /v1/customers/{id} vs /healthz on one `patron serve`, in one run (DESIGN.md, Targets:
# profile >= 0.6 x the requests/s of /healthz; p99 <= 1 ms at half that load).
#   1. builds a store of CUSTOMERS generated customers once, cached under out/bench/;
#   2. lists their ids with `patron query` (before the server holds the store);
#   3. starts `patron serve` (embedded broker, a reader key), waits for /readyz, the first
#      scoring view and the first CLV refit (a minute after start), so neither lands mid-run;
#   4. runs benches/http_load.rs: closed loop (max rate), then open loop at half of that rate,
#      for /healthz and then for profiles (80% of requests to a hot 1% of ids);
#   5. if `wrk` is installed, a second opinion on both max rates.
#
#   benches/api_latency.sh                        # 1M customers, 32 connections, 2 client threads
#   CUSTOMERS=100000 SECONDS_PER_PHASE=5 benches/api_latency.sh   # quick
#   SKIP_BUILD=1 benches/api_latency.sh           # use the binaries already built
#   (PATRON_BIN, LOAD_BIN: run these executables instead)
#
# Client and server share the machine's cores; the result says how many there were.
set -euo pipefail
cd "$(dirname "$0")/.."
CUSTOMERS=${CUSTOMERS:-1000000}
DAYS=${DAYS:-365}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
SECONDS_PER_PHASE=${SECONDS_PER_PHASE:-15}
PORT=${PORT:-18080}
WAIT_REFIT=${WAIT_REFIT:-1}
TARGET=${CARGO_TARGET_DIR:-target}
BIN=${PATRON_BIN:-$TARGET/release/patron}
CACHE=out/bench
WORK=${WORK:-/tmp/patron-api-bench}
STORE=$CACHE/api-$CUSTOMERS.redb
IDS=$CACHE/api-$CUSTOMERS.ids
mkdir -p "$CACHE"
rm -rf "$WORK" && mkdir -p "$WORK"

. benches/common.sh
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --workspace --benches >&2
LOAD=${LOAD_BIN:-$(bench_exe http_load)}

if [ ! -f "$STORE" ]; then
    echo "building $STORE: $CUSTOMERS customers over $DAYS days" >&2
    /usr/bin/time -f 'generate: %e s, peak RSS %M KB' "$BIN" generate --customers "$CUSTOMERS" \
        --days "$DAYS" --seed 1 --out "$WORK/events.jsonl" >&2
    /usr/bin/time -f 'replay: %e s, peak RSS %M KB' "$BIN" replay --input "$WORK/events.jsonl" \
        --store "$STORE.tmp" >&2
    rm -f "$WORK/events.jsonl" "$STORE.tmp.dead-letters.jsonl"
    mv "$STORE.tmp" "$STORE"
    rm -f "$IDS"
fi
if [ ! -f "$IDS" ]; then
    # Shuffled, so that wrk's hot set (the first 1%) is as scattered as http_load's.
    "$BIN" query --store "$STORE" --format csv "SELECT customer_id FROM customers" \
        | tail -n +2 | shuf --random-source=<(yes) > "$IDS.tmp"
    mv "$IDS.tmp" "$IDS"
fi
echo "store: $STORE ($(du -m "$STORE" | cut -f1) MB), $(wc -l < "$IDS") customer ids" >&2

KEY=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
SHA=$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)
cat > "$WORK/api.toml" <<TOML
[api]
listen = "127.0.0.1:$PORT"
keys = [{ name = "bench", role = "reader", sha256 = "$SHA" }]
TOML
# Diagnostic: REFRESH_INTERVAL=1h keeps the scoring view from being rebuilt mid-run, which
# isolates the cost of the request path itself.
if [ -n "${REFRESH_INTERVAL:-}" ]; then
    printf '[kpi]\nrefresh_interval = "%s"\n' "$REFRESH_INTERVAL" >> "$WORK/api.toml"
fi

"$BIN" serve --config "$WORK/api.toml" --store "$STORE" --log info \
    > "$WORK/serve.out" 2> "$WORK/serve.err" &
SERVE_PID=$!
trap 'kill $SERVE_PID 2>/dev/null || true' EXIT
trap 'exit 143' INT TERM
URL="http://127.0.0.1:$PORT"
for _ in $(seq 600); do
    curl -sf "$URL/readyz" > /dev/null 2>&1 && break
    kill -0 $SERVE_PID 2>/dev/null || { cat "$WORK/serve.err" >&2; exit 1; }
    sleep 0.1
done
STARTED=$(date +%s)
# The first profile request builds the scoring view (a full scan); time it on its own.
FIRST=$(head -1 "$IDS")
curl -sf -o /dev/null -w 'first profile (builds the view): %{time_total} s\n' \
    -H "Authorization: Bearer $KEY" "$URL/v1/customers/$FIRST" >&2
if [ "$WAIT_REFIT" = 1 ]; then
    echo "waiting for the first CLV refit (at most a minute after start)" >&2
    until grep -q 'CLV models refitted\|CLV refit skipped' "$WORK/serve.err"; do
        [ $(($(date +%s) - STARTED)) -lt 300 ] || { echo "no refit after 300 s" >&2; break; }
        sleep 1
    done
fi
RSS_MB=$(( $(ps -o rss= -p $SERVE_PID) / 1024 ))

{
    echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), $(free -g | awk '/^Mem:/ {print $2}') GiB"
    if [ -n "${PATRON_BIN:-}" ]; then
        echo "binary: $BIN, built $(date -u -r "$BIN" +%FT%TZ)"
    else
        echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates src || echo ' + local changes')"
    fi
    echo "[kpi] refresh_interval: ${REFRESH_INTERVAL:-default (10s)}"
    echo "store: $CUSTOMERS customers, $(du -m "$STORE" | cut -f1) MB; serve RSS before load: $RSS_MB MB"
} | tee "$WORK/result.txt"

"$LOAD" --url "$URL" --key "$KEY" --ids "$IDS" --connections "$CONNECTIONS" \
    --threads "$THREADS" --seconds "$SECONDS_PER_PHASE" --open-seconds "$SECONDS_PER_PHASE" \
    --json "$CACHE/api_latency.jsonl" | tee -a "$WORK/result.txt"

if command -v wrk > /dev/null; then
    cat > "$WORK/profile.lua" <<'LUA'
local ids = {}
for line in io.lines(os.getenv("IDS")) do ids[#ids + 1] = line end
local hot = math.max(1, math.ceil(#ids * 0.01))
request = function()
    local i = math.random() < 0.8 and math.random(hot) or math.random(#ids)
    return wrk.format("GET", "/v1/customers/" .. ids[i])
end
LUA
    echo "wrk second opinion ($THREADS threads, $CONNECTIONS connections, ${SECONDS_PER_PHASE}s):" | tee -a "$WORK/result.txt"
    for what in healthz profile; do
        if [ $what = healthz ]; then
            out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${SECONDS_PER_PHASE}s" --latency \
                -H "Authorization: Bearer $KEY" "$URL/healthz")
        else
            out=$(IDS="$IDS" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${SECONDS_PER_PHASE}s" --latency \
                -H "Authorization: Bearer $KEY" -s "$WORK/profile.lua" "$URL")
        fi
        echo "$out" > "$WORK/wrk-$what.txt"
        printf '  %-8s %s req/s, p50 %s, p99 %s%s\n' "$what" \
            "$(awk '/^Requests\/sec/ {print $2}' <<< "$out")" \
            "$(awk '$1 == "50%" {print $2}' <<< "$out")" \
            "$(awk '$1 == "99%" {print $2}' <<< "$out")" \
            "$(grep -q 'Non-2xx' <<< "$out" && echo " ($(grep 'Non-2xx' <<< "$out" | xargs))")" \
            | tee -a "$WORK/result.txt"
    done
fi

echo "serve RSS after load: $(( $(ps -o rss= -p $SERVE_PID) / 1024 )) MB" | tee -a "$WORK/result.txt"
echo "CLV refits since start (incl. the first): $(grep -c 'CLV models refitted' "$WORK/serve.err" || true)" \
    | tee -a "$WORK/result.txt"
kill -TERM $SERVE_PID
wait $SERVE_PID || true
echo "full output: $WORK/result.txt" >&2

#!/usr/bin/env bash
# GET /v1/customers/{id} (or .../offers) vs /healthz on one `patron serve`, in one run
# (DESIGN.md, Targets: profile / offers >= 0.6 x the requests/s of /healthz; p99 <= 1 ms at half
# that load).
#   1. builds a store of CUSTOMERS generated customers once, cached under out/bench/;
#   2. lists their ids with `patron query` (before the server holds the store);
#   3. starts `patron serve` (embedded broker, a reader key; with ENDPOINT=offers a marketing key
#      and a catalog of 20 offers), waits for /readyz, the first
#      scoring view and the first CLV refit (a minute after start), so neither lands mid-run;
#   4. runs benches/http_load.rs: closed loop (max rate), then open loop at half of that rate,
#      for /healthz and then for the endpoint (80% of requests to a hot 1% of ids);
#   5. if `wrk` is installed, a second opinion on both max rates;
#   6. the caches' counters and the server's own latency per route (from /v1/status), which
#      tells the handler's time from the time spent around it (sockets, scheduling, client).
#
#   benches/api_latency.sh                        # 1M customers, 32 connections, 2 client threads
#   ENDPOINT=offers benches/api_latency.sh        # GET /v1/customers/{id}/offers?channel=web&limit=3
#   CUSTOMERS=100000 SECONDS_PER_PHASE=5 benches/api_latency.sh   # quick
#   HOT_SHARE=0 benches/api_latency.sh           # every id uniform over all customers (all cold)
#   OPEN_LOAD=0.1 benches/api_latency.sh         # open loop at 10% of the max rate, not 50%
#   OPEN_TIMER=tokio benches/api_latency.sh      # open-loop slots on tokio's 1 ms timer (bursts),
#                                                # not a timerfd per connection (as scheduled)
#   SKIP_BUILD=1 benches/api_latency.sh           # use the binaries already built
#   (PATRON_BIN, LOAD_BIN: run these executables instead)
#
# Client and server share the machine's cores; the result says how many there were.
set -euo pipefail
cd "$(dirname "$0")/.."
ENDPOINT=${ENDPOINT:-profile}
case $ENDPOINT in
    profile) TEMPLATE=${PATH_TEMPLATE:-/v1/customers/\{id\}} ROLE=reader ;;
    offers) TEMPLATE=${PATH_TEMPLATE:-/v1/customers/\{id\}/offers?channel=web&limit=3} ROLE=marketing ;;
    *) echo "ENDPOINT must be profile or offers, got $ENDPOINT" >&2; exit 2 ;;
esac
CUSTOMERS=${CUSTOMERS:-1000000}
DAYS=${DAYS:-365}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
SECONDS_PER_PHASE=${SECONDS_PER_PHASE:-15}
PORT=${PORT:-18080}
WAIT_REFIT=${WAIT_REFIT:-1}
HOT_SHARE=${HOT_SHARE:-0.8}
OPEN_LOAD=${OPEN_LOAD:-0.5}
OPEN_TIMER=${OPEN_TIMER:-kernel}
TARGET=${CARGO_TARGET_DIR:-target}
BIN=${PATRON_BIN:-$TARGET/release/patron}
CACHE=out/bench
WORK=${WORK:-/tmp/patron-api-bench-$ENDPOINT}
STORE=$CACHE/api-$CUSTOMERS.redb
IDS=$CACHE/api-$CUSTOMERS.ids
mkdir -p "$CACHE"
rm -rf "$WORK" && mkdir -p "$WORK"

. benches/common.sh
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --workspace --benches --bins >&2
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

api_config "$WORK/api.toml" "$PORT" "$ROLE"
if [ "$ENDPOINT" = offers ]; then
    # 20 offers; on channel=web 18 are candidates (2 are for other channels), with predicates
    # from broad to narrow over the customers table (RFM scores and segments, frequency,
    # monetary, CLV, P(alive)). No feedback events are sent, so every arm has the prior and no
    # customer is capped or cooling down: each decision evaluates every predicate and reads
    # the contact history and the arm counts of each eligible offer.
    # id | name | eligible | value | cost | channels | category | max_impressions | window | cooldown | holdout
    printf '[offers]\nexploration = "thompson"\n' >> "$WORK/api.toml"
    while IFS='|' read -r id name eligible value cost channels category max window cooldown holdout; do
        [ -n "$id" ] || continue
        {
            printf '\n[[offers.catalog]]\nid = "%s"\nname = "%s"\neligible = "%s"\n' "$id" "$name" "$eligible"
            printf 'value = %s\ncost = %s\nchannels = %s\n' "$value" "$cost" "$channels"
            [ -z "$category" ] || printf 'category = "%s"\n' "$category"
            [ -z "$max" ] || printf 'max_impressions = %s\nwindow = "%s"\n' "$max" "$window"
            [ -z "$cooldown" ] || printf 'cooldown_after_decline = "%s"\n' "$cooldown"
            printf 'holdout = %s\n' "$holdout"
        } >> "$WORK/api.toml"
    done <<'OFFERS'
free-shipping|Free shipping|frequency >= 2|12.0|1.5|["email", "web"]||3|7days|14days|0.1
welcome-back-10|10% off the second order|frequency = 1|8.0|2.0|["web"]||2|7days|14days|0.1
winback-20|20% win-back|r_score <= 2 AND frequency >= 2|25.0|5.0|["email", "web"]||2|30days|30days|0.1
vip-early-access|VIP early access|rfm_segment = 'Champions'|30.0|0.5|["web"]|||||0.05
double-points|Double loyalty points|rfm_segment IN ('Champions', 'Loyal Customers')|14.0|2.0|["web"]||4|30days||0.1
big-spender-gift|Gift for big spenders|monetary > 500|40.0|8.0|["web"]||1|30days|30days|0.1
books-bundle|Three books for two|true|6.0|0.5|["web"]|books|3|7days|7days|0.1
electronics-warranty|Extended warranty|monetary > 100|15.0|3.0|["web"]|electronics|2|30days|30days|0.1
garden-season|Garden season|true|5.0|0.5|["web"]|garden|1|1day|7days|0.1
grocery-subscribe|Grocery subscription|frequency >= 3|10.0|1.0|["web"]|grocery|2|7days|14days|0.1
home-refresh|Home refresh|avg_order_value > 50|9.0|1.0|["web"]|home|2|7days|14days|0.1
toys-holiday|Toys for the holidays|r_score >= 3|7.0|1.0|["web"]|toys|3|7days|7days|0.1
at-risk-save|We miss you|rfm_segment IN ('At Risk', 'Hibernating', 'About To Sleep')|18.0|4.0|["email", "web"]||2|14days|30days|0.15
second-order|Come back for a second order|rfm_segment IN ('New Customers', 'Promising')|10.0|2.0|["web"]||2|7days|14days|0.1
clv-concierge|Personal shopper|clv > 200|50.0|10.0|["web"]||1|30days|60days|0.2
likely-churn|Last-chance voucher|p_alive < 0.3 AND frequency >= 2|12.0|3.0|["web"]||1|30days|30days|0.1
first-purchase|5 off the first purchase|frequency = 0|6.0|2.0|["web"]||2|7days|14days|0.1
upsell-aov|Spend 20 more, save 5|avg_order_value BETWEEN 20 AND 60 AND m_score >= 3|8.0|1.0|["web"]||3|7days|7days|0.1
newsletter|Newsletter sign-up bonus|true|1.0|0.1|["email"]||1|30days||0.05
sms-flash|Flash sale by SMS|r_score >= 4|4.0|0.2|["sms"]||2|7days|7days|0.1
OFFERS
fi
# Diagnostic: REFRESH_INTERVAL=1h keeps the scoring view from being rebuilt mid-run, which
# isolates the cost of the request path itself.
if [ -n "${REFRESH_INTERVAL:-}" ]; then
    printf '[kpi]\nrefresh_interval = "%s"\n' "$REFRESH_INTERVAL" >> "$WORK/api.toml"
fi

# SERVER_CPUS / CLIENT_CPUS (taskset lists, e.g. 1 and 0) pin the server and the load client
# to separate cores, to see the server without the client's contention (diagnostic).
SERVER_PIN=() CLIENT_PIN=()
[ -z "${SERVER_CPUS:-}" ] || SERVER_PIN=(taskset -c "$SERVER_CPUS")
[ -z "${CLIENT_CPUS:-}" ] || CLIENT_PIN=(taskset -c "$CLIENT_CPUS")
"${SERVER_PIN[@]}" "$BIN" serve --config "$WORK/api.toml" --store "$STORE" --log info \
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
# The first request builds the scoring view (a full scan); time it on its own.
FIRST=$(head -1 "$IDS")
PREFIX=${TEMPLATE%%"{id}"*}
SUFFIX=${TEMPLATE#*"{id}"}
curl -sf -o /dev/null -w "first $ENDPOINT request (builds the view): %{time_total} s\n" \
    -H "Authorization: Bearer $KEY" "$URL$PREFIX$FIRST$SUFFIX" >&2
if [ "$WAIT_REFIT" = 1 ]; then
    echo "waiting for the first CLV refit (at most a minute after start)" >&2
    until grep -q 'CLV models refitted\|CLV refit skipped' "$WORK/serve.err"; do
        [ $(($(date +%s) - STARTED)) -lt 300 ] || { echo "no refit after 300 s" >&2; break; }
        sleep 1
    done
    # A refit is a commit, so the scoring view is rebuilt (a full scan) once after it: wait for
    # that rebuild too, or it would slow whichever phase it lands in (the /healthz baseline).
    # (REFRESH_INTERVAL holds rebuilds back, so there is nothing to wait for then.)
    if [ -z "${REFRESH_INTERVAL:-}" ] && grep -q 'CLV models refitted' "$WORK/serve.err"; then
        curl -sf -o /dev/null -H "Authorization: Bearer $KEY" "$URL$PREFIX$FIRST$SUFFIX" || true
        until [ "$(grep -c 'scoring view built' "$WORK/serve.err")" -ge 2 ]; do
            [ $(($(date +%s) - STARTED)) -lt 400 ] || { echo "no view rebuild after the refit" >&2; break; }
            sleep 1
        done
    fi
fi
RSS_MB=$(( $(ps -o rss= -p $SERVE_PID) / 1024 ))

{
    echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), $(free -g | awk '/^Mem:/ {print $2}') GiB"
    if [ -n "${PATRON_BIN:-}" ]; then
        echo "binary: $BIN, built $(date -u -r "$BIN" +%FT%TZ)"
    else
        echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates src || echo ' + local changes')"
    fi
    echo "endpoint: $ENDPOINT, GET $TEMPLATE ($ROLE key)$([ "$ENDPOINT" != offers ] || echo ", $(grep -c '^\[\[offers.catalog\]\]' "$WORK/api.toml") offers")"
    echo "[kpi] refresh_interval: ${REFRESH_INTERVAL:-default (10s)}"
    echo "cores: server ${SERVER_CPUS:-any}, client ${CLIENT_CPUS:-any}; open-loop timer: $OPEN_TIMER"
    echo "store: $CUSTOMERS customers, $(du -m "$STORE" | cut -f1) MB; serve RSS before load: $RSS_MB MB"
} | tee "$WORK/result.txt"

"${CLIENT_PIN[@]}" "$LOAD" --url "$URL" --key "$KEY" --ids "$IDS" --path-template "$TEMPLATE" --label "$ENDPOINT" \
    --connections "$CONNECTIONS" --hot-share "$HOT_SHARE" --open-load "$OPEN_LOAD" \
    --open-timer "$OPEN_TIMER" --server-pid "$SERVE_PID" \
    --threads "$THREADS" --seconds "$SECONDS_PER_PHASE" --open-seconds "$SECONDS_PER_PHASE" \
    --json "$CACHE/api_latency.jsonl" | tee -a "$WORK/result.txt"

if command -v wrk > /dev/null; then
    cat > "$WORK/profile.lua" <<'LUA'
local ids = {}
for line in io.lines(os.getenv("IDS")) do ids[#ids + 1] = line end
local hot = math.max(1, math.ceil(#ids * 0.01))
request = function()
    local i = math.random() < tonumber(os.getenv("HOT_SHARE")) and math.random(hot) or math.random(#ids)
    return wrk.format("GET", os.getenv("PREFIX") .. ids[i] .. os.getenv("SUFFIX"))
end
LUA
    echo "wrk second opinion ($THREADS threads, $CONNECTIONS connections, ${SECONDS_PER_PHASE}s):" | tee -a "$WORK/result.txt"
    for what in healthz "$ENDPOINT"; do
        if [ $what = healthz ]; then
            out=$("${CLIENT_PIN[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${SECONDS_PER_PHASE}s" --latency \
                -H "Authorization: Bearer $KEY" "$URL/healthz")
        else
            out=$(IDS="$IDS" PREFIX="$PREFIX" SUFFIX="$SUFFIX" HOT_SHARE="$HOT_SHARE" "${CLIENT_PIN[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${SECONDS_PER_PHASE}s" --latency \
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

# The caches' hits and misses over the whole run, and how many decisions read the offer plan.
curl -sf -H "Authorization: Bearer $KEY" "$URL/v1/status" \
    | python3 -c 'import json,sys
r = json.load(sys.stdin)
for name in ("profile_cache", "decision_cache", "offer_decisions"):
    print(name.replace("_", " ") + ":", json.dumps(r.get(name)))
# Time inside the server (routing to response, no socket or scheduling wait), all phases.
for h in r.get("http", []):
    if h["count"] >= 1000:
        q = "  ".join(f"{label} {h[key] * 1e3:.3f} ms" for label, key in (("p50", "p50_seconds"), ("p99", "p99_seconds"), ("p99.9", "p999_seconds")))
        print("in-server latency " + h["route"] + ":", h["count"], "requests,", q)' \
    | tee -a "$WORK/result.txt" || true
echo "serve RSS after load: $(( $(ps -o rss= -p $SERVE_PID) / 1024 )) MB" | tee -a "$WORK/result.txt"
echo "CLV refits since start (incl. the first): $(grep -c 'CLV models refitted' "$WORK/serve.err" || true)" \
    | tee -a "$WORK/result.txt"
kill -TERM $SERVE_PID
wait $SERVE_PID || true
echo "full output: $WORK/result.txt" >&2
